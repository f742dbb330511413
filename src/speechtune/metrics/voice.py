"""How a voice sounds, measured offline: speaker similarity (resemblyzer's d-vectors, cosine) and mel cepstral
distortion against recordings (mel-cepstral-distance, DTW-aligned). Intelligibility, the third proof metric,
is recognition's own scoring (metrics.score) of what the bundled Whisper hears in the synthesized audio.

These libraries come with `pip install 'speechtune[tts]'`; without them each function raises a one-line
SpeechtuneError saying so.
"""
from __future__ import annotations

import functools

import numpy as np

from ..errors import SpeechtuneError

ENCODER_RATE = 16000   # resemblyzer's encoder reads 16 kHz audio
_TTS_HINT = "pip install 'speechtune[tts]' (resemblyzer, mel-cepstral-distance, speechmos)"


@functools.lru_cache(maxsize=1)
def _encoder():
    try:
        from resemblyzer import VoiceEncoder
    except ModuleNotFoundError as e:
        # name what is missing: a dependency of resemblyzer that fails to import is not "resemblyzer missing"
        missing = "resemblyzer" if e.name == "resemblyzer" else f"resemblyzer's dependency {e.name}"
        raise SpeechtuneError(f"speaker similarity needs {missing}, which is not installed", _TTS_HINT) from None
    # its 17 MB weights ship in the wheel: nothing is downloaded
    return VoiceEncoder("cpu", verbose=False)


