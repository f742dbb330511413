"""The piper family: a piper VITS voice fine-tuned by piper-tts's trainer in a separate process (GPL-3.0,
speechtune/tts/piper_train.py), judged, chosen, resumed and exported. A tiny random piper voice is built here with the
worker itself (random weights, exported to piper's ONNX format); the recordings are the bundled joe voice.
The training tests skip where the optional extra (piper-tts[train]) is not installed; the licence boundary
is checked everywhere."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from speechtune.errors import SpeechtuneError
from tests.conftest import assert_served_like_the_voice

TEXTS = ["The museum is closed on Mondays.", "She forgot her umbrella at the station.",
         "We need two more chairs.", "It started raining just after we left.",
         "Please close the window.", "The bakery sells fresh bread."]


def _piper_installed() -> bool:
    from speechtune.families import piper
    return piper.installed()


needs_piper = pytest.mark.skipif(not _piper_installed(), reason="piper-tts[train] (the optional extra "
                                 "speechtune[piper], GPL-3.0) is not installed")


def _worker(*args) -> dict:
    out = subprocess.run([sys.executable, "-m", "speechtune.tts.piper_train", *args], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_core_never_imports_piper():
    """Every speechtune module but the worker imports without loading piper (the GPL boundary)."""
    code = ("import pkgutil, importlib, sys, speechtune\n"
            "for m in pkgutil.walk_packages(speechtune.__path__, 'speechtune.'):\n"
            "    if m.name != 'speechtune.tts.piper_train' and not m.name.startswith('speechtune.__main__'):\n"
            "        importlib.import_module(m.name)\n"
            "print(sorted(n for n in sys.modules if n == 'piper' or n.startswith(('piper.', 'lightning'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_family_for_picks_piper_for_onnx_voices_only(tmp_path):
    from speechtune.families import family_for, piper, tts
    assert family_for("joe") is piper
    assert family_for("fastspeech2-tiny") is tts
    assert not piper.claims("tiny.en") and not piper.claims(tmp_path)


def test_best_checkpoint_is_the_most_similar_that_stays_intelligible():
    from speechtune.families.piper import choose
    evals = [{"step": 0, "valid": 0.10, "guard": 0.05, "similarity": 0.50},
             {"step": 2, "valid": 0.30, "guard": 0.05, "similarity": 0.90},   # most similar, unintelligible
             {"step": 4, "valid": 0.105, "guard": 0.06, "similarity": 0.70},
             {"step": 6, "valid": 0.10, "guard": 0.05, "similarity": 0.60}]
    best, note = choose(evals, threshold_pts=1.0)
    assert best["step"] == 4 and note is None
    best, note = choose(evals[:2], threshold_pts=1.0)
    assert best["step"] == 2 and "kept the most intelligible one (step 2)" in note


@pytest.fixture(scope="module")
def tiny_piper(tmp_path_factory):
    """A tiny random piper voice on joe's phonemes (piper's ONNX + JSON), made by the worker."""
    from speechtune.tts import resolve_voice
    if not _piper_installed():
        pytest.skip("piper-tts[train] is not installed")
    out = tmp_path_factory.mktemp("tiny-piper")
    _, config, _, _ = resolve_voice("joe")
    _worker("init", "--size", "tiny", "--config", str(config), "--out", str(out / "init.ckpt"))
    _worker("export", "--ckpt", str(out / "init.ckpt"), "--config", str(config), "--out", str(out / "tiny.onnx"),
            "--name", "tiny")
    return out / "tiny.onnx"


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """A prepared TTS folder: joe reading slowly at 22.05 kHz, 4 train and 2 valid clips."""
    from speechtune.audio import write_wav
    from speechtune.tts import load_voice
    joe = load_voice("joe")
    out = tmp_path_factory.mktemp("piper-data")
    rows = []
    for i, text in enumerate(TEXTS):
        wav = joe.synthesize(text, speed=0.85)
        write_wav(out / f"c{i}.wav", wav, joe.sample_rate)
        rows.append({"audio": str(out / f"c{i}.wav"), "text": text, "duration": len(wav) / joe.sample_rate,
                     "sample_rate": joe.sample_rate})
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    (out / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[4:]))
    return out


def _cfg(model, data, out, **kw):
    from speechtune.train.config import TrainConfig
    base = dict(model=str(model), data=str(data), out=str(out), batch_size=4, max_steps=4, lr=1e-3,
                eval_every=2, eval_max_clips=2)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tiny_piper, recordings, tmp_path_factory):
    from speechtune.train.recipe import train
    out = tmp_path_factory.mktemp("piper-run") / "voice"
    train(_cfg(tiny_piper, recordings, out), progress=False)
    return out


@needs_piper
def test_the_worker_copies_a_voice_into_pipers_model_exactly(tiny_piper, tmp_path):
    """init from an ONNX voice decodes as the voice does (no noise); the joe copy is checked the same way."""
    report = _worker("init", "--voice", str(tiny_piper), "--config", str(tiny_piper) + ".json",
                     "--out", str(tmp_path / "copy.ckpt"))
    assert report["size"] == "tiny" and report["length_diff"] == 0 and report["max_abs_diff"] < 1e-5
    # the posterior encoder only trains: never in an ONNX voice. (Random weights that are all equal, as zero
    # biases, are stored once by the exporter under one name, so "fresh" also counts some of those.)
    assert "enc_q.enc" in report["fresh_parts"] and report["copied"] > 100


@needs_piper
def test_training_lowers_the_loss_and_writes_a_piper_voice(trained):
    log = [json.loads(line) for line in (trained / "piper_run" / "piper_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4]
    assert log[-1]["loss_g"] < log[0]["loss_g"]
    s = json.loads((trained / "training_summary.json").read_text())
    assert s["family"] == "piper" and s["steps"] == 4 and [e["step"] for e in s["evals"]] == [0, 2, 4]
    assert {"valid", "similarity", "guard"} <= set(s["base"]) and s["best_step"] in (2, 4)
    chosen = trained / "piper_run" / "voices" / f"step-{s['best_step']:06d}.onnx"
    assert (trained / "model.onnx").read_bytes() == chosen.read_bytes()
    from speechtune.tts import load_voice
    voice = load_voice(trained)
    assert voice.sample_rate == 22050 and voice.synthesize("Hello.").size > 0


@needs_piper
def test_a_finished_run_started_again_trains_nothing_and_other_options_are_refused(trained, tiny_piper,
                                                                                    recordings):
    from speechtune.train.recipe import train
    log, judged = trained / "piper_run" / "piper_log.jsonl", trained / "piper_run" / "evals.jsonl"
    before = log.read_text(), judged.read_text()
    train(_cfg(tiny_piper, recordings, trained), progress=False)
    assert (log.read_text(), judged.read_text()) == before   # no step trained, no checkpoint judged again
    with pytest.raises(SpeechtuneError, match="different options"):
        train(_cfg(tiny_piper, recordings, trained, lr=5e-4), progress=False)


@needs_piper
def test_export_copies_or_quantizes_with_parity_and_serves(trained, tmp_path):
    from speechtune.export.recipe import export
    s = export(str(trained), "onnx", tmp_path / "f32", progress=False)
    assert s["family"] == "piper" and s["parity"]["wave_max_abs"] == 0.0 and s["parity"]["passed"]
    s8 = export(str(trained), "onnx", tmp_path / "i8", quantization="int8", progress=False)
    assert s8["parity"]["intelligibility"]["metric"] == "cer"
    with pytest.raises(SpeechtuneError, match="already an export"):
        export(str(tmp_path / "f32"), "onnx", tmp_path / "again", progress=False)
    assert_served_like_the_voice(tmp_path / "f32")


@needs_piper
def test_recordings_at_another_rate_are_refused_before_training(tiny_piper, recordings, tmp_path):
    from speechtune.train.recipe import train
    data = tmp_path / "data"
    data.mkdir()
    rows = [{**json.loads(line), "sample_rate": 16000} for line in (recordings / "train.jsonl").read_text().splitlines()]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SpeechtuneError, match="speaks at 22050 Hz"):
        train(_cfg(tiny_piper, data, tmp_path / "out"), progress=False)
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_piper_options_that_mean_nothing_are_refused(recordings, tmp_path):
    from speechtune.train.recipe import train
    with pytest.raises(SpeechtuneError, match="--grad-accum does nothing"):
        train(_cfg("joe", recordings, tmp_path / "out", grad_accum=2), progress=False)
    assert not (tmp_path / "out").exists()
