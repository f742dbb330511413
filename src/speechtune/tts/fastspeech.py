"""A FastSpeech2 voice: transformers' FastSpeech2ConformerModel reading a piper voice's phoneme ids, its mel
frames turned into audio by Griffin-Lim (tts/features.py). Same surface as a piper voice (tts/__init__.py).

A voice folder is what `speechtune train` saves for the TTS family:

    config.json, model.safetensors   the FastSpeech2ConformerModel (save_pretrained)
    phonemes.json                    the base piper voice's config: how text becomes ids (tts.piper.PiperText)
    speechtune_voice.json            {"name", "sample_rate", "base_voice", "vocoder": "griffin-lim",
                                      "stats": {"pitch": [mean, std], "energy": [mean, std],
                                      "mel": [[mean per band], [std per band]]}}: the training set's
                                      statistics its labels were standardised with

`new_model(num_symbols, preset)` builds an untrained model; PRESETS holds the sizes speechtune knows.
"""
from __future__ import annotations

import json
import threading
import weakref
from pathlib import Path

import numpy as np

from ..errors import SpeechtuneError
from . import features
from .piper import MAX_CHARS, PiperText, PiperTextVoice

VOICE_FILE = "speechtune_voice.json"
PHONEMES_FILE = "phonemes.json"
MODEL_TYPE = "fastspeech2_conformer"
# Sizes of a fresh model. "fastspeech2-tiny" (4.3M parameters) trains on a CPU: hidden 128, two conformer
# layers each side; FastSpeech2Conformer's own default is 384 wide and 4+4 layers deep (about 40M).
PRESETS = {
    "fastspeech2-tiny": dict(hidden_size=128, encoder_layers=2, decoder_layers=2, encoder_linear_units=512,
                             decoder_linear_units=512, speech_decoder_postnet_layers=3,
                             speech_decoder_postnet_units=128, duration_predictor_channels=128,
                             energy_predictor_channels=128, pitch_predictor_channels=128,
                             pitch_predictor_layers=2, decoder_kernel_size=15),
}
# a sentence's output is cut at this many frames per phoneme id (0.46 s each, about 10x a normal reading): a
# broken model's runaway durations cannot fill memory or minutes of audio
MAX_FRAMES_PER_ID = 40


def new_config(num_symbols: int, preset: str = "fastspeech2-tiny"):
    """The FastSpeech2ConformerConfig of a fresh voice of size `preset` on a phoneme map of `num_symbols` ids
    (train builds it; estimate plans it)."""
    from transformers import FastSpeech2ConformerConfig
    if preset not in PRESETS:
        raise SpeechtuneError(f"unknown voice model size {preset!r}", f"choose from: {', '.join(PRESETS)}")
    return FastSpeech2ConformerConfig(vocab_size=num_symbols, num_mel_bins=features.N_MELS, **PRESETS[preset])


def new_model(num_symbols: int, preset: str = "fastspeech2-tiny"):
    """An untrained FastSpeech2ConformerModel (new_config's)."""
    from transformers import FastSpeech2ConformerModel
    return FastSpeech2ConformerModel(new_config(num_symbols, preset))


_locks: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(model) -> threading.Lock:
    """One lock per model object, whichever voice wraps it: a call sets speaking_speed on the model's shared
    config and switches it to eval mode, so two calls on one model must not overlap."""
    with _locks_guard:
        return _locks.setdefault(model, threading.Lock())


def denormalize_mel(mel: np.ndarray, meta: dict) -> np.ndarray:
    """A model's standardised log-mel output back to log-mel, with the band statistics it trained on
    (meta["stats"]["mel"]: [means, stds]; a voice saved without them is returned as it is)."""
    stats = (meta.get("stats") or {}).get("mel")
    if not stats:
        return mel
    mean, std = (np.asarray(x, np.float32) for x in stats)
    return mel * std + mean


def is_voice_folder(path: Path) -> bool:
    return (Path(path) / VOICE_FILE).is_file() and (Path(path) / PHONEMES_FILE).is_file()


