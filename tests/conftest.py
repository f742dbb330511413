"""Shared fixtures: tiny random-weight Whisper folders (built here, no download) and an offline hub."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    # Conversions land in a cache; a run may share one across sessions via SPEECHTUNE_CACHE (CI does).
    if not os.environ.get("SPEECHTUNE_CACHE"):
        os.environ["SPEECHTUNE_CACHE"] = str(tmp_path_factory.mktemp("speechtune-cache"))
    yield


def bundled_ct2_dir(name: str) -> Path:
    from speechtune.models.registry import bundled_ct2
    return bundled_ct2(name)


def build_tiny_whisper(out: Path, multilingual: bool, seed: int = 0, d_model: int = 64, layers: int = 2) -> Path:
    """A random Whisper small enough for unit tests, with the real tokenizer of the matching vocabulary."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from speechtune.models import whisper

    ref = bundled_ct2_dir("base" if multilingual else "tiny.en")
    dims = dict(vocab_size=51865 if multilingual else 51864, num_mel_bins=80, d_model=d_model,
                encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=2, decoder_attention_heads=2,
                encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model, max_source_positions=1500,
                max_target_positions=448)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**dims))
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    suppress = json.loads((ref / "config.json").read_text())["suppress_ids"]
    whisper.write_hf_folder(out, sd, dims, ref / "tokenizer.json", suppress, None)
    return out


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper-en") / "model", multilingual=False)


@pytest.fixture(scope="session")
def tiny_multilingual_dir(tmp_path_factory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper-multi") / "model", multilingual=True)


@pytest.fixture()
def tone() -> np.ndarray:
    """One second of a 440 Hz tone at 16 kHz: audio that decodes, for tests that don't need words."""
    t = np.arange(16000) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


CTC_CONV = dict(conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 8), num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0)


def tiny_ctc_config(model_type: str, vocab_size: int = 32, pad_token_id: int = 0):
    """A random-weight config of `model_type` small enough to train in seconds on a CPU (80 frames/s)."""
    import transformers as tf
    if model_type == "parakeet_ctc":
        return tf.ParakeetCTCConfig(vocab_size=vocab_size, pad_token_id=pad_token_id, encoder_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_mel_bins=80,
            subsampling_conv_channels=16, subsampling_factor=2, dropout=0.0, dropout_positions=0.0,
            layerdrop=0.0, activation_dropout=0.0, attention_dropout=0.0))
    cls = {"wav2vec2": tf.Wav2Vec2Config, "hubert": tf.HubertConfig, "wavlm": tf.WavLMConfig,
           "wav2vec2-conformer": tf.Wav2Vec2ConformerConfig}[model_type]
    extra = {"wavlm": {"num_buckets": 16}, "wav2vec2-conformer": {"conv_depthwise_kernel_size": 3}}
    return cls(**CTC_CONV, **extra.get(model_type, {}), vocab_size=vocab_size, pad_token_id=pad_token_id)


def build_tiny_ctc(out: Path, model_type: str = "wav2vec2", vocab: dict | None = None, seed: int = 0) -> Path:
    """A tiny random CTC model folder: with `vocab` a complete fine-tuned-style folder (head + tokenizer),
    without it a pretrained encoder (no tokenizer, the config's default head size)."""
    import torch
    import transformers as tf

    from speechtune.models.ctc import vocab_tokenizer
    torch.manual_seed(seed)
    config = tiny_ctc_config(model_type, len(vocab) if vocab else 32)
    model = tf.AutoModelForCTC.from_config(config)
    model.save_pretrained(out)
    fe = (tf.ParakeetFeatureExtractor() if model_type == "parakeet_ctc"
          else tf.Wav2Vec2FeatureExtractor(return_attention_mask=False))
    fe.save_pretrained(out)
    if vocab:
        vocab_tokenizer(vocab, out).save_pretrained(out)
    return out


class Killed(Exception):
    """What `kill_at` raises: a run interrupted as a kill -9 would, after a given optimizer step."""


def kill_at(monkeypatch, step: int) -> None:
    """Make training raise Killed right after optimizer step `step` (train.loop's after_step hook)."""
    from speechtune.train import loop

    def hook(s, state):
        if s == step:
            raise Killed
    monkeypatch.setattr(loop, "after_step", hook)


def build_tiny_voice(folder: Path, joe) -> Path:
    """A random FastSpeech2 voice folder on joe's phonemes, 32 wide (smaller than fastspeech2-tiny)."""
    import torch
    from transformers import FastSpeech2ConformerConfig, FastSpeech2ConformerModel

    from speechtune.tts.fastspeech import write_folder
    torch.manual_seed(0)
    config = FastSpeech2ConformerConfig(
        vocab_size=joe.config["num_symbols"], hidden_size=32, encoder_layers=1, decoder_layers=1,
        encoder_linear_units=64, decoder_linear_units=64, speech_decoder_postnet_layers=2,
        speech_decoder_postnet_units=32, duration_predictor_channels=32, energy_predictor_channels=32,
        pitch_predictor_channels=32, pitch_predictor_layers=1, decoder_kernel_size=7)
    meta = {"name": "tiny", "sample_rate": joe.sample_rate, "base_voice": "joe", "vocoder": "griffin-lim"}
    write_folder(folder, FastSpeech2ConformerModel(config), meta, joe.config)
    return folder


def assert_served_like_the_voice(folder: Path, text: str = "Good morning.") -> None:
    """`serve --voice FOLDER` answers /v1/audio/speech (through the openai client) with the voice's own
    samples, up to 16-bit WAV rounding."""
    import io

    import openai
    import soundfile as sf

    from speechtune.serve.recipe import start_server
    from speechtune.tts import load_voice
    expected = load_voice(folder).synthesize(text)
    with start_server("", voice=str(folder), api_key="k") as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        data = client.audio.speech.create(model="tts-1", voice=str(folder), input=text,
                                          response_format="wav").content
    wav, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 22050 and len(wav) == len(expected)
    np.testing.assert_allclose(wav, expected, atol=2 / 32768)  # 16-bit WAV: rounding and 32767 vs 32768 scale
