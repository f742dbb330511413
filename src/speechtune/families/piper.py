"""The piper family: fine-tune a piper VITS voice (the bundled joe, or any piper medium `.onnx` voice) on one
speaker's recordings, with piper-tts's own trainer.

piper-tts is GPL-3.0 and speechtune is MIT, so piper never runs in this process: tts/piper_train.py is a
separate program (`python -m speechtune.tts.piper_train`) that this module starts and talks to through files
only: a CSV of the recordings and their phoneme ids in, Lightning checkpoints, a JSON-lines log and exported
ONNX voices out. It needs the optional extra `pip install 'speechtune[piper]'`.

The run, in MODEL_DIR/piper_run/: `init` copies the base voice's ONNX weights into piper's torch model
(training-only parts start fresh), `fit` trains (a step is one batch; resumed from the last checkpoint when
MODEL_DIR has one), and every checkpoint is exported and judged as `compare` judges voices: what the bundled
Whisper hears of the valid sentences (intelligibility CER), how close the voice is to the valid recordings'
speaker (similarity), and the built-in guard sentences' CER. The chosen checkpoint is the most similar one
whose valid and guard CER stay within --guard-threshold points of the base voice's (else the most
intelligible one, with a warning); MODEL_DIR/model.onnx + model.onnx.json is that voice, a piper voice every
command reads.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import SpeechtuneError
from ..files import write_atomic, write_json

NAME = "piper"
TASK = "tts"
MODEL_TYPES = ("piper",)
MODES = ("full",)
# piper's own learning rate (VitsModel's default, what its fine-tuning guide keeps)
DEFAULT_LR = {"full": 2e-4}
EXPORT_FORMATS = ("onnx",)
WORKER = "speechtune.tts.piper_train"
RUN_FOLDER = "piper_run"     # in MODEL_DIR: the worker's inputs, checkpoints, logs and exported checkpoints
WORK_FOLDERS = (RUN_FOLDER,)
LOG_NAME = "piper_log.jsonl"   # in RUN_FOLDER: the worker's line per step (step, epoch, losses)
# the first steps of a run from an ONNX voice train only what the voice lacked (the posterior encoder, ...),
# which starts random and would otherwise pull every pretrained part after it (tts/piper_train.cmd_fit)
WARMUP_FRACTION = 0.4
FRESH_LR_SCALE = 1.0   # the fresh parts' lr, x --lr (piper's trainer: one lr for the whole generator)
# recognition's data tricks, and the loop options piper's trainer has its own versions of (its AdamW betas
# and no decay schedule, fp32, TensorBoard): train refuses them rather than ignore them
UNSUPPORTED_OPTIONS = ("mix", "no_speech_ratio", "speed_perturb", "noise_snr", "spec_augment",
                       "gradient_checkpointing", "grad_accum", "lora_encoder", "freeze_encoder_layers",
                       "train_decoder_layers", "stop_at", "patience", "weight_decay", "warmup_ratio", "schedule",
                       "max_grad_norm", "precision", "save_every", "keep_checkpoints", "report_to")
MISSING_EXIT = 3   # tts/piper_train.py's exit status when piper-tts is not installed
_INSTALL_HINT = "pip install 'speechtune[piper]' (piper-tts[train], GPL-3.0, run as a separate process)"


def claims(spec) -> bool:
    """Whether `spec` is a piper ONNX voice (a bundled name, X.onnx with X.onnx.json, or a folder of one)."""
    from ..tts import resolve_voice
    try:
        onnx = resolve_voice(spec)[0]
    except SpeechtuneError:
        return False
    return onnx.is_file()


def resolve(spec) -> Path:
    """The voice's .onnx (what export copies)."""
    from ..tts import resolve_voice
    return resolve_voice(spec)[0]


def installed() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("piper", "lightning", "onnx"))


def has_checkpoint(out: Path) -> bool:
    return (Path(out) / RUN_FOLDER / "checkpoints" / "last.ckpt").is_file()


