"""Which anchor against forgetting works: domain vs general-speech WER, epoch by epoch, for five settings.

Fine-tunes bundled tiny.en on train_speed.py's drug-name corpus for a fixed number of epochs with
`speechtune train --guard`, so every epoch is scored on both the held-out domain clips and real general
English. The general-speech manifest is split in two: its first --guard-clips clips are the guard, the rest
are what `--mix` may train on (never the same clip).

  none       freeze-encoder, lr 1e-4 (the setting the training issue saw forget: 7.8% -> 49% general WER)
  lower-lr   freeze-encoder, lr 2e-5 (the default)
  lora       lora, r 32, lr 5e-4 (the default), decoder only
  mix        as `none`, plus --mix of the other general clips at --mix-ratio 0.2
  specaug    as `none`, plus SpecAugment (time masks, p 0.05; the encoder runs every step, no cache)

  python benchmarks/forgetting.py --out /tmp/forgetting --general ../shared/realspeech/en.jsonl [--only none mix]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import build_corpus  # noqa: E402

RUNS = {
    "none": dict(lr=1e-4),
    "lower-lr": dict(lr=2e-5),
    "lora": dict(mode="lora"),
    "mix": dict(lr=1e-4, mix_ratio=0.2),
    "specaug": dict(lr=1e-4, spec_augment=True),
}


def split_general(general: Path, n_guard: int, out: Path) -> tuple[Path, Path]:
    """guard.jsonl (first n_guard clips) and mix.jsonl (the rest); read_manifest makes audio paths absolute."""
    from speechtune.files import write_jsonl
    from speechtune.manifest import read_manifest

    rows = read_manifest(general)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "guard.jsonl", rows[:n_guard])
    write_jsonl(out / "mix.jsonl", rows[n_guard:])
    return out / "guard.jsonl", out / "mix.jsonl"


def run(name: str, data: Path, guard: Path, mix: Path, out: Path, epochs: float) -> dict:
    from speechtune.train.recipe import TrainConfig, train

    kw = dict(RUNS[name])
    mode = kw.pop("mode", "freeze-encoder")
    if "mix_ratio" in kw:
        kw["mix"] = str(mix)
    cfg = TrainConfig(model="tiny.en", data=str(data), out=str(out / name), mode=mode, epochs=epochs,
                      guard=str(guard), overwrite=True, tensorboard=False, **kw)
    t = time.time()
    train(cfg, progress=False)
    s = json.loads((out / name / "training_summary.json").read_text())
    return {"mode": mode, "lr": s["config"]["lr"], "evals": s["evals"], "best_step": s["best_step"],
            "clips": s.get("clips"), "train_s": s["train_s"], "wall_s": round(time.time() - t, 1),
            "guard_note": s.get("guard_note")}


def report(results: dict) -> str:
    lines = ["| anchor | mode, lr | domain WER by epoch | general WER by epoch | kept step: domain / general |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        ev = r["evals"]
        by = {e["step"]: e for e in ev}
        kept = by.get(r["best_step"], ev[0])
        lines.append(f"| {name} | {r['mode']}, {r['lr']:g} | " + " -> ".join(f"{e['valid']:.1%}" for e in ev)
                     + " | " + " -> ".join(f"{e['guard']:.1%}" for e in ev)
                     + f" | {r['best_step']}: {kept['valid']:.1%} / {kept['guard']:.1%} |")
    lines.append("First figure of each row: the base model (step 0); then one evaluation per epoch. 'kept' is the "
                 "checkpoint `train` chose: best domain WER among those within 1 pt of the base on the guard (when none "
                 "was, the best domain WER, and the training summary says so).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/forgetting")
    ap.add_argument("--general", required=True, help="general-speech manifest (e.g. ../shared/realspeech/en.jsonl)")
    ap.add_argument("--guard-clips", type=int, default=20)
    ap.add_argument("--epochs", type=float, default=4)
    ap.add_argument("--only", nargs="+", default=list(RUNS), choices=list(RUNS))
    args = ap.parse_args()
    out = Path(args.out)
    data = build_corpus(out / "data")
    guard, mix = split_general(Path(args.general), args.guard_clips, out)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in args.only:
        results[name] = run(name, data, guard, mix, out, args.epochs)
        results_path.write_text(json.dumps(results, indent=2))
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "evals"}), flush=True)
    print(report({k: results[k] for k in RUNS if k in results}))


if __name__ == "__main__":
    main()
