"""Wall time to <= 2% held-out WER on a synthesized drug-name corpus, for four ways to fine-tune tiny.en.

(a) the plain Hugging Face Seq2SeqTrainer recipe of the "fine-tune Whisper" blog (full fine-tune, every clip
    padded to 30 s, lr 1e-5), (b) speechtune full, (c) speechtune freeze-encoder (encoder outputs cached),
(d) speechtune lora (decoder adapters; encoder outputs cached), and two that train the top of the encoder on cached
states of its frozen bottom: (e) speechtune full and (f) lora with encoder adapters, both with
--freeze-encoder-layers (default 3 of tiny.en's 4). Every run is scored after each epoch with the
same greedy decoding on the same held-out clips; the time reported is training time (evaluation excluded)
until the first evaluation at or under the target. Runs that hit --budget-s stop there and report the WER
they reached; the report then compares the runs on a ladder (seconds to <= 50/30/20/10/5% and the target),
each rung as a ratio to (a). With --guard, each final model is also scored on that general-speech manifest.

  python benchmarks/train_speed.py --out /tmp/train_speed [--only c d] [--budget-s 600] [--held-out sentences]
      [--guard ../shared/realspeech/en.jsonl] [--lr c=1e-4 d=1e-3] [--mix general-train.jsonl]
      [--freeze-encoder-layers 3] [--precision bf16] [--a-precision bf16] [--seed 1] [--set lora_dropout=0.05 ...]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

DRUGS = ["metoprolol", "lisinopril", "atorvastatin", "amlodipine", "omeprazole", "levothyroxine",
         "gabapentin", "hydrochlorothiazide", "montelukast", "escitalopram", "clopidogrel", "pantoprazole",
         "rosuvastatin", "furosemide", "tamsulosin"]
TRAIN = ["the patient takes {a} every morning", "please renew the {a} prescription", "we stopped {a} last week",
         "start {a} at a low dose", "is she still on {a}", "he had a reaction to {a}",
         "the pharmacy is out of {a}", "double the {a} from today", "{a} twice a day with food",
         "write down {a} in the chart"]
HELD = ["switch from {a} to {b} tomorrow", "do not combine {a} with {b}", "she takes {a} and {b} at night"]
MORE = ["the doctor prescribed {a} for her", "how much {a} did you take"]  # only in --held-out sentences


def synth_split(sents: list[str], d: Path, name: str, seed: int) -> list[dict]:
    """Synthesize `sents` into d/name/ and write d/name.jsonl, audio paths relative to d: a split of a prepared
    folder (espeak-ng already writes 16 kHz mono)."""
    from speechtune.files import write_jsonl
    from speechtune.synth import synth_corpus

    m = synth_corpus(sents, d / name, seed=seed)
    rows = [json.loads(line) for line in m.read_text().splitlines()]
    for r in rows:
        r["audio"] = f"{name}/{r['audio']}"
    write_jsonl(d / f"{name}.jsonl", rows)
    return rows


def build_corpus(d: Path, held_out: str = "templates") -> Path:
    """150 training clips and 30 held-out ones. held_out="templates": the held-out sentences come from 3
    templates that training never hears, with two drugs each, so everyday words of those templates are new
    too. "sentences": 12 one-drug templates x 15 drugs, of which 30 drug-template pairs (2 per drug) are held
    out, so every held-out sentence is new but every word in it was heard in training."""
    if (d / "valid.jsonl").is_file():
        return d
    if held_out == "templates":
        train = [t.format(a=x) for x in DRUGS for t in TRAIN]
        held = [HELD[i % 3].format(a=DRUGS[i % 15], b=DRUGS[(i * 7 + 3) % 15]) for i in range(30)]
    else:
        templates = TRAIN + MORE
        out = {(i, i % 12) for i in range(15)} | {(i, (i + 6) % 12) for i in range(15)}
        pairs = [(i, j) for i in range(15) for j in range(12)]
        train = [templates[j].format(a=DRUGS[i]) for i, j in pairs if (i, j) not in out]
        held = [templates[j].format(a=DRUGS[i]) for i, j in pairs if (i, j) in out]
    synth_split(train, d, "train", seed=1)
    synth_split(held, d, "valid", seed=2)
    return d


def eval_set(manifest: Path, limit: int = 200):
    from speechtune.manifest import read_manifest
    from speechtune.train.data import read_wav

    rows = read_manifest(manifest)[:limit]
    return [read_wav(r) for r in rows], [r["text"] for r in rows]


def score(model, processor, path, data) -> float:
    from speechtune.metrics.score import score_corpus
    from speechtune.models.registry import Whisper
    from speechtune.runtimes import DecodingOptions, runtime_for, transcribe_many

    wavs, refs = data
    model.eval()
    hyps = transcribe_many(runtime_for(Whisper(model, processor, path, False)), wavs, DecodingOptions(batch_size=16))
    model.train()
    return score_corpus(refs, hyps, language="en")["error_rate"]


def run_hf_trainer(data: Path, out: Path, target: float, budget: float, seed: int = 0, bf16: bool = False) -> dict:
    """The blog recipe, on CPU: features padded to 30 s, labels from the tokenizer, Seq2SeqTrainer (the blog's
    fp16 is for GPUs; bf16=True is the Trainer's CPU autocast)."""
    import torch
    from transformers import (Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback,
                              WhisperForConditionalGeneration, WhisperProcessor)

    from speechtune.manifest import read_manifest
    from speechtune.models import resolve_model
    from speechtune.train.data import read_wav

    path = resolve_model("tiny.en")
    processor = WhisperProcessor.from_pretrained(path)
    processor.tokenizer.pad_token = processor.tokenizer.eos_token  # the hub's tiny.en tokenizer has this set
    model = WhisperForConditionalGeneration.from_pretrained(path)
    rows = read_manifest(data / "train.jsonl")

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            wav = read_wav(rows[i])
            return {"input_features": processor.feature_extractor(wav, sampling_rate=16000).input_features[0],
                    "labels": processor.tokenizer(rows[i]["text"]).input_ids}

    def collate(features):  # DataCollatorSpeechSeq2SeqWithPadding from the blog
        batch = processor.feature_extractor.pad([{"input_features": f["input_features"]} for f in features],
                                                return_tensors="pt")
        labels_batch = processor.tokenizer.pad([{"input_ids": f["labels"]} for f in features], return_tensors="pt")
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        if (labels[:, 0] == model.config.decoder_start_token_id).all().cpu().item():
            labels = labels[:, 1:]
        batch["labels"] = labels
        return batch

    valid = eval_set(data / "valid.jsonl")
    log = {"evals": [], "train_s": 0.0}

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.t = time.time()

        def _eval(self, state):
            log["train_s"] += time.time() - self.t
            wer = score(model, processor, path, valid)
            log["evals"].append({"step": state.global_step, "train_s": round(log["train_s"], 1), "valid": wer})
            print(f"(a) step {state.global_step}: train {log['train_s']:.0f} s, WER {wer:.2%}", flush=True)
            self.t = time.time()
            return wer

        def on_step_end(self, args, state, control, **k):
            log["steps"] = state.global_step
            if log["train_s"] + time.time() - self.t >= budget:
                self._eval(state)
                control.should_training_stop = True

        def on_epoch_end(self, args, state, control, **k):
            if not control.should_training_stop and self._eval(state) <= target:
                control.should_training_stop = True

    args = Seq2SeqTrainingArguments(
        output_dir=str(out / "a"), per_device_train_batch_size=8, learning_rate=1e-5, warmup_steps=19,
        num_train_epochs=30, weight_decay=0.0, save_strategy="no", eval_strategy="no", logging_steps=10,
        report_to=[], use_cpu=True, dataloader_num_workers=0, seed=seed, bf16=bf16)
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=DS(), data_collator=collate,
                             callbacks=[Timer()])
    trainer.train()
    model.save_pretrained(out / "a" / "model")
    processor.save_pretrained(out / "a" / "model")
    return log


