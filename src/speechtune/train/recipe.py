"""Fine-tune a speech model on a prepared folder, in the modes its family has (families/): Whisper full,
freeze-encoder (encoder outputs cached) or LoRA; CTC encoders freeze-feature-encoder, full, head, LoRA, adapter.

  speechtune train --model tiny.en --data prepared/ --out my-model [--mode freeze-encoder|full|lora]
                   [--guard general.jsonl] [--config train.yaml] [--resume]
  speechtune train --model facebook/wav2vec2-base --data prepared/ --out my-ctc   (a fresh character head)

MODEL_DIR becomes a Hugging Face model folder (what `transcribe --model MODEL_DIR` loads) plus
training_summary.json, train_config.yaml, train_log.jsonl, tensorboard/ and checkpoints/. Running the same
command into the same --out resumes from the last checkpoint. Several GPUs: `accelerate launch -m speechtune.cli
train ...` runs the same code under DDP.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from ..config import add_dataclass_args, build_config, save_config
from ..errors import SpeechtuneError
from .config import TrainConfig, train_default

# options that may change between a run and its resumption (they change where logs go and how fast data
# arrives, never what is trained)
RUN_ONLY = ("resume", "overwrite", "device", "report_to", "tensorboard", "data_workers")
NO_SPEECH_DIR = "no_speech"  # in --out: the WAVs of --no-speech-ratio's clips (the same bytes on every start)
LOG_FOLDERS = ("train_log.jsonl", "train_config.yaml", "tensorboard", "wandb", "mlruns",
               NO_SPEECH_DIR)  # left by a failed start
# Training clips read (and kept in memory while the non-speech clips are made) to cut reversed speech from:
# 16 clips of a few seconds is a few MB, and more voices than that add little to noise that has no words.
MAX_SPEECH_TO_REVERSE = 16


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML file with any of the options below")
    add_dataclass_args(parser, TrainConfig)


def main(args) -> int:
    cfg = build_config(TrainConfig, args.config, args)
    train(cfg)
    return 0


def _check(cfg: TrainConfig, family) -> TrainConfig:
    """Options checked before anything loads; --mode defaults to the family's first."""
    if not cfg.data:
        raise SpeechtuneError("--data is required", "pass the folder written by `speechtune prepare`")
    if not cfg.out:
        raise SpeechtuneError("--out is required", "pass a folder for the fine-tuned model")
    data = Path(cfg.data)
    if not data.is_dir():
        raise SpeechtuneError(f"data folder not found: {data}", "pass the folder written by `speechtune prepare`")
    if not (data / "train.jsonl").is_file():
        raise SpeechtuneError(f"{data / 'train.jsonl'}: not found", "run `speechtune prepare` into that folder first")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise SpeechtuneError(f"--out {out}: exists and is a file", "pass a folder path")
    cfg = dataclasses.replace(cfg, mode=cfg.mode or family.MODES[0])
    if cfg.mode not in family.MODES:
        raise SpeechtuneError(f"--mode {cfg.mode}: the {family.NAME} family trains {', '.join(family.MODES)}",
                              f"pass one of them (default: {family.MODES[0]})")
    if cfg.guard and not Path(cfg.guard).is_file():
        raise SpeechtuneError(f"guard manifest not found: {cfg.guard}", "pass a .jsonl of general speech")
    if cfg.mix and not Path(cfg.mix).is_file():
        raise SpeechtuneError(f"mix manifest not found: {cfg.mix}", "pass a .jsonl of general speech with transcripts")
    if cfg.mix_ratio < 0:
        raise SpeechtuneError(f"option mix_ratio: must be 0 or more, got {cfg.mix_ratio}")
    if not 0 <= cfg.no_speech_ratio < 1:
        raise SpeechtuneError(f"option no_speech_ratio: must be at least 0 and below 1, got {cfg.no_speech_ratio}",
                              "e.g. 0.1 adds one non-speech clip per ten training clips; 0 adds none")
    for name in ("batch_size", "grad_accum", "eval_batch_size", "eval_max_clips", "log_every"):
        if getattr(cfg, name) < 1:
            raise SpeechtuneError(f"option {name}: must be at least 1")
    if cfg.data_workers < 0:
        raise SpeechtuneError("option data_workers: must be 0 or more", "0 computes features in the training process")
    from .loop import reporters
    reporters(cfg)  # an unknown or uninstalled reporter is refused before the model loads
    if cfg.epochs <= 0 and cfg.max_steps <= 0:
        raise SpeechtuneError("nothing to train: set --epochs or --max-steps above 0")
    for name in getattr(family, "UNSUPPORTED_OPTIONS", ()):
        if getattr(cfg, name) != train_default(name):
            raise SpeechtuneError(f"--{name.replace('_', '-')} does nothing for {cfg.model}, a {family.NAME} "
                                  "model", "leave it out")
    if family.TASK != "asr":
        cfg = dataclasses.replace(cfg, eval_no_speech=False)  # a voice writes no text to hallucinate
    if cfg.lr is not None and cfg.lr <= 0:
        raise SpeechtuneError(f"option lr: must be positive, got {cfg.lr}")
    return cfg


