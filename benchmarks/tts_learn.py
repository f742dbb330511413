"""Does a trained voice sound more like its speaker, and how intelligible is it? Before and after training.

Runs `speechtune demo --task tts`'s pipeline (demo_tts.run_tts_demo: espeak-ng recordings of one speaker ->
prepare --task tts -> train fastspeech2-tiny on joe's phonemes -> compare) at a chosen size, then judges the
trained voice against two starting points on the same held-out sentences of the target:

  joe        the stock voice (what you have before training; what the demo's compare reports)
  untrained  the same fastspeech2-tiny before its first step (the weights training started from)

Each with speaker similarity, intelligibility (tiny.en's CER) and MCD, and their paired-bootstrap CIs
(tts.judge). Prints a markdown table for docs/benchmarks.md and writes OUT/tts_learn.json.

  python benchmarks/tts_learn.py --out /tmp/tts_learn [--train 120 --epochs 40] [--target f3]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def untrained_voice(voice_dir: Path, seed: int):
    """fastspeech2-tiny as train built it (same seed, so the same initial weights), with the trained voice's
    phonemes and feature statistics: what the voice sounded like at step 0."""
    from accelerate.utils import set_seed

    from speechtune.tts.fastspeech import FastSpeechVoice, new_model, read_folder
    meta, phonemes = read_folder(voice_dir)
    set_seed(seed)
    model = new_model(int(phonemes["num_symbols"]), "fastspeech2-tiny").eval()
    return FastSpeechVoice(model, phonemes, dict(meta, name="untrained"), path=None)


def row(name: str, m: dict) -> str:
    s, c, d = m["similarity"], m["cer"], m["mcd"]
    ci = lambda b, k=1: f"[{k * b['ci95'][0]:+.2f}, {k * b['ci95'][1]:+.2f}]"  # noqa: E731
    return (f"| {name} -> trained | {s['base']:.2f} -> {s['tuned']:.2f} {ci(s)} | "
            f"{100 * c['base']:.1f}% -> {100 * c['tuned']:.1f}% {ci(c, 100)} | "
            f"{d['base']:.1f} -> {d['tuned']:.1f} dB {ci(d)} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=120, help="domain sentences for training (plus everyday ones)")
    p.add_argument("--epochs", type=float, default=40)
    p.add_argument("--target", default="f3", help="espeak-ng variant that stands for the speaker")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from speechtune.demo_tts import run_tts_demo
    from speechtune.train.data import load_split
    from speechtune.tts import load_voice
    from speechtune.tts.judge import judge_voices
    out = Path(args.out)
    size = dict(n_train=args.train, n_valid=6, n_test=12, epochs=args.epochs, eval_every=100)
    t = time.time()
    demo = run_tts_demo(out, size, args.seed, target=args.target)
    wall = time.time() - t
    voice_dir = Path(demo["paths"]["voice"])
    test = load_split(out / "prepared" / "test.jsonl")
    trained = load_voice(voice_dir)
    results = {"joe": {k: demo[k] for k in ("similarity", "cer", "wer", "mcd")},
               "untrained": judge_voices(untrained_voice(voice_dir, args.seed), trained, test, out / "vs_untrained")}
    summary = json.loads((voice_dir / "training_summary.json").read_text())
    record = {"args": vars(args), "demo_seconds": round(wall, 1), "train_clips": summary.get("clips"),
              "steps": summary.get("steps"), "results": {k: {m: v[m] for m in ("similarity", "cer", "wer", "mcd")}
                                                         for k, v in results.items()}}
    (out / "tts_learn.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"\n{len(test)} held-out sentences of espeak-ng {args.target}; demo pipeline {wall:.0f} s\n")
    print("| comparison | speaker similarity (95% CI of the change) | intelligibility CER | MCD |")
    print("|---|---|---|---|")
    for name, m in results.items():
        print(row(name, m))


if __name__ == "__main__":
    main()