def _worker(args: list[str], run: Path, what: str, on_poll=None) -> dict:
    """Run one worker command; its stderr goes to RUN/worker.log. Returns the JSON it prints; a one-line error
    (with the log's last line) when it fails."""
    log, answer = run / "worker.log", run / "worker.out"
    # both to files: a pipe nobody reads while the worker runs could fill and stall it
    with open(log, "a", encoding="utf-8") as err, open(answer, "w", encoding="utf-8") as out:
        proc = subprocess.Popen([sys.executable, "-m", WORKER, *args], stdout=out, stderr=err,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        while proc.poll() is None:
            if on_poll:
                on_poll()
            time.sleep(0.5)
    stdout = answer.read_text(encoding="utf-8")
    if proc.returncode == MISSING_EXIT:
        raise SpeechtuneError("training a piper voice needs piper-tts, which is not installed", _INSTALL_HINT)
    if proc.returncode:
        lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        raise SpeechtuneError(f"piper's trainer failed to {what} (exit {proc.returncode}): "
                              f"{lines[-1][:300] if lines else 'no output'}", f"the whole log: {log}")
    return json.loads(stdout.strip().splitlines()[-1])


def _inputs(rows: list[dict], voice, run: Path, cfg) -> Path:
    """RUN/train.csv (audio | text | phoneme ids, read as speechtune's runtime reads the text) and
    RUN/phonemes.json; refuses recordings at another rate than the voice's."""
    from ..tts.align import phoneme_sequence
    from .tts import refuse_other_rates
    refuse_other_rates(rows, voice, cfg.data, cfg.model)
    out = []
    for r in rows:
        ids = [i for s in phoneme_sequence(voice, r["text"]) for i in s]
        out.append((str(Path(r["audio"]).resolve()), r["text"], ids))
    csv = run / "train.csv"
    write_csv(csv, out)
    write_json(run / "phonemes.json", voice.config["phoneme_id_map"])
    return csv


def write_csv(path: Path, rows: list[tuple[str, str, list[int]]]) -> None:
    """piper's phoneme_ids metadata: audio path | text | space-separated ids (csv quoting, as its reader)."""
    import csv
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="|")
        for audio, text, ids in rows:
            w.writerow([audio, text, " ".join(map(str, ids))])


def _steps(cfg, n_clips: int) -> tuple[int, int]:
    """(total steps, steps between evaluations): --max-steps or --epochs passes of ceil(clips / batch)."""
    per_epoch = max(1, math.ceil(n_clips / cfg.batch_size))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    return total, max(1, min(total, cfg.eval_every or per_epoch))


def _judge(voice, texts: list[str], refs, guard: list[str]) -> dict:
    """One evaluation: valid CER and similarity to the valid recordings' speaker, guard CER."""
    from ..audio import SAMPLE_RATE, resample
    from ..tts.hearing import intelligibility
    from ..tts.judge import similarities
    t0 = time.time()
    clips = [resample(voice.synthesize(t), voice.sample_rate, SAMPLE_RATE) for t in texts]
    hyps, valid = intelligibility(voice, texts, wavs_16k=clips)   # heard and compared: one reading each
    sim = float(similarities(refs, {"voice": clips})["voice"].mean())
    e = {"valid": valid["error_rate"], "similarity": round(sim, 4), "examples": list(zip(texts, hyps))[:3]}
    if guard:
        e["guard"] = intelligibility(voice, guard)[1]["error_rate"]
    e["eval_s"] = round(time.time() - t0, 1)
    return e


def choose(evals: list[dict], threshold_pts: float) -> tuple[dict, str | None]:
    """The chosen evaluation (never the base, evals[0]) and a note when none kept the base's intelligibility."""
    base, tuned = evals[0], evals[1:]
    limit = threshold_pts / 100

    def kept(e):
        return all(e.get(k) is None or e[k] <= base[k] + limit for k in ("valid", "guard"))
    ok = [e for e in tuned if kept(e)]
    if ok:
        return max(ok, key=lambda e: (e["similarity"], -e["step"])), None
    best = min(tuned, key=lambda e: (e["valid"], e["step"]))
    return best, (f"no checkpoint kept valid and guard CER within {threshold_pts} pt of the base voice's; kept the "
                  f"most intelligible one (step {best['step']}) anyway: train longer, lower --lr, or pass a larger "
                  "--guard-threshold")


