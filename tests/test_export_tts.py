"""`speechtune export` of a FastSpeech2 voice: the ONNX graph gives the torch model's frames for sentences of
any length (the length regulator is not traced into constants), int8 stays within its tolerance, the folder
is a voice (load_voice, serve), and bad input is a one-line error. A tiny random voice on joe's phonemes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import assert_served_like_the_voice, build_tiny_voice

from speechtune.errors import SpeechtuneError
from speechtune.export import export

SENTENCES = ["Yes.", "The nurse measured the blood pressure.",
             "Please schedule the follow-up meeting for tomorrow morning, and check the dashboards after lunch."]


@pytest.fixture(scope="module")
def voice_dir(tmp_path_factory):
    from speechtune.tts import load_voice
    return build_tiny_voice(tmp_path_factory.mktemp("voice") / "tiny", load_voice("joe"))


@pytest.fixture(scope="module")
def exported(voice_dir, tmp_path_factory):
    """(summary, folder) of the fp32 export, through the CLI."""
    from speechtune.cli import main
    out = tmp_path_factory.mktemp("export") / "tiny-onnx"
    assert main(["export", str(voice_dir), "--format", "onnx", "--out", str(out)]) == 0
    return json.loads((out / "export_summary.json").read_text()), out


def _mels(voice, text, speed=1.0):
    return [voice.mel_ids(voice.phoneme_ids(s), speed) for s in voice.phonemize(text)]


def test_fp32_graph_gives_the_torch_frames_for_any_length(voice_dir, exported):
    from speechtune.tts import FastSpeechVoice, OnnxFastSpeechVoice
    summary, out = exported
    assert summary["family"] == "tts" and summary["parity"]["passed"] and not summary["parity"]["frames_differ"]
    torch_voice, onnx_voice = FastSpeechVoice.load(voice_dir), OnnxFastSpeechVoice.load(out)
    lengths = set()
    for text in SENTENCES:
        for speed in (1.0, 0.7):
            for a, b in zip(_mels(torch_voice, text, speed), _mels(onnx_voice, text, speed), strict=True):
                assert a.shape == b.shape, text
                np.testing.assert_allclose(b, a, atol=1e-4)  # measured: 7e-6 at most
                lengths.add(len(a))
    assert len(lengths) == 6  # every sentence and speed its own frame count: nothing fixed at export


def test_int8_keeps_the_frames_and_stays_within_tolerance(voice_dir, tmp_path):
    from speechtune.export.onnx_tts import MEL_TOLERANCE
    s = export(voice_dir, "onnx", tmp_path / "int8", quantization="int8", progress=False)
    p = s["parity"]
    assert s["quantization"] == "int8" and p["passed"] and not p["frames_differ"]
    largest, mean = MEL_TOLERANCE["int8"]
    assert 0 < p["mel_max_abs"] <= largest and p["mel_mean_abs"] <= mean
    assert p["intelligibility"]["metric"] == "cer" and set(p["intelligibility"]) >= {"pytorch", "exported"}
    assert s["size_bytes"]["export"] < s["size_bytes"]["source"]


def test_the_export_folder_is_a_voice(voice_dir, exported):
    from speechtune.tts import OnnxFastSpeechVoice, is_voice, load_voice
    _, out = exported
    assert is_voice(out)
    voice, torch_voice = load_voice(out), load_voice(voice_dir)
    assert isinstance(voice, OnnxFastSpeechVoice) and voice.sample_rate == torch_voice.sample_rate
    assert voice.name == torch_voice.name and voice.path == out and voice.max_chars == torch_voice.max_chars
    wav = voice.synthesize("Good morning, everyone.")
    assert wav.dtype == np.float32 and len(wav) == len(torch_voice.synthesize("Good morning, everyone."))
    assert len(voice.synthesize("Good morning.", speed=2.0)) < len(voice.synthesize("Good morning.", speed=0.5))
    with pytest.raises(SpeechtuneError, match="speed"):
        voice.synthesize("Hi.", speed=9)


def test_serve_speaks_with_the_exported_voice(exported):
    _, out = exported
    assert_served_like_the_voice(out)


def test_bad_input_is_a_one_line_error_and_leaves_nothing(voice_dir, exported, tmp_path):
    _, out = exported
    cases = [(voice_dir, "ct2", None, "exports to onnx, not ct2"), (out, "onnx", None, "already an export"),
             (voice_dir, "onnx", "float16", "unknown ONNX quantization"),
             (voice_dir, "tflite", None, "unknown export format")]
    for model, fmt, q, message in cases:
        with pytest.raises(SpeechtuneError, match=message) as e:
            export(model, fmt, tmp_path / "out", quantization=q, progress=False)
        assert "\n" not in str(e.value)
    not_a_voice = tmp_path / "notvoice"
    not_a_voice.mkdir()
    (not_a_voice / "config.json").write_text(json.dumps({"model_type": "fastspeech2_conformer"}))
    with pytest.raises(SpeechtuneError, match="not a FastSpeech2 voice folder") as e:
        export(not_a_voice, "onnx", tmp_path / "out", progress=False)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notvoice"]  # no half-written output
