"""`speechtune demo --task tts`: the voice story offline: recordings -> prepare -> train a voice -> proof ->
serve, in the same functions the commands call.

What it starts from and aims at, plainly: no trainable voice checkpoint ships offline, so the new voice is a
FastSpeech2 model trained from nothing (`fastspeech2-tiny`, 4.3M parameters) on the phonemes and readings
of the bundled piper voice joe. The target speaker is synthetic: an espeak-ng voice (variant TARGET_VOICE)
reading medical and everyday sentences, so no recording has to ship. The proof compares the stock voice
(joe) with the trained one on held-out sentences of the target: how much more like the target it sounds
(speaker similarity, mel cepstral distortion) and how intelligible it stays (what the bundled Whisper hears).
A few minutes of CPU training with a Griffin-Lim vocoder buys resemblance, not joe's clarity, and the
verdict says so when it is the case.
"""
from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

from .files import write_json, write_jsonl

BASE_VOICE = "joe"
START = "fastspeech2-tiny"
# espeak-ng variant: a female voice, far from joe's, so resemblance is something to learn; the clearest one
# to tiny.en (everyday sentences CER 0.04; f1: 0.21), since a voice can only be as intelligible as its target
TARGET_VOICE = "f3"
TARGET_RATE = 22050
# "full": what `speechtune demo --task tts` runs (<= 10 min on 2 cores); "small": the same steps for CI
SIZES = {"full": dict(n_train=120, n_valid=6, n_test=12, epochs=40, eval_every=100),
         "small": dict(n_train=24, n_valid=3, n_test=4, epochs=4, eval_every=0)}
DEMO_LR = 2e-3


def _recordings(out: Path, size: dict, seed: int, target: str) -> Path:
    """The target speaker's recordings: one JSONL (audio, text) of espeak-ng readings at 22.05 kHz."""
    from .audio import resample, write_wav
    from .demo_corpus import domain_splits, general_sentences
    from .synth import speak
    splits = domain_splits("en", size["n_train"], size["n_valid"], size["n_test"], seed=seed)
    texts = [t for s in splits.values() for t in s] + general_sentences("en")
    (out / "recordings").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(dict.fromkeys(texts)):
        path = out / "recordings" / f"{i:04d}.wav"
        write_wav(path, resample(speak(text, voice=target), 16000, TARGET_RATE), TARGET_RATE)
        rows.append({"audio": path.name, "text": text})
    manifest = out / "recordings" / "manifest.jsonl"
    write_jsonl(manifest, rows)
    return manifest


def run_tts_demo(out: str | Path = "demo_tts_out", size: str | dict = "full", seed: int = 0,
                 target: str = TARGET_VOICE) -> dict:
    """Recordings, prepare, train, compare and serve into `out`; returns the summary it writes to
    out/demo_summary.json. `size` is a SIZES name or a dict of its fields (benchmarks/tts_learn.py),
    `target` the espeak-ng variant that stands for the speaker."""
    from rich.console import Console

    from .steps import Steps
    for name in (".data.prepare", ".train.recipe", ".tts.judge"):
        importlib.import_module(name, __package__)  # a broken install fails now, not after minutes
    console, out, cfg = Console(), Path(out).resolve(), SIZES[size] if isinstance(size, str) else size
    out.mkdir(parents=True, exist_ok=True)
    steps, t0 = Steps(console), time.perf_counter()

    steps.start(1, f"record the target speaker (espeak-ng {target}, {TARGET_RATE} Hz)")
    manifest = _recordings(out, cfg, seed, target)
    steps.done()
    prepared = _prepare_step(steps, manifest, out, seed)
    voice_dir = _train_step(steps, prepared, out, cfg, seed)
    result = _compare_step(steps, prepared, voice_dir, out)
    served = _serve_step(steps, voice_dir, out)

    report = {"task": "tts", "base_voice": BASE_VOICE, "start": START, "target": f"espeak-ng {target}",
              "verdict": result["verdict"], "verdict_line": result["verdict_line"],
              **{m: result[m] for m in ("similarity", "cer", "wer", "mcd")}, "served": served,
              "step_seconds": {k: round(v, 1) for k, v in steps.times.items()},
              "total_seconds": round(time.perf_counter() - t0, 1),
              "paths": {"voice": str(voice_dir), "report": str(out / "report" / "report.html")}}
    write_json(out / "demo_summary.json", json.loads(json.dumps(report, default=str)))
    _print_summary(console, report)
    return report