def train_apart(cfg, train_rows: list[dict], eval_rows: list[dict], guard_rows: list[dict],
                progress: bool = True) -> dict:
    """The whole run (see the module doc); returns training_summary.json's fields. The guard sentences are
    --guard's transcripts, else (an English voice) the TTS family's GUARD_TEXTS."""
    from ..tts import load_voice
    from ..tts.hearing import base_language
    from .tts import GUARD_TEXTS
    out = Path(cfg.out)
    run = out / RUN_FOLDER
    run.mkdir(parents=True, exist_ok=True)
    voice = load_voice(cfg.model)
    start = time.time()
    total, fit = _fit(cfg, train_rows, voice, run, progress)
    train_s = time.time() - start
    guard = ([r["text"] for r in guard_rows] if guard_rows else
             list(GUARD_TEXTS[: cfg.eval_max_clips]) if base_language(voice.language) == "en" else [])
    evals = _evaluate(cfg, voice, eval_rows, guard, run)
    best, note = choose(evals, cfg.guard_threshold)
    _install(run / "voices" / f"step-{best['step']:06d}.onnx", out)
    return _summary(cfg, evals, best, note, total, train_s, time.time() - start, len(train_rows), fit)


def _fit(cfg, train_rows: list[dict], voice, run: Path, progress: bool) -> tuple[int, dict]:
    """The worker's init (once) and fit (resumed when RUN holds a checkpoint); returns (the steps, what fit
    measured: its seconds, the steps it ran, peak memory, parameter counts)."""
    from ..tts import resolve_voice
    onnx, config, _, _ = resolve_voice(cfg.model)
    csv = _inputs(train_rows, voice, run, cfg)
    total, every = _steps(cfg, len(train_rows))
    init = run / "init.ckpt"
    if not init.is_file():
        report = _worker(["init", "--voice", str(onnx), "--config", str(config), "--out", str(init),
                          "--seed", str(cfg.seed)], run, "read the base voice")
        write_json(run / "init.json", report)
    print(f"training piper voice {voice.name}: {len(train_rows)} clips, {total} steps of {cfg.batch_size} clips, "
          f"lr {cfg.lr:g}, a checkpoint judged every {every} steps", file=sys.stderr)
    bar, update = _bar(run, total, progress)
    try:
        fit = _worker(["fit", "--init", str(init), "--csv", str(csv), "--run", str(run), "--phonemes",
                 str(run / "phonemes.json"), "--name", Path(cfg.out).name, "--espeak-voice",
                 voice.text.espeak_voice, "--steps", str(total), "--save-every", str(every), "--batch-size",
                 str(cfg.batch_size), "--lr", str(cfg.lr), "--seed", str(cfg.seed), "--log", str(run / LOG_NAME),
                 "--warmup-steps", str(round(WARMUP_FRACTION * total)), "--fresh-lr-scale", str(FRESH_LR_SCALE),
                 "--accelerator", "cpu" if (cfg.device or "").startswith("cpu") else "auto"],
                run, "train", on_poll=update)
    finally:
        bar.close()
    measured = run / "fit.json"
    if fit["steps_run"] == 0 and measured.is_file():   # nothing left to train: the run that trained measured
        return total, json.loads(measured.read_text(encoding="utf-8"))
    write_json(measured, fit)
    return total, fit