def run_speechtune(mode: str, data: Path, run_dir: Path, target: float, budget: float, **kw) -> dict:
    from speechtune.train.recipe import TrainConfig, train

    # kw (from --set among others) may override the schedule too, e.g. epochs=4
    cfg = TrainConfig(**{**dict(model="tiny.en", epochs=30, warmup_ratio=1 / 30, stop_at=target, tensorboard=False),
                         **kw, "data": str(data), "out": str(run_dir), "mode": mode, "overwrite": True})
    # Budget: the loop's per-step hook stops the run once its training time passes the budget.
    from speechtune.train import loop
    t0 = time.time()

    def capped(step, state):
        if time.time() - t0 - sum(e.get("eval_s", 0) for e in state["evals"]) >= budget and not state["stopped"]:
            state["stopped"] = f"budget of {budget:.0f} s reached"
    loop.after_step = capped
    try:
        train(cfg)
    finally:
        loop.after_step = lambda step, state: None
    s = json.loads((run_dir / "training_summary.json").read_text())
    evals = [e for e in s["evals"] if e["step"] > 0]
    if not evals or evals[-1]["step"] != s["steps"]:  # stopped by the budget between evaluations
        from speechtune.models import load_model
        w = load_model(run_dir, device="cpu")
        evals.append({"step": s["steps"], "train_s": s["train_s"],
                      "valid": score(w.model, w.processor, w.path, eval_set(data / "valid.jsonl"))})
    return {"evals": evals, "train_s": s["train_s"], "steps": s["steps"], "samples_per_s": s["samples_per_s"],
            "base_valid": s["base"]["valid"], "stopped": s["stopped"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/train_speed")
    ap.add_argument("--only", nargs="+", default=["c", "d", "b", "a"])
    ap.add_argument("--target", type=float, default=0.02)
    ap.add_argument("--held-out", choices=["templates", "sentences"], default="templates",
                    help="what the held-out clips hold that training does not: 3 other sentence templates "
                         "(new everyday words too), or new drug-template pairs (new sentences, known words)")
    ap.add_argument("--budget-s", type=float, default=600, help="training-time cap for (a) and (b)")
    ap.add_argument("--budget-fast-s", type=float, default=900, help="training-time cap for (c) and (d)")
    ap.add_argument("--guard", help="general-speech manifest scored on each final model")
    ap.add_argument("--guard-clips", type=int, default=20, help="first N clips of --guard")
    ap.add_argument("--lr", nargs="+", default=[], metavar="KEY=LR",
                    help="learning rate for a speechtune run, e.g. c=1e-4 (default: the mode's own default)")
    ap.add_argument("--mix", help="general-speech manifest mixed into speechtune runs (train --mix); keep it "
                                  "apart from the --guard clips")
    ap.add_argument("--mix-ratio", type=float, default=0.2)
    ap.add_argument("--freeze-encoder-layers", type=int, default=3, help="bottom encoder layers frozen in (e), (f)")
    ap.add_argument("--precision", default="auto", help="speechtune runs' autocast (train --precision)")
    ap.add_argument("--a-precision", choices=["no", "bf16"], default="no", help="(a)'s autocast (Trainer bf16=True)")
    ap.add_argument("--seed", type=int, default=0, help="every run's seed (batch order, initialisation)")
    ap.add_argument("--set", nargs="+", default=[], metavar="OPTION=YAML",
                    help="any other train option for the speechtune runs, e.g. lora_dropout=0")
    args = ap.parse_args()
    out = Path(args.out)
    data = build_corpus(out / ("data" if args.held_out == "templates" else f"data-{args.held_out}"), args.held_out)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    modes = {"b": "full", "c": "freeze-encoder", "d": "lora", "e": "full", "f": "lora"}
    frozen = dict(freeze_encoder_layers=args.freeze_encoder_layers)
    extra = {"e": frozen, "f": dict(frozen, lora_encoder=True)}
    lrs = {k: float(v) for k, v in (x.split("=") for x in args.lr)}
    options = {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in args.set)}
    for key in args.only:
        t = time.time()
        if key == "a":
            r = run_hf_trainer(data, out, args.target, args.budget_s, args.seed, args.a_precision == "bf16")
            model_dir = out / "a" / "model"
            r["seed"], r["precision"] = args.seed, args.a_precision
        else:
            # --set comes last: it overrides the options that have flags of their own
            kw = {"lr": lrs.get(key), "mix": args.mix, "mix_ratio": args.mix_ratio, "precision": args.precision,
                  "seed": args.seed, **extra.get(key, {}), **options}
            r = run_speechtune(modes[key], data, out / key, args.target,
                               args.budget_s if key == "b" else args.budget_fast_s, **kw)
            r["lr"], r["precision"], r["seed"] = kw["lr"], kw["precision"], kw["seed"]
            r["options"] = options
            r["mix"] = kw["mix"] and {"manifest": kw["mix"], "ratio": kw["mix_ratio"]}
            r.update(extra.get(key, {}))
            model_dir = out / key
        r["wall_s"] = round(time.time() - t, 1)
        r["time_to_target_s"] = time_to(r["evals"], args.target)
        r["final_wer"] = r["evals"][-1]["valid"]
        r["s_per_step"] = round(r["evals"][-1]["train_s"] / max(r["evals"][-1]["step"], 1), 2)
        if args.guard:
            from speechtune.models import load_model
            w = load_model(model_dir, device="cpu")
            r["guard_wer"] = score(w.model, w.processor, w.path, eval_set(Path(args.guard), args.guard_clips))
        results[key] = r
        results_path.write_text(json.dumps(results, indent=2))
        print(key, json.dumps({k: v for k, v in r.items() if k != "evals"}), flush=True)
    if args.guard and "base" not in results:
        from speechtune.models import load_model
        w = load_model("tiny.en", device="cpu")
        results["base"] = {"guard_wer": score(w.model, w.processor, w.path, eval_set(Path(args.guard), args.guard_clips)),
                           "valid_wer": score(w.model, w.processor, w.path, eval_set(data / "valid.jsonl"))}
        results_path.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "evals"} for k, v in results.items()}, indent=2))
    print(report(results, args.target))


