"""Synthesize a labelled speech corpus with espeak-ng (voices, rates, pitches, optional noise).

espeak-ng comes from the `espeakng-loader` wheel (the shared library plus its voice data), so no system
package is needed. We drive the C library through ctypes in synchronous mode and collect the samples in a
callback: no temporary files, no subprocess.
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, resample
from .errors import SpeechtuneError

LANG_VOICES = {"en": "en-us", "zh": "cmn"}
# espeak-ng "variants" (voices/!v) change the formants and glottal source, which is as close to different
# speakers as espeak gets. These are the clearest-sounding ones; klatt variants use another synthesizer.
VARIANTS = ["m1", "f1", "m3", "f3", "m7", "f4", "klatt", "klatt4"]
DEFAULT_RATE = 165   # words per minute, espeak-ng's own default is 175
DEFAULT_PITCH = 50   # 0-100

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
# The library is one global synthesizer per process; the lock serialises threads. Worker processes load
# their own copy, so they need nothing more.
_lock = threading.Lock()


def _espeak(text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, int]:
    """One utterance from a freshly loaded library.

    espeak-ng keeps function-level statics (pitch flutter position, echo buffer) across utterances and
    espeak_Terminate does not reset them, so the same call gave slightly different audio depending on what
    was spoken before. Loading and unloading the library per call (under a millisecond) makes
    speak(text, voice) a pure function, which reproducible corpora and test fixtures need.
    """
    import _ctypes
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    try:
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if sr <= 0:
            raise SpeechtuneError("espeak-ng failed to initialise", "reinstall espeakng-loader")
        chunks: list[np.ndarray] = []

        def on_audio(wav, n, _events):
            if n > 0 and wav:
                chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0  # 0 = continue

        callback = _CALLBACK(on_audio)  # held in a local until Terminate, so ctypes cannot free it early
        lib.espeak_SetSynthCallback(callback)
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise SpeechtuneError(f"espeak-ng has no voice {voice!r}",
                                  "use a language voice like en-us or cmn, optionally with +variant (en-us+f3)")
        lib.espeak_SetParameter(_RATE, int(rate), 0)
        lib.espeak_SetParameter(_PITCH, int(pitch), 0)
        lib.espeak_ng_SetRandSeed(0)
        data = text.encode("utf-8") + b"\0"
        err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise SpeechtuneError(f"espeak-ng failed to synthesize {text[:40]!r} (error {err})")
        lib.espeak_Synchronize()
        lib.espeak_Terminate()
    finally:
        _ctypes.dlclose(lib._handle)
    wav = np.concatenate(chunks).astype(np.float32) / 32768.0 if chunks else np.zeros(0, np.float32)
    return wav, sr


def variants() -> list[str]:
    """Names of the voice variants bundled with espeak-ng (voices/!v)."""
    import espeakng_loader
    return sorted(p.name for p in (Path(espeakng_loader.get_data_path()) / "voices" / "!v").iterdir())


def voice_name(lang: str = "en", variant: str | None = None) -> str:
    """`en` + `f3` -> `en-us+f3`. A full espeak voice name (`en-gb+m2`, `cmn`) passes through."""
    if lang not in LANG_VOICES:
        raise SpeechtuneError(f"unsupported language {lang!r} for synth", f"use one of {', '.join(LANG_VOICES)}")
    if not variant:
        return LANG_VOICES[lang]
    base, _, var = variant.rpartition("+") if "+" in variant else ("", "", variant)
    if not base and ("-" in var or var in LANG_VOICES.values()):
        return variant  # a language voice without variant, e.g. en-gb
    if var not in variants():
        # espeak-ng silently ignores an unknown variant; a typo would give the same voice for every "speaker"
        raise SpeechtuneError(f"unknown espeak-ng voice variant {var!r}",
                              f"choose from: {', '.join(variants())}")
    return f"{base or LANG_VOICES[lang]}+{var}"


def speak(text: str, lang: str = "en", voice: str | None = None, rate: int | None = None,
          pitch: int | None = None) -> np.ndarray:
    """Text -> float32 mono waveform at 16 kHz. `voice` is a variant (`f3`) or a full espeak voice name."""
    name = voice_name(lang, voice)
    with _lock:
        wav, sr = _espeak(text, name, rate or DEFAULT_RATE, DEFAULT_PITCH if pitch is None else pitch)
    return resample(wav, sr, SAMPLE_RATE)


def add_arguments(parser) -> None:
    parser.add_argument("sentences", help="text file, one sentence per line")


def main(args) -> int:
    raise SpeechtuneError("synth corpus generation is not finished yet", "use speechtune.synth.speak meanwhile")
