"""The evaluation component: clips of a manifest decoded by any runtime, scored, timed.

What `evaluate`, `compare`, export's parity check and train's evaluations share: rows and their audio are
loaded and checked the same way, decoded through `runtimes.transcribe_many` with one `DecodingOptions`, and
scored with the same normaliser and metric, so every figure speechtune prints is comparable with the others.
Rates are fractions (0.05 = 5%); RTF is model seconds / audio seconds, timed around the model only.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, AudioError, load_audio
from .errors import SpeechtuneError
from .manifest import read_manifest
from .metrics import hallucination
from .metrics.normalize import guess_language
from .metrics.score import chars, score_corpus, words
from .runtimes import DecodingOptions, transcribe_many

CHUNK = 64  # clips decoded into memory at a time, so a large test set never sits in RAM whole


def load_rows(manifest) -> tuple[list[dict], str]:
    """Rows (a manifest path, or rows from read_manifest) and a name for messages. Missing audio is reported
    now, not after minutes of decoding."""
    rows, where = (read_manifest(manifest), str(manifest)) if isinstance(manifest, (str, os.PathLike)) \
        else (list(manifest), "<rows>")
    missing = [r for r in rows if not Path(r["audio"]).is_file()]
    if missing:
        r = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SpeechtuneError(f"{where}:{r.get('line', '?')}: file not found: {r['audio']}{more}",
                              "relative audio paths resolve against the manifest's folder")
    return rows, where


def load_clip(row: dict, where: str) -> np.ndarray:
    """A row's audio at 16 kHz; an undecodable clip is a one-line error naming the manifest line."""
    try:
        return load_audio(row["audio"])
    except AudioError as e:
        raise SpeechtuneError(f"{where}:{row.get('line', '?')}: {e.detail}: {row['audio']}",
                              "fix or drop that line (speechtune prepare checks every clip)") from None


def transcribe_rows(runtime, rows: list[dict], options: DecodingOptions, where: str = "<rows>",
                    progress: bool = True) -> dict:
    """Hypotheses for every row, in order, each clip's length (`seconds`) and the seconds the model spent on
    them (`processing_s`). Each clip is decoded in
    the language its line gives, else the options'; audio is loaded CHUNK clips at a time."""
    hyps: list[str] = []
    durations: list[float] = []
    seconds = audio_s = 0.0
    bar = _bar(len(rows), progress)
    for start in range(0, len(rows), CHUNK):
        part = rows[start:start + CHUNK]
        wavs = [load_clip(r, where) for r in part]
        durations += [len(w) / SAMPLE_RATE for w in wavs]
        audio_s += sum(len(w) for w in wavs) / SAMPLE_RATE
        t0 = time.perf_counter()
        hyps += transcribe_many(runtime, wavs, options, [r.get("language") or options.language for r in part])
        seconds += time.perf_counter() - t0
        bar.update(len(part))
    bar.close()
    return {"hyps": hyps, "seconds": durations, "processing_s": seconds, "audio_s": audio_s}


def _bar(total: int, progress: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc="transcribing", unit="clip", leave=False, disable=not progress,
                file=sys.stderr)


def score_language(rows: list[dict], language: str | None, multilingual: bool) -> list[str | None]:
    """The language each clip is scored in: its line's, else --language, else English for an English-only
    model, else a guess from the reference's script (None: the basic normaliser, WER)."""
    fallback = language or (None if multilingual else "en")
    return [r.get("language") or fallback or guess_language(r["text"]) for r in rows]


def score_rows(rows: list[dict], hyps: list[str], languages: list[str | None], metric: str | None = None,
               seconds: list[float] | None = None) -> dict:
    """Corpus figures plus `predictions` (one dict per clip) and hallucination counts. Each clip's flags look
    at its normalised units and at the raw hypothesis (`seconds`: each clip's length, for characters per
    second; from transcribe_rows)."""
    s = score_corpus([r["text"] for r in rows], hyps, language=languages, metric=metric)
    split = words if s["metric"] == "wer" else chars
    flags = []
    preds = []
    for i, (row, hyp, c) in enumerate(zip(rows, hyps, s.pop("clips"))):
        f = hallucination.clip_flags(split(c["ref_norm"]), split(c["hyp_norm"]), c["ins"], raw=hyp,
                                     seconds=seconds[i] if seconds else row.get("duration"))
        flags.append(f)
        preds.append({"audio": row["audio"], "source": row.get("source"), "line": row.get("line"),
                      "ref": row["text"], "hyp": hyp, **c, **f})
    s["hallucination"] = hallucination.summarize(flags, s["ins"], s["units"])
    s["predictions"] = preds
    return s


def speed(run: dict, clips: int) -> dict:
    t, a = run["processing_s"], run["audio_s"]
    return {"rtf": t / a if a else None, "clips_per_s": clips / t if t else None,
            "audio_s": round(a, 3), "processing_s": round(t, 3)}


def model_name(spec, runtime) -> str:
    return str(spec) if isinstance(spec, (str, os.PathLike)) else str(runtime.path)
