#!/usr/bin/env bash
# The compare verdict for bundled tiny.en vs tiny.en fine-tuned on a synthesized domain set, with the
# forgetting guard on real human speech (../shared/realspeech/en.jsonl, 44 clips).
#   bash benchmarks/compare_realspeech_guard.sh [OUT_DIR] [small|full]
# Step 1 is `speechtune demo` (synth -> prepare -> freeze-encoder train -> compare on a synthesized guard
# -> export -> serve); step 2 re-runs compare with the real-speech guard. Results: docs/benchmarks.md.
set -euo pipefail
out=${1:-runs/compare-realspeech}
size=${2:-small}
guard=$(realpath "$(dirname "$0")/../../shared/realspeech/en.jsonl")
[ -f "$guard" ] || { echo "needs ../shared/realspeech/en.jsonl beside the checkout" >&2; exit 2; }
mkdir -p "$out"
time speechtune demo --lang en --size "$size" --out "$out/demo"
time speechtune compare --base tiny.en --tuned "$out/demo/model" --data "$out/demo/prepared/test.jsonl" \
  --guard "$guard" --out "$out/compare"
