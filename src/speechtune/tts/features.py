"""What a voice model is trained on and what it outputs: log-mel frames, and per-frame pitch and energy.

One frame is HOP_LENGTH samples at the voice's rate (256 at 22.05 kHz: 11.6 ms, as piper and HiFi-GAN use),
so a phoneme lasting d frames covers d x 256 samples, the unit of piper's durations too. A clip of n samples
has `n_frames(n)` = 1 + n // 256 frames (centred STFT). A mel spectrogram goes back to audio with
Griffin-Lim (`to_audio`): no neural vocoder ships offline, so this is the vocoder of FastSpeech2 voices.
"""
from __future__ import annotations

import functools

import numpy as np

from ..errors import SpeechtuneError
from .piper import PEAK

N_FFT = 1024        # STFT size (46 ms at 22.05 kHz)
HOP_LENGTH = 256    # samples per frame
N_MELS = 80         # mel bands, as FastSpeech2Conformer's default num_mel_bins
F_MIN, F_MAX = 0.0, 8000.0   # band edges in Hz: speech energy above 8 kHz adds little and costs bands
LOG_FLOOR = 1e-5    # magnitudes below this are clamped before the log (-11.5): silence has a floor
PITCH_RANGE = (65.0, 500.0)  # Hz searched for f0: low male to high female/child voices
VOICED_DB = -35.0   # a frame this far below the clip's loudest frame is unvoiced (its pitch is 0)
GRIFFIN_LIM_ITERS = 32  # more iterations sound barely better and cost linearly (librosa's default)


def require_librosa():
    """librosa, or a one-line error saying how to install it (the tts extra)."""
    try:
        import librosa as module
    except ModuleNotFoundError:
        raise SpeechtuneError("training and aligning voices needs librosa, which is not installed",
                              "pip install 'speechtune[tts]'") from None
    return module


def n_frames(n_samples: int) -> int:
    return 1 + n_samples // HOP_LENGTH


def _stft_magnitude(wav: np.ndarray) -> np.ndarray:
    librosa = require_librosa()
    return np.abs(librosa.stft(np.asarray(wav, np.float32), n_fft=N_FFT, hop_length=HOP_LENGTH, win_length=N_FFT))


@functools.lru_cache(maxsize=4)
def _mel_basis(sample_rate: int) -> np.ndarray:
    librosa = require_librosa()
    return librosa.filters.mel(sr=sample_rate, n_fft=N_FFT, n_mels=N_MELS, fmin=F_MIN, fmax=F_MAX)


@functools.lru_cache(maxsize=4)
def _mel_inverse(sample_rate: int) -> np.ndarray:
    # the pseudo-inverse, not librosa's NNLS: Griffin-Lim on 5 s of audio took 0.2 s instead of 3.5 s and Griffin-Lim
    # then sounds the same, since the negative values it allows are clipped
    return np.linalg.pinv(_mel_basis(sample_rate))


def log_mel(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """[n_frames, N_MELS] float32 natural-log mel magnitudes."""
    mel = _mel_basis(sample_rate) @ _stft_magnitude(wav)
    return np.log(np.maximum(mel, LOG_FLOOR)).T.astype(np.float32)


def energy(wav: np.ndarray) -> np.ndarray:
    """[n_frames] L2 norm of each frame's STFT magnitude (FastSpeech2's energy)."""
    return np.linalg.norm(_stft_magnitude(wav), axis=0).astype(np.float32)


def pitch(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """[n_frames] f0 in Hz (YIN), 0 where the frame is unvoiced (quieter than VOICED_DB below the loudest)."""
    librosa = require_librosa()
    wav = np.asarray(wav, np.float32)
    f0 = librosa.yin(wav, fmin=PITCH_RANGE[0], fmax=PITCH_RANGE[1], sr=sample_rate, frame_length=N_FFT,
                     hop_length=HOP_LENGTH)
    rms = librosa.feature.rms(y=wav, frame_length=N_FFT, hop_length=HOP_LENGTH)[0]
    db = 20 * np.log10(np.maximum(rms, 1e-9) / max(float(rms.max()), 1e-9))
    return np.where(db > VOICED_DB, f0, 0.0).astype(np.float32)


def token_average(values: np.ndarray, durations: np.ndarray, voiced_only: bool = False) -> np.ndarray:
    """The mean of `values` over each token's frames ([n_tokens]); 0 for a token of no frames (or, with
    `voiced_only`, of no frame above 0: FastSpeech2's token-averaged pitch ignores unvoiced frames)."""
    out = np.zeros(len(durations), np.float32)
    start = 0
    for i, d in enumerate(np.asarray(durations, np.int64)):
        seg = values[start:start + d]
        if voiced_only:
            seg = seg[seg > 0]
        if seg.size:
            out[i] = seg.mean()
        start += d
    return out


def to_audio(log_mel_frames: np.ndarray, sample_rate: int) -> np.ndarray:
    """A log-mel spectrogram [n_frames, N_MELS] -> float32 audio (Griffin-Lim), peak-normalised to piper's PEAK, as piper's voices are."""
    librosa = require_librosa()
    mel = np.exp(np.asarray(log_mel_frames, np.float32).T)
    magnitude = np.maximum(_mel_inverse(sample_rate) @ mel, 0.0)
    wav = librosa.griffinlim(magnitude, n_iter=GRIFFIN_LIM_ITERS, hop_length=HOP_LENGTH, win_length=N_FFT,
                             n_fft=N_FFT, random_state=0)
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    return (wav * (PEAK / peak) if peak > 1e-6 else wav).astype(np.float32)