def read_folder(folder: Path) -> tuple[dict, dict]:
    """(speechtune_voice.json, phonemes.json) of a voice folder; a one-line error naming a bad file."""
    out = []
    for name in (VOICE_FILE, PHONEMES_FILE):
        p = Path(folder) / name
        try:
            out.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise SpeechtuneError(f"{p}: not readable ({e.__class__.__name__})",
                                  "a FastSpeech2 voice folder is what `speechtune train` writes") from None
    return out[0], out[1]


def write_folder(folder: Path, model, meta: dict, phonemes: dict) -> None:
    """Save the model and both JSON files into `folder` (train's save; the folder is moved into place after)."""
    from ..files import write_atomic
    folder = Path(folder)
    model.save_pretrained(folder)
    write_atomic(folder / VOICE_FILE, json.dumps(meta, indent=2) + "\n")
    write_atomic(folder / PHONEMES_FILE, json.dumps(phonemes, ensure_ascii=False, indent=1) + "\n")


class FastSpeechVoice(PiperTextVoice):
    """voice.synthesize(text, speed=1.0, seed=0) -> float32 mono at voice.sample_rate (see tts/__init__.py).
    Deterministic: the model runs in eval mode (no dropout) and Griffin-Lim starts from a fixed phase, so
    `seed` changes nothing; it is accepted for the common surface."""

    def __init__(self, model, phonemes: dict, meta: dict, path: Path | None = None, max_chars: int = MAX_CHARS,
                 aliases=()):
        self.model, self.meta, self.path = model, meta, Path(path) if path else None
        self.name = meta.get("name") or (self.path.name if self.path else "fastspeech2")
        self.aliases = tuple(dict.fromkeys([self.name, *aliases]))
        where = self.path / VOICE_FILE if self.path else "the voice"
        try:
            self.sample_rate = int(meta["sample_rate"])
            self.text = PiperText(phonemes, max_chars)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SpeechtuneError(f"{where}: incomplete voice files ({e.__class__.__name__}: {e})",
                                  "re-run `speechtune train`, which writes a complete folder") from None
        self.config, self.id_map = phonemes, self.text.id_map   # as a piper voice has them
        self.language, self.max_chars = self.text.language, max_chars
        self.has_durations = False   # its durations are predictions: it cannot align recordings

    @classmethod
    def load(cls, folder: Path, threads: int = 0, max_chars: int = MAX_CHARS, aliases=()) -> "FastSpeechVoice":
        import torch
        from transformers import FastSpeech2ConformerModel
        meta, phonemes = read_folder(folder)
        if threads:
            torch.set_num_threads(threads)
        try:
            model = FastSpeech2ConformerModel.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise SpeechtuneError(f"{folder}: the FastSpeech2 weights do not load ({e.__class__.__name__})",
                                  "re-run `speechtune train`, which writes a complete folder") from None
        return cls(model.eval(), phonemes, meta, path=folder, max_chars=max_chars, aliases=aliases)

    def __repr__(self) -> str:
        return f"FastSpeechVoice({self.name!r}, {self.sample_rate} Hz, {self.path})"

    def mel_ids(self, ids: list[int], speed: float = 1.0) -> np.ndarray:
        """One sentence's ids -> its predicted log-mel frames [n_frames, N_MELS]."""
        import torch
        with model_lock(self.model), torch.no_grad():
            was_training = self.model.training
            self.model.eval()
            self.model.config.speaking_speed = 1.0 / speed  # FastSpeech2 multiplies durations by it
            try:
                device = next(self.model.parameters()).device  # a model training on a GPU is evaluated there
                out = self.model(input_ids=torch.tensor([ids], device=device), return_dict=True)
            finally:
                self.model.config.speaking_speed = 1.0
                self.model.train(was_training)
        mel = denormalize_mel(out.spectrogram[0].float().cpu().numpy(), self.meta)
        return mel[: MAX_FRAMES_PER_ID * len(ids)]

    def synthesize_ids(self, ids: list[int], speed: float = 1.0, seed: int = 0, speaker=None) -> np.ndarray:
        return features.to_audio(self.mel_ids(ids, speed), self.sample_rate)
