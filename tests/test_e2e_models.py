"""End-to-end on the real bundled models (no mocks): conversion parity with faster-whisper, and accuracy."""
from __future__ import annotations

import json

import pytest

from speechtune.models import load_model, resolve_model
from speechtune.synth import speak
from speechtune.runtimes import DecodingOptions, runtime_for, transcribe_many
from tests.conftest import bundled_ct2_dir

pytestmark = pytest.mark.e2e

SENTENCE = "please schedule the meeting for tomorrow morning"


@pytest.fixture(scope="module")
def tiny_en():
    return load_model("tiny.en", device="cpu")


def test_tiny_en_transcribes_synthesized_sentence(tiny_en):
    text = runtime_for(tiny_en).transcribe(speak(SENTENCE, "en"), DecodingOptions()).text
    from speechtune.metrics.score import score_corpus
    assert score_corpus([SENTENCE], [text], language="en")["wer"] == 0.0, text


def test_same_tokens_as_ctranslate2_on_source(tiny_en):
    """Given the same log-mel features, the converted model and CTranslate2 on the original fp16 folder
    (computed in float32) pick the same greedy tokens, even on clips the model finds ambiguous."""
    import ctranslate2
    ct = ctranslate2.models.Whisper(str(bundled_ct2_dir("tiny.en")), device="cpu", compute_type="float32")
    for text, voice in [("the quick brown fox jumps over the lazy dog", "m1"),
                        ("she sells sea shells by the sea shore", "f3"), (SENTENCE, None)]:
        features = tiny_en.processor.feature_extractor(speak(text, "en", voice=voice), sampling_rate=16000,
                                                        return_tensors="pt").input_features
        ours = tiny_en.model.generate(features)[0].tolist()
        theirs = ct.generate(ctranslate2.StorageView.from_array(features.numpy()), [[50257, 50362]],
                             beam_size=1, suppress_blank=True, suppress_tokens=[-1])[0].sequences_ids[0]
        assert ours == theirs, text


def test_same_transcript_as_faster_whisper_on_source(tiny_en):
    """End to end, audio in and text out, against faster-whisper's own pipeline (its own features)."""
    from faster_whisper import WhisperModel
    fw = WhisperModel(str(bundled_ct2_dir("tiny.en")), device="cpu", compute_type="float32")
    clips = [(SENTENCE, None), ("I would like a cup of coffee please", "f3")]
    wavs = [speak(text, "en", voice=voice) for text, voice in clips]
    for wav, mine in zip(wavs, transcribe_many(runtime_for(tiny_en), wavs, DecodingOptions())):
        segments, _ = fw.transcribe(wav, beam_size=1, without_timestamps=True, condition_on_previous_text=False,
                                    temperature=0.0, vad_filter=False)
        assert mine == " ".join(s.text.strip() for s in segments)


def test_base_multilingual_chinese_and_cli(tmp_path, capsys):
    from speechtune.audio import write_wav
    from speechtune.cli import main
    clip = tmp_path / "zh.wav"
    write_wav(clip, speak("今天天气很好", "zh"))
    assert main(["transcribe", str(clip), "--model", "base", "--language", "zh", "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["file"] == str(clip) and row["text"]
    cfg = json.loads((resolve_model("base") / "generation_config.json").read_text())
    assert cfg["is_multilingual"] and cfg["lang_to_id"]["<|zh|>"] == 50260
