"""The only module that touches codecs: decode any common format, downmix, resample to 16 kHz.

soundfile (libsndfile) is tried first because it is fast and exact for wav/flac/ogg; PyAV (FFmpeg) takes
everything else (mp3, m4a/aac, opus, video containers). Every failure is an AudioError with a reason code
that `prepare` writes to rejects.jsonl and `serve` maps to an HTTP status.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Iterator

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


# stream()'s blocks, in seconds: large enough that the per-block overhead vanishes, small enough that a
# block is a few MB (30 s at 16 kHz float32: 1.9 MB) whatever the file's length.
BLOCK_S = 30.0
# The native-rate frames read from a file at a time (soundfile) before resampling.
READ_FRAMES = 1 << 16


def _soundfile_reader(src):
    """(sample rate, iterator of mono float32 chunks at that rate) through libsndfile."""
    import soundfile as sf
    f = sf.SoundFile(src)

    def chunks():
        with f:
            while True:
                data = f.read(READ_FRAMES, dtype="float32", always_2d=True)
                if not len(data):
                    return
                yield data.mean(axis=1)
    return f.samplerate, chunks()


def _av_reader(src):
    """(sample rate, iterator of mono float32 chunks at that rate) through PyAV (FFmpeg)."""
    import av
    container = av.open(src)
    if not container.streams.audio:
        container.close()
        raise ValueError("no audio stream")
    stream = container.streams.audio[0]
    sr = stream.codec_context.sample_rate or stream.rate
    # The resampler only converts sample format and layout here; soxr does the rate change, better.
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)

    def chunks():
        with container:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().reshape(-1)
            for out in resampler.resample(None):
                yield out.to_ndarray().reshape(-1)
    return sr, chunks()


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


def _library_message(e: Exception) -> str:
    # In-memory inputs make the libraries print buffer addresses; drop them so reports are stable.
    message = re.sub(r"<[^>]*0x[0-9a-f]+[^>]*>|0x[0-9a-f]+", "<buffer>", str(e).strip())
    return message[:120] or e.__class__.__name__


def _open(data, source: str):
    """(rate, first chunk, rest) from the first library that reads the input's first chunk; soundfile first."""
    errors = []
    for name, reader in (("soundfile", _soundfile_reader), ("av", _av_reader)):
        try:
            sr, chunks = reader(io.BytesIO(data) if isinstance(data, bytes) else str(data))
            first = next(chunks, np.zeros(0, np.float32))
            return sr, first, chunks
        except Exception as e:  # both libraries raise many types; we keep the message for the user
            errors.append(f"{name}: {_library_message(e)}")
    raise AudioError(source, "undecodable", "not a decodable audio file (" + "; ".join(errors) + ")")


def stream(data: bytes | str | Path, name: str | None = None, sr: int = SAMPLE_RATE,
           max_seconds: float | None = None, block_s: float = BLOCK_S) -> Iterator[np.ndarray]:
    """Decode a file path or in-memory bytes as it is read: mono float32 blocks at `sr` of `block_s` seconds
    (the last one shorter), so memory does not grow with the audio's length. Raises AudioError: a missing or
    empty input and, with `max_seconds`, a header saying it is longer, at once; an undecodable input at the
    first block; audio that decodes to nothing, holds NaN/inf, or passes `max_seconds` (no header said how
    long: a small upload can hold hours of silence) at the block where it shows. The blocks joined are
    exactly what decoding the whole file and resampling it in one go gives (soxr's stream is exact)."""
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
    return _blocks(data, source, sr, max_seconds, block_s)


def _blocks(data, source: str, sr: int, max_seconds: float | None, block_s: float) -> Iterator[np.ndarray]:
    import soxr
    file_sr, first, rest = _open(data, source)
    resampler = None if file_sr == sr else soxr.ResampleStream(file_sr, sr, 1, dtype="float32", quality="HQ")
    block = int(block_s * sr) if block_s != float("inf") else None
    pending, read = [], 0

    def native():
        yield first
        try:
            yield from rest
        except Exception as e:  # a file that breaks part-way through is as undecodable as one that never opens
            raise AudioError(source, "undecodable", f"decoding failed part-way: {_library_message(e)}") from None

    def resampled():
        nonlocal read
        for chunk in native():
            read += chunk.size
            if max_seconds is not None and read > max_seconds * file_sr:
                raise _too_long(source, read / file_sr, max_seconds)
            if not np.isfinite(chunk).all():
                raise AudioError(source, "non_finite", "audio contains NaN or infinite samples")
            yield resampler.resample_chunk(chunk) if resampler else chunk
        if resampler is not None:
            yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)

    n_pending = 0
    for out in resampled():
        pending.append(out.astype(np.float32, copy=False))
        n_pending += out.size
        while block and n_pending >= block:
            joined = np.concatenate(pending)
            yield joined[:block]
            pending, n_pending = [joined[block:]], joined.size - block
    if not read:
        raise AudioError(source, "empty_audio", "decoded to zero samples")
    if n_pending:
        yield np.concatenate(pending)


def decode(data: bytes | str | Path, name: str | None = None, sr: int = SAMPLE_RATE,
           max_seconds: float | None = None) -> np.ndarray:
    """Decode a file path or in-memory bytes to mono float32 at `sr`, whole: stream()'s blocks joined, with
    its errors (AudioError) and its `max_seconds` rule."""
    return np.concatenate(list(stream(data, name, sr, max_seconds, block_s=float("inf"))))


# A cut between pieces (pieces()) is placed in the quietest window of this length near the piece's end.
QUIET_WINDOW_S = 0.05


def quiet_cut(wav: np.ndarray, search: int, window: int) -> int:
    """The sample index to cut `wav` at: the middle of its lowest-energy `window` within the last `search`
    samples (the end when it is shorter than a window), so a cut rarely falls inside a word."""
    region = wav[max(0, wav.size - search):]
    frames = region.size // window
    if frames < 1:
        return wav.size
    energy = np.square(region[region.size - frames * window:].astype(np.float64)).reshape(frames, window).sum(1)
    return wav.size - (frames - int(np.argmin(energy))) * window + window // 2


def pieces(blocks, piece_s: float, search_s: float, sr: int = SAMPLE_RATE) -> Iterator[tuple[float, np.ndarray]]:
    """(start in seconds, samples) pieces of at most `piece_s` from a stream of blocks (stream()), each cut
    but the last at the quietest point of its final `search_s`: long audio in bounded pieces, in order."""
    n, search, window = int(piece_s * sr), int(search_s * sr), int(QUIET_WINDOW_S * sr)
    buf, offset = np.zeros(0, np.float32), 0
    for block in blocks:
        buf = np.concatenate([buf, block]) if buf.size else block
        while buf.size > n:  # only past n is it known that this is not the last piece
            cut = quiet_cut(buf[:n], search, window)
            yield offset / sr, buf[:cut]
            offset, buf = offset + cut, buf[cut:]
    if buf.size:
        yield offset / sr, buf


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