def _prepare_step(steps, manifest: Path, out: Path, seed: int) -> Path:
    from .data.prepare import prepare, print_summary
    steps.start(2, f"prepare --task tts (for voice {BASE_VOICE})")
    stats = prepare(manifest, out / "prepared", progress=True, seed=seed, task="tts", voice=BASE_VOICE)
    print_summary(stats, out / "prepared")
    steps.done()
    return out / "prepared"


def _train_step(steps, prepared: Path, out: Path, size: dict, seed: int) -> Path:
    from .train.recipe import TrainConfig, train
    steps.start(3, f"train a voice ({START} on {BASE_VOICE}'s phonemes; best checkpoint by Whisper's CER)")
    voice_dir = train(TrainConfig(model=START, voice=BASE_VOICE, data=str(prepared), out=str(out / "voice"),
                                  epochs=size["epochs"], lr=DEMO_LR, seed=seed, overwrite=True, tensorboard=False,
                                  eval_every=size["eval_every"]))
    steps.done()
    return voice_dir


def _compare_step(steps, prepared: Path, voice_dir: Path, out: Path) -> dict:
    from .train.data import load_split
    from .tts import load_voice
    from .tts.judge import judge_voices
    steps.start(4, f"compare {BASE_VOICE} vs the trained voice on held-out sentences of the target")
    result = judge_voices(load_voice(BASE_VOICE), load_voice(voice_dir), load_split(prepared / "test.jsonl"),
                          out / "report")
    steps.console.print(f"[bold]{result['verdict_line']}", markup=True)
    steps.done()
    return result


def _serve_step(steps, voice_dir: Path, out: Path) -> dict:
    import httpx

    from .serve.recipe import start_server
    steps.start(5, "serve the voice on loopback: POST /v1/audio/speech")
    text = "The patient was given metoprolol."
    with start_server("", voice=str(voice_dir)) as server:
        r = httpx.post(f"{server.url}/v1/audio/speech", timeout=120,
                       json={"model": "tts-1", "voice": str(voice_dir), "input": text, "response_format": "wav"})
        r.raise_for_status()
    (out / "served.wav").write_bytes(r.content)
    steps.console.print(f"POST {server.url}/v1/audio/speech {text!r} -> {len(r.content)} bytes -> {out / 'served.wav'}")
    steps.done()
    return {"url": server.url, "text": text, "bytes": len(r.content), "path": str(out / "served.wav")}


def _print_summary(console, r: dict) -> None:
    from rich.table import Table

    from .steps import timing_rows
    t = Table(title=f"speechtune demo (tts: {r['start']} on {r['base_voice']}'s phonemes -> {r['target']})",
              show_header=False)
    t.add_row("verdict", r["verdict_line"])
    for metric, label, scale, unit in (("similarity", "speaker similarity", 1, ""), ("cer", "intelligibility CER", 100, "%"),
                                       ("mcd", "mel cepstral distortion", 1, " dB")):
        m = r[metric]
        if m.get("base") is not None:
            t.add_row(label, f"{scale * m['base']:.2f}{unit} -> {scale * m['tuned']:.2f}{unit} (95% CI of the change "
                             f"{scale * m['ci95'][0]:+.2f} .. {scale * m['ci95'][1]:+.2f}; {m['change']})")
    timing_rows(t, r)
    console.print(t)
