"""Judge a tuned voice against its base on held-out sentences of the target speaker: `speechtune compare`
when --base and --tuned are voices.

    result = judge_voices(load_voice("joe"), load_voice("my-voice/"), "prepared/", out="cmp/")
    print(result["verdict_line"])
    # voice: more like the speaker (similarity 0.61 -> 0.83, +0.22 [0.18, 0.26]); intelligibility CER 3.1% ->
    #   9.8% (worse); MCD 11.2 -> 8.1 dB (better)

Each voice reads the text of every test sentence (speed 1, seed 0). Per sentence and voice:
- similarity: cosine of the clip's speaker embedding to the target speaker's centroid, the mean of the test
  recordings' embeddings renormalised (metrics.voice); higher is better.
- intelligibility: WER and CER (metrics.score, the normaliser recognition uses) of what the bundled Whisper
  hears in the clip against the text: tiny.en when every sentence is English, the multilingual base
  otherwise; lower is better. CER leads the verdict: a short sentence has few words to count.
- MCD: mel cepstral distortion in dB against the target's own recording of the sentence (DTW-aligned);
  lower is better. Sentences where either voice has no audible audio are left out of it.
Each metric gets a paired bootstrap over sentences (metrics.bootstrap.paired_bootstrap: errors over reference
units for WER/CER, values over units of 1, i.e. means, for similarity and MCD), and a change (better / worse /
same) only when its 95% interval leaves 0 out. A sentence is flagged for a voice when its audio is
near-silent or far too long or short for its text; the report lists flagged sentences first.

With `out`, writes OUT/metrics.json, predictions.jsonl (one line per sentence), report.html, the audio it
plays (audio/NNN-{reference,base,tuned}.wav) and the mel spectrograms it shows (spectrograms/NNN-*.png).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE, resample, write_wav
from ..errors import SpeechtuneError
from ..evaluation import load_clip, load_rows
from ..metrics.bootstrap import paired_bootstrap, verdict
from ..metrics.normalize import guess_language
from ..metrics.score import score_corpus
from ..metrics.voice import (cosine, dnsmos, frame_levels, mel_cepstral_distortion, speaker_embeddings,
                             trim_silence)
from . import hearing

SIDES = ("base", "tuned")
# metric -> whether higher is better; the order of metrics.json and the report's table
METRICS = {"similarity": True, "cer": False, "wer": False, "mcd": False, "dnsmos": True}
# The smallest difference called better or worse, however sure the bootstrap is: a voice re-exported through
# piper's trainer with its inference weights untouched differs from the original by float rounding, and its
# MCD (16.7 dB both, a constant offset of a few thousandths) came out "worse" with a CI clear of 0.
MIN_CHANGE = {"similarity": 0.01, "cer": 0.005, "wer": 0.005, "mcd": 0.1, "dnsmos": 0.05}
MIN_RESAMPLES = 1000      # as recognition's compare: fewer make a 95% interval's ends noise
# A voice's loudest 10 ms frame under this is near-silent: speech peaks around -20 to -6 dBFS.
NEAR_SILENT_DBFS = -40.0
# Sane speaking time per letter or character of the text, its pauses trimmed: fast English reads ~0.05 s a
# letter, slow Mandarin ~0.3 s a character. Outside this, the voice skipped or dragged out the sentence.
SECONDS_PER_CHAR = (0.02, 0.4)


def judge_voices(base_voice, tuned_voice, data, out: str | Path | None = None, whisper: str = "auto",
                 language: str | None = None, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Compare two voices (objects with `name`, `sample_rate`, `synthesize(text, speed, seed)`) on the test
    sentences of `data`: a prepared folder (its test.jsonl), a manifest or rows from read_manifest, each with
    "audio" (the target speaker's recording) and "text". `whisper`: "auto" or any model spec that hears the
    clips; `language`: for lines that give none (else guessed from the script; Latin script is English).
    Returns the metrics.json dict plus `per_sentence` (predictions.jsonl's rows); writes the report under
    `out` when given. User mistakes (no sentences, a missing recording, too few resamples) are
    SpeechtuneErrors, raised before anything is synthesized."""
    if n_resamples < MIN_RESAMPLES:
        raise SpeechtuneError(f"--resamples {n_resamples} is too few for a 95% interval",
                              f"use {MIN_RESAMPLES} or more")
    rows, where = test_rows(data)
    languages = sentence_languages(rows, language)
    refs = [load_clip(r, where) for r in rows]   # 16 kHz, like every clip below
    voices = dict(zip(SIDES, (base_voice, tuned_voice)))
    native = {side: synthesize_all(v, rows, where) for side, v in voices.items()}
    clips = {side: [resample(w, voices[side].sample_rate, SAMPLE_RATE) for w in native[side]] for side in SIDES}
    # Speaker embeddings (torch) before Whisper (CTranslate2): on a busy CPU, torch ran 10x slower in a
    # process where a CTranslate2 model had come and gone.
    similarity = similarities(refs, clips)
    whisper_name, hyps = hear_both(whisper, clips, languages)
    per = {side: measure(refs, clips[side], [r["text"] for r in rows], hyps[side], languages)
           | {"similarity": similarity[side]} for side in SIDES}
    result = summarize(where, voices, per, whisper_name, n_resamples, seed)
    sentences = sentence_rows(rows, languages, voices, clips, hyps, per)
    if out is not None:
        write_report(Path(out), result, sentences, refs, voices, native)
    return result | {"per_sentence": sentences}


