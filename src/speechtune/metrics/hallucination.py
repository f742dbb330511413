"""Signs that a model made text up rather than mis-heard it.

A fine-tune that overfits its domain tends to loop on domain words over general speech ("the <term> the
<term> the <term> ..."), to insert words nobody said, to go silent, or to run on far past the reference.
Each clip gets flags on the normalised units scoring used (words, or characters for CER languages) and on
the raw hypothesis as the model wrote it (`raw_flags`): a normaliser can fold `Restart n.14.14.13.14...`
(673 characters) into a couple of tokens, which the word flags then miss. Totals are counts of flagged
clips plus the corpus insertion rate.

On clips that hold no speech (data/nospeech.py) any word is made up: `no_speech_summary` counts them.
"""
from __future__ import annotations

import re
import zlib

from .normalize import guess_language

MAX_N = 8           # longest looping phrase looked for, in units
MIN_REPEATS = 3     # a phrase of 2+ units said 3 times in a row is a loop ...
MIN_REPEATS_1 = 4   # ... a single unit needs 4 ("very very very" is speech; "the the the the" is not)
LENGTH_RATIO = 2.0  # output longer than twice the reference
COMPRESSION_RATIO = 2.4  # gzip ratio above which a text is mostly repetition: openai-whisper's threshold
MIN_COMPRESSIBLE_CHARS = 40  # shorter texts compress badly whatever they say
MAX_CHARS_PER_S = 30.0  # no speech runs faster (English is about 15 characters a second, Mandarin 5); loops do
MIN_FAST_CHARS = 20  # a short clip with a few words is not "fast"
# scripts written without spaces between words, where each character counts as one word written
CHARACTER_SCRIPTS = frozenset({"zh", "ja", "ko"})
# a unit of 2-5 characters repeated 5 times back to back, or one of 6-60 repeated 3 times
_REPEAT = re.compile(r"(.{2,5}?)\1{4,}|(.{6,60}?)\2{2,}", re.DOTALL)


def longest_loop(units: list[str], max_n: int = MAX_N) -> tuple[tuple[str, ...], int]:
    """The n-gram with the most back-to-back repeats (ties: the longer phrase) and that repeat count."""
    best, best_reps = (), 1
    for n in range(1, min(max_n, len(units) // 2) + 1):
        i = 0
        while i + n <= len(units):
            gram, reps = units[i:i + n], 1
            while units[i + reps * n:i + (reps + 1) * n] == gram:
                reps += 1
            if reps > best_reps or (reps == best_reps and reps > 1 and n > len(best)):
                best, best_reps = tuple(gram), reps
            i += n * (reps - 1) + 1 if reps > 1 else 1
    return best, best_reps


def _repeats_in(units: list[str], gram: tuple[str, ...]) -> int:
    n, most, i = len(gram), 0, 0
    while i + n <= len(units):
        reps = 0
        while tuple(units[i + reps * n:i + (reps + 1) * n]) == gram:
            reps += 1
        most, i = max(most, reps), i + max(reps * n, 1)
    return most


def has_loop(hyp: list[str], ref: list[str] | None = None) -> bool:
    """A phrase repeated back to back past the thresholds, more times than the reference says it."""
    gram, reps = longest_loop(hyp)
    if reps < (MIN_REPEATS_1 if len(gram) == 1 else MIN_REPEATS):
        return False
    return ref is None or reps > _repeats_in(ref, gram)


def compression_ratio(text: str) -> float:
    """len(text) / len(gzip(text)) in UTF-8 bytes, as openai-whisper computes it."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def repeated_run(text: str) -> str | None:
    """The first run of one piece of text repeated back to back past the thresholds, or None."""
    m = _REPEAT.search(text.strip() + " ")  # a loop's last repeat often lacks the space the others end with
    return m.group(0) if m else None


def raw_flags(text: str, seconds: float | None) -> dict:
    """Signs on the raw hypothesis: its gzip compression ratio, characters per second of audio, and a
    character-level repeated run; `raw_loop` when any passes its threshold."""
    ratio = compression_ratio(text)
    cps = len(text) / seconds if seconds else None
    run = repeated_run(text)
    return {"compression_ratio": round(ratio, 3), "chars_per_s": None if cps is None else round(cps, 2),
            "repeated": run[:80] if run else None,
            "raw_loop": bool(run) or (len(text) >= MIN_COMPRESSIBLE_CHARS and ratio > COMPRESSION_RATIO)
            or (cps is not None and len(text) >= MIN_FAST_CHARS and cps > MAX_CHARS_PER_S)}


def clip_flags(ref: list[str], hyp: list[str], insertions: int = 0, raw: str | None = None,
               seconds: float | None = None) -> dict:
    """Flags for one clip. `insertions` comes from the scorer's alignment; `raw` is the hypothesis as the model
    wrote it and `seconds` the clip's length. `loop` is set by the units or by the raw text."""
    flags = raw_flags(raw, seconds) if raw is not None else {"raw_loop": False}
    return {
        "loop": has_loop(hyp, ref) or flags["raw_loop"],
        "empty": bool(ref) and not hyp,
        "too_long": len(hyp) > LENGTH_RATIO * len(ref) if ref else bool(hyp),
        "insertion_rate": insertions / len(ref) if ref else float(insertions),
        **flags,
    }


def summarize(flags: list[dict], insertions: int, units: int) -> dict:
    """Totals over clips: counts of flagged clips and the corpus insertion rate (inserted / reference units)."""
    return {
        "loops": sum(f["loop"] for f in flags),
        "raw_loops": sum(f.get("raw_loop", False) for f in flags),
        "empty": sum(f["empty"] for f in flags),
        "too_long": sum(f["too_long"] for f in flags),
        "insertion_rate": insertions / units if units else float(insertions),
        "clips": len(flags),
    }


def written_words(text: str) -> int:
    """Words in a hypothesis as written: whitespace-separated pieces holding a letter or digit (" ." is not
    a word), each Han, kana or Hangul character counted as one (those scripts run words together)."""
    n = 0
    for piece in text.split():
        letters = [c for c in piece if c.isalnum()]
        if letters:
            n += len(letters) if guess_language(piece) in CHARACTER_SCRIPTS else 1
    return n


def no_speech_summary(texts: list[str]) -> dict:
    """What a model wrote on clips that hold no speech, one text per clip: `clips`, `clips_with_text` (at
    least one word) and `words` (written_words, summed). Every word there is a hallucination."""
    counts = [written_words(t) for t in texts]
    return {"clips": len(counts), "clips_with_text": sum(1 for c in counts if c), "words": sum(counts)}
