"""Base vs fine-tuned for a real CTC model from the hub, on the user's prepared data: the check for a machine
with network (no CTC weights ship offline; benchmarks/ctc_learn.py is the offline proof that the loop learns).

Trains `--model` with `speechtune train` (its defaults: freeze-feature-encoder; a model without a CTC head
gets a character vocabulary from the transcripts), then runs `speechtune compare` base vs tuned on the test
split and prints the verdict. With a fresh head the base model cannot transcribe at all, so its score is
100% by construction: compare against another tuned run instead.

  python benchmarks/ctc_real.py --model facebook/wav2vec2-base-960h --data prepared/ --out /tmp/ctc_real \\
      [--mode lora] [--epochs 3] [--guard general.jsonl]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="hub id or folder of a CTC model")
    ap.add_argument("--data", type=Path, required=True, help="a `speechtune prepare` folder (test.jsonl scored)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mode", default=None)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--guard", help="general-speech manifest for the forgetting guard")
    args = ap.parse_args()
    from speechtune.compare import compare
    from speechtune.evaluate import evaluate, summary_line
    from speechtune.models.ctc import has_tokenizer, resolve_ctc
    from speechtune.train.config import TrainConfig
    from speechtune.train.recipe import train

    tuned = train(TrainConfig(model=args.model, data=str(args.data), out=str(args.out / "model"), mode=args.mode,
                              epochs=args.epochs, guard=args.guard))
    if not has_tokenizer(resolve_ctc(args.model)):  # a pretrained encoder: nothing to compare against
        m = evaluate(tuned, args.data / "test.jsonl")
        print(f"{args.model} has no CTC head, so no base score; tuned: {summary_line(m)}")
        return 0
    result = compare(args.model, tuned, args.data / "test.jsonl", guard=args.guard, out=args.out / "report")
    print(result["verdict"])
    print(json.dumps({k: result[k] for k in ("base", "tuned", "delta", "ci95")}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