def test_rows(data) -> tuple[list[dict], str]:
    """The test sentences of a prepared folder, a manifest or rows, and a name for messages. Each needs its
    text and its recording; missing recordings are reported now, not after minutes of synthesis."""
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():
        data = Path(data) / "test.jsonl"
        if not data.is_file():
            raise SpeechtuneError(f"{data}: no test split", "run `speechtune prepare` on the speaker's "
                                  "recordings, or pass --data a manifest (.jsonl)")
    rows, where = load_rows(data)
    if not rows:
        raise SpeechtuneError(f"{where}: no test sentences", "the test split needs lines with \"audio\" and \"text\"")
    for r in rows:
        if not r.get("text", "").strip():
            raise SpeechtuneError(f"{where}:{r.get('line', '?')}: empty \"text\"",
                                  "each test line needs the sentence its recording says")
    return rows, where


def sentence_languages(rows: list[dict], language: str | None) -> list[str]:
    """Each sentence's language: its line's, else `language`, else a guess from its script (zh, ja, ko, th),
    else English."""
    return [r.get("language") or language or guess_language(r["text"]) or "en" for r in rows]


def synthesize_all(voice, rows: list[dict], where: str) -> list[np.ndarray]:
    """Every sentence read by `voice` at its own rate; a sentence it refuses is an error naming the line."""
    wavs = []
    for r in rows:
        try:
            wavs.append(np.asarray(voice.synthesize(r["text"], speed=1.0, seed=0), np.float32).reshape(-1))
        except SpeechtuneError as e:
            raise SpeechtuneError(f"{where}:{r.get('line', '?')}: voice {voice.name}: {e.message}", e.hint) from None
    return wavs


def hear_both(whisper: str, clips: dict[str, list[np.ndarray]], languages: list[str]) -> tuple[str, dict]:
    """(the listener's name, side -> what it hears in each clip), through tts.hearing: one model for both."""
    name = hearing.listener_for(languages) if whisper == "auto" else whisper
    texts = hearing.hear(clips["base"] + clips["tuned"], languages * 2, name)
    return name, {"base": texts[:len(languages)], "tuned": texts[len(languages):]}


def measure(refs: list[np.ndarray], clips: list[np.ndarray], texts: list[str], hyps: list[str],
            languages: list[str]) -> dict:
    """One voice's per-sentence figures (similarity comes from similarities): WER/CER errors and units, MCD,
    seconds, speech seconds and flags."""
    per = {"mcd": [mel_cepstral_distortion(c, r, SAMPLE_RATE) for c, r in zip(clips, refs)],
           "dnsmos": list(dnsmos(clips))}
    for metric in ("wer", "cer"):
        scored = score_corpus(texts, hyps, language=languages, metric=metric)["clips"]
        per[metric] = [{"errors": c["errors"], "units": c["units"], "hyp_norm": c["hyp_norm"],
                        "ref_norm": c["ref_norm"]} for c in scored]
    per["seconds"] = [len(c) / SAMPLE_RATE for c in clips]
    per["speech_seconds"] = [len(trim_silence(c, SAMPLE_RATE)) / SAMPLE_RATE for c in clips]
    per["flags"] = [clip_flags(c, s, t) for c, s, t in zip(clips, per["speech_seconds"], texts)]
    return per


