"""Compare a base and a tuned model on the same clips: paired bootstrap CI, p-value, verdict and report.

Both models decode the same clips with the same settings. The verdict line reads like
`improved: WER 60.3% -> 0.4% (-59.9 pt, 95% CI -64.0 .. -55.1, p<0.001)`. With --guard, the same
comparison runs on a general-speech set and is flagged when the tuned model is worse there by more than
--guard-threshold points (fine-tuning on a narrow domain can make a model forget general speech).
Writes DIR/metrics.json, predictions.jsonl (+ guard_predictions.jsonl), report.html and comparison.png.
"""
from __future__ import annotations

import gc
import sys
from pathlib import Path

from .errors import SpeechtuneError
from .evaluate import add_decoding_arguments, decoding_options, decoding_record
from .evaluation import load_rows, model_name, score_language, score_rows, speed, transcribe_rows
from .files import write_atomic, write_json, write_jsonl
from .metrics.bootstrap import paired_bootstrap, verdict, verdict_line
from .runtimes import DecodingOptions, check_options, runtime_for, warm_up

CLIP_KEYS = ("hyp", "hyp_norm", "errors", "sub", "del", "ins", "error_rate", "loop", "empty", "too_long",
             "raw_loop", "compression_ratio", "chars_per_s", "repeated")


def add_arguments(p) -> None:
    p.add_argument("--base", required=True, help="the model before fine-tuning (spec: tiny.en | base | folder | ...)")
    p.add_argument("--tuned", required=True, help="the fine-tuned model (spec or model dir)")
    p.add_argument("--data", required=True, help="test manifest (.jsonl), the domain the model was tuned for")
    p.add_argument("--guard", help="general-speech manifest to check for forgetting (e.g. ../shared/realspeech/en.jsonl)")
    p.add_argument("--guard-threshold", type=float, default=1.0,
                   help="flag the guard when tuned is worse there by more than this many points (default: 1.0)")
    p.add_argument("--out", required=True, help="folder for metrics.json, report.html, comparison.png, predictions")
    add_decoding_arguments(p)
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: 2000; at least 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--fail-on-hallucination", action="store_true",
                   help="exit 1 when the tuned model loops on more clips than the base (test set or guard)")


def paired(rows: list[dict], base_run: dict, tuned_run: dict, languages: list, metric: str | None,
           n_resamples: int, seed: int) -> tuple[dict, list[dict]]:
    """Score both runs on the same rows; returns (summary, per-clip paired rows)."""
    sides = {}
    for side, run in (("base", base_run), ("tuned", tuned_run)):
        s = score_rows(rows, run["hyps"], languages, metric, run.get("seconds"))
        s.pop("clips_scored")
        sides[side] = (s, run)
    (sb, rb), (st, rt) = sides["base"], sides["tuned"]
    pb, pt = sb.pop("predictions"), st.pop("predictions")
    boot = paired_bootstrap([p["errors"] for p in pb], [p["errors"] for p in pt], [p["units"] for p in pb],
                            n_resamples=n_resamples, seed=seed)
    summary = {
        "clips": len(rows), "metric": sb["metric"],
        "base": {"model": rb["model"], **sb, **speed(rb, len(rows)), "ci95": boot["base_ci95"]},
        "tuned": {"model": rt["model"], **st, **speed(rt, len(rows)), "ci95": boot["tuned_ci95"]},
        "delta": boot["delta"], "ci95": boot["ci95"], "p_value": boot["p_value"],
        "n_resamples": n_resamples, "seed": seed, "verdict": verdict(boot),
        "verdict_line": verdict_line(sb["metric"], sb["error_rate"], st["error_rate"], boot)
        + loop_note(sb["hallucination"]["loops"], st["hallucination"]["loops"]),
        "new_loops": max(0, st["hallucination"]["loops"] - sb["hallucination"]["loops"]),
    }
    clips = []
    for b, t in zip(pb, pt):
        clips.append({k: b[k] for k in ("audio", "source", "line", "language", "ref", "ref_norm", "units")}
                     | {"base": {k: b[k] for k in CLIP_KEYS}, "tuned": {k: t[k] for k in CLIP_KEYS},
                        "change": t["errors"] - b["errors"]})
    return summary, clips


