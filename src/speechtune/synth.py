"""Synthesize a labelled speech corpus with espeak-ng (voices, rates, pitches, optional noise).

espeak-ng comes from the `espeakng-loader` wheel (the shared library plus its voice data), so no system
package is needed. We drive the C library through ctypes in synchronous mode and collect the samples in a
callback: no temporary files, no subprocess.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, resample, write_wav
from .config import add_dataclass_args, build_config
from .errors import SpeechtuneError
from .files import write_jsonl

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


@dataclass
class SynthConfig:
    lang: str = field(default="en", metadata={"help": "language of the sentences", "choices": ["en", "zh"]})
    voices: list[str] = field(default_factory=lambda: VARIANTS[:4],
                              metadata={"help": "espeak-ng variants, one synthetic speaker each"})
    rates: list[int] = field(default_factory=lambda: [140, 165, 190], metadata={"help": "words per minute"})
    pitches: list[int] = field(default_factory=lambda: [35, 50, 65], metadata={"help": "0-100"})
    per_sentence: int = field(default=1, metadata={"help": "renditions of each sentence (different voices)"})
    noise_snr: list[float] | None = field(default=None, metadata={
        "help": "add background noise at this SNR in dB, or a range LOW HIGH drawn per clip"})
    noise: str = field(default="pink", metadata={"help": "noise colour", "choices": ["white", "pink", "brown"]})
    seed: int = field(default=0, metadata={"help": "same seed, same corpus"})


def read_sentences(path: str | Path) -> list[tuple[int, str]]:
    """(line number, sentence) for every non-blank line that is not a # comment."""
    p = Path(path)
    if not p.is_file():
        raise SpeechtuneError(f"sentences file not found: {p}", "pass a UTF-8 text file, one sentence per line")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise SpeechtuneError(f"{p}: not UTF-8 (byte {e.start})", "re-save the file as UTF-8") from None
    rows = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise SpeechtuneError(f"{p}: no sentences", "write one sentence per line")
    return rows


def colored_noise(n: int, rng: np.random.Generator, colour: str = "pink") -> np.ndarray:
    """Unit-RMS noise with a 1/f^alpha spectrum (white 0, pink 1, brown 2), shaped in the frequency domain."""
    alpha = {"white": 0.0, "pink": 1.0, "brown": 2.0}[colour]
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    noise = np.fft.irfft(spectrum / freqs ** (alpha / 2), n)
    return (noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)).astype(np.float32)


def add_noise(wav: np.ndarray, snr_db: float, rng: np.random.Generator, colour: str = "pink") -> np.ndarray:
    """Mix noise at `snr_db` relative to the speech power (measured on the non-silent part)."""
    voiced = wav[np.abs(wav) > 0.02 * np.abs(wav).max()] if wav.size and np.abs(wav).max() > 0 else wav
    speech_rms = np.sqrt(np.mean(voiced ** 2)) if voiced.size else 0.0
    noisy = wav + colored_noise(len(wav), rng, colour) * speech_rms / 10 ** (snr_db / 20)
    peak = np.abs(noisy).max()
    return (noisy / peak * 0.95 if peak > 0.99 else noisy).astype(np.float32)


def plan(sentences: list[tuple[int, str]], cfg: SynthConfig) -> list[dict]:
    """Which voice, rate, pitch and SNR each clip gets. Voices rotate so every speaker gets an equal share
    and the renditions of one sentence are all different voices; the rest is drawn from the seed."""
    if not cfg.voices:
        raise SpeechtuneError("no voices given", f"pass --voices, e.g. {' '.join(VARIANTS[:4])}")
    if cfg.per_sentence < 1 or cfg.per_sentence > len(cfg.voices):
        raise SpeechtuneError(f"--per-sentence must be between 1 and the number of voices ({len(cfg.voices)})")
    if cfg.noise_snr is not None and len(cfg.noise_snr) not in (1, 2):
        raise SpeechtuneError("--noise-snr takes one value (dB) or a range LOW HIGH")
    for v in cfg.voices:
        voice_name(cfg.lang, v)  # fail on a typo before synthesizing anything
    rng = np.random.default_rng(cfg.seed)
    offset = int(rng.integers(len(cfg.voices)))
    clips = []
    for i, (line, text) in enumerate(sentences):
        for k in range(cfg.per_sentence):
            voice = cfg.voices[(offset + i * cfg.per_sentence + k) % len(cfg.voices)]
            snr = None
            if cfg.noise_snr:
                lo, hi = cfg.noise_snr[0], cfg.noise_snr[-1]
                snr = round(float(rng.uniform(lo, hi)), 1)
            clips.append(dict(line=line, text=text, voice=voice, rate=int(rng.choice(cfg.rates)),
                              pitch=int(rng.choice(cfg.pitches)), snr_db=snr,
                              noise_seed=int(rng.integers(2 ** 31)), name=f"{len(clips):05d}-{voice}.wav"))
    return clips


def synth_corpus(sentences: str | Path | list[str], out_dir: str | Path, lang: str = "en",
                 progress: bool = True, **options) -> Path:
    """Synthesize every sentence into out_dir/wavs/ and write out_dir/manifest.jsonl; returns its path.

    `sentences` is a text file (one per line) or a list of strings; options are SynthConfig fields.
    """
    cfg = SynthConfig(lang=lang, **options)
    source = str(sentences) if isinstance(sentences, (str, Path)) else "<list>"
    rows = read_sentences(sentences) if isinstance(sentences, (str, Path)) else [
        (n, s.strip()) for n, s in enumerate(sentences, 1) if s.strip()]
    if not rows:
        raise SpeechtuneError("no sentences to synthesize")
    clips = plan(rows, cfg)
    out = Path(out_dir)
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm
    lines = []
    for c in tqdm(clips, desc="synth", unit="clip", disable=not progress):
        wav = speak(c["text"], cfg.lang, c["voice"], c["rate"], c["pitch"])
        if c["snr_db"] is not None:
            wav = add_noise(wav, c["snr_db"], np.random.default_rng(c["noise_seed"]), cfg.noise)
        write_wav(out / "wavs" / c["name"], wav)
        lines.append(dict(audio=f"wavs/{c['name']}", text=c["text"], duration=round(len(wav) / SAMPLE_RATE, 3),
                          speaker=c["voice"], language=cfg.lang, source=f"{Path(source).name}:{c['line']}",
                          voice=voice_name(cfg.lang, c["voice"]), rate=c["rate"], pitch=c["pitch"],
                          snr_db=c["snr_db"]))
    manifest = out / "manifest.jsonl"
    write_jsonl(manifest, lines)
    (out / "synth.json").write_text(json.dumps(dict(dataclasses.asdict(cfg), sentences=source), indent=2,
                                               ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def add_arguments(parser) -> None:
    parser.add_argument("sentences", help="UTF-8 text file, one sentence per line (# comments skipped)")
    parser.add_argument("--out", required=True, help="output folder: wavs/ + manifest.jsonl")
    parser.add_argument("--config", help="YAML file with any of the options below")
    add_dataclass_args(parser, SynthConfig)


def main(args) -> int:
    cfg = build_config(SynthConfig, args.config, args)
    options = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "lang"}
    manifest = synth_corpus(args.sentences, args.out, cfg.lang, **options)
    with open(manifest, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    hours = sum(r["duration"] for r in rows) / 3600
    print(f"wrote {len(rows)} clips ({hours * 60:.1f} min, {len(set(r['speaker'] for r in rows))} voices) "
          f"-> {manifest}")
    return 0
