"""Does `speechtune train` stream its audio? Peak RSS and samples/s on 1 hour and on 10 hours of audio; and
train's own estimate of its peak memory (`estimate --data`) against the measured one.

    python benchmarks/train_memory.py --out /tmp/train_memory                 # both parts, ~12 min on 2 cores
    python benchmarks/train_memory.py --out /tmp/train_memory --only streaming --steps 60
    python benchmarks/train_memory.py --out /tmp/train_memory --only estimate --estimate-steps 4

Data: SENTENCES synthesized once (speechtune.synth.speak) into a prepared folder per size, whose train.jsonl
repeats them until it holds 1 h (or 10 h) of audio; valid.jsonl holds 4 of them.

Streaming: a random tiny Whisper (d_model 64, 2 + 2 layers, the real tiny.en tokenizer; as tests/conftest.py
builds) trained in full mode, batch 4, the same --max-steps (40) on both sizes, each `speechtune train` in a fresh
subprocess. Peak RSS is the child's `ru_maxrss` from os.wait4 (the largest of train and its DataLoader
workers, which the kernel folds into train's figures as it reaps them); train's own figure
(training_summary.json peak_memory_bytes, the main process) and samples/s come from its summary.

Estimate: the bundled tiny.en in full, freeze-encoder and LoRA mode at batch 2 on the 1 h folder: the peak
train prints before training (plan.estimate.format_summary, which reads the label lengths from --data)
against the measured peak RSS of that run, and the figure without the data (448 label tokens).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SENTENCES = [
    "the patient takes metoprolol every morning", "give him warfarin daily", "stop the lisinopril now",
    "she needs atorvastatin before bed", "one dose of omeprazole with breakfast", "check the amlodipine level",
    "no more metformin today", "a tablet of sertraline at night", "please renew the gabapentin prescription",
    "we stopped furosemide last week because of the kidneys", "start tamsulosin at a low dose",
    "is she still on levothyroxine", "he had a reaction to clopidogrel", "the pharmacy is out of pantoprazole",
    "double the rosuvastatin from today", "montelukast twice a day with food",
    "write down escitalopram in the chart", "do not combine hydrochlorothiazide with lithium",
    "the doctor prescribed amoxicillin for ten days", "how much ibuprofen did you take this morning",
]
MODES = ("full", "freeze-encoder", "lora")
MB = 1e6


def synth_clips(d: Path) -> list[dict]:
    """SENTENCES as 16 kHz wavs in d/audio (once), as manifest rows with paths relative to d."""
    from speechtune.audio import write_wav
    from speechtune.synth import speak

    (d / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(SENTENCES):
        path = d / "audio" / f"{i}.wav"
        if not path.is_file():
            write_wav(path, speak(text, "en"))
        import soundfile as sf
        rows.append({"audio": f"audio/{i}.wav", "text": text, "duration": sf.info(str(path)).duration,
                     "speaker": None, "language": "en"})
    return rows


def prepared(root: Path, hours: float) -> tuple[Path, int]:
    """A prepared folder whose train.jsonl repeats the clips up to `hours` of audio; (folder, clips)."""
    d = root / f"prepared-{hours:g}h"
    clips = synth_clips(root / "clips")
    if not (d / "train.jsonl").is_file():
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "audio").exists():
            (d / "audio").symlink_to((root / "clips" / "audio").resolve())
        rows, total, n = [], 0.0, 0
        while total < hours * 3600:
            r = clips[n % len(clips)]
            rows.append(dict(r, source=f"tiled:{n}"))
            total += r["duration"]
            n += 1
        write = lambda name, rs: (d / name).write_text("".join(json.dumps(r) + "\n" for r in rs))  # noqa: E731
        write("train.jsonl", rows)
        write("valid.jsonl", [dict(r, source=f"valid:{i}") for i, r in enumerate(clips[:4])])
    return d, sum(1 for _ in open(d / "train.jsonl"))


def tiny_whisper(root: Path) -> Path:
    """A random Whisper small enough to make data reading, not the model, the work (tests/conftest.py's)."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from speechtune.models import whisper
    from speechtune.models.registry import bundled_ct2

    out = root / "tiny-random-whisper"
    if (out / "config.json").is_file():
        return out
    ref = bundled_ct2("tiny.en")
    dims = dict(vocab_size=51864, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
                max_source_positions=1500, max_target_positions=448)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(**dims))
    out.mkdir(parents=True)
    suppress = json.loads((ref / "config.json").read_text())["suppress_ids"]
    whisper.write_hf_folder(out, {k: v.detach().numpy() for k, v in model.state_dict().items()}, dims,
                            ref / "tokenizer.json", suppress, None)
    return out