def _evaluate(cfg, voice, eval_rows: list[dict], guard: list[str], run: Path) -> list[dict]:
    """The base voice (step 0) and every checkpoint, exported and judged (_judge). Judgements are kept in
    RUN/evals.jsonl under the sentences they judged, so a run started again judges only new checkpoints."""
    import hashlib

    from ..audio import SAMPLE_RATE, load_audio
    from ..tts import load_voice, resolve_voice
    texts = [r["text"] for r in eval_rows]
    refs = [load_audio(r["audio"], SAMPLE_RATE) for r in eval_rows]
    key = hashlib.sha256(json.dumps([texts, [r["audio"] for r in eval_rows], guard]).encode()).hexdigest()[:16]
    cache = run / "evals.jsonl"
    done = {}
    if cache.is_file():
        for line in cache.read_text(encoding="utf-8").splitlines():
            e = json.loads(line)
            if e.pop("key") == key:
                done[e["step"]] = e
    _, config, _, _ = resolve_voice(cfg.model)
    steps = [0] + [int(c.stem.split("-")[1]) for c in sorted((run / "checkpoints").glob("step-*.ckpt"))]
    evals = []
    for step in steps:
        if step not in done:
            exported = run / "voices" / f"step-{step:06d}.onnx"
            if step and not exported.is_file():
                _worker(["export", "--ckpt", str(run / "checkpoints" / f"step-{step:06d}.ckpt"), "--config",
                         str(config), "--out", str(exported), "--name", Path(cfg.out).name], run, f"export step {step}")
            done[step] = {"step": step, **_judge(load_voice(exported) if step else voice, texts, refs, guard)}
            with open(cache, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, **done[step]}) + "\n")
        e = done[step]
        evals.append(e)
        print(f"{'base voice' if not step else f'step {step}'}: valid CER {e['valid']:.1%}, similarity "
              f"{e['similarity']:.3f}" + (f", guard CER {e['guard']:.1%}" if guard else ""), file=sys.stderr)
    return evals


def _bar(run: Path, total: int, progress: bool):
    """(a progress bar, the function that moves it to the worker's last logged step)."""
    from tqdm import tqdm
    bar = tqdm(total=total, desc="piper", unit="step", disable=not progress, file=sys.stderr)
    log = run / LOG_NAME

    def update():
        if not log.is_file():
            return
        lines = log.read_text(encoding="utf-8").splitlines()
        last = json.loads(lines[-1]) if lines else None
        if last and last["step"] != bar.n:
            bar.n = min(total, last["step"])
            bar.set_postfix(loss_g=last.get("loss_g"), mel=last.get("train_mel"), refresh=False)
            bar.refresh()

    return bar, update


def _install(onnx: Path, out: Path) -> None:
    """The chosen voice as MODEL_DIR/model.onnx + model.onnx.json, each file written atomically."""
    for src, name in ((onnx.with_name(onnx.name + ".json"), "model.onnx.json"), (onnx, "model.onnx")):
        write_atomic(out / name, src.read_bytes())


def _summary(cfg, evals, best, note, steps, train_s, wall, n_clips, fit: dict) -> dict:
    import dataclasses
    keep = ("step", "valid", "similarity", "guard", "eval_s")
    return {"data": str(cfg.data), "model": cfg.model, "family": NAME, "mode": cfg.mode,
            "config": dataclasses.asdict(cfg), "clips": {"train": n_clips}, "steps": steps,
            "best_step": best["step"], "metric": "cer", "guard_metric": "cer" if "guard" in best else None,
            "base": {k: evals[0].get(k) for k in keep[1:4]}, "best": {k: best.get(k) for k in keep[1:4]},
            "guard_ok": note is None, "guard_note": note,
            "evals": [{k: e.get(k) for k in keep} for e in evals],
            "examples": best.get("examples"), "stopped": None,
            "train_s": round(train_s, 1), "wall_s": round(wall, 1),
            "samples_per_s": round(fit["steps_run"] * cfg.batch_size / max(fit["fit_s"], 1e-9), 2),
            "peak_memory_bytes": fit["peak_memory_bytes"], "device": fit["device"],
            "parameters": fit["parameters"]}