def speaker_embeddings(wavs: list[np.ndarray], sample_rate: int) -> np.ndarray:
    """One unit-length 256-d speaker embedding per clip ([n, 256] float32). Clips are resampled to 16 kHz and
    their silences cut (resemblyzer's preprocess_wav) first; a clip with no voiced audio left gets a zero row,
    which has similarity 0 to everything.

    Computed on one torch thread (the process's count is restored after): resemblyzer's LSTM multiplies a few
    256-wide vectors per step, too little work to share. 6 joe clips on 2 busy cores took 0.42 s on one
    thread, 1.7-51 s on two (the threads wait on each other)."""
    import torch
    encoder = _encoder()   # first: its import error is the one-line one
    from resemblyzer import preprocess_wav

    from ..audio import resample
    out = np.zeros((len(wavs), 256), np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i, wav in enumerate(wavs):
            x = resample(np.asarray(wav, np.float32), sample_rate, ENCODER_RATE)
            x = preprocess_wav(x, source_sr=ENCODER_RATE)
            if x.size >= ENCODER_RATE // 4:  # under 0.25 s of voice: nothing a d-vector can describe
                out[i] = encoder.embed_utterance(x)
    finally:
        torch.set_num_threads(threads)
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [n, d] arrays (0 where a row is all zeros)."""
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return np.where((na > 0) & (nb > 0), (a * b).sum(-1) / np.maximum(na * nb, 1e-12), 0.0)


# Mel cepstral distortion, Kubichek's measure as mel-cepstral-distance computes it: 32 ms Hann windows every
# 8 ms, 20 mel bands of log10 energy, coefficients 1-15 (0, the energy, left out), frames DTW-aligned.
MCD_FFT_MS = 32
MCD_HOP_MS = 8
MCD_BANDS = 20
MCD_COEFFS = (1, 16)   # [s, D) of the cepstrum
MCD_DTW_RADIUS = 10    # the package's default Sakoe-Chiba radius, in frames
# The package's cepstrum is an unnormalised DCT (no 2/M) of log10 energies, with no scale (alpha = 1): 2/M
# makes it the usual cepstrum, 10 puts it in dB and sqrt(2) is the two-sided convention of the MCD figures
# TTS papers print (10 sqrt(2) / ln 10 for natural-log cepstra), so values read like theirs (about 4-8 dB).
MCD_DB = 10 * np.sqrt(2) * 2 / MCD_BANDS

LEVEL_FRAME_S = 0.01   # frames of frame_levels, 10 ms
SILENCE_BELOW_PEAK_DB = 40  # trim_silence: frames this far below the loudest are pauses
SILENCE_FLOOR_DBFS = -60    # ... and a clip whose loudest frame is below this is all silence


def _mcd_library():
    try:
        import mel_cepstral_distance
    except ModuleNotFoundError:
        raise SpeechtuneError("mel cepstral distortion needs mel-cepstral-distance, which is not installed",
                              _TTS_HINT) from None
    return mel_cepstral_distance


def frame_levels(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS level of each 10 ms frame in dBFS (a trailing part frame dropped; -inf for digital silence)."""
    n = max(1, int(LEVEL_FRAME_S * sample_rate))
    x = np.asarray(wav, np.float64)
    frames = x[:x.size // n * n].reshape(-1, n)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(np.square(frames).mean(axis=1))


def trim_silence(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """`wav` from its first to its last frame within SILENCE_BELOW_PEAK_DB of its loudest frame; empty when
    even the loudest frame is under SILENCE_FLOOR_DBFS. Leading and trailing pauses differ between voices
    and say nothing about how a voice sounds."""
    levels = frame_levels(wav, sample_rate)
    if not levels.size or levels.max() < SILENCE_FLOOR_DBFS:
        return np.zeros(0, np.float32)
    loud = np.flatnonzero(levels >= levels.max() - SILENCE_BELOW_PEAK_DB)
    n = max(1, int(LEVEL_FRAME_S * sample_rate))
    return np.asarray(wav[loud[0] * n:(loud[-1] + 1) * n], np.float32)


def _stft(wav: np.ndarray, sample_rate: int, fft_ms: float, hop_ms: float) -> np.ndarray:
    """The package's own STFT ([frames, bins] complex) of a peak-normalised clip, as compare_audio_files
    makes it from a file; its public API reads only files, this takes arrays."""
    from mel_cepstral_distance.computation import get_X_km
    from mel_cepstral_distance.helper import ms_to_samples
    n_fft = ms_to_samples(fft_ms, sample_rate)
    x = np.asarray(wav, np.float64)
    if x.size <= n_fft:
        return np.zeros((0, n_fft // 2 + 1), np.complex128)
    x = x / np.abs(x).max()
    return get_X_km(x, n_fft, n_fft, ms_to_samples(hop_ms, sample_rate), "hanning")


def mel_cepstral_distortion(wav: np.ndarray, ref: np.ndarray, sample_rate: int) -> float:
    """MCD in dB between a synthesized clip and a recording of the same sentence, both at `sample_rate`:
    leading and trailing silence trimmed (trim_silence), frames aligned by DTW. 0 for the same audio; NaN
    when either clip has no audible frames (or is shorter than one 32 ms window)."""
    lib = _mcd_library()
    a = _stft(trim_silence(ref, sample_rate), sample_rate, MCD_FFT_MS, MCD_HOP_MS)
    b = _stft(trim_silence(wav, sample_rate), sample_rate, MCD_FFT_MS, MCD_HOP_MS)
    if not len(a) or not len(b):
        return float("nan")
    mcd, _penalty = lib.compare_amplitude_spectrograms(
        a, b, sample_rate, MCD_FFT_MS, M=MCD_BANDS, s=MCD_COEFFS[0], D=MCD_COEFFS[1], aligning="dtw",
        align_target="mel", dtw_radius=MCD_DTW_RADIUS)
    return float(mcd) * MCD_DB


def log_mel(wav: np.ndarray, sample_rate: int, bands: int = 80, hop_ms: float = 10.0) -> np.ndarray:
    """A log-mel spectrogram in dB ([frames, bands], 32 ms windows), the filters MCD uses with more bands:
    what a report draws. No frames for a clip shorter than one window."""
    _mcd_library()
    from mel_cepstral_distance.computation import get_w_n_m, get_X_kn
    from mel_cepstral_distance.helper import ms_to_samples
    spec = _stft(wav, sample_rate, MCD_FFT_MS, hop_ms) if np.any(wav) else np.zeros((0, 1))
    if not len(spec):
        return np.zeros((0, bands), np.float32)
    filters = get_w_n_m(sample_rate, ms_to_samples(MCD_FFT_MS, sample_rate), bands, 0, sample_rate // 2)
    return (10 * get_X_kn(spec, filters)).astype(np.float32)


def dnsmos(wavs_16k: list[np.ndarray]) -> np.ndarray:
    """DNSMOS P.835 overall quality (OVRL, 1-5) of each 16 kHz clip: Microsoft's non-intrusive predictor, its
    ONNX models shipped in the speechmos wheel (MIT). A no-regression guard, not proof of a better voice: it
    judges how clean a clip sounds, not whose voice it is (the study behind issue 22 saw it score espeak-ng
    above vocoded natural speech). NaN for a clip under a quarter second."""
    try:
        from speechmos import dnsmos as model
    except ModuleNotFoundError:
        raise SpeechtuneError("the DNSMOS guard needs speechmos, which is not installed", _TTS_HINT) from None
    out = np.full(len(wavs_16k), np.nan)
    for i, wav in enumerate(wavs_16k):
        x = np.clip(np.asarray(wav, np.float32), -1.0, 1.0)
        if x.size >= ENCODER_RATE // 4:
            out[i] = float(model.run(x, sr=ENCODER_RATE)["ovrl_mos"])
    return out
