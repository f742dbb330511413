"""Does `train --no-speech-ratio` lower hallucination on audio without speech, and at what cost in domain WER?

Fine-tunes bundled tiny.en (offline) on a small synthesized drug-name corpus (train_speed.py's sentences: 60
training clips, 10 valid, 20 held-out test clips from templates training never hears) twice, the same in
everything but the ratio: 0 and 0.2 (12 non-speech clips with empty transcripts, data/nospeech.py's
`training_no_speech_clip`: noise, hum, tones, chords, clicks, near-silence, reversed training speech). Then the
base and both models decode, through the runtime and options `compare` uses (safeguards on, the default, and
off):

  the no-speech set   data.nospeech.no_speech_clips() with the test split's first clips reversed: the fixed
                      set training's evaluations and `compare` use, which training never saw
  the test split      domain WER

  python benchmarks/no_speech_ratio.py --out /tmp/no_speech_ratio [--ratios 0 0.2] [--lr 1e-4 --epochs 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import DRUGS, HELD, MORE, TRAIN, synth_split  # noqa: E402


# Clips per decoding call, as compare's default (batched and one-at-a-time texts are identical since the hf
# runtime's batched fallback was fixed; tests/test_runtimes.py checks it)
BATCH = 8


def build_corpus(d: Path) -> Path:
    if (d / "test.jsonl").is_file():
        return d
    train = [t.format(a=x) for x in DRUGS[:10] for t in TRAIN[:6]]
    held = [(HELD + MORE)[i % 5].format(a=DRUGS[i % 15], b=DRUGS[(i * 7 + 3) % 15]) for i in range(30)]
    synth_split(train, d, "train", seed=1)
    synth_split(held[:10], d, "valid", seed=2)
    synth_split(held[10:], d, "test", seed=3)
    return d


def run(data: Path, out: Path, ratio: float, lr: float, epochs: float) -> dict:
    from speechtune.train.recipe import TrainConfig, train

    if not (out / "training_summary.json").is_file():
        # evaluated at the end only (and the base model first): both runs keep their last step, so the
        # comparison is of the ratio alone, not of which checkpoint each run's evaluations chose; the no-speech
        # set is scored below, after training, for every model alike
        cfg = TrainConfig(model="tiny.en", data=str(data), out=str(out), mode="freeze-encoder", lr=lr,
                          epochs=epochs, no_speech_ratio=ratio, eval_every=10 ** 6, eval_batch_size=BATCH,
                          eval_no_speech=False, tensorboard=False, overwrite=True)
        train(cfg, progress=False)
    return json.loads((out / "training_summary.json").read_text())


def score(spec, test_rows: list[dict], no_speech) -> dict:
    """Test WER and what the model writes on the no-speech set, safeguards on and off."""
    from speechtune.evaluation import score_rows, transcribe_rows
    from speechtune.metrics.hallucination import no_speech_summary
    from speechtune.runtimes import DecodingOptions, load_runtime, transcribe_many

    runtime = load_runtime(spec, device="cpu")
    r = {}
    for way, on in (("on", True), ("off", False)):
        options = DecodingOptions(safeguards=on, batch_size=BATCH)
        run_ = transcribe_rows(runtime, test_rows, options, progress=False)
        s = score_rows(test_rows, run_["hyps"], ["en"] * len(test_rows), seconds=run_["seconds"])
        texts = transcribe_many(runtime, [c.wav for c in no_speech], options, ["en"] * len(no_speech))
        ns = no_speech_summary(texts)
        r[way] = {"test_wer": s["error_rate"], "test_loops": s["hallucination"]["loops"],
                  "no_speech_words": ns["words"], "no_speech_clips_with_text": ns["clips_with_text"],
                  "no_speech_clips": ns["clips"],
                  "written": {c.name: t[:80] for c, t in zip(no_speech, texts) if t.strip()}}
    return r


def report(results: dict) -> str:
    lines = ["| model | safeguards | test WER | no-speech words | no-speech clips with text |", "|---|---|---|---|---|"]
    for name, r in results.items():
        for way in ("on", "off"):
            x = r["scores"][way]
            lines.append(f"| {name} | {way} | {x['test_wer']:.1%} | {x['no_speech_words']} | "
                         f"{x['no_speech_clips_with_text']} of {x['no_speech_clips']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/no_speech_ratio")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.2])
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--epochs", type=float, default=3)
    args = ap.parse_args()

    from speechtune.data.nospeech import no_speech_clips
    from speechtune.manifest import read_manifest
    from speechtune.train.data import read_wav

    out = Path(args.out)
    data = build_corpus(out / "data")
    test_rows = read_manifest(data / "test.jsonl")
    no_speech = no_speech_clips(speech=[read_wav(r) for r in test_rows[:3]])
    results = {"tiny.en": {"scores": score("tiny.en", test_rows, no_speech)}}
    print("tiny.en", json.dumps(results["tiny.en"]), flush=True)
    for ratio in args.ratios:
        t = time.time()
        s = run(data, out / f"ratio-{ratio:g}", ratio, args.lr, args.epochs)
        name = f"ratio {ratio:g}"
        results[name] = {"clips": s["clips"], "best_step": s["best_step"], "train_wall_s": round(time.time() - t),
                         "evals": s["evals"], "scores": score(out / f"ratio-{ratio:g}", test_rows, no_speech)}
        print(name, json.dumps(results[name]), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    print(report(results))


if __name__ == "__main__":
    main()
