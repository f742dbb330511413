"""Term recall: did the model learn to write the domain's words?

A fine-tune can lower the WER on everyday words and still miss the terms it was tuned for. For each term
(one word or several; a Chinese term is a run of characters), over clips:

    occurrences = times the term appears in the clip's normalised reference
    hits        = times it appears in the normalised hypothesis, capped at occurrences
    recall      = sum(hits) / sum(occurrences)

Both texts and the term go through the clip's language normaliser (normalize.py), so case and punctuation
never decide a match. In space-delimited languages a term matches whole words only ("gin" is not in
"engine"); in languages scored per character (CER_LANGUAGES) it matches as characters, spaces ignored.
Occurrences do not overlap, as str.count counts them. Base against tuned is a paired bootstrap over clips
(bootstrap.py, misses as errors, occurrences as units).

Without a list of terms, `unknown_terms` chooses them: the reference words the base model never wrote in
any of its hypotheses, the domain words it did not know.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import SpeechtuneError
from .bootstrap import paired_bootstrap, verdict
from .normalize import CER_LANGUAGES, normalize

# Shorter reference words ("a", "of", "is", "3") are rarely what a domain adds: not chosen as terms.
MIN_TERM_CHARS = 3


def read_terms(path: str | Path) -> list[str]:
    """The terms of a UTF-8 file, one a line, in order, each once; blank lines and # comments skipped. A
    missing, unreadable or empty file is a one-line error naming it."""
    p = Path(path)
    hint = "write one term per line (UTF-8; # starts a comment)"
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SpeechtuneError(f"terms file not found: {p}", hint) from None
    except UnicodeDecodeError as e:
        raise SpeechtuneError(f"{p}: not UTF-8 (byte {e.start})", "re-save the file as UTF-8") from None
    except OSError as e:
        raise SpeechtuneError(f"{p}: cannot read the terms file ({e.strerror})", hint) from None
    terms = list(dict.fromkeys(t.strip() for t in lines if t.strip() and not t.lstrip().startswith("#")))
    if not terms:
        raise SpeechtuneError(f"{p}: no terms in the file", hint)
    return terms


def by_characters(language: str | None) -> bool:
    """Whether text in `language` is matched per character (scripts written without spaces)."""
    return (language or "").lower() in CER_LANGUAGES


def count(term: str, text: str, characters: bool = False) -> int:
    """Non-overlapping occurrences of normalised `term` in normalised `text`: as whole words, or with
    `characters` as characters with spaces ignored. An empty term occurs nowhere."""
    if characters:
        term, text = "".join(term.split()), "".join(text.split())
        return text.count(term) if term else 0
    want, words = term.split(), text.split()
    n, i = 0, 0
    while want and i + len(want) <= len(words):
        if words[i:i + len(want)] == want:
            n, i = n + 1, i + len(want)
        else:
            i += 1
    return n


def clip_counts(terms: list[str], ref: str, hyp: str, language: str | None) -> list[tuple[int, int]]:
    """(occurrences, hits) of each term in one clip: raw reference and hypothesis, the clip's language."""
    chars = by_characters(language)
    ref_n, hyp_n = normalize(ref, language), normalize(hyp, language)
    out = []
    for term in terms:
        t = normalize(term, language)
        occurrences = count(t, ref_n, chars)
        out.append((occurrences, min(count(t, hyp_n, chars), occurrences)))
    return out


def term_counts(terms: list[str], refs: list[str], hyps: list[str],
                languages: list[str | None]) -> list[list[tuple[int, int]]]:
    """clip_counts for every clip: [clip][term] -> (occurrences, hits)."""
    if not len(refs) == len(hyps) == len(languages):
        raise ValueError(f"{len(refs)} references, {len(hyps)} hypotheses, {len(languages)} languages")
    return [clip_counts(terms, r, h, lang) for r, h, lang in zip(refs, hyps, languages)]


def recall(counts: list[list[tuple[int, int]]]) -> float | None:
    """sum(hits) / sum(occurrences) over every clip and term; None when no term occurs."""
    occurrences = sum(o for clip in counts for o, _ in clip)
    return sum(h for clip in counts for _, h in clip) / occurrences if occurrences else None


def unknown_terms(refs: list[str], base_hyps: list[str], languages: list[str | None],
                  min_chars: int = MIN_TERM_CHARS) -> list[str]:
    """The terms to measure when none are given: units of the normalised references that the base model
    wrote in none of its normalised hypotheses, in order of first appearance. Units are words of at least
    `min_chars` characters, or single characters in languages matched per character."""
    written: set[str] = set()
    for hyp, lang in zip(base_hyps, languages):
        written.update(_units(normalize(hyp, lang), lang))
    terms: dict[str, None] = {}
    for ref, lang in zip(refs, languages):
        for unit in _units(normalize(ref, lang), lang):
            if unit not in written and (by_characters(lang) or len(unit) >= min_chars):
                terms[unit] = None
    return list(terms)


def _units(text: str, language: str | None) -> list[str]:
    return [c for c in text if not c.isspace()] if by_characters(language) else text.split()


def compare_terms(terms: list[str], refs: list[str], base_hyps: list[str], tuned_hyps: list[str],
                  languages: list[str | None], n_resamples: int = 2000, seed: int = 0) -> dict:
    """Term recall of two systems on the same clips: `terms`, `occurrences`, each side's `recall` (None when
    no term occurs in the references) and its 95% interval, `delta` (tuned - base recall) with its interval,
    `p_value` and `verdict` ("improved": recall went up; from the paired bootstrap over the `clips` where a
    term occurs; these are None when none does), and `per_term`: term,
    occurrences, base and tuned hits and recall."""
    base = term_counts(terms, refs, base_hyps, languages)
    tuned = term_counts(terms, refs, tuned_hyps, languages)
    occurrences = [sum(o for o, _ in clip) for clip in base]
    out = {"terms": len(terms), "occurrences": sum(occurrences), "base": {"recall": recall(base)},
           "tuned": {"recall": recall(tuned)}, "delta": None, "ci95": None, "p_value": None, "verdict": None,
           "per_term": _per_term(terms, base, tuned)}
    used = [i for i, o in enumerate(occurrences) if o]
    if not used:
        return out
    misses = [[occurrences[i] - sum(h for _, h in counts[i]) for i in used] for counts in (base, tuned)]
    boot = paired_bootstrap(misses[0], misses[1], [occurrences[i] for i in used], n_resamples, seed)
    # the bootstrap measures the miss rate, 1 - recall: its intervals turn around (0.0 - x: no -0.0)
    out["base"]["ci95"], out["tuned"]["ci95"] = ([1.0 - ci[1], 1.0 - ci[0]] for ci in (boot["base_ci95"],
                                                                                     boot["tuned_ci95"]))
    out.update(delta=0.0 - boot["delta"], ci95=[0.0 - boot["ci95"][1], 0.0 - boot["ci95"][0]],
               p_value=boot["p_value"], n_resamples=n_resamples, clips=len(used), verdict=verdict(boot))
    return out


def _per_term(terms: list[str], base, tuned) -> list[dict]:
    rows = []
    for k, term in enumerate(terms):
        occurrences = sum(clip[k][0] for clip in base)
        hits = [sum(clip[k][1] for clip in side) for side in (base, tuned)]
        rows.append({"term": term, "occurrences": occurrences, "base_hits": hits[0], "tuned_hits": hits[1],
                     "base_recall": hits[0] / occurrences if occurrences else None,
                     "tuned_recall": hits[1] / occurrences if occurrences else None})
    return rows
