"""A built-in, deterministic set of clips that hold no speech: every one should transcribe to no text.

Whisper writes text on silence ("you" on digital silence from tiny.en), and fine-tuning can make it worse; a
score on speech cannot show that. `compare` and train's evaluations decode this set and count the words
written on it, base vs tuned; `train --no-speech-ratio` mixes such clips into training with empty targets.

The set covers what a recording holds between utterances and what users upload by mistake: digital silence
(long and a 0.05 s sliver), room tone, hum, white and pink noise at several levels, a steady tone, music-like
chords, clicks, and, when speech is given, that speech reversed (speech-like spectra, no words). Everything is
made from a fixed seed, so the same clips come out on every machine and every run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..audio import SAMPLE_RATE

CLIP_SECONDS = 5.0  # long enough for a hallucination to develop, short enough that 12 clips decode in seconds
SHORT_SECONDS = 0.05  # a sliver: tiny.en wrote "you" on a 0.01 s upload
SEED = 1234  # the set's noise; fixed so every run scores the same clips
MAX_REVERSED = 3  # reversed-speech clips taken from the given speech (the first ones)


@dataclass(frozen=True)
class NoSpeechClip:
    """One clip of the set: `name` says what it is and its level (e.g. "white_noise_-40dBFS"); `kind` groups
    clips in reports (silence, noise, hum, tone, music, clicks, reversed); `wav` is mono float32 at 16 kHz."""
    name: str
    kind: str
    wav: np.ndarray


def _at_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    """`x` scaled to an RMS of `dbfs` dB relative to full scale."""
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) or 1.0
    return (x * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    """1/f noise: white noise shaped by 1/sqrt(f) in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum[1:] /= np.sqrt(f[1:])
    spectrum[0] = 0
    return np.fft.irfft(spectrum, n)


def _room_tone(rng: np.random.Generator, n: int) -> np.ndarray:
    """Brown-ish noise with its low rumble removed: the hiss of a quiet room and its air handling."""
    brown = np.cumsum(rng.standard_normal(n))
    brown -= np.convolve(brown, np.ones(400) / 400, mode="same")  # high-pass around 40 Hz
    return brown


def _hum(n: int, mains: float = 50.0) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    return sum(np.sin(2 * np.pi * mains * k * t) / k for k in range(1, 6))