LABELS = {"a": "(a) HF Seq2SeqTrainer, full, 30 s padding", "b": "(b) speechtune full",
          "c": "(c) speechtune freeze-encoder (cached)", "d": "(d) speechtune lora (decoder, cached)",
          "e": "(e) speechtune full, bottom {n} encoder layers frozen (cached)",
          "f": "(f) speechtune lora, encoder too, bottom {n} layers frozen (cached)"}


def time_to(evals: list[dict], threshold: float):
    return next((e["train_s"] for e in evals if e["valid"] <= threshold), None)


def report(results: dict, target: float) -> str:
    """Training seconds until held-out WER first fell to each threshold, and the ratio to (a) at it."""
    base_a = results.get("a", {}).get("evals", [])
    # "to the same WER": when (a) stops short of the target, the lowest WER it reached is a rung of its own
    a_best = min((e["valid"] for e in base_a), default=None)
    thresholds = sorted({0.5, 0.3, 0.2, 0.1, 0.05, target} | ({a_best} if a_best and a_best > target else set()),
                        reverse=True)
    head = "| run | lr | s/step | " + " | ".join(f"s to <= {t:.1%}" + (" ((a)'s best)" if t == a_best else "")
                                                for t in thresholds) + " | final WER | guard WER |"
    lines = [head, "|---" * (len(thresholds) + 5) + "|"]
    for key in "abcdef":
        r = results.get(key)
        if not r:
            continue
        cells = []
        for t in thresholds:
            mine, theirs = time_to(r["evals"], t), time_to(base_a, t)
            cell = "-" if mine is None else f"{mine:.0f}"
            if mine is not None and key != "a" and base_a:
                cell += f" ({theirs / mine:.1f}x)" if theirs else f" (>{r_budget(base_a) / mine:.1f}x)"
            cells.append(cell)
        guard = f"{r['guard_wer']:.1%}" if "guard_wer" in r else "-"
        label = LABELS[key].format(n=r.get("freeze_encoder_layers")) + (f" + mix {r['mix']['ratio']:g}" if r.get("mix") else "")
        if r.get("precision") not in (None, "auto", "no"):
            label += f", {r['precision']}"
        label += "".join(f", {k}={v}" for k, v in (r.get("options") or {}).items())
        label += f", seed {r['seed']}" if r.get("seed") and "seed" not in (r.get("options") or {}) else ""
        lines.append(f"| {label} | {r.get('lr') or 'default'} | {r['s_per_step']} | " + " | ".join(cells)
                     + f" | {r['final_wer']:.1%} | {guard} |")
    if "base" in results:
        lines.append(f"\nbase tiny.en: held-out WER {results['base']['valid_wer']:.1%}, "
                     f"guard WER {results['base']['guard_wer']:.1%}")
    lines.append("'-': not reached within the run's budget; (Nx): (a)'s time to the same WER / this run's; "
                 "(>Nx): (a) never reached it, so its whole training time is the lower bound.")
    return "\n".join(lines)


def r_budget(evals: list[dict]) -> float:
    return evals[-1]["train_s"] if evals else float("nan")


if __name__ == "__main__":
    main()