def _prepare_out(cfg: TrainConfig, out: Path, family=None) -> None:
    """A new --out starts fresh; one with checkpoints of the same config resumes; any other is refused.
    A family that trains apart says where its checkpoints and work folders are (has_checkpoint, WORK_FOLDERS)."""
    from . import checkpoint

    saved = out / "train_config.yaml"
    has_ckpt = checkpoint.latest(out / "checkpoints") is not None or bool(
        getattr(family, "has_checkpoint", lambda _: False)(out))
    logs = LOG_FOLDERS + tuple(getattr(family, "WORK_FOLDERS", ()))
    if cfg.overwrite and out.is_dir():
        shutil.rmtree(out)
    elif has_ckpt:
        import yaml
        old = yaml.safe_load(saved.read_text(encoding="utf-8")) if saved.is_file() else {}
        new = dataclasses.asdict(cfg)
        diff = sorted(k for k in new if k not in RUN_ONLY and old.get(k) != new[k])
        if diff:
            raise SpeechtuneError(f"{out}: holds checkpoints of a run with different options ({', '.join(diff)})",
                                  "re-run with the same options to resume, or pass --overwrite / another --out")
    elif cfg.resume:
        raise SpeechtuneError(f"--resume: no checkpoint in {out / 'checkpoints'}", "drop --resume to start a new run")
    elif out.is_dir() and any(p.name not in logs for p in out.iterdir()):
        raise SpeechtuneError(f"--out {out}: folder exists and is not empty",
                              "pass a new folder, or --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_name(saved.name + ".tmp")
    save_config(cfg, tmp)
    tmp.replace(saved)


def _mix_rows(cfg: TrainConfig, n_train: int, guard_rows: list[dict]) -> list[dict]:
    """General-speech clips added to the domain clips, drawn once with the run's seed."""
    import random

    from .data import load_split
    if not cfg.mix:
        return []
    rows = load_split(Path(cfg.mix))
    guarded = {str(Path(r["audio"]).resolve()) for r in guard_rows}
    shared = [r for r in rows if str(Path(r["audio"]).resolve()) in guarded]
    if shared:
        raise SpeechtuneError(f"--mix {cfg.mix} and --guard {cfg.guard} share {len(shared)} clip(s), e.g. "
                              f"{shared[0]['audio']}: the guard would score speech the model trained on",
                              "split your general speech into one manifest to mix in and another to guard with")
    return random.Random(cfg.seed).sample(rows, min(len(rows), round(cfg.mix_ratio * n_train)))


def _resolved(rows: list[dict]) -> set[str]:
    return {str(Path(r["audio"]).resolve()) for r in rows}


def _no_speech_rows(cfg: TrainConfig, train_rows: list[dict], held: list[dict], out: Path,
                    write: bool) -> list[dict]:
    """--no-speech-ratio's clips as manifest rows with empty transcripts: round(ratio x training clips) of
    them, made by data.nospeech.training_no_speech_clip from the run's seed (never the evaluations' no-speech
    clips), reversed speech cut from up to MAX_SPEECH_TO_REVERSE training clips that the evaluations do not
    read (`held`: their rows). Their WAVs go to OUT/no_speech/ when `write` (the main process). The same
    options give the same files and rows, so a resumed run trains on what an uninterrupted one did. Each
    clip takes the language of a training clip in turn (a multilingual model's prefix needs one)."""
    import random

    from ..audio import SAMPLE_RATE, write_wav
    from ..data.nospeech import training_no_speech_clip
    from .data import read_wav

    n = round(cfg.no_speech_ratio * len(train_rows))
    if not n:
        return []
    seen = _resolved(held)
    sources = [r for r in train_rows if not _resolved([r]) & seen]
    picked = random.Random(cfg.seed).sample(sources, min(len(sources), MAX_SPEECH_TO_REVERSE))
    speech = [read_wav(r) for r in picked]
    folder = (out / NO_SPEECH_DIR).resolve()
    if write:
        folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        clip = training_no_speech_clip(i, cfg.seed, speech)
        path = folder / f"{i:06d}_{clip.name}.wav"
        if write:
            write_wav(path, clip.wav)
        rows.append({"audio": str(path), "text": "", "duration": len(clip.wav) / SAMPLE_RATE, "speaker": None,
                     "language": train_rows[i % len(train_rows)].get("language"),
                     "source": f"no-speech:{path.name}"})
    return rows


def _no_speech_set(speech_set: dict) -> dict:
    """The no-speech set every evaluation decodes: data.nospeech.no_speech_clips() with reversed speech from
    the first clips of `speech_set` (the guard's, else the evaluated split's), in its first clip's language."""
    from ..data.nospeech import no_speech_clips
    clips = no_speech_clips(speech=speech_set["wavs"])
    return {"wavs": [c.wav for c in clips], "names": [c.name for c in clips],
            "languages": [speech_set["languages"][0]] * len(clips), "no_speech": True}


def _eval_set(rows: list[dict], language, multilingual: bool) -> dict:
    from ..evaluation import score_language
    from .data import read_wav
    # decoding is bounded by the audio length (runtimes.max_new_tokens): a looping model cannot stall evals.
    # A guard manifest often has no language field: evaluate's rule then lets its script decide (Han text gets
    # CER and a <|zh|> prompt, not WER on one "word" a sentence).
    return {"wavs": [read_wav(r) for r in rows], "refs": [r["text"] for r in rows],
            "languages": score_language(rows, language, multilingual)}


def _plan_summary(cfg: TrainConfig, n_clips: int) -> None:
    # The GPU/time estimate lives in speechtune.plan; printed when that module is present.
    try:
        from ..plan.estimate import format_summary
        text = format_summary(cfg, n_clips)
    except Exception:
        return
    if text:
        print(text, file=sys.stderr)


def _cpu_has_bf16() -> bool:
    import torch

    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                      "_is_amx_tile_supported"))


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train as `cfg` says; returns the output model folder."""
    import torch
    from accelerate.utils import set_seed

    from ..families import family_for
    from .data import eval_rows, load_split
    from .loop import train_loop

    family = family_for(cfg.model)
    cfg = _check(cfg, family)
    if hasattr(family, "train_apart"):
        return _train_apart(cfg, family, progress)
    data, out = Path(cfg.data), Path(cfg.out)
    train_rows = load_split(data / "train.jsonl")
    valid_rows = load_split(data / "valid.jsonl", required=False)
    guard_rows = load_split(Path(cfg.guard)) if cfg.guard else []
    mixed = _mix_rows(cfg, len(train_rows), guard_rows)
    rows, eval_name = eval_rows(valid_rows, train_rows, cfg.eval_max_clips)
    accelerator = _accelerator(cfg)
    set_seed(cfg.seed)  # before loading: a fresh CTC head is initialised at random
    # the model comes first: a CTC vocabulary is built from (or checked against) the transcripts, and the
    # default lr depends on whether the head is fresh
    bundle = family.load_for_training(cfg, train_rows + mixed, device=str(accelerator.device), dtype=torch.float32)
    if cfg.lr is None:
        cfg = dataclasses.replace(cfg, lr=family.default_lr(cfg, bundle))
    if accelerator.is_main_process:
        _prepare_out(cfg, out)
    accelerator.wait_for_everyone()
    set_seed(cfg.seed)
    if accelerator.is_main_process:
        _plan_summary(cfg, len(train_rows))
    silent = _no_speech_rows(cfg, train_rows, rows + guard_rows, out, write=accelerator.is_main_process)
    accelerator.wait_for_everyone()  # the other processes read the WAVs the main one wrote

    hf_model = bundle.model
    peft_model = family.setup_training(cfg, hf_model)
    clips = family.clips(train_rows + mixed + silent, bundle, cfg)
    if eval_name != "valid":
        accelerator.print("warning: valid.jsonl is empty; evaluating on a slice of train (memorisation, "
                          "not generalisation)")
    evals = {"valid": _eval_set(rows, cfg.language, bundle.multilingual)}
    if guard_rows:
        evals["guard"] = _eval_set(guard_rows[: cfg.eval_max_clips], cfg.language, bundle.multilingual)
    elif getattr(family, "default_guard", None) and (guard := family.default_guard(bundle, cfg)):
        evals["guard"] = guard
    if cfg.eval_no_speech:
        evals["no_speech"] = _no_speech_set(evals["guard" if guard_rows else "valid"])
    cache = family.encoder_cache(cfg, hf_model, out, accelerator.autocast)
    total = _total_steps(cfg, len(clips), accelerator.num_processes)
    _plan_line(cfg, hf_model, clips, mixed, silent, cache, total, accelerator)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    try:
        state = train_loop(cfg, bundle, hf_model, clips, evals, cache, out, accelerator, total, progress=progress,
                           loss=family.loss, score=getattr(family, "score", None))
    finally:
        if cache:
            cache.clear()
            shutil.rmtree(out / "encoder_cache", ignore_errors=True)
    if accelerator.is_main_process:
        summary = _finish(cfg, family, state, hf_model, peft_model, bundle, accelerator, time.time() - start,
                          eval_name, {"train": len(train_rows), "mixed": len(mixed), "no_speech": len(silent)})
        print(_final_message(summary, out), file=sys.stderr)
    accelerator.wait_for_everyone()
    return out


def _train_apart(cfg: TrainConfig, family, progress: bool) -> Path:
    """A family whose trainer runs in a process of its own (families/piper.py: GPL-3.0 piper-tts): the same
    checks, --out rules, evaluation rows and training_summary.json as the loop here; its `train_apart` does the
    training, the evaluations and the model folder. Runs in one process (accelerate launch is not used)."""
    from ..files import write_atomic
    from .data import data_hash, eval_rows, load_split
    data, out = Path(cfg.data), Path(cfg.out)
    train_rows = load_split(data / "train.jsonl")
    rows, eval_name = eval_rows(load_split(data / "valid.jsonl", required=False), train_rows, cfg.eval_max_clips)
    guard_rows = load_split(Path(cfg.guard))[: cfg.eval_max_clips] if cfg.guard else []
    if cfg.lr is None:
        cfg = dataclasses.replace(cfg, lr=family.DEFAULT_LR[cfg.mode])
    _prepare_out(cfg, out, family)
    summary = family.train_apart(cfg, train_rows, rows, guard_rows, progress=progress)
    summary.update(eval_on=eval_name, data_hash=data_hash(data / "train.jsonl", data / "valid.jsonl"))
    write_atomic(out / "training_summary.json", json.dumps(summary, indent=2) + "\n")
    print(_final_message(summary, out), file=sys.stderr)
    return out


def _accelerator(cfg: TrainConfig):
    """The run's Accelerator: --precision auto is bf16 (else fp16) on a GPU, fp32 on a CPU."""
    import torch

    from .loop import new_accelerator
    use_cuda = (cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    precision = cfg.precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if use_cuda else "no"
    accelerator = new_accelerator(precision, cpu=not use_cuda)
    if cfg.precision == "auto" and not use_cuda and _cpu_has_bf16():
        # not the default: CPUs without these instructions emulate bf16 and get slower
        accelerator.print("note: this CPU computes bf16 natively; --precision bf16 trains about 1.5x faster "
                          "(docs/benchmarks.md, train speed)", file=sys.stderr)
    return accelerator


def _total_steps(cfg: TrainConfig, n_clips: int, world: int) -> int:
    """--max-steps, else --epochs passes: each pass is ceil(batches / grad_accum / world) steps, what every
    rank runs (loop.epoch_groups pads the groups to a multiple of the world size)."""
    steps_per_epoch = math.ceil(math.ceil(n_clips / cfg.batch_size) / cfg.grad_accum / world)
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))