def _chords(n: int) -> np.ndarray:
    """Four bars of a I-V-vi-IV progression, each note with harmonics and a decaying envelope."""
    t = np.arange(n // 4) / SAMPLE_RATE
    envelope = np.exp(-2.0 * t)
    progression = ((261.63, 329.63, 392.00), (196.00, 246.94, 293.66), (220.00, 261.63, 329.63),
                   (174.61, 220.00, 261.63))
    bars = [envelope * sum(np.sin(2 * np.pi * f * h * t) / h ** 2 for f in chord for h in (1, 2, 3))
            for chord in progression]
    out = np.concatenate(bars)
    return np.pad(out, (0, n - len(out)))


def _clicks(rng: np.random.Generator, n: int) -> np.ndarray:
    out = np.zeros(n)
    at = np.sort(rng.choice(n - 64, size=int(CLIP_SECONDS * 3), replace=False))
    for i in at:
        out[i:i + 64] += np.exp(-np.arange(64) / 8.0) * rng.choice((-1.0, 1.0))
    return out


def no_speech_clips(speech: list[np.ndarray] = (), seconds: float = CLIP_SECONDS) -> list[NoSpeechClip]:
    """The set, in a fixed order; `speech` (16 kHz waveforms, e.g. the guard's clips) adds up to MAX_REVERSED
    reversed-speech clips. Same arguments, same clips, bit for bit."""
    rng = np.random.default_rng(SEED)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    clips = [
        NoSpeechClip("digital_silence", "silence", np.zeros(n, np.float32)),
        NoSpeechClip("digital_silence_0.05s", "silence", np.zeros(int(SHORT_SECONDS * SAMPLE_RATE), np.float32)),
        NoSpeechClip("room_tone_-60dBFS", "noise", _at_dbfs(_room_tone(rng, n), -60)),
        NoSpeechClip("room_tone_-45dBFS", "noise", _at_dbfs(_room_tone(rng, n), -45)),
        NoSpeechClip("white_noise_-50dBFS", "noise", _at_dbfs(rng.standard_normal(n), -50)),
        NoSpeechClip("white_noise_-30dBFS", "noise", _at_dbfs(rng.standard_normal(n), -30)),
        NoSpeechClip("pink_noise_-35dBFS", "noise", _at_dbfs(_pink(rng, n), -35)),
        NoSpeechClip("mains_hum_-35dBFS", "hum", _at_dbfs(_hum(n) + 0.05 * rng.standard_normal(n), -35)),
        NoSpeechClip("tone_440Hz_-20dBFS", "tone", _at_dbfs(np.sin(2 * np.pi * 440 * t), -20)),
        NoSpeechClip("chords_-20dBFS", "music", _at_dbfs(_chords(n), -20)),
        NoSpeechClip("clicks_-40dBFS", "clicks", _at_dbfs(_clicks(rng, n), -40)),
    ]
    for i, wav in enumerate(list(speech)[:MAX_REVERSED]):
        clips.append(NoSpeechClip(f"reversed_speech_{i + 1}", "reversed", np.ascontiguousarray(
            np.asarray(wav, np.float32)[::-1])))
    return clips


# --- clips to train on (train --no-speech-ratio) -----------------------------------------------------------
# They must not be the clips above: a model trained on the evaluation set's clips would pass it without having
# learnt anything. Each training clip comes from its own generator, seeded with the run's seed, TRAIN_TAG and
# its index (never SEED's stream), with its length and level drawn from ranges, so no two runs' clips and no
# clip of `no_speech_clips()` coincide. Digital silence is left to the evaluation set: Whisper pads every clip
# to 30 s with zeros, so digital silence of any length is the same input as the set's; training gets
# near-silence (a quiet line's noise floor) instead, and the evaluation shows whether that carries over.
TRAIN_TAG = 0x6E73  # mixed into each training clip's seed, so no training clip comes from SEED's stream
TRAIN_SECONDS = (1.0, 12.0)  # lengths drawn for training clips: around the set's 5 s, never exactly it
# The order kinds are dealt in (clip i gets TRAIN_KINDS[i % len]); reversed speech, the most speech-like and
# the one fine-tunes write words on, gets two slots of nine. Without speech to reverse it is left out.
TRAIN_KINDS = ("near_silence", "reversed", "noise", "hum", "tone", "reversed", "music", "clicks", "noise")
MIN_REVERSED_S = 1.0  # shortest slice of speech reversed into a training clip


def _train_seconds(rng: np.random.Generator) -> float:
    return round(float(rng.uniform(*TRAIN_SECONDS)), 2)


def _transposed_chords(rng: np.random.Generator, n: int) -> np.ndarray:
    """A I-V-vi-IV progression like `_chords`, moved by -7..+7 semitones, bars of random length, a random
    number of harmonics."""
    shift = 2 ** (int(rng.integers(-7, 8)) / 12)
    bars = int(rng.integers(2, 7))
    t = np.arange(n // bars + 1) / SAMPLE_RATE
    envelope = np.exp(-float(rng.uniform(0.5, 4.0)) * t)
    roots = ((261.63, 329.63, 392.00), (196.00, 246.94, 293.66), (220.00, 261.63, 329.63),
             (174.61, 220.00, 261.63))
    harmonics = range(1, int(rng.integers(2, 6)))
    out = np.concatenate([envelope * sum(np.sin(2 * np.pi * f * shift * h * t) / h ** 2
                                         for f in roots[b % 4] for h in harmonics) for b in range(bars)])
    return out[:n]


def _random_clicks(rng: np.random.Generator, n: int) -> np.ndarray:
    out = np.zeros(n)
    count = max(1, int(n / SAMPLE_RATE * rng.uniform(1.0, 8.0)))
    decay = float(rng.uniform(3.0, 20.0))
    for i in rng.integers(0, max(1, n - 64), size=count):
        out[i:i + 64] += np.exp(-np.arange(len(out[i:i + 64])) / decay) * rng.choice((-1.0, 1.0))
    return out


def _reversed_slice(rng: np.random.Generator, speech: list[np.ndarray]) -> np.ndarray:
    """A random slice of one of `speech`, reversed, its level moved by -6..+6 dB."""
    wav = np.asarray(speech[int(rng.integers(len(speech)))], np.float32)
    n = len(wav)
    shortest = min(n, int(MIN_REVERSED_S * SAMPLE_RATE))
    length = int(rng.integers(shortest, n + 1)) if n > shortest else n
    start = int(rng.integers(0, n - length + 1))
    gain = 10 ** (float(rng.uniform(-6.0, 6.0)) / 20)
    return np.ascontiguousarray(np.clip(wav[start:start + length][::-1] * gain, -1.0, 1.0))


def training_no_speech_clip(i: int, seed: int, speech: list[np.ndarray] = ()) -> NoSpeechClip:
    """Training clip `i` of a run seeded `seed`: its kind is TRAIN_KINDS[i % len] (reversed speech only when
    `speech`, 16 kHz waveforms of the run's training clips, is given), its length, level and noise drawn from
    (seed, TRAIN_TAG, i) alone, so clip i is the same whatever the number of clips. Never a clip of
    `no_speech_clips()` (see TRAIN_TAG)."""
    kinds = [k for k in TRAIN_KINDS if speech or k != "reversed"]
    kind = kinds[i % len(kinds)]
    rng = np.random.default_rng([seed, TRAIN_TAG, i])
    if kind == "reversed":
        wav = _reversed_slice(rng, list(speech))
        return NoSpeechClip(f"reversed_speech_{len(wav) / SAMPLE_RATE:.2f}s", "reversed", wav)
    n = int(_train_seconds(rng) * SAMPLE_RATE)
    if kind == "near_silence":
        level = float(rng.uniform(-80, -65))
        return NoSpeechClip(f"near_silence_{level:.0f}dBFS", "silence", _at_dbfs(rng.standard_normal(n), level))
    if kind == "noise":
        colour = ("white", "pink", "room_tone")[int(rng.integers(3))]
        level = float(rng.uniform(-65, -25))
        x = {"white": lambda: rng.standard_normal(n), "pink": lambda: _pink(rng, n),
             "room_tone": lambda: _room_tone(rng, n)}[colour]()
        return NoSpeechClip(f"{colour}_noise_{level:.0f}dBFS", "noise", _at_dbfs(x, level))
    if kind == "hum":
        mains, level = (50.0, 60.0)[int(rng.integers(2))], float(rng.uniform(-50, -25))
        x = _hum(n, mains) + float(rng.uniform(0.0, 0.2)) * rng.standard_normal(n)
        return NoSpeechClip(f"mains_hum_{mains:.0f}Hz_{level:.0f}dBFS", "hum", _at_dbfs(x, level))
    if kind == "tone":
        f0, f1 = np.exp(rng.uniform(np.log(100), np.log(4000), size=2))  # a steady tone or a slow sweep
        f1 = f0 if rng.random() < 0.5 else f1
        phase = 2 * np.pi * np.cumsum(np.linspace(f0, f1, n)) / SAMPLE_RATE
        level = float(rng.uniform(-35, -15))
        return NoSpeechClip(f"tone_{f0:.0f}-{f1:.0f}Hz_{level:.0f}dBFS", "tone", _at_dbfs(np.sin(phase), level))
    if kind == "music":
        level = float(rng.uniform(-35, -15))
        return NoSpeechClip(f"chords_{level:.0f}dBFS", "music", _at_dbfs(_transposed_chords(rng, n), level))
    level = float(rng.uniform(-55, -30))
    return NoSpeechClip(f"clicks_{level:.0f}dBFS", "clicks", _at_dbfs(_random_clicks(rng, n), level))
