"""Synthesized audio -> the bytes of a file: wav, flac, mp3, opus, aac (and m4a for files), or raw pcm.

The formats and rates are those of OpenAI's /v1/audio/speech: `pcm` is raw 16-bit little-endian mono at
24 kHz (what the `openai` client and its players expect); `opus` is Ogg Opus at 24 kHz (libopus takes 8, 12,
16, 24 or 48 kHz, not piper's 22.05); the others keep the voice's own rate, which their headers carry. wav
is 16-bit PCM (stdlib writer), flac goes through libsndfile, mp3/opus/aac/m4a through PyAV's FFmpeg
encoders (libmp3lame, libopus, aac). A PyAV build without one of those encoders makes that format
unavailable, said in one line by `unavailable(fmt)`, never a crash mid-request.
"""
from __future__ import annotations

import io
import wave

import numpy as np

from ..errors import SpeechtuneError

PCM_RATE = 24000
# format -> (content type, PyAV container, PyAV encoder, fixed rate or None for the voice's own)
FORMATS = {
    "mp3": ("audio/mpeg", "mp3", "libmp3lame", None),
    "opus": ("audio/ogg", "ogg", "libopus", 24000),
    "aac": ("audio/aac", "adts", "aac", None),
    "flac": ("audio/flac", None, None, None),
    "wav": ("audio/wav", None, None, None),
    "pcm": ("audio/pcm", None, None, PCM_RATE),
}
# file extensions `speechtune speak --out` understands, beyond the format names
EXTENSIONS = {"ogg": "opus", "m4a": "m4a", "mp4": "m4a", "raw": "pcm", "wave": "wav"}
_FILE_ONLY = {"m4a": ("audio/mp4", "ipod", "aac", None)}  # mp4 needs a seekable output: a file, not a stream
_BITRATES = {"libmp3lame": 64000, "libopus": 32000, "aac": 64000}


def _spec(fmt: str):
    spec = FORMATS.get(fmt) or _FILE_ONLY.get(fmt)
    if spec is None:
        raise SpeechtuneError(f"unknown audio format {fmt!r}", f"use one of {', '.join([*FORMATS, *_FILE_ONLY])}")
    return spec


def content_type(fmt: str) -> str:
    return _spec(fmt)[0]


def rate_for(fmt: str, sample_rate: int) -> int:
    """The rate a format is written at: fixed (pcm, opus: 24 kHz) or the voice's own."""
    return _spec(fmt)[3] or sample_rate


def unavailable(fmt: str) -> str | None:
    """Why this PyAV build cannot write `fmt` (a missing encoder), or None when it can."""
    encoder = _spec(fmt)[2]
    if encoder is None:
        return None
    try:
        import av
        av.codec.Codec(encoder, "w")
    except ImportError:
        return f"{fmt} needs PyAV (pip install av)"
    except Exception:
        return f"this server's FFmpeg (PyAV) has no {encoder} encoder, so it cannot write {fmt}"
    return None


def format_for_path(path) -> str:
    """The format a file name asks for: its extension (a.mp3 -> mp3, a.ogg -> opus)."""
    from pathlib import Path
    ext = Path(str(path)).suffix.lower().lstrip(".")
    fmt = EXTENSIONS.get(ext, ext)
    if fmt not in FORMATS and fmt not in _FILE_ONLY:
        raise SpeechtuneError(f"{path}: no audio format for the extension {'.' + ext if ext else '(none)'}",
                              "end the file name in .wav, .flac, .mp3, .opus/.ogg, .aac, .m4a or .pcm")
    return fmt


def _pcm16(wav: np.ndarray) -> np.ndarray:
    return (np.clip(wav, -1.0, 1.0) * 32767.0).round().astype("<i2")


def _av(wav: np.ndarray, sr: int, container: str, encoder: str) -> bytes:
    import av
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(encoder, rate=sr, layout="mono")
        if encoder in _BITRATES:
            stream.bit_rate = _BITRATES[encoder]
        frame = av.AudioFrame.from_ndarray(_pcm16(wav).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = sr
        for packet in stream.encode(frame):  # PyAV converts the sample format and cuts codec-sized frames
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def encode(wav: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """float mono samples at `sample_rate` -> the bytes of `fmt` (resampled where the format fixes a rate)."""
    from ..audio import resample
    _, container, encoder, _ = _spec(fmt)
    reason = unavailable(fmt)
    if reason:
        raise SpeechtuneError(reason, "use wav, flac or pcm, or install a PyAV build with that encoder")
    sr = rate_for(fmt, sample_rate)
    wav = resample(np.asarray(wav, dtype=np.float32), sample_rate, sr)
    if fmt == "pcm":
        return _pcm16(wav).tobytes()
    if fmt == "wav":
        buf = io.BytesIO()
        with wave.open(buf, "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(sr)
            f.writeframes(_pcm16(wav).tobytes())
        return buf.getvalue()
    if fmt == "flac":
        import soundfile as sf
        buf = io.BytesIO()
        sf.write(buf, wav, sr, format="FLAC", subtype="PCM_16")
        return buf.getvalue()
    return _av(wav, sr, container, encoder)
