"""Accuracy of the bundled models on real human speech (../shared/realspeech), greedy decoding.

    python benchmarks/realspeech_accuracy.py [--shared ../shared/realspeech]

Prints WER for tiny.en and base on en.jsonl and CER for base on zh.jsonl (Whisper English normaliser for
en, Chinese normaliser for zh), and the real-time factor of each run.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from speechtune.audio import load_audio
from speechtune.manifest import read_manifest
from speechtune.metrics.score import score_corpus
from speechtune.runtimes import DecodingOptions, load_runtime, transcribe_many


def run(spec: str, manifest: Path, language: str) -> dict:
    rows = read_manifest(manifest)
    wavs = [load_audio(r["audio"]) for r in rows]
    runtime = load_runtime(spec, device="cpu")
    start = time.perf_counter()
    hyps = transcribe_many(runtime, wavs, DecodingOptions(language=language if runtime.multilingual else None))
    elapsed = time.perf_counter() - start
    scores = score_corpus([r["text"] for r in rows], hyps, language=language)
    audio_s = sum(len(w) for w in wavs) / 16000
    return {"model": spec, "set": manifest.name, "clips": len(rows), "metric": scores["metric"],
            "error_rate": scores["error_rate"], "raw": scores["raw"]["error_rate"], "rtf": elapsed / audio_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "realspeech"))
    args = ap.parse_args()
    root = Path(args.shared)
    print("| model | set | clips | metric | normalised | raw | RTF |\n|---|---|---|---|---|---|---|")
    for spec, name, lang in [("tiny.en", "en.jsonl", "en"), ("base", "en.jsonl", "en"), ("base", "zh.jsonl", "zh")]:
        r = run(spec, root / name, lang)
        print(f"| {r['model']} | {r['set']} | {r['clips']} | {r['metric'].upper()} | {100 * r['error_rate']:.1f}% "
              f"| {100 * r['raw']:.1f}% | {r['rtf']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
