"""An over-trained Whisper loops; the decode-time safeguards catch it. Loops, WER and decoding time, off vs on.

Bundled tiny.en is trained far past what is sensible (freeze-encoder, --lr 1e-3, 30 epochs, 36 synthesized
sentences of infrastructure jargon), as issue 18 tells, so that it loops. Then the base and the over-trained
model decode a held-out test split (new templates, the same terms) and real general English speech
(../shared/realspeech/en.jsonl) twice each, through the same runtime and options `compare` uses:
`DecodingOptions(safeguards=False)` (one greedy decoding, the text as it comes) and `safeguards=True` (the
default: temperature fallback with openai-whisper's thresholds). Per set: WER, clips flagged `loop` (word loop
or raw-text loop) and `raw_loop` (gzip ratio, characters per second, repeated runs of the raw text), clips
whose every temperature failed, and the decoding seconds.

The cost of the safeguards on clips that do not loop (issue 18's goal: under 10%) is timed apart: the clips
that neither decoding flags are decoded --repeats times each way, the two ways alternating, and the median
of each way is compared.

  python benchmarks/overtrain.py --out /tmp/overtrain [--general ../shared/realspeech/en.jsonl] [--general-clips 24]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import synth_split  # noqa: E402

# One clip per decoding call, in training's evaluations too: at the time of writing, a batch of clips of
# different lengths decoded with the safeguards on crashed in transformers' Whisper generate (TypeError in
# _maybe_reduce_batch: runtimes/hf.py's fallback decodes from encoder outputs, without input_features, and
# transformers drops a finished clip from input_features). One clip a call also times each clip alone.
BATCH = 1
TERMS = ["Envoy", "Grafana", "Kubernetes", "Prometheus", "Terraform", "Kafka", "Nginx", "Redis", "Jenkins",
         "Ansible", "Istio", "PostgreSQL"]
TRAIN = ["restart {a} before you upgrade {b}", "the {a} pods are waiting on {b}", "roll back {a} and page {b}"]
HELD = ["scale {a} down and drain {b}", "{a} lost its connection to {b} again", "check the {a} logs after {b}"]


def build_corpus(d: Path) -> Path:
    """36 training clips (3 templates x 12 terms, paired), 6 valid and 12 test clips from 3 other templates."""
    if (d / "test.jsonl").is_file():
        return d
    n = len(TERMS)
    train = [t.format(a=TERMS[i], b=TERMS[(i + 1 + k) % n]) for k, t in enumerate(TRAIN) for i in range(n)]
    held = [HELD[i % 3].format(a=TERMS[i % n], b=TERMS[(i * 5 + 2) % n]) for i in range(18)]
    synth_split(train, d, "train", seed=11)
    synth_split(held[:6], d, "valid", seed=12)
    synth_split(held[6:], d, "test", seed=13)
    return d


def overtrain(data: Path, out: Path, lr: float, epochs: float) -> Path:
    from speechtune.train.recipe import TrainConfig, train

    if (out / "training_summary.json").is_file():
        return out
    # one evaluation at the end (besides the base model's): this run is meant to end badly, not to be chosen
    cfg = TrainConfig(model="tiny.en", data=str(data), out=str(out), mode="freeze-encoder", lr=lr, epochs=epochs,
                      warmup_ratio=0.05, eval_every=10 ** 6, eval_batch_size=BATCH, tensorboard=False,
                      overwrite=True)
    train(cfg, progress=False)
    return out


def decode(runtime, rows: list[dict], safeguards: bool) -> dict:
    """One pass over `rows`: WER, flag counts, seconds, and the clips' flags."""
    from speechtune.evaluation import score_rows, transcribe_rows
    from speechtune.runtimes import DecodingOptions

    run = transcribe_rows(runtime, rows, DecodingOptions(safeguards=safeguards, batch_size=BATCH), progress=False)
    s = score_rows(rows, run["hyps"], ["en"] * len(rows), seconds=run["seconds"])
    preds = s["predictions"]
    return {"wer": s["error_rate"], "loops": s["hallucination"]["loops"],
            "raw_loops": s["hallucination"]["raw_loops"], "decode_s": round(run["processing_s"], 2),
            "flagged": [p["loop"] or p["raw_loop"] for p in preds], "hyps": run["hyps"]}


