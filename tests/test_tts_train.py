"""The TTS family: phoneme durations by alignment, FastSpeech2 training (loss falls, resume is exact), the
saved voice folder as a voice in every command that speaks. Tiny random FastSpeech2 models built here; the
base voice is the bundled piper joe (a test dependency)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import assert_served_like_the_voice, build_tiny_voice

SENTENCES = ["the patient was given metoprolol", "start lisinopril and check the pulse",
             "please schedule the meeting for tomorrow", "the weather is nice today",
             "restart envoy before you upgrade grafana", "check the dashboards after lunch",
             "the nurse measured the blood pressure", "open the window please"]


@pytest.fixture(scope="module")
def joe():
    from speechtune.tts import load_voice
    return load_voice("joe")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """A prepared TTS folder: one espeak-ng speaker (variant f1) at 22.05 kHz, 6 train and 2 valid clips."""
    from speechtune import synth
    from speechtune.audio import resample, write_wav
    out = tmp_path_factory.mktemp("tts-data")
    (out / "audio").mkdir()
    for name, texts in (("train", SENTENCES[:6]), ("valid", SENTENCES[6:])):
        rows = []
        for i, text in enumerate(texts):
            wav = resample(synth.speak(text, voice="f1"), 16000, 22050)
            path = out / "audio" / f"{name}{i}.wav"
            write_wav(path, wav, 22050)
            rows.append({"audio": str(path), "text": text, "duration": len(wav) / 22050, "sample_rate": 22050})
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _cfg(model, data, out, **kw):
    from speechtune.train.config import TrainConfig
    base = dict(model=str(model), data=str(data), out=str(out), batch_size=2, max_steps=6, lr=3e-3,
                warmup_ratio=0.0, eval_every=3, eval_batch_size=2, eval_max_clips=1, tensorboard=False,
                log_every=1)
    return TrainConfig(**{**base, **kw})


def test_alignment_recovers_the_durations_of_a_reading_at_another_speed(joe):
    """joe reads a sentence at speed 0.75 (durations known from its graph); aligning that recording with
    joe's own reading at speed 1 must put the phoneme boundaries where they are."""
    from speechtune.tts import align
    text = "Restart Envoy before you upgrade Grafana, then check the dashboards."
    sentences = align.phoneme_sequence(joe, text)
    parts = [joe.render_ids(ids, speed=0.75, seed=3) for ids in sentences]
    wav = np.concatenate([a for a, _ in parts])
    truth = np.concatenate([d for _, d in parts])
    ids, durations = align.align(joe, text, wav, joe.sample_rate)
    assert ids.tolist() == [i for s in sentences for i in s]
    from speechtune.tts.features import n_frames
    assert durations.sum() == n_frames(len(wav)) and (durations >= 0).all()
    error = np.abs(np.cumsum(durations) - np.cumsum(truth))
    # measured: median 0 frames, 90th percentile 2 (11.6 ms a frame)
    assert np.median(error) <= 1 and np.percentile(error, 90) <= 4, error


def test_a_recording_at_another_rate_is_refused(joe):
    from speechtune.errors import SpeechtuneError
    from speechtune.tts import align
    with pytest.raises(SpeechtuneError, match="16000 Hz recording"):
        align.align(joe, "hello there", np.zeros(16000, np.float32), 16000)


def test_the_tts_family_is_picked_by_name_and_by_folder(tmp_path, joe):
    from speechtune.families import family_for, tts
    assert family_for("fastspeech2-tiny") is tts
    assert family_for(build_tiny_voice(tmp_path / "v", joe)) is tts


def test_a_voice_trains_resumes_exactly_and_speaks_from_its_folder(recordings, tmp_path, joe, monkeypatch):
    from safetensors.numpy import load_file

    from speechtune.train.recipe import train
    from speechtune.tts import is_voice, load_voice
    from tests.conftest import Killed, kill_at
    start = build_tiny_voice(tmp_path / "start", joe)
    ref = train(_cfg(start, recordings, tmp_path / "ref"), progress=False)
    log = [json.loads(l) for l in (ref / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["event"] == "train"]
    assert losses[-1] < losses[0] * 0.8, losses
    evals = [r for r in log if r["event"] == "eval"]
    assert [e["step"] for e in evals] == [0, 3, 6] and all(e["metric"] == "cer" for e in evals)
    # without --guard, an English voice is guarded by everyday sentences it never trains on
    assert all(e["guard_metric"] == "cer" and 0 <= e["guard"] for e in evals)

    kill_at(monkeypatch, 4)
    with pytest.raises(Killed):
        train(_cfg(start, recordings, tmp_path / "run"), progress=False)
    monkeypatch.undo()
    out = train(_cfg(start, recordings, tmp_path / "run", resume=True), progress=False)
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    meta = json.loads((out / "speechtune_voice.json").read_text())
    assert meta["base_voice"] == "joe" and len(meta["stats"]["pitch"]) == 2
    assert is_voice(out)
    voice = load_voice(out)
    wav = voice.synthesize("Hello there.")
    assert voice.sample_rate == 22050 and wav.dtype == np.float32 and wav.size > 0
    np.testing.assert_array_equal(wav, voice.synthesize("Hello there."))  # deterministic
    assert voice.synthesize("Hello there.", speed=2.0).size < voice.synthesize("Hello there.", speed=0.5).size


def test_recognition_options_are_refused_for_a_voice(recordings, tmp_path):
    from speechtune.errors import SpeechtuneError
    from speechtune.train.recipe import train
    with pytest.raises(SpeechtuneError, match="--no-speech-ratio does nothing"):
        train(_cfg("fastspeech2-tiny", recordings, tmp_path / "o", no_speech_ratio=0.1), progress=False)
    with pytest.raises(SpeechtuneError, match="--speed-perturb does nothing"):
        train(_cfg("fastspeech2-tiny", recordings, tmp_path / "o", speed_perturb=[0.9, 1.1]), progress=False)


def test_a_trained_voice_folder_is_served_through_the_openai_client(tmp_path, joe):
    """`serve --voice FOLDER`: /v1/audio/speech speaks with a FastSpeech2 voice, the same samples as the
    voice itself gives (a random model here: what counts is the path, not the sound)."""
    folder = build_tiny_voice(tmp_path / "voice", joe)
    assert_served_like_the_voice(folder)


def test_recognition_data_is_refused_for_a_voice(recordings, tmp_path):
    """A folder prepared for recognition (16 kHz, no sample_rate) is not silently resampled into a voice."""
    from speechtune.errors import SpeechtuneError
    from speechtune.train.recipe import train
    data = tmp_path / "asr"
    data.mkdir()
    rows = [json.loads(l) for l in (recordings / "train.jsonl").read_text().splitlines()]
    (data / "train.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "sample_rate"}) + "\n"
                                              for r in rows))
    with pytest.raises(SpeechtuneError, match="speaks at 22050 Hz") as e:
        train(_cfg("fastspeech2-tiny", data, tmp_path / "o"), progress=False)
    assert "--task tts" in e.value.hint
