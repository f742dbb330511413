"""Text normalisers applied to both reference and hypothesis before scoring.

English uses Whisper's normaliser (numbers to digits, British -> American spelling, fillers, punctuation),
taken from transformers with openai/whisper's spelling table as shipped in whisper-normalizer. Chinese folds
traditional characters to simplified (OpenCC), full-width forms to half-width, and drops punctuation and
spaces, so a model is not charged for writing 臺灣 for 台湾 or a full stop the reference lacks. Every other language gets a basic
normaliser: lower case, bracketed notes removed, punctuation and symbols to spaces.
"""
from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache

from ..errors import SpeechtuneError

# Scripts written without spaces between words: scored per character (CER), spaces ignored.
CER_LANGUAGES = frozenset({"zh", "yue", "ja", "ko", "th", "lo", "my", "km", "bo"})


@lru_cache(maxsize=1)
def _english_spellings() -> dict[str, str]:
    """Whisper's english.json (British -> American), as shipped in the whisper-normalizer package."""
    from importlib.resources import files

    try:
        return json.loads(files("whisper_normalizer").joinpath("normalizers/english.json").read_text("utf-8"))
    except (ImportError, OSError, ValueError) as e:
        raise SpeechtuneError(
            f"cannot load the English spelling table from whisper-normalizer: {e}",
            hint="pip install 'whisper-normalizer>=0.1'",
        ) from e


@lru_cache(maxsize=1)
def _english():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(_english_spellings())


@lru_cache(maxsize=1)
def _t2s():
    from opencc import OpenCC
    return OpenCC("t2s")


def normalize_english(text: str) -> str:
    return _english()(text)


_BRACKETS = re.compile(r"[<\[][^>\]]*[>\]]|\([^)]*\)")


def normalize_basic(text: str) -> str:
    """Lower case, bracketed notes ([noise], (laughs)) removed, punctuation and symbols to spaces.

    Unlike Whisper's BasicTextNormalizer this keeps combining marks: removing them breaks Thai, Hindi and
    other scripts whose vowels are marks.
    """
    s = _BRACKETS.sub(" ", unicodedata.normalize("NFKC", text).lower())
    s = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in s)
    return " ".join(s.split())


def normalize_chinese(text: str) -> str:
    """Traditional -> simplified, full-width -> half-width (NFKC), punctuation and spaces removed."""
    s = _t2s().convert(normalize_basic(text))
    return "".join(s.split())


def normalize(text: str, language: str | None = None) -> str:
    lang = (language or "").lower()
    if lang in ("en", "english"):
        return normalize_english(text)
    if lang in ("zh", "yue", "chinese", "cantonese"):
        return normalize_chinese(text)
    s = normalize_basic(text)
    return "".join(s.split()) if lang in CER_LANGUAGES else s


def guess_language(text: str) -> str | None:
    """A script-based guess for lines that carry no language, used only to pick WER or CER and the
    normaliser: 'zh' for Han, 'ja' when kana appear, 'ko' for Hangul, 'th' for Thai; otherwise None."""
    counts = {"han": 0, "kana": 0, "hangul": 0, "thai": 0, "other": 0}
    for c in text:
        if not c.isalpha():
            continue
        o = ord(c)
        if 0x3040 <= o <= 0x30FF:
            counts["kana"] += 1
        elif 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF:
            counts["han"] += 1
        elif 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF:
            counts["hangul"] += 1
        elif 0x0E00 <= o <= 0x0E7F:
            counts["thai"] += 1
        else:
            counts["other"] += 1
    total = sum(counts.values())
    if not total or counts["other"] >= total / 2:
        return None
    if counts["kana"]:
        return "ja"
    best = max(("han", "hangul", "thai"), key=counts.get)
    return {"han": "zh", "hangul": "ko", "thai": "th"}[best]
