"""Transcribe a test manifest with one model and score it: WER/CER, error types, hallucinations, speed.

Writes DIR/predictions.jsonl (one line per clip: reference, hypothesis, normalised forms, its errors and
flags) and DIR/metrics.json. Rates are fractions (0.05 = 5%). RTF is transcription seconds / audio
seconds, timed around the model only (audio decoding and scoring excluded), after one warm-up call.
"""
from __future__ import annotations

from pathlib import Path

from .config import add_dataclass_args, build_config
from .evaluation import load_rows, model_name, score_language, score_rows, speed, transcribe_rows
from .files import write_json, write_jsonl
from .metrics.score import METRICS
from .runtimes import SAFEGUARD_FIELDS, DecodingOptions, check_options, runtime_for, warm_up

# the decoding options a scoring command takes: greedy or beams, one language, batched
FLAGS = ("language", "beam_size", "batch_size", *SAFEGUARD_FIELDS)


def add_arguments(p) -> None:
    p.add_argument("--model", required=True,
                   help="model spec: tiny.en | base | HF folder | hub id | .pt; or an export folder (CT2, ONNX)")
    p.add_argument("--data", required=True, help="test manifest (.jsonl with audio and text per line)")
    p.add_argument("--out", required=True, help="folder for predictions.jsonl and metrics.json")
    add_decoding_arguments(p)


def add_decoding_arguments(p) -> None:
    add_dataclass_args(p, DecodingOptions, skip=tuple(f for f in DecodingOptions.__dataclass_fields__
                                                      if f not in FLAGS))
    p.add_argument("--metric", choices=METRICS, help="force WER or CER (default: CER for zh/ja/ko/th, else WER)")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")


def decoding_options(args) -> DecodingOptions:
    return build_config(DecodingOptions, None, args)


def evaluate(model_or_spec, manifest, options: DecodingOptions | None = None, metric: str | None = None,
             device: str | None = None, out: str | Path | None = None, progress: bool = True) -> dict:
    """Score one model on a manifest (path or rows from read_manifest). Returns the metrics dict, with
    per-clip `predictions`; writes predictions.jsonl and metrics.json under `out` when given."""
    options = options or DecodingOptions()
    rows, where = load_rows(manifest)
    runtime = runtime_for(model_or_spec, device)
    check_options(runtime, options)
    warm_up(runtime, options)
    run = transcribe_rows(runtime, rows, options, where, progress)
    langs = score_language(rows, options.language, runtime.multilingual)
    result = {"model": model_name(model_or_spec, runtime), "data": where, "clips": len(rows),
              **score_rows(rows, run["hyps"], langs, metric, run["seconds"]), **speed(run, len(rows)),
              "decoding": decoding_record(options)}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "predictions.jsonl", result["predictions"])
        write_json(out / "metrics.json", {k: v for k, v in result.items() if k != "predictions"})
    return result


def decoding_record(options: DecodingOptions) -> dict:
    """What metrics.json says of the decoding: the keys it has always had, and the safeguards' settings."""
    return {"batch_size": options.batch_size, "num_beams": options.beam_size, "language": options.language,
            **{f: getattr(options, f) for f in SAFEGUARD_FIELDS}}


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def summary_line(m: dict) -> str:
    h = m["hallucination"]
    unit = "words" if m["metric"] == "wer" else "chars"
    rtf = "n/a" if m["rtf"] is None else f"{m['rtf']:.3f}"
    cps = "n/a" if m["clips_per_s"] is None else f"{m['clips_per_s']:.2f}"
    return (f"{m['metric'].upper()} {pct(m['error_rate'])} (S {m['sub']}, D {m['del']}, I {m['ins']} over "
            f"{m['units']} {unit}; raw {pct(m['raw']['error_rate'])}) | RTF {rtf}, {cps} clips/s | "
            f"hallucinations: {h['loops']} loops, {h['empty']} empty, {h['too_long']} over 2x length")


def main(args) -> int:
    m = evaluate(args.model, args.data, decoding_options(args), metric=args.metric, device=args.device,
                 out=args.out)
    print(f"{args.model} on {args.data} ({m['clips']} clips): {summary_line(m)}")
    print(f"wrote {Path(args.out) / 'predictions.jsonl'} and {Path(args.out) / 'metrics.json'}")
    return 0
