"""Deterministic train/valid/test splits that keep speakers apart and never leak a transcript.

Splitting works on units, never on single clips: a speaker (`--split-by speaker`) or a group of clips with
the same transcript and speaker (`--split-by utterance`), so a sentence read twice by one person cannot be
in train and in test. Units are shuffled with the seed and dealt into test, then valid, then train.
A split given by the input (a `split` column, train/ test/ subfolders) is kept as it is.
"""
from __future__ import annotations

import random
import re
import unicodedata

from ..errors import SpeechtuneError

SPLITS = ("train", "valid", "test")
SPLIT_PRIORITY = {"test": 0, "valid": 1, "train": 2}  # which copy survives a leak: evaluation data stays intact


def leak_key(text: str, speaker: str | None) -> tuple[str, str | None]:
    """Transcript compared without case, punctuation or spacing differences."""
    t = unicodedata.normalize("NFKC", text).casefold()
    t = re.sub(r"[^\w\s]", "", t)
    return " ".join(t.split()), speaker


def targets(n: int, valid_frac: float, test_frac: float) -> tuple[int, int]:
    """(n_valid, n_test): the fractions, but at least one each from 3 clips up, so a small set still has
    something to validate and test on."""
    if n < 3:
        return 0, 0
    n_test = max(1, round(test_frac * n)) if test_frac > 0 else 0
    n_valid = max(1, round(valid_frac * n)) if valid_frac > 0 else 0
    while n_test + n_valid >= n:  # leave train at least one clip
        if n_valid >= n_test and n_valid > 0:
            n_valid -= 1
        else:
            n_test -= 1
    return n_valid, n_test


def choose_mode(clips: list[dict], split_by: str) -> str:
    speakers = {c["speaker"] for c in clips}
    known = None not in speakers
    if split_by == "auto":
        return "speaker" if known and len(speakers) >= 3 else "utterance"
    if split_by == "speaker" and clips and not (known and len(speakers) >= 3):
        why = "some clips have no speaker" if not known else f"only {len(speakers)} speaker(s)"
        raise SpeechtuneError(f"--split-by speaker needs a known speaker for every clip and at least 3 speakers "
                              f"({why})", "use --split-by utterance, or add a speaker column")
    if split_by not in ("speaker", "utterance"):
        raise SpeechtuneError(f"unknown --split-by {split_by!r}", "use speaker, utterance or auto")
    return split_by


def assign(clips: list[dict], split_by: str = "auto", valid_frac: float = 0.1, test_frac: float = 0.1,
           seed: int = 0) -> tuple[list[str], str]:
    """A split name for each clip (dicts with text, speaker, split) and the mode used."""
    out = [c.get("split") for c in clips]
    free = [i for i, s in enumerate(out) if s is None]
    mode = choose_mode([clips[i] for i in free], split_by)
    # A speaker the input already placed stays in that split, so speakers remain disjoint.
    fixed_speaker = {}
    for c in clips:
        if c.get("split") and c["speaker"] is not None:
            fixed_speaker.setdefault(c["speaker"], set()).add(c["split"])
    units: dict = {}
    for i in free:
        c = clips[i]
        placed = fixed_speaker.get(c["speaker"]) if mode == "speaker" else None
        if placed and len(placed) == 1:
            out[i] = next(iter(placed))
            continue
        key = c["speaker"] if mode == "speaker" else leak_key(c["text"], c["speaker"])
        units.setdefault(key, []).append(i)
    order = sorted(units, key=lambda k: (min(units[k]), str(k)))  # input order: stable before shuffling
    random.Random(seed).shuffle(order)
    n = sum(len(units[k]) for k in order)
    n_valid, n_test = targets(n, valid_frac, test_frac) if len(order) >= 3 else (0, 0)
    filled = {"test": 0, "valid": 0, "train": 0}
    for k, key in enumerate(order):
        left = len(order) - k
        if filled["test"] < n_test and left > 1:
            split = "test"
        elif filled["valid"] < n_valid and (left > 1 or filled["train"]):
            split = "valid"
        else:
            split = "train"
        filled[split] += len(units[key])
        for i in units[key]:
            out[i] = split
    return out, mode


def find_leaks(clips: list[dict], splits: list[str]) -> list[int]:
    """Indices of clips whose transcript+speaker also sits in a split that matters more (test > valid >
    train); those are the copies to drop."""
    best: dict = {}
    for c, s in zip(clips, splits):
        k = leak_key(c["text"], c["speaker"])
        if k not in best or SPLIT_PRIORITY[s] < SPLIT_PRIORITY[best[k]]:
            best[k] = s
    return [i for i, (c, s) in enumerate(zip(clips, splits)) if best[leak_key(c["text"], c["speaker"])] != s]