def _plan_line(cfg: TrainConfig, hf_model, clips, mixed, silent, cache, total: int, accelerator) -> None:
    world = accelerator.num_processes
    trainable = sum(p.numel() for p in hf_model.parameters() if p.requires_grad)
    extra = ", ".join([f"{len(mixed)} from --mix"] * bool(mixed) + [f"{len(silent)} without speech"] * bool(silent))
    accelerator.print(f"training {cfg.mode}: {len(clips)} clips{f' ({extra})' if extra else ''}, "
                      f"{total} steps of {cfg.batch_size * cfg.grad_accum * world} "
                      f"clips, lr {cfg.lr:g}, {trainable / 1e6:.1f}M trainable parameters"
                      f"{', ' + cache.note if cache is not None and cache.note else ''}")


def _finish(cfg: TrainConfig, family, state, hf_model, peft_model, bundle, accelerator, wall: float, eval_name,
            clips: dict) -> dict:
    """Load the chosen checkpoint, write the model folder, then training_summary.json (which marks it
    complete). Main process only."""
    from ..files import write_atomic
    from . import checkpoint
    out = Path(cfg.out)
    chosen = state["best"] if state["best"] is not None else state["best_any"]
    if chosen is None:
        chosen = state["step"]
    weights, _ = checkpoint.load(out / "checkpoints" / f"step-{chosen:06d}")
    checkpoint.load_weights(hf_model, weights)
    _export(family, hf_model, peft_model, bundle, out)
    summary = _summary(cfg, state, chosen, Path(cfg.data), wall, accelerator, eval_name, clips)
    write_atomic(out / "training_summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _export(family, hf_model, peft_model, bundle, out: Path) -> None:
    """Write the model folder (the family's `save`) into a temporary folder, then move each file into place
    (each move atomic; training_summary.json, written after, marks a complete folder)."""
    tmp = out / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    family.save(hf_model, peft_model, bundle, tmp)
    for p in sorted(tmp.iterdir()):
        target = out / p.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(p, target)
    tmp.rmdir()


# what each evaluation scored, as training_summary.json reports it for the base model, the best and every eval
SCORES = ("valid", "guard", "no_speech_words", "no_speech_clips_with_text")


def guard_note(cfg: TrainConfig, state: dict, chosen: int) -> str | None:
    """Under --guard: why no checkpoint was chosen, and which ones wrote text on more non-speech clips than
    the base model (they are not guard_ok, so not chosen); None when there is nothing to say."""
    notes = []
    evals = state["evals"]
    noisy = [e for e in evals[1:] if not e.get("no_speech_ok", True)]
    if state["best"] is None:
        # mixing in general speech was the one anchor that held the guard in benchmarks/forgetting.py
        fix = ("raise --mix-ratio or lower --lr" if cfg.mix
               else "add --mix with other general speech (not the guard clips) or lower --lr")
        if noisy and not cfg.no_speech_ratio:
            fix += ", or add --no-speech-ratio 0.1"
        notes.append(f"no checkpoint improved on the base model's valid score while keeping the guard within "
                     f"{cfg.guard_threshold} pt of the base model's and writing text on no more non-speech clips "
                     f"than it; kept the best valid score (step {chosen}) anyway: {fix}")
    if noisy:
        base = evals[0].get("no_speech_clips_with_text")
        shown = ", ".join(f"{e['step']} ({e['no_speech_clips_with_text']})" for e in noisy[:8])
        notes.append(f"{len(noisy)} checkpoint(s) wrote text on more of the no-speech set's clips than the base "
                     f"model ({base}) and were not chosen: step {shown}")
    return "; ".join(notes) or None


def _summary(cfg, state, chosen, data: Path, wall: float, accelerator, eval_name, clips: dict) -> dict:
    import resource

    import torch

    from .data import data_hash

    evals = state["evals"]
    base = evals[0] if evals else None
    best = next((e for e in evals if e["step"] == chosen), None)
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    note = guard_note(cfg, state, chosen) if cfg.guard else None
    return {
        "data": str(data), "data_hash": data_hash(data / "train.jsonl", data / "valid.jsonl",
                                                  *([Path(cfg.mix)] if cfg.mix else [])),
        "model": cfg.model, "mode": cfg.mode, "config": dataclasses.asdict(cfg), "clips": clips,
        "steps": state["step"], "epochs_started": state["epoch"] + (1 if state["group"] else 0),
        "best_step": chosen, "eval_on": eval_name, "metric": base["metric"] if base else None,
        "guard_metric": base.get("guard_metric") if base else None,
        "no_speech_ratio": cfg.no_speech_ratio,
        "base": {k: base.get(k) for k in SCORES} if base else None,
        "best": {k: best.get(k) for k in SCORES} if best else None,
        "guard_ok": None if not cfg.guard else state["best"] is not None, "guard_note": note,
        "evals": [{k: e.get(k) for k in ("step", "train_s", *SCORES, "guard_ok", "no_speech_ok", "eval_s")}
                  for e in evals],
        "stopped": state["stopped"],
        "train_s": round(state["train_s"], 1), "wall_s": round(wall, 1),
        "samples_per_s": round(state["samples"] / max(state["train_s"], 1e-9), 2),
        "peak_memory_bytes": int(peak), "device": str(accelerator.device), "processes": accelerator.num_processes,
        "precision": accelerator.mixed_precision,
    }


def _final_message(s: dict, out: Path) -> str:
    lines = [f"trained {s['steps']} steps in {s['train_s']:.0f} s ({s['samples_per_s']:.1f} clips/s) -> {out}"]
    if s["base"] and s["best"]:
        m = (s["metric"] or "wer").upper()
        lines.append(f"valid {m}: base {s['base']['valid']:.2%} -> {s['best']['valid']:.2%} (step {s['best_step']})")
        if s["base"].get("similarity") is not None:
            lines.append(f"similarity to the speaker: base {s['base']['similarity']:.3f} -> "
                         f"{s['best']['similarity']:.3f}")
        if s["base"].get("guard") is not None:
            g = (s.get("guard_metric") or "wer").upper()
            lines.append(f"guard {g}: base {s['base']['guard']:.2%} -> {s['best']['guard']:.2%}")
        if s["base"].get("no_speech_words") is not None:
            lines.append(f"no-speech set: base {s['base']['no_speech_words']} words on "
                         f"{s['base']['no_speech_clips_with_text']} clips -> {s['best']['no_speech_words']} on "
                         f"{s['best']['no_speech_clips_with_text']}")
    if s["guard_note"]:
        lines.append("warning: " + s["guard_note"])
    if s["stopped"]:
        lines.append(s["stopped"])
    return "\n".join(lines)