def train(args: list[str], out: Path) -> dict:
    """`speechtune train ARGS --out OUT` in a fresh process: its peak RSS (with its workers), wall time and
    training_summary.json."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_WAIT_POLICY="PASSIVE")
    t = time.time()
    p = subprocess.Popen([sys.executable, "-m", "speechtune.cli", "train", *args, "--out", str(out), "--overwrite",
                          "--no-tensorboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"train {' '.join(args)} failed:\n{err[-3000:]}")
    summary = json.loads((out / "training_summary.json").read_text())
    plan = next((line for line in err.splitlines() if line.startswith("estimate:")), "")
    return {"peak_rss": usage.ru_maxrss * 1024, "main_peak": summary["peak_memory_bytes"],
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "samples_per_s": summary["samples_per_s"], "train_s": summary["train_s"], "wall_s": time.time() - t,
            "estimate_line": plan}


def streaming(root: Path, steps: int, batch: int, workers: int) -> None:
    model = tiny_whisper(root)
    print(f"## streaming: random tiny Whisper, full, batch {batch}, {steps} steps, --data-workers {workers}\n")
    print("| train.jsonl | clips | peak RSS MB (train + workers) | train's own peak MB | samples/s | train s | wall s "
          "| CPU s (all processes) |")
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for hours in (1, 10):
        data, n = prepared(root, hours)
        r = train(["--model", str(model), "--data", str(data), "--mode", "full", "--batch-size", str(batch),
                   "--max-steps", str(steps), "--eval-every", str(steps), "--eval-max-clips", "2", "--lr", "1e-4",
                   "--data-workers", str(workers)], root / f"run-stream-{hours}h")
        results[hours] = r
        print(f"| {hours} h | {n} | {r['peak_rss'] / MB:.0f} | {r['main_peak'] / MB:.0f} | {r['samples_per_s']:.2f} "
              f"| {r['train_s']:.0f} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} |", flush=True)
    a, b = results[1], results[10]
    print(f"\n10 h vs 1 h: peak RSS {b['peak_rss'] / a['peak_rss'] - 1:+.1%}, samples/s "
          f"{b['samples_per_s'] / a['samples_per_s'] - 1:+.1%} (targets: within 10%, not lower)\n")


def estimate_vs_measured(root: Path, steps: int, modes) -> None:
    from dataclasses import replace

    from speechtune.plan.estimate import estimate_for_training
    from speechtune.train.config import TrainConfig

    data, n = prepared(root, 1)
    print(f"## estimate --data vs measured: tiny.en, batch 2, {steps} steps, CPU fp32, 1 h folder ({n} clips)\n")
    print("| mode | estimate with --data MB | label tokens | measured peak RSS MB | error | train's own peak MB "
          "| estimate at 448 tokens MB | error |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in modes:
        cfg = TrainConfig(model="tiny.en", data=str(data), mode=mode, batch_size=2, max_steps=steps, device="cpu")
        est, _ = estimate_for_training(cfg, n)
        blind, _ = estimate_for_training(replace(cfg, data=""), n)
        r = train(["--model", "tiny.en", "--data", str(data), "--mode", mode, "--batch-size", "2", "--max-steps",
                   str(steps), "--eval-every", str(steps), "--eval-max-clips", "2"], root / f"run-est-{mode}")
        pred, pred448, meas = est.memory["total"], blind.memory["total"], r["peak_rss"]
        print(f"| {mode} | {pred / MB:.0f} | {est.label_tokens} | {meas / MB:.0f} | {pred / meas - 1:+.1%} | "
              f"{r['main_peak'] / MB:.0f} | {pred448 / MB:.0f} | {pred448 / meas - 1:+.1%} |", flush=True)
    print()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/train_memory"))
    ap.add_argument("--only", choices=["streaming", "estimate"])
    ap.add_argument("--steps", type=int, default=40, help="streaming runs: optimizer steps")
    ap.add_argument("--batch-size", type=int, default=4, help="streaming runs: clips per step")
    ap.add_argument("--data-workers", type=int, default=2)
    ap.add_argument("--estimate-steps", type=int, default=4)
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    if args.only in (None, "streaming"):
        streaming(args.out, args.steps, args.batch_size, args.data_workers)
    if args.only in (None, "estimate"):
        estimate_vs_measured(args.out, args.estimate_steps, args.modes)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
