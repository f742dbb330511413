"""Fine-tune the bundled piper voice (joe, a male US voice) towards a real speaker, as far as a CPU allows.

The target is LJSpeech's reader (one woman, public domain), the clips of ../shared/realspeech/en.jsonl whose
names start with "ljspeech-". The story is the CLI's: `speechtune prepare --task tts --voice joe` on them,
`speechtune train --model joe` (piper-tts's trainer, in its own process), `speechtune compare joe MODEL_DIR`
on the held-out test sentences (speaker similarity, intelligibility CER, MCD, each with a paired-bootstrap
CI). Prints a markdown row for docs/benchmarks.md and writes OUT/piper_learn.json.

  python benchmarks/piper_learn.py --out /tmp/piper_learn [--steps 120] [--batch-size 4]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "realspeech"


def speechtune(*args: str, constants: dict | None = None) -> float:
    """Run a speechtune command; `constants`: families.piper constants to set first (the study's knobs)."""
    t0 = time.time()
    code = ("import sys, speechtune.families.piper as p\n"
            f"for k, v in {constants or {}!r}.items(): setattr(p, k, v)\n"
            "from speechtune.cli import main\nsys.exit(main(sys.argv[1:]))")
    subprocess.run([sys.executable, "-c", code, *args], check=True)
    return time.time() - t0


def target_manifest(out: Path) -> Path:
    rows = [json.loads(line) for line in (SHARED / "en.jsonl").read_text().splitlines()]
    rows = [{"audio": str(SHARED / r["audio"]), "text": r["text"]} for r in rows
            if Path(r["audio"]).name.startswith("ljspeech-")]
    path = out / "ljspeech.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--evals", type=int, default=4, help="evaluations (checkpoints judged) over the run")
    p.add_argument("--warmup-fraction", type=float, help="families.piper.WARMUP_FRACTION for this run")
    p.add_argument("--fresh-lr-scale", type=float, help="families.piper.FRESH_LR_SCALE for this run")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    seconds["prepare"] = speechtune("prepare", str(target_manifest(out)), "--out", str(out / "prepared"), "--task",
                                    "tts", "--voice", "joe", "--valid-frac", "0.15", "--test-frac", "0.2")
    seconds["train"] = speechtune("train", "--model", "joe", "--data", str(out / "prepared"), "--out",
                                  str(out / "voice"), "--max-steps", str(args.steps), "--batch-size",
                                  str(args.batch_size), "--eval-every", str(max(1, args.steps // args.evals)),
                                  constants={k: v for k, v in (("WARMUP_FRACTION", args.warmup_fraction),
                                                               ("FRESH_LR_SCALE", args.fresh_lr_scale)) if v is not None})
    seconds["compare"] = speechtune("compare", "--base", "joe", "--tuned", str(out / "voice"), "--data", str(out / "prepared"),
                                    "--out", str(out / "compare"))
    summary = json.loads((out / "voice" / "training_summary.json").read_text())
    m = json.loads((out / "compare" / "metrics.json").read_text())
    ci = lambda b, k=1: f"[{k * b['ci95'][0]:+.2f}, {k * b['ci95'][1]:+.2f}]"  # noqa: E731
    print(f"| joe -> LJSpeech, {args.steps} steps of {args.batch_size} | "
          f"{m['similarity']['base']:.2f} -> {m['similarity']['tuned']:.2f} {ci(m['similarity'])} | "
          f"{100 * m['cer']['base']:.1f}% -> {100 * m['cer']['tuned']:.1f}% {ci(m['cer'], 100)} | "
          f"{m['mcd']['base']:.1f} -> {m['mcd']['tuned']:.1f} dB {ci(m['mcd'])} | "
          f"{seconds['train'] / 60:.0f} min |")
    print(m["verdict_line"])
    (out / "piper_learn.json").write_text(json.dumps({"args": vars(args), "seconds": seconds,
                                                      "training": summary, "compare": m}, indent=2) + "\n")


if __name__ == "__main__":
    main()