def similarities(refs: list[np.ndarray], clips: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """side -> each clip's cosine to the target speaker's centroid (the test recordings' mean embedding)."""
    centroid = speaker_embeddings(refs, SAMPLE_RATE).mean(axis=0)
    norm = np.linalg.norm(centroid)
    if norm == 0:
        raise SpeechtuneError("the test recordings hold no voiced audio to describe the speaker by",
                              "check the test split's audio (speechtune prepare reports silent clips)")
    centroid = centroid / norm
    return {side: cosine(speaker_embeddings(c, SAMPLE_RATE), centroid[None, :]) for side, c in clips.items()}


def clip_flags(clip: np.ndarray, speech_seconds: float, text: str) -> list[str]:
    """Why a synthesized clip is suspect ([] when it is not): near-silent, or far too long or short for its
    text (speaking seconds per letter or character outside SECONDS_PER_CHAR)."""
    levels = frame_levels(clip, SAMPLE_RATE)
    loudest = float(levels.max()) if levels.size else float("-inf")
    if loudest < NEAR_SILENT_DBFS:
        return [f"near-silent (loudest {loudest:.0f} dBFS)" if np.isfinite(loudest) else "silent"]
    letters = max(1, sum(c.isalnum() for c in text))
    per_char = speech_seconds / letters
    low, high = SECONDS_PER_CHAR
    if per_char < low:
        return [f"too short for its text ({speech_seconds:.2f} s, {per_char:.3f} s per character; sane {low}-{high})"]
    if per_char > high:
        return [f"too long for its text ({speech_seconds:.2f} s, {per_char:.3f} s per character; sane {low}-{high})"]
    return []


def compare_metric(base: list[float], tuned: list[float], units: list[float], higher_is_better: bool,
                   n_resamples: int, seed: int, min_change: float = 0.0) -> dict:
    """metrics.json's block for one metric: each voice's value (total / total units) and its 95% interval,
    tuned - base with its interval and p-value, and `change`: better / worse / same (same also when the
    difference is under `min_change`). Pairs where either value is NaN (MCD of an inaudible clip) are left
    out; with none left every figure is None."""
    b, t, n = (np.asarray(x, np.float64) for x in (base, tuned, units))
    keep = np.isfinite(b) & np.isfinite(t)
    if not keep.any():
        return {"base": None, "tuned": None, "base_ci95": None, "tuned_ci95": None, "delta": None, "ci95": None,
                "p_value": None, "change": "n/a", "higher_is_better": higher_is_better, "sentences": 0}
    b, t, n = b[keep], t[keep], n[keep]
    boot = paired_bootstrap(b, t, n, n_resamples=n_resamples, seed=seed)
    # bootstrap.verdict reads error rates: "improved" is a significant drop
    lower = {"improved": True, "worse": False}.get(verdict(boot))
    if abs(boot["delta"]) < min_change:
        lower = None
    change = "same" if lower is None else "better" if lower != higher_is_better else "worse"
    total = max(float(n.sum()), 1e-12)
    return {"base": float(b.sum() / total), "tuned": float(t.sum() / total), "base_ci95": boot["base_ci95"],
            "tuned_ci95": boot["tuned_ci95"], "delta": boot["delta"], "ci95": boot["ci95"],
            "p_value": boot["p_value"], "change": change, "higher_is_better": higher_is_better,
            "sentences": int(keep.sum())}


def summarize(where: str, voices: dict, per: dict, whisper: str, n_resamples: int, seed: int) -> dict:
    """metrics.json: one block per metric (compare_metric), the voices, flag counts and the verdict."""
    n = len(per["base"]["seconds"])
    result = {"kind": "voice", "data": where, "sentences": n, "whisper": whisper,
              "n_resamples": n_resamples, "seed": seed}
    for side, v in voices.items():
        result[side] = {"voice": str(v.name), "sample_rate": int(v.sample_rate),
                        "flagged": sum(bool(f) for f in per[side]["flags"]),
                        "seconds": round(sum(per[side]["seconds"]), 3)}
    for metric, higher in METRICS.items():
        if metric in ("wer", "cer"):
            values = {s: [c["errors"] for c in per[s][metric]] for s in SIDES}
            units = [c["units"] for c in per["base"][metric]]
        else:
            values = {s: list(per[s][metric]) for s in SIDES}
            units = [1.0] * n
        result[metric] = compare_metric(values["base"], values["tuned"], units, higher, n_resamples, seed,
                                        MIN_CHANGE[metric])
    result["flag_rules"] = {"near_silent_dbfs": NEAR_SILENT_DBFS, "seconds_per_char": list(SECONDS_PER_CHAR)}
    changes = {result[m]["change"] for m in ("similarity", "cer", "mcd")}
    result["verdict"] = ("mixed" if {"better", "worse"} <= changes else "better" if "better" in changes
                         else "worse" if "worse" in changes else "no significant change")
    result["verdict_line"] = verdict_line(result)
    return result


def verdict_line(m: dict) -> str:
    """e.g. `voice: more like the speaker (similarity 0.61 -> 0.83, +0.22 [0.18, 0.26]); intelligibility
    CER 3.1% -> 9.8% (worse); MCD 11.2 -> 8.1 dB (better)`, and how many sentences the tuned voice is flagged
    on, when any."""
    s, c, d = m["similarity"], m["cer"], m["mcd"]
    likeness = {"better": "more like the speaker", "worse": "less like the speaker",
                "same": "no clearer likeness to the speaker"}[s["change"]]
    word = {"better": "better", "worse": "worse", "same": "no significant change"}
    parts = [f"{likeness} (similarity {s['base']:.2f} -> {s['tuned']:.2f}, {s['delta']:+.2f} "
             f"[{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}])",
             f"intelligibility CER {100 * c['base']:.1f}% -> {100 * c['tuned']:.1f}% ({word[c['change']]})",
             f"MCD {d['base']:.1f} -> {d['tuned']:.1f} dB ({word[d['change']]})" if d["sentences"]
             else "MCD n/a (no sentence both voices made audible)"]
    q = m.get("dnsmos")
    if q and q["sentences"]:  # the guard: named when the tuned voice sounds significantly worse
        parts.append(f"DNSMOS {q['base']:.2f} -> {q['tuned']:.2f} "
                     f"({'worse: a quality regression' if q['change'] == 'worse' else 'no regression'})")
    line = "voice: " + "; ".join(parts)
    flagged = m["tuned"]["flagged"]
    if flagged:
        line += (f"; tuned flagged on {flagged} of {m['sentences']} sentence{'s' if m['sentences'] != 1 else ''} "
                 f"(base {m['base']['flagged']})")
    return line


def sentence_rows(rows: list[dict], languages: list[str], voices: dict, clips: dict, hyps: dict,
                  per: dict) -> list[dict]:
    """predictions.jsonl: per sentence its text, the recording, and per voice what Whisper heard, every
    metric and the flags. Audio and spectrogram paths (relative to OUT) are those write_report writes."""
    out = []
    for i, (r, lang) in enumerate(zip(rows, languages)):
        row = {"index": i, "line": r.get("line"), "source": r.get("source"), "text": r["text"], "language": lang,
               "reference": {"audio": r["audio"], "wav": media(i, "reference", "wav"),
                             "spectrogram": media(i, "reference", "png")}}
        for side in SIDES:
            p = per[side]
            row[side] = {
                "voice": str(voices[side].name), "wav": media(i, side, "wav"), "spectrogram": media(i, side, "png"),
                "seconds": round(p["seconds"][i], 3), "speech_seconds": round(p["speech_seconds"][i], 3),
                "transcript": hyps[side][i], "transcript_norm": p["cer"][i]["hyp_norm"],
                "similarity": float(p["similarity"][i]),
                "mcd": None if not np.isfinite(p["mcd"][i]) else float(p["mcd"][i]),
                "dnsmos": None if not np.isfinite(p["dnsmos"][i]) else round(float(p["dnsmos"][i]), 3),
                "word_errors": p["wer"][i]["errors"], "words": p["wer"][i]["units"],
                "char_errors": p["cer"][i]["errors"], "chars": p["cer"][i]["units"],
                "wer": rate(p["wer"][i]), "cer": rate(p["cer"][i]), "flags": p["flags"][i]}
        row["flagged"] = bool(row["base"]["flags"] or row["tuned"]["flags"])
        out.append(row)
    return out


def rate(c: dict) -> float:
    return c["errors"] / c["units"] if c["units"] else float(c["errors"])


def media(i: int, who: str, ext: str) -> str:
    """Where sentence i's audio (wav) or spectrogram (png) for `who` lies, relative to OUT."""
    return f"{'audio' if ext == 'wav' else 'spectrograms'}/{i:03d}-{who}.{ext}"


def write_report(out: Path, result: dict, sentences: list[dict], refs: list[np.ndarray], voices: dict,
                 native: dict) -> None:
    """metrics.json, predictions.jsonl, the audio (recordings at 16 kHz, each voice at its own rate), one mel
    spectrogram per sentence and voice, and report.html, which plays and shows them."""
    from ..files import write_atomic, write_json, write_jsonl
    from ..report import voice_html

    for sub in ("audio", "spectrograms"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i, ref in enumerate(refs):
        takes = [("reference", ref, SAMPLE_RATE)] + [(s, native[s][i], voices[s].sample_rate) for s in SIDES]
        for who, wav, sr in takes:
            write_wav(out / media(i, who, "wav"), wav, sr)
            # drawn at 16 kHz, the rate every metric reads, so the three pictures share one frequency axis
            write_atomic(out / media(i, who, "png"),
                         voice_html.spectrogram_png(resample(wav, sr, SAMPLE_RATE), SAMPLE_RATE, who))
    write_json(out / "metrics.json", result)
    write_jsonl(out / "predictions.jsonl", sentences)
    write_atomic(out / "report.html", voice_html.render(result, sentences))
