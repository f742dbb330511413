"""The only module that touches codecs: decode any common format, downmix, resample to 16 kHz.

soundfile (libsndfile) is tried first because it is fast and exact for wav/flac/ogg; PyAV (FFmpeg) takes
everything else (mp3, m4a/aac, opus, video containers). Every failure is an AudioError with a reason code
that `prepare` writes to rejects.jsonl and `serve` maps to an HTTP status.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from .errors import SpeechtuneError

# Every model speechtune runs, and every prepared clip, is 16 kHz mono float32.
SAMPLE_RATE = 16000
# Whisper's encoder sees exactly 30 s (3000 mel frames); shorter clips are padded, longer ones are decoded in
# windows. Also the longest clip a batched decoding call takes.
WINDOW_S = 30.0
WINDOW_SAMPLES = int(WINDOW_S * SAMPLE_RATE)


class AudioError(SpeechtuneError):
    """reason is one of: missing_file, empty_audio, undecodable, non_finite, audio_too_long."""

    def __init__(self, source: str, reason: str, detail: str):
        super().__init__(f"{source}: {detail}")
        self.source, self.reason, self.detail = source, reason, detail


def _decode_soundfile(src) -> tuple[np.ndarray, int]:
    import soundfile as sf
    data, sr = sf.read(src, dtype="float32", always_2d=True)
    return data.mean(axis=1), sr


class TooLong(Exception):
    """Raised inside a decoder once the audio passes `max_seconds`; decode() turns it into an AudioError."""

    def __init__(self, seconds: float):
        super().__init__(seconds)
        self.seconds = seconds


def _decode_av(src, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    import av
    with av.open(src) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        sr = stream.codec_context.sample_rate or stream.rate
        # The resampler only converts sample format and layout here; soxr does the rate change, better.
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks, n = [], 0
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
                n += chunks[-1].size
            if max_seconds is not None and n > max_seconds * sr:  # stop decoding: no header said how long
                raise TooLong(n / sr)
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        return np.zeros(0, dtype=np.float32), sr
    return np.concatenate(chunks).astype(np.float32), sr


def resample(wav: np.ndarray, sr: int, target: int = SAMPLE_RATE) -> np.ndarray:
    if sr == target or wav.size == 0:
        return wav.astype(np.float32, copy=False)
    import soxr
    return soxr.resample(wav, sr, target, quality="HQ").astype(np.float32)


def header_seconds(src) -> float | None:
    """How long the audio says it is (libsndfile's frame count, else the container's duration), without
    decoding it; None when neither knows."""
    try:
        import soundfile as sf
        info = sf.info(src)
        return info.frames / info.samplerate if info.samplerate else None
    except Exception:
        pass
    if hasattr(src, "seek"):
        src.seek(0)
    try:
        import av
        with av.open(src) as container:
            return container.duration / 1e6 if container.duration else None
    except Exception:
        return None
    finally:
        if hasattr(src, "seek"):
            src.seek(0)


def _too_long(source: str, seconds: float, max_seconds: float) -> AudioError:
    return AudioError(source, "audio_too_long",
                      f"{seconds:.0f} s of audio; at most {max_seconds:g} s is accepted")


def decode(data: bytes | str | Path, name: str | None = None, sr: int = SAMPLE_RATE,
           max_seconds: float | None = None) -> np.ndarray:
    """Decode a file path or in-memory bytes to mono float32 at `sr`. Raises AudioError. With `max_seconds`,
    longer audio is refused (reason audio_too_long) from its header before any decoding, or as soon as
    decoding passes the limit when no header says: a small upload can hold hours of silence."""
    source = name or (str(data) if not isinstance(data, bytes) else "<upload>")
    if not isinstance(data, bytes):
        p = Path(data)
        if not p.is_file():
            raise AudioError(source, "missing_file", "file not found")
        if p.stat().st_size == 0:
            raise AudioError(source, "empty_audio", "file is empty (0 bytes)")
    elif len(data) == 0:
        raise AudioError(source, "empty_audio", "upload is empty (0 bytes)")
    if max_seconds is not None:
        seconds = header_seconds(io.BytesIO(data) if isinstance(data, bytes) else str(data))
        if seconds is not None and seconds > max_seconds:
            raise _too_long(source, seconds, max_seconds)
    errors = []
    for decoder in (_decode_soundfile, _decode_av):
        try:
            src = io.BytesIO(data) if isinstance(data, bytes) else str(data)
            wav, file_sr = decoder(src) if decoder is _decode_soundfile else decoder(src, max_seconds)
            break
        except TooLong as e:
            raise _too_long(source, e.seconds, max_seconds) from None
        except Exception as e:  # both libraries raise many types; we keep the message for the user
            # In-memory inputs make the libraries print buffer addresses; drop them so reports are stable.
            message = re.sub(r"<[^>]*0x[0-9a-f]+[^>]*>|0x[0-9a-f]+", "<buffer>", str(e).strip())
            errors.append(f"{decoder.__name__[8:]}: {message[:120] or e.__class__.__name__}")
    else:
        raise AudioError(source, "undecodable", "not a decodable audio file (" + "; ".join(errors) + ")")
    if wav.size == 0:
        raise AudioError(source, "empty_audio", "decoded to zero samples")
    if not np.isfinite(wav).all():
        raise AudioError(source, "non_finite", "audio contains NaN or infinite samples")
    if max_seconds is not None and wav.size > max_seconds * file_sr:
        raise _too_long(source, wav.size / file_sr, max_seconds)
    return resample(wav, file_sr, sr)


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    return decode(Path(path), sr=sr)


def write_wav(path: str | Path, wav: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """16-bit PCM from float samples; see write_pcm16."""
    write_pcm16(path, (np.clip(wav, -1.0, 1.0) * 32767.0).round().astype("<i2"), sr)


def write_pcm16(path: str | Path, pcm: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Mono 16-bit wav, written under a temporary name (unique per process) then renamed, so a killed run
    leaves no half file. The stdlib writer, not libsndfile: libsndfile syncs every file on close, a third
    of the time per clip when a corpus is written."""
    import os
    import wave
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with wave.open(str(tmp), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sr)
        f.writeframes(np.asarray(pcm, dtype="<i2").tobytes())
    tmp.replace(path)


def duration(wav: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    return len(wav) / sr
