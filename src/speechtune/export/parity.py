"""Parity check: the exported model's error rate on a test set must stay within a margin of PyTorch's.

Both sides decode greedily (one beam, no sampling), batched, clips > 30 s through each runtime's long-form
path, and are scored with the same normaliser and metric (`speechtune.metrics`: WER, or CER for zh/ja/...).
RTF is model seconds / audio seconds, after one untimed warm-up call, audio decoding excluded.
"""
from __future__ import annotations

import time

import numpy as np

from ..audio import SAMPLE_RATE
from ..errors import SpeechtuneError

WINDOW = 30 * SAMPLE_RATE


def run_exported(runtime, wavs: list[np.ndarray], languages: list[str | None], batch_size: int = 8) -> dict:
    """Hypotheses from an exported runtime (CT2Whisper or OnnxWhisper) and the seconds it spent."""
    runtime.transcribe_batch([np.zeros(SAMPLE_RATE, dtype=np.float32)])  # warm-up, untimed
    hyps = [""] * len(wavs)
    t0 = time.perf_counter()
    for lang in dict.fromkeys(languages):
        idx = sorted((i for i, x in enumerate(languages) if x == lang), key=lambda i: len(wavs[i]))
        short = [i for i in idx if len(wavs[i]) <= WINDOW]
        for start in range(0, len(short), batch_size):
            part = short[start:start + batch_size]
            for i, r in zip(part, runtime.transcribe_batch([wavs[i] for i in part], language=lang)):
                hyps[i] = r["text"]
        for i in (i for i in idx if len(wavs[i]) > WINDOW):
            hyps[i] = runtime.transcribe(wavs[i], language=lang)["text"]
    return {"hyps": hyps, "processing_s": time.perf_counter() - t0}


def check(model_dir, runtime, data, max_wer_delta: float = 0.5, language: str | None = None,
          batch_size: int = 8, progress: bool = True) -> dict:
    """Score PyTorch (HF generate, fp32) and the export on `data`; raise SpeechtuneError with both figures
    when they differ by more than `max_wer_delta` percentage points."""
    from .. import evaluate
    from ..models import load_model

    rows, where = evaluate.load_rows(data)
    whisper = load_model(model_dir, device="cpu")
    torch_run = evaluate.transcribe_rows(whisper, rows, language, batch_size, 1, where, progress)
    langs = evaluate.score_language(rows, language, whisper.multilingual)
    torch_score = evaluate.score_rows(rows, torch_run["hyps"], langs)
    del whisper

    wavs = [evaluate._load_clip(r, where) for r in rows]
    decode_lang = [r.get("language") or language for r in rows]
    if not runtime.multilingual:
        decode_lang = [None if lang in (None, "en") else lang for lang in decode_lang]
    export_run = run_exported(runtime, wavs, decode_lang, batch_size)
    export_run["audio_s"] = torch_run["audio_s"]
    export_score = evaluate.score_rows(rows, export_run["hyps"], langs, metric=torch_score["metric"])

    metric = torch_score["metric"]
    delta = 100 * (export_score["error_rate"] - torch_score["error_rate"])
    result = {
        "data": where, "clips": len(rows), "metric": metric, "max_delta_pt": max_wer_delta,
        "pytorch": _figures(torch_score, torch_run), "exported": _figures(export_score, export_run),
        "delta_pt": round(delta, 3), "passed": abs(delta) <= max_wer_delta,
        "changed_clips": sum(a != b for a, b in zip(torch_run["hyps"], export_run["hyps"])),
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
