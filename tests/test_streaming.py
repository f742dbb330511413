"""train streams its audio: no waveform kept, features read ahead equal to those computed on demand, the encoder
cache still bounded; estimate --data; train's reporters (--report-to)."""
from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from speechtune.errors import SpeechtuneError

SENTENCES = ["the patient takes metoprolol", "give him warfarin daily", "stop the lisinopril now",
             "she needs atorvastatin before bed every night", "one dose of omeprazole"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared folder whose train.jsonl repeats 5 synthesized clips 8 times (40 rows); valid holds 2."""
    from speechtune.audio import write_wav
    from speechtune.synth import speak

    d = tmp_path_factory.mktemp("prepared")
    (d / "audio").mkdir()
    clips = []
    for i, text in enumerate(SENTENCES):
        wav = speak(text, "en")
        write_wav(d / "audio" / f"{i}.wav", wav)
        clips.append({"audio": f"audio/{i}.wav", "text": text, "duration": len(wav) / 16000, "speaker": None,
                      "language": "en"})
    rows = [dict(clips[n % len(clips)], source=f"s:{n}") for n in range(40)]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    return d


@pytest.fixture(scope="module")
def bundle(tiny_whisper_dir):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor
    return SimpleNamespace(processor=WhisperProcessor.from_pretrained(tiny_whisper_dir),
                           model=WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir))


def _clips(prepared, bundle):
    from speechtune.train.data import Clips, load_split
    return Clips(load_split(prepared / "train.jsonl"), bundle.processor, bundle.model.generation_config, None, 448)


def test_clips_keep_no_audio(prepared, bundle, monkeypatch):
    from speechtune.train import data

    reads = []
    real = data.read_wav
    monkeypatch.setattr(data, "read_wav", lambda row: reads.append(row) or real(row))
    clips = _clips(prepared, bundle)
    assert not reads  # durations are the manifest's: nothing decoded to know them
    assert clips.durations == [r["duration"] for r in clips.rows]
    audio_bytes = sum(r["duration"] * 16000 * 4 for r in clips.rows)
    clips.features([0])  # first-call allocations (feature extractor tables) before measuring
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(0, len(clips), 8):
            clips.features(list(range(k, k + 8)))
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(reads) == len(clips) + 1
    # numpy reports its buffers to tracemalloc: a cache of the 40 decoded clips would keep all their bytes
    assert kept < audio_bytes / 10, (kept, audio_bytes)


def _plan(n_clips: int, batch: int) -> list:
    from speechtune.train.data import batch_order
    return [(step, idx) for step, idx in enumerate(batch_order([1.0] * n_clips, batch, seed=0, epoch=0))]


def test_read_ahead_equals_computing_on_demand(prepared, bundle):
    import torch

    from speechtune.train.data import batch_features, augment_rng

    clips = _clips(prepared, bundle)
    plan = _plan(16, 4)
    speed, snr = [0.9, 1.1], 20.0
    clips.read_ahead(plan, workers=1, seed=3, speed=speed, noise_snr=snr)
    try:
        # the planned clips with another generator than planned: computed here, with that generator's draws
        got = clips.features(plan[0][1], np.random.default_rng(99), speed, snr)
        assert torch.equal(got, batch_features(clips.rows, clips.fe, plan[0][1], np.random.default_rng(99),
                                               speed, snr))
        assert clips.ahead.hits == 0
        for step, idx in plan:
            # the generator families/whisper.py's loss makes: np.random.default_rng([seed, step, idx[0]])
            rng, ref_rng = np.random.default_rng([3, step, idx[0]]), augment_rng(3, step, idx)
            got = clips.features(idx, rng, speed, snr)
            want = batch_features(clips.rows, clips.fe, idx, ref_rng, speed, snr)
            assert torch.equal(got, want)
            assert rng.bit_generator.state == ref_rng.bit_generator.state  # advanced as the draws did
        assert clips.ahead.hits == len(plan)
        # no augmentation (the encoder cache's path): single clips of planned batches, in order
        clips.read_ahead(plan, workers=1)
        for _, idx in plan[:3]:
            for i in idx:
                assert torch.equal(clips.features([i]), batch_features(clips.rows, clips.fe, [i]))
        assert clips.ahead.hits == 12
    finally:
        clips.read_ahead([], 0)
    assert clips.ahead is None


def test_encoder_cache_stays_bounded_and_spills(prepared, bundle, tmp_path):
    import torch

    from speechtune.train.encoder_cache import EncoderCache

    clips = _clips(prepared, bundle)
    encoder = bundle.model.get_encoder()
    per_clip = 1500 * bundle.model.config.d_model * 2  # fp16 states
    cache = EncoderCache(tmp_path / "cache", max_memory_mb=2.5 * per_clip / 2 ** 20, depth=len(encoder.layers))
    plan = _plan(12, 4)
    clips.read_ahead(plan, workers=1)
    try:
        for _, idx in plan:
            cache.batch(idx, clips, encoder, "cpu", torch.float32)
    finally:
        clips.read_ahead([], 0)
    assert len(cache.memory) == 2 and cache.used <= cache.budget
    assert len(cache.on_disk) == 10 and len(list((tmp_path / "cache").glob("*.npy"))) == 10
    assert clips.ahead is None


def test_estimate_reads_the_data(prepared, tiny_whisper_dir, capsys):
    from transformers import GenerationConfig, WhisperProcessor

    from speechtune.cli import main as cli_main
    from speechtune.plan.estimate import format_summary
    from speechtune.train.config import TrainConfig
    from speechtune.train.data import label_ids, load_split

    proc = WhisperProcessor.from_pretrained(tiny_whisper_dir)
    gen = GenerationConfig.from_pretrained(tiny_whisper_dir)
    rows = load_split(prepared / "train.jsonl")
    longest = max(len(label_ids(proc.tokenizer, gen, r["text"], None, 448)) for r in rows)
    hours = sum(r["duration"] for r in rows) / 3600
    args = ["estimate", "--model", str(tiny_whisper_dir), "--mode", "full", "--batch-size", "2", "--gpu", "A10"]
    assert cli_main(args + ["--json"]) == 0
    blind = json.loads(capsys.readouterr().out)
    assert blind["label_tokens"] == 448 and blind["data"] is None
    assert cli_main(args + ["--json", "--data", str(prepared)]) == 0
    est = json.loads(capsys.readouterr().out)
    assert est["label_tokens"] == longest < 448
    assert est["clips_per_epoch"] == 40 and est["data"]["hours"] == pytest.approx(hours)
    assert est["data"]["from_data"] == [f"40 clips ({hours:.2f} h)", f"label tokens {longest} (the longest label)"]
    assert est["memory"]["total"] < blind["memory"]["total"]
    assert cli_main(args + ["--json", "--data", str(prepared), "--label-tokens", "100"]) == 0  # a flag wins
    est = json.loads(capsys.readouterr().out)
    assert est["label_tokens"] == 100 and est["data"]["from_data"] == [f"40 clips ({hours:.2f} h)"]
    assert cli_main(args + ["--data", str(prepared)]) == 0
    table = " ".join(capsys.readouterr().out.split())
    assert f"{longest} label tokens" in table and f"label tokens {longest} (the longest label)" in table
    line = format_summary(TrainConfig(model=str(tiny_whisper_dir), data=str(prepared), mode="full", batch_size=2,
                                      device="cpu"), 40)
    assert f"{longest} label tokens (the longest label in the data)" in line
    assert cli_main(["estimate", "--model", "tiny", "--data", str(prepared / "nope")]) == 2
    assert capsys.readouterr().err.startswith("error: --data")


def _log(tmp_path, **kw):
    from speechtune.train.config import TrainConfig
    from speechtune.train.loop import RunLog
    tmp_path.mkdir(exist_ok=True)
    log = RunLog(tmp_path, SimpleNamespace(is_main_process=True), TrainConfig(**kw))
    log({"event": "eval", "step": 0, "valid": 0.5, "guard_ok": True})
    log({"event": "train", "step": 1, "loss": 2.5, "lr": 1e-4})
    log.close()
    return [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]


def test_report_to_tensorboard_writes_the_log_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(_log(tmp_path / "a", report_to=["tensorboard"])) == 2
    acc = EventAccumulator(str(tmp_path / "a" / "tensorboard"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["eval/valid", "train/loss", "train/lr"]
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 2.5)]
    _log(tmp_path / "b", report_to=["tensorboard"], tensorboard=False)  # the old switch still turns it off
    _log(tmp_path / "c", report_to=["none"])
    assert not (tmp_path / "b" / "tensorboard").exists() and not (tmp_path / "c" / "tensorboard").exists()


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_a_reporter_not_installed_is_one_line(tmp_path, monkeypatch, name):
    from speechtune.train.loop import RunLog, reporters
    from speechtune.train.config import TrainConfig

    monkeypatch.setitem(sys.modules, name, None)  # import now fails as if not installed
    with pytest.raises(SpeechtuneError) as e:
        RunLog(tmp_path, SimpleNamespace(is_main_process=True), TrainConfig(report_to=[f"tensorboard,{name}"]))
    assert e.value.hint == f"pip install {name}" and "\n" not in e.value.message
    assert not (tmp_path / "train_log.jsonl").exists() and not (tmp_path / "tensorboard").exists()
    with pytest.raises(SpeechtuneError, match="not a reporter"):
        reporters(TrainConfig(report_to=["comet"]))


def test_report_to_mlflow_file_store(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    _log(tmp_path, report_to=["mlflow"], lr=3e-4)
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("speechtune").experiment_id])
    assert run.data.params["lr"] == "0.0003"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")] == [(1, 2.5)]


def test_report_to_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    _log(tmp_path, report_to=["wandb"])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
