"""Signs that a model made text up rather than mis-heard it.

A fine-tune that overfits its domain tends to loop on domain words over general speech ("the <term> the
<term> the <term> ..."), to insert words nobody said, to go silent, or to run on far past the reference.
Each clip gets four flags; totals are counts of flagged clips plus the corpus insertion rate. Inputs are
the normalised units (words, or characters for CER languages) that scoring used.
"""
from __future__ import annotations

MAX_N = 8           # longest looping phrase looked for, in units
MIN_REPEATS = 3     # a phrase of 2+ units said 3 times in a row is a loop ...
MIN_REPEATS_1 = 4   # ... a single unit needs 4 ("very very very" is speech; "the the the the" is not)
LENGTH_RATIO = 2.0  # output longer than twice the reference


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


def clip_flags(ref: list[str], hyp: list[str], insertions: int = 0) -> dict:
    """Flags for one clip. `insertions` comes from the scorer's alignment."""
    return {
        "loop": has_loop(hyp, ref),
        "empty": bool(ref) and not hyp,
        "too_long": len(hyp) > LENGTH_RATIO * len(ref) if ref else bool(hyp),
        "insertion_rate": insertions / len(ref) if ref else float(insertions),
    }


def summarize(flags: list[dict], insertions: int, units: int) -> dict:
    """Totals over clips: counts of flagged clips and the corpus insertion rate (inserted / reference units)."""
    return {
        "loops": sum(f["loop"] for f in flags),
        "empty": sum(f["empty"] for f in flags),
        "too_long": sum(f["too_long"] for f in flags),
        "insertion_rate": insertions / units if units else float(insertions),
        "clips": len(flags),
    }
