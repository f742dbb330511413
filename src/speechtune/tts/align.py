"""How long each phoneme lasts in a recording: the durations a FastSpeech2 voice trains on.

The method is aeneas's (forced alignment by synthesis and DTW), with a neural voice as the synthesizer: the
base piper voice reads the transcript, and its graph reports how many frames each phoneme id got
(`PiperVoice.render_ids`). Dynamic time warping between the MFCCs of that rendition and of the recording maps
each phoneme boundary of the rendition onto the recording. This needs no trained aligner and no network, and
the phoneme ids are exactly the base voice's. It is as good as the two readings are alike: a boundary lands
within a few frames where both say the same phonemes, and a recording that skips or adds words (which
`prepare --task tts` rejects by transcribing it) would be misaligned around them.

MFCCs are mean- and variance-normalised per utterance (the speaker's and the channel's average spectrum
removed), and c0 (loudness) is left out, so the path follows what is said rather than who says it.
"""
from __future__ import annotations

import numpy as np

from ..errors import SpeechtuneError
from .features import HOP_LENGTH, N_FFT, n_frames, require_librosa

N_MFCC = 20   # coefficients compared (c1..c19 after c0 is dropped)


def phoneme_sequence(voice, text: str) -> list[list[int]]:
    """The base voice's phoneme ids of `text`, one list per sentence (each with its ^ ... $ and pads)."""
    return [voice.phoneme_ids(s) for s in voice.phonemize(text)]


def render(voice, sentences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The base voice's reading of `sentences` (seed 0) and its frames per id, sentences concatenated."""
    if not getattr(voice, "has_durations", False):
        raise SpeechtuneError(f"voice {voice.name}: its graph does not report phoneme durations",
                              "align with a piper VITS voice (e.g. the bundled joe)")
    if voice.hop_length != HOP_LENGTH:
        raise SpeechtuneError(f"voice {voice.name}: {voice.hop_length} samples per frame; alignment and the "
                              f"mel features use {HOP_LENGTH}", "align with a piper voice of 256-sample frames "
                              "(piper's medium and high voices)")
    parts = [voice.render_ids(ids) for ids in sentences]
    return np.concatenate([a for a, _ in parts]), np.concatenate([d for _, d in parts])


def _mfcc(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    librosa = require_librosa()
    m = librosa.feature.mfcc(y=np.asarray(wav, np.float32), sr=sample_rate, n_mfcc=N_MFCC, n_fft=N_FFT,
                             hop_length=HOP_LENGTH)[1:]
    return (m - m.mean(axis=1, keepdims=True)) / (m.std(axis=1, keepdims=True) + 1e-6)


def warp_durations(ref_durations: np.ndarray, ref_wav: np.ndarray, wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """Durations of the same ids in `wav`: `ref_durations` (frames of `ref_wav`) moved along the DTW path.
    They sum to n_frames(len(wav)), the length of the recording's log-mel."""
    librosa = require_librosa()
    total = n_frames(len(wav))
    ref, tgt = _mfcc(ref_wav, sample_rate), _mfcc(wav, sample_rate)
    _, path = librosa.sequence.dtw(X=ref, Y=tgt, metric="euclidean")
    first = np.full(ref.shape[1], total, np.int64)  # the first recording frame each rendition frame maps to
    np.minimum.at(first, path[:, 0], path[:, 1])
    first = np.minimum.accumulate(first[::-1])[::-1]  # monotone even where the path skips a frame
    bounds = np.cumsum(np.asarray(ref_durations, np.int64))[:-1]
    starts = first[np.minimum(bounds, ref.shape[1] - 1)]
    edges = np.concatenate([[0], starts, [total]])
    return np.diff(np.maximum.accumulate(edges)).astype(np.int64)


def align(voice, text: str, wav: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(phoneme ids, frames per id) of a recording `wav` of `text` at the voice's rate; the durations sum
    to the recording's frame count."""
    if sample_rate != voice.sample_rate:
        raise SpeechtuneError(f"a {sample_rate} Hz recording cannot be aligned with voice {voice.name} "
                              f"({voice.sample_rate} Hz)", "prepare the data with `--task tts` for this voice")
    sentences = phoneme_sequence(voice, text)
    ref_wav, ref_durations = render(voice, sentences)
    ids = np.concatenate([np.asarray(s, np.int64) for s in sentences])
    return ids, warp_durations(ref_durations, ref_wav, wav, sample_rate)
