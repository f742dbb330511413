"""Word and character error rates with jiwer, per clip and over a corpus.

Corpus rates are total errors / total reference units (not a mean of per-clip rates), the way WER is
reported everywhere. Both WER and CER are always computed; `metric` says which one a verdict uses:
CER for languages written without spaces (zh, ja, ko, th, ...), WER otherwise, or whatever the caller
forces. Raw figures score the text as given (only whitespace collapsed), to show what normalisation hid.
"""
from __future__ import annotations

from collections import Counter

import jiwer

from .normalize import CER_LANGUAGES, guess_language, normalize

METRICS = ("wer", "cer")


def metric_for(language: str | None, metric: str | None = None) -> str:
    if metric:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        return metric
    return "cer" if (language or "").lower() in CER_LANGUAGES else "wer"


def words(text: str) -> list[str]:
    return text.split()


def chars(text: str) -> list[str]:
    return [c for c in text if not c.isspace()]


def counts(refs: list[list[str]], hyps: list[list[str]]) -> list[dict]:
    """Per pair: sub, del, ins, hits, units (reference length) and the jiwer alignment chunks."""
    # jiwer splits on spaces; units never contain spaces (words are split on them, chars skip them).
    out = jiwer.process_words([" ".join(r) for r in refs], [" ".join(h) for h in hyps])
    rows = []
    for ref, chunks in zip(out.references, out.alignments):
        c = Counter()
        for ch in chunks:
            n = (ch.hyp_end_idx - ch.hyp_start_idx) if ch.type == "insert" else (ch.ref_end_idx - ch.ref_start_idx)
            c[ch.type] += n
        rows.append({"sub": c["substitute"], "del": c["delete"], "ins": c["insert"], "hits": c["equal"],
                     "units": len(ref), "alignment": chunks})
    return rows


def _rate(errors: int, units: int) -> float:
    # An empty reference has no denominator; count each inserted unit as one error, as jiwer does.
    return errors / units if units else float(errors)


def _totals(rows: list[dict]) -> dict:
    t = {k: sum(r[k] for r in rows) for k in ("sub", "del", "ins", "hits", "units")}
    t["errors"] = t["sub"] + t["del"] + t["ins"]
    t["rate"] = _rate(t["errors"], t["units"])
    return t


def _languages(refs: list[str], language) -> list[str | None]:
    if language is None or isinstance(language, str):
        return [language or guess_language(r) for r in refs]
    if len(language) != len(refs):
        raise ValueError(f"{len(language)} languages for {len(refs)} references")
    return [lang or guess_language(r) for lang, r in zip(language, refs)]


def corpus_metric(languages: list[str | None], metric: str | None = None) -> str:
    """The metric for a whole set: forced, else the one the most common language calls for."""
    if metric:
        return metric_for(None, metric)
    common = Counter(languages).most_common(1)
    return metric_for(common[0][0] if common else None)


def score_corpus(refs: list[str], hyps: list[str], language=None, metric: str | None = None) -> dict:
    """Score hypotheses against references.

    language: one code for every clip, a list with one per clip, or None (guessed from the script).
    Returns corpus figures (`error_rate` in `metric`, `wer`, `cer`, `sub`/`del`/`ins`/`hits`/`units` in
    `metric` units, `raw`) and `clips`: one dict per clip with normalised texts and its counts.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    langs = _languages(refs, language)
    metric = corpus_metric(langs, metric)
    ref_n = [normalize(r, lang) for r, lang in zip(refs, langs)]
    hyp_n = [normalize(h, lang) for h, lang in zip(hyps, langs)]
    split = {"wer": words, "cer": chars}
    norm = {m: counts([f(r) for r in ref_n], [f(h) for h in hyp_n]) for m, f in split.items()}
    # Raw text keeps case and punctuation; only whitespace is collapsed.
    raw = {m: counts([f(r) for r in refs], [f(h) for h in hyps]) for m, f in split.items()}

    clips = []
    for i, lang in enumerate(langs):
        c = norm[metric][i]
        errors = c["sub"] + c["del"] + c["ins"]
        clips.append({
            "language": lang, "ref_norm": ref_n[i], "hyp_norm": hyp_n[i],
            "units": c["units"], "hyp_units": c["units"] - c["del"] + c["ins"],
            "errors": errors, "sub": c["sub"], "del": c["del"], "ins": c["ins"],
            "error_rate": _rate(errors, c["units"]),
            "raw_errors": sum(raw[metric][i][k] for k in ("sub", "del", "ins")), "raw_units": raw[metric][i]["units"],
        })
    main, tr = _totals(norm[metric]), {m: _totals(raw[m]) for m in METRICS}
    return {
        "metric": metric, "clips_scored": len(refs),
        "error_rate": main["rate"], "wer": _totals(norm["wer"])["rate"], "cer": _totals(norm["cer"])["rate"],
        "sub": main["sub"], "del": main["del"], "ins": main["ins"], "hits": main["hits"], "units": main["units"],
        "raw": {"error_rate": tr[metric]["rate"], "wer": tr["wer"]["rate"], "cer": tr["cer"]["rate"],
                "sub": tr[metric]["sub"], "del": tr[metric]["del"], "ins": tr[metric]["ins"]},
        "clips": clips,
    }


def alignment(ref_units: list[str], hyp_units: list[str]) -> list[tuple[str, list[str], list[str]]]:
    """(op, ref_part, hyp_part) runs for a diff view; op in equal/substitute/delete/insert."""
    (row,) = counts([ref_units], [hyp_units])
    return [(ch.type, ref_units[ch.ref_start_idx:ch.ref_end_idx], hyp_units[ch.hyp_start_idx:ch.hyp_end_idx])
            for ch in row["alignment"]]