def timing(runtime, rows: list[dict], repeats: int) -> dict:
    """Median seconds to decode `rows` without and with the safeguards, the two alternating."""
    from speechtune.evaluation import transcribe_rows
    from speechtune.runtimes import DecodingOptions

    seconds = {False: [], True: []}
    for k in range(repeats):
        for on in ((False, True) if k % 2 == 0 else (True, False)):
            t = time.perf_counter()
            transcribe_rows(runtime, rows, DecodingOptions(safeguards=on, batch_size=BATCH), progress=False)
            seconds[on].append(time.perf_counter() - t)
    off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
    return {"clips": len(rows), "off_s": round(off, 3), "on_s": round(on, 3), "overhead": round(on / off - 1, 4),
            "runs_off": [round(x, 3) for x in seconds[False]], "runs_on": [round(x, 3) for x in seconds[True]]}


def report(results: dict) -> str:
    lines = ["| model | set | safeguards | WER | loop clips | raw_loop clips | decode s |",
             "|---|---|---|---|---|---|---|"]
    for model, sets in results["decodes"].items():
        for name, ways in sets.items():
            for way, r in ways.items():
                lines.append(f"| {model} | {name} ({r['clips']} clips) | {way} | {r['wer']:.1%} | {r['loops']} | "
                             f"{r['raw_loops']} | {r['decode_s']:.1f} |")
    t = results["timing"]
    lines += ["", "| clips that loop in neither decoding (over-trained model, test + general) | safeguards off | "
              "on | overhead |", "|---|---|---|---|",
              f"| {t['clips']} clips, median of {len(t['runs_off'])} runs | {t['off_s']:.2f} s | {t['on_s']:.2f} s | "
              f"{t['overhead']:+.1%} |"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/overtrain")
    ap.add_argument("--general", default=str(Path(__file__).parents[1] / ".." / "shared" / "realspeech" / "en.jsonl"))
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=float, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--general-clips", type=int, default=24, help="first N clips of --general")
    args = ap.parse_args()

    from speechtune.manifest import read_manifest
    from speechtune.runtimes import load_runtime

    out = Path(args.out)
    data = build_corpus(out / "data")
    t = time.time()
    model = overtrain(data, out / "model", args.lr, args.epochs)
    summary = json.loads((model / "training_summary.json").read_text())
    print(f"trained in {time.time() - t:.0f} s: {summary['steps']} steps, valid WER {summary['base']['valid']:.1%} "
          f"-> {summary['best']['valid']:.1%}", flush=True)
    sets = {"test": read_manifest(data / "test.jsonl"), "general": read_manifest(args.general)[:args.general_clips]}
    results = {"config": {"lr": args.lr, "epochs": args.epochs, "steps": summary["steps"],
                          "train_clips": summary["clips"]["train"]}, "decodes": {}}
    clean = []
    for name, spec in (("tiny.en", "tiny.en"), ("over-trained", model)):
        runtime = load_runtime(spec, device="cpu")
        decode(runtime, sets["test"][:2], False)  # warm-up: first-call setup is not decoding time
        results["decodes"][name] = {}
        for set_name, rows in sets.items():
            ways = {way: decode(runtime, rows, on) for way, on in (("off", False), ("on", True))}
            results["decodes"][name][set_name] = {way: {"clips": len(rows), **{k: v for k, v in r.items()
                                                                               if k not in ("flagged", "hyps")}}
                                                  for way, r in ways.items()}
            results["decodes"][name][set_name]["looping_texts"] = {
                "off": [h[:120] for h, f in zip(ways["off"]["hyps"], ways["off"]["flagged"]) if f][:5]}
            if name == "over-trained":
                clean += [r for r, a, b in zip(rows, ways["off"]["flagged"], ways["on"]["flagged"]) if not (a or b)]
            print(name, set_name, json.dumps(results["decodes"][name][set_name]), flush=True)
        if name == "over-trained":
            results["timing"] = timing(runtime, clean, args.repeats)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    for sets_ in results["decodes"].values():
        for ways in sets_.values():
            ways.pop("looping_texts")
    print(report(results))


if __name__ == "__main__":
    main()
