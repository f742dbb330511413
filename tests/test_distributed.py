"""Training under a distributed launcher: every rank takes part in every step, an epoch is one pass.

`torchrun --nproc_per_node 2 -m speechtune.cli train ...` on 6 clips (one batch of 8 for two processes) used
to hang: one rank got no batch group and spun through empty epochs while the other waited in its
all-reduce. Two CPU processes with gloo run here.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest

from speechtune.train.config import TrainConfig
from speechtune.train.loop import epoch_groups


@pytest.mark.parametrize("n_clips, batch, accum, world", [(6, 8, 1, 2), (10, 2, 1, 3), (9, 2, 2, 2), (1, 4, 1, 2),
                                                          (16, 4, 1, 2), (7, 1, 3, 4)])
def test_every_rank_gets_the_same_steps_and_an_epoch_covers_every_clip(n_clips, batch, accum, world):
    cfg = TrainConfig(batch_size=batch, grad_accum=accum, seed=3)
    per_rank = [epoch_groups([1.0 + i % 5 for i in range(n_clips)], cfg, 0, world, r) for r in range(world)]
    steps = {len(groups) for groups in per_rank}
    assert steps == {math.ceil(math.ceil(n_clips / batch) / accum / world)}  # what train counts as an epoch
    seen = [i for groups in per_rank for group in groups for b in group for i in b]
    assert set(seen) == set(range(n_clips))
    # padding repeats whole groups only, and only as many as the last round lacks
    assert len(seen) - n_clips < world * batch * accum


def run_bounded(cmd, env, timeout: float) -> subprocess.CompletedProcess:
    """Run the launcher in a session of its own: on a timeout the whole group goes (torchrun's workers too),
    not only torchrun, and the test fails instead of leaving processes spinning."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"training under torchrun did not end within {timeout} s: {err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _clips(data, n_clips: int):
    from speechtune.audio import write_wav
    from speechtune.synth import speak
    (data / "audio").mkdir(parents=True)
    rows = []
    words = ["one two three", "four five six", "seven eight", "nine ten", "eleven", "twelve", "thirteen", "go"]
    for i, text in enumerate(words[:n_clips]):
        write_wav(data / "audio" / f"{i}.wav", speak(text))
        rows.append({"audio": f"audio/{i}.wav", "text": text, "language": "en"})
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    return data


def _torchrun(model, data, out, batch: int, *extra) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "speechtune.cli", "train", "--model", str(model), "--data", str(data), "--out",
            str(out), "--mode", "full", "--batch-size", str(batch), "--epochs", "2", "--no-tensorboard", "--lr", "1e-3",
            "--no-eval-safeguards", "--no-eval-no-speech", *extra]


@pytest.mark.parametrize("n_clips, batch, steps", [(6, 8, 2), (8, 2, 4)])
def test_two_processes_train_to_the_end(tiny_whisper_dir, tmp_path, n_clips, batch, steps):
    """Fewer clips than processes x batch size (the case that hung), and a set that fills both ranks."""
    data = _clips(tmp_path / "data", n_clips)
    out = tmp_path / "model"
    r = run_bounded(_torchrun(tiny_whisper_dir, data, out, batch), ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "training_summary.json").read_text())
    # 6 clips at batch 8: one group, padded to one per rank -> 1 step an epoch; 8 at batch 2: 2 per rank
    assert summary["steps"] == steps and summary["processes"] == 2, summary
    assert (out / "model.safetensors").is_file()
    assert r.stderr.count("trained ") == 1  # the model folder and summary are written by one process


def test_killed_under_the_launcher_and_rerun_it_resumes_to_the_same_weights(tiny_whisper_dir, tmp_path):
    """kill -9 of torchrun's whole process group once a checkpoint is on disk, then the same command again:
    it resumes and ends where an uninterrupted two-process run ends."""
    import time

    from safetensors.numpy import load_file
    data = _clips(tmp_path / "data", 8)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert run_bounded(_torchrun(tiny_whisper_dir, data, whole, 2), ENV, timeout=300).returncode == 0
    cmd = _torchrun(tiny_whisper_dir, data, resumed, 2, "--save-every", "1")
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not list((resumed / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (resumed / "model.safetensors").exists(), "the run ended before it could be killed"
    r = run_bounded(cmd, ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stdout + r.stderr
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and max(float(abs(a[k] - b[k]).max()) for k in a) < 1e-6
    assert json.loads((resumed / "training_summary.json").read_text())["processes"] == 2