def loop_note(base_loops: int, tuned_loops: int) -> str:
    """What the verdict line adds when the tuned model loops on more clips than the base: an error rate can
    improve while a few clips run away (the normaliser may even fold the loop into a few tokens)."""
    if tuned_loops <= base_loops:
        return ""
    return f", but {tuned_loops} clip{'s' if tuned_loops != 1 else ''} loop (base {base_loops})"


def compare(base, tuned, data, guard=None, guard_threshold: float = 1.0, out: str | Path | None = None,
            options: DecodingOptions | None = None, metric: str | None = None, n_resamples: int = 2000,
            seed: int = 0, device: str | None = None, progress: bool = True) -> dict:
    """Compare two models (specs or loaded bundles) on a manifest. Returns the metrics.json dict plus
    `per_clip` and `guard_per_clip` (paired per-clip rows); writes the report files under `out` when given."""
    if n_resamples < 1000:
        raise SpeechtuneError(f"--resamples {n_resamples} is too few for a 95% interval", "use 1000 or more")
    options = options or DecodingOptions()
    language = options.language
    rows, where = load_rows(data)
    guard_rows, guard_where = load_rows(guard) if guard else (None, None)
    runs, multilingual = {}, []
    # One model in memory at a time: base fully, then tuned, each on the test set and the guard set.
    for side, spec in (("base", base), ("tuned", tuned)):
        runtime = runtime_for(spec, device)
        check_options(runtime, options)
        multilingual.append(runtime.multilingual)
        warm_up(runtime, options)
        runs[side] = {"test": transcribe_rows(runtime, rows, options, where, progress),
                      "guard": transcribe_rows(runtime, guard_rows, options, guard_where, progress)
                      if guard_rows else None}
        for r in runs[side].values():
            if r:
                r["model"] = model_name(spec, runtime)
        del runtime
        gc.collect()
    ml = any(multilingual)
    result, clips = paired(rows, runs["base"]["test"], runs["tuned"]["test"],
                           score_language(rows, language, ml), metric, n_resamples, seed)
    result = {"data": where, **result, "guard": None,
              "decoding": decoding_record(options)}
    guard_clips = None
    if guard_rows:
        g, guard_clips = paired(guard_rows, runs["base"]["guard"], runs["tuned"]["guard"],
                                score_language(guard_rows, language, ml), metric, n_resamples, seed)
        # Flag on the point estimate: the threshold is the forgetting a user accepts, in points.
        result["guard"] = {"data": guard_where, **g, "threshold": guard_threshold,
                           "flagged": 100 * g["delta"] > guard_threshold}
    if out is not None:
        write_report(Path(out), result, clips, guard_clips)
    return result | {"per_clip": clips, "guard_per_clip": guard_clips}


def write_report(out: Path, result: dict, clips: list[dict], guard_clips: list[dict] | None) -> None:
    from .report import html, plots

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", result)
    write_jsonl(out / "predictions.jsonl", clips)
    if guard_clips is not None:
        write_jsonl(out / "guard_predictions.jsonl", guard_clips)
    write_atomic(out / "comparison.png", plots.comparison_png(result, clips))
    write_atomic(out / "report.html", html.render(result, clips, guard_clips))


def guard_line(result: dict) -> str | None:
    g = result.get("guard")
    if not g:
        return None
    state = (f"FLAGGED: tuned is worse by more than {g['threshold']:.1f} pt on general speech"
             if g["flagged"] else f"ok (threshold {g['threshold']:.1f} pt)")
    return f"guard {g['data']}: {g['verdict_line']} -> {state}"


def main(args) -> int:
    r = compare(args.base, args.tuned, args.data, guard=args.guard, guard_threshold=args.guard_threshold,
                out=args.out, options=decoding_options(args), metric=args.metric, n_resamples=args.resamples,
                seed=args.seed, device=args.device)
    print(r["verdict_line"])
    if guard_line(r):
        print(guard_line(r))
    print(f"report: {Path(args.out) / 'report.html'} (metrics.json, comparison.png, predictions.jsonl beside it)")
    new_loops = r["new_loops"] + ((r.get("guard") or {}).get("new_loops") or 0)
    if args.fail_on_hallucination and new_loops:
        print(f"failing: the tuned model loops on {new_loops} more clip(s) than the base (--fail-on-hallucination)",
              file=sys.stderr)
        return 1
    return 0
