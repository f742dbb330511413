"""Transcribe a test manifest with one model and score it: WER/CER, error types, hallucinations, speed.

Writes DIR/predictions.jsonl (one line per clip: reference, hypothesis, normalised forms, its errors and
flags) and DIR/metrics.json. Rates are fractions (0.05 = 5%). RTF is transcription seconds / audio
seconds, timed around the model only (audio decoding and scoring excluded), after one warm-up call.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, AudioError, load_audio
from .errors import SpeechtuneError
from .manifest import read_manifest, write_atomic, write_jsonl
from .metrics import hallucination
from .metrics.normalize import guess_language
from .metrics.score import METRICS, chars, score_corpus, words

WINDOW_S = 30.0
CHUNK = 64  # clips decoded into memory at a time, so a large test set never sits in RAM whole


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="model spec: tiny.en | base | HF folder | hub id | .pt | CT2 folder")
    p.add_argument("--data", required=True, help="test manifest (.jsonl with audio and text per line)")
    p.add_argument("--out", required=True, help="folder for predictions.jsonl and metrics.json")
    add_decoding_arguments(p)


def add_decoding_arguments(p) -> None:
    p.add_argument("--language", help="language of clips whose line has none (e.g. en, zh); picks WER/CER "
                                      "and the normaliser, and is passed to multilingual models")
    p.add_argument("--metric", choices=METRICS, help="force WER or CER (default: CER for zh/ja/ko/th, else WER)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per decoding batch (default: 8)")
    p.add_argument("--beam-size", type=int, default=1, help="beams for decoding (default: 1, greedy)")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")


def load_rows(manifest) -> tuple[list[dict], str]:
    """Rows and a name for messages. Missing audio is reported now, not after minutes of decoding."""
    rows, where = (read_manifest(manifest), str(manifest)) if isinstance(manifest, (str, os.PathLike)) \
        else (list(manifest), "<rows>")
    missing = [r for r in rows if not Path(r["audio"]).is_file()]
    if missing:
        r = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SpeechtuneError(f"{where}:{r.get('line', '?')}: file not found: {r['audio']}{more}",
                              "relative audio paths resolve against the manifest's folder")
    return rows, where


def _load_clip(row: dict, where: str) -> np.ndarray:
    try:
        return load_audio(row["audio"])
    except AudioError as e:
        raise SpeechtuneError(f"{where}:{row.get('line', '?')}: {e.detail}: {row['audio']}",
                              "fix or drop that line (speechtune prepare checks every clip)") from None


def transcribe_rows(whisper, rows: list[dict], language: str | None = None, batch_size: int = 8,
                    num_beams: int = 1, where: str = "<rows>", progress: bool = True) -> dict:
    """Hypotheses for every row, in order, and the time the model spent on them.

    Clips are grouped by the language each line gives (else `language`, else the model detects it); clips
    over 30 s go through long-form decoding one at a time.
    """
    from .transcribe import transcribe, transcribe_batch

    if batch_size < 1:
        raise SpeechtuneError(f"--batch-size must be at least 1, got {batch_size}")
    hyps: list[str] = [""] * len(rows)
    decode_lang = [r.get("language") or language for r in rows]
    if not whisper.multilingual:  # an English-only model takes no language token
        decode_lang = [None if lang in (None, "en") else lang for lang in decode_lang]
    bar = _bar(len(rows), progress)
    seconds = audio_s = 0.0
    for lang in dict.fromkeys(decode_lang):
        idx = [i for i, x in enumerate(decode_lang) if x == lang]
        for start in range(0, len(idx), CHUNK):
            part = idx[start:start + CHUNK]
            wavs = [_load_clip(rows[i], where) for i in part]
            audio_s += sum(len(w) for w in wavs) / SAMPLE_RATE
            short = [k for k, w in enumerate(wavs) if len(w) <= WINDOW_S * SAMPLE_RATE]
            long_ = [k for k, w in enumerate(wavs) if len(w) > WINDOW_S * SAMPLE_RATE]
            t0 = time.perf_counter()
            texts = transcribe_batch(whisper, [wavs[k] for k in short], language=lang, batch_size=batch_size,
                                     num_beams=num_beams) if short else []
            for k, text in zip(short, texts):
                hyps[part[k]] = text
            for k in long_:
                hyps[part[k]] = transcribe(whisper, wavs[k], language=lang, num_beams=num_beams).text
            seconds += time.perf_counter() - t0
            bar.update(len(part))
    bar.close()
    return {"hyps": hyps, "processing_s": seconds, "audio_s": audio_s}


def warm_up(whisper, num_beams: int = 1) -> None:
    """One untimed call per loaded model: first-call setup (allocations, CUDA context) is not per-clip cost."""
    from .transcribe import transcribe_batch
    transcribe_batch(whisper, [np.zeros(SAMPLE_RATE, dtype=np.float32)], batch_size=1, num_beams=num_beams)


def _bar(total: int, progress: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc="transcribing", unit="clip", leave=False, disable=not progress,
                file=sys.stderr)


def score_language(rows: list[dict], language: str | None, multilingual: bool) -> list[str | None]:
    """The language each clip is scored in: its line's, else --language, else English for an English-only
    model, else a guess from the reference's script (None: the basic normaliser, WER)."""
    fallback = language or (None if multilingual else "en")
    return [r.get("language") or fallback or guess_language(r["text"]) for r in rows]


