"""Parity check: the exported model's error rate on a test set must stay within a margin of PyTorch's.

Both sides decode with the same `DecodingOptions` (greedy, batched, clips > 30 s through each runtime's
long-form path) through the evaluation component, and are scored with the same normaliser and metric (WER,
or CER for zh/ja/...). RTF is model seconds / audio seconds, after one untimed warm-up call, audio decoding
excluded.
"""
from __future__ import annotations

from ..errors import SpeechtuneError
from ..evaluation import load_rows, score_language, score_rows, transcribe_rows
from ..runtimes import DecodingOptions, load_runtime, warm_up


def check(model_dir, runtime, data, max_wer_delta: float, options: DecodingOptions | None = None,
          progress: bool = True) -> dict:
    """Score PyTorch (HF generate, fp32, on the CPU) and the export `runtime` on `data`; raise ParityError
    with both figures when they differ by more than `max_wer_delta` percentage points."""
    options = (options or DecodingOptions()).replace(beam_size=1, temperature=0.0, prompt=None)
    rows, where = load_rows(data)
    runs, scores = {}, {}
    for side in ("pytorch", "exported"):
        rt = load_runtime(model_dir, device="cpu") if side == "pytorch" else runtime
        warm_up(rt, options)
        runs[side] = transcribe_rows(rt, rows, options, where, progress)
        langs = score_language(rows, options.language, rt.multilingual)
        metric = scores["pytorch"]["metric"] if scores else None
        scores[side] = score_rows(rows, runs[side]["hyps"], langs, metric=metric, seconds=runs[side]["seconds"])
        del rt
    metric = scores["pytorch"]["metric"]
    delta = 100 * (scores["exported"]["error_rate"] - scores["pytorch"]["error_rate"])
    result = {
        "data": where, "clips": len(rows), "metric": metric, "max_delta_pt": max_wer_delta,
        **{side: _figures(scores[side], runs[side]) for side in ("pytorch", "exported")},
        "delta_pt": round(delta, 3), "passed": abs(delta) <= max_wer_delta,
        "changed_clips": sum(a != b for a, b in zip(runs["pytorch"]["hyps"], runs["exported"]["hyps"])),
    }
    if not result["passed"]:
        p, e = result["pytorch"], result["exported"]
        raise ParityError(
            f"parity check failed on {where}: exported {metric.upper()} {100 * e['error_rate']:.2f}% vs PyTorch "
            f"{100 * p['error_rate']:.2f}% ({delta:+.2f} pt, allowed ±{max_wer_delta} pt)",
            "inspect the export, try a wider --quantization (int8_float32, float32) or raise --max-wer-delta",
            result)
    return result


def _figures(score: dict, run: dict) -> dict:
    a = run["audio_s"]
    return {"error_rate": score["error_rate"], "wer": score["wer"], "cer": score["cer"],
            "rtf": run["processing_s"] / a if a else None, "processing_s": round(run["processing_s"], 3),
            "audio_s": round(a, 3)}


class ParityError(SpeechtuneError):
    def __init__(self, message: str, hint: str, result: dict):
        super().__init__(message, hint)
        self.result = result