def score_rows(rows: list[dict], hyps: list[str], languages: list[str | None], metric: str | None = None) -> dict:
    """Corpus figures plus `predictions` (one dict per clip) and hallucination counts."""
    s = score_corpus([r["text"] for r in rows], hyps, language=languages, metric=metric)
    split = words if s["metric"] == "wer" else chars
    flags = []
    preds = []
    for row, hyp, c in zip(rows, hyps, s.pop("clips")):
        f = hallucination.clip_flags(split(c["ref_norm"]), split(c["hyp_norm"]), c["ins"])
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


def evaluate(model_or_spec, manifest, language: str | None = None, batch_size: int = 8,
             metric: str | None = None, num_beams: int = 1, device: str | None = None,
             out: str | Path | None = None, progress: bool = True) -> dict:
    """Score one model on a manifest (path or rows from read_manifest). Returns the metrics dict, with
    per-clip `predictions`; writes predictions.jsonl and metrics.json under `out` when given."""
    rows, where = load_rows(manifest)
    whisper = _load(model_or_spec, device)
    warm_up(whisper, num_beams)
    run = transcribe_rows(whisper, rows, language, batch_size, num_beams, where, progress)
    langs = score_language(rows, language, whisper.multilingual)
    result = {"model": str(model_or_spec if isinstance(model_or_spec, (str, os.PathLike)) else whisper.path),
              "data": where, "clips": len(rows),
              **score_rows(rows, run["hyps"], langs, metric), **speed(run, len(rows)),
              "decoding": {"batch_size": batch_size, "num_beams": num_beams, "language": language}}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "predictions.jsonl", result["predictions"])
        write_json(out / "metrics.json", {k: v for k, v in result.items() if k != "predictions"})
    return result


def _load(model_or_spec, device):
    if isinstance(model_or_spec, (str, os.PathLike)):
        from .models import load_model
        return load_model(model_or_spec, device=device)
    return model_or_spec


def write_json(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def summary_line(m: dict) -> str:
    h = m["hallucination"]
    unit = "words" if m["metric"] == "wer" else "chars"
    rtf = "n/a" if m["rtf"] is None else f"{m['rtf']:.3f}"
    cps = "n/a" if m["clips_per_s"] is None else f"{m['clips_per_s']:.2f}"
    return (f"{m['metric'].upper()} {pct(m['error_rate'])} (S {m['sub']}, D {m['del']}, I {m['ins']} over "
            f"{m['units']} {unit}; raw {pct(m['raw']['error_rate'])}) | RTF {rtf}, {cps} clips/s | "
            f"hallucinations: {h['loops']} loops, {h['empty']} empty, {h['too_long']} over 2x length")


def main(args) -> int:
    m = evaluate(args.model, args.data, language=args.language, batch_size=args.batch_size, metric=args.metric,
                 num_beams=args.beam_size, device=args.device, out=args.out)
    print(f"{args.model} on {args.data} ({m['clips']} clips): {summary_line(m)}")
    print(f"wrote {Path(args.out) / 'predictions.jsonl'} and {Path(args.out) / 'metrics.json'}")
    return 0
