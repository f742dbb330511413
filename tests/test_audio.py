"""audio.py, the only codec code: any common format and rate in, 16 kHz mono float32 out."""
from __future__ import annotations

import numpy as np
import pytest

from speechtune.audio import decode


def test_decode_formats_rates_and_stereo(tmp_path):
    import av
    import soundfile as sf
    t = np.arange(44100 * 2) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 300 * t)], axis=1).astype(np.float32) * 0.3
    sf.write(tmp_path / "s.flac", stereo, 44100)
    sf.write(tmp_path / "s.ogg", stereo, 44100, format="OGG", subtype="VORBIS")
    # mp3 and m4a through PyAV (FFmpeg): soundfile may not write them
    for ext, codec in (("mp3", "mp3"), ("m4a", "aac"), ("opus", "libopus")):
        with av.open(str(tmp_path / f"s.{ext}"), "w") as c:
            rate = 48000 if codec == "libopus" else 44100
            s = c.add_stream(codec, rate=rate)
            s.layout = "stereo"
            data = stereo  # at 48 kHz these samples last 1.8375 s
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data.T), format="fltp", layout="stereo")
            frame.sample_rate = rate
            for p in s.encode(frame):
                c.mux(p)
            for p in s.encode(None):
                c.mux(p)
    for ext in ("flac", "ogg", "mp3", "m4a", "opus"):
        wav = decode(tmp_path / f"s.{ext}")
        assert wav.ndim == 1 and wav.dtype == np.float32
        expected = 88200 / 48000 if ext == "opus" else 2.0
        assert abs(len(wav) / 16000 - expected) < 0.1, ext
        spectrum = np.abs(np.fft.rfft(wav[4000:20000]))  # 16000 samples at 16 kHz: 1 Hz bins
        tone_hz = 300 * 48000 / 44100 if ext == "opus" else 300
        assert abs(np.argmax(spectrum) - tone_hz) < 5, ext


def _silence_flac(path, seconds: float, sr: int = 8000) -> None:
    import soundfile as sf
    with sf.SoundFile(str(path), "w", samplerate=sr, channels=1, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros(sr * 60, dtype=np.int16)
        for _ in range(int(seconds // 60)):
            f.write(block)


def test_audio_over_the_cap_is_refused_from_its_header(tmp_path):
    import time

    import pytest

    from speechtune.audio import AudioError, header_seconds
    flac = tmp_path / "hour.flac"
    _silence_flac(flac, 3600)
    data = flac.read_bytes()
    assert len(data) < 2_000_000 and header_seconds(str(flac)) == pytest.approx(3600)
    t = time.perf_counter()
    with pytest.raises(AudioError) as e:
        decode(data, "hour.flac", max_seconds=1800)
    assert e.value.reason == "audio_too_long" and "3600 s of audio; at most 1800 s" in e.value.detail
    assert time.perf_counter() - t < 1.0  # told from the header, not by decoding an hour
    # a WAV whose header claims 8 Hz: 9.4 KB that would become minutes of audio at 16 kHz
    import wave
    with wave.open(str(tmp_path / "8hz.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8)
        w.writeframes(np.zeros(4800, dtype="<i2").tobytes())
    with pytest.raises(AudioError, match="600 s of audio"):
        decode(tmp_path / "8hz.wav", max_seconds=60)
    assert len(decode(tmp_path / "8hz.wav")) == 600 * 16000  # without a cap it decodes, as before


def test_stream_blocks_join_to_exactly_the_whole_decode(tmp_path):
    import soundfile as sf

    from speechtune.audio import stream
    rng = np.random.default_rng(0)
    stereo = (0.1 * rng.standard_normal((44100 * 3 + 123, 2))).astype(np.float32)
    sf.write(tmp_path / "n.flac", stereo, 44100)
    for source in (tmp_path / "n.flac", (tmp_path / "n.flac").read_bytes()):
        blocks = list(stream(source, "n.flac", block_s=0.5))
        assert [len(b) for b in blocks[:-1]] == [8000] * (len(blocks) - 1) and 0 < len(blocks[-1]) <= 8000
        whole = decode(source, "n.flac")
        assert np.array_equal(np.concatenate(blocks), whole)  # resampled as a stream, bit for bit the same
        assert abs(len(whole) - 3.0028 * 16000) < 2


def test_pieces_cut_long_audio_at_its_quiet_points(tmp_path):
    from speechtune.audio import pieces
    sr = 16000
    t = np.arange(10 * sr) / sr
    wav = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    gaps = [(3.1, 3.3), (6.6, 6.8)]  # pauses between "words"
    for a, b in gaps:
        wav[int(a * sr):int(b * sr)] = 0.0
    blocks = [wav[i:i + 7000] for i in range(0, len(wav), 7000)]
    out = list(pieces(blocks, piece_s=4.0, search_s=1.5))
    starts = [s for s, _ in out]
    assert np.array_equal(np.concatenate([p for _, p in out]), wav)  # nothing lost, nothing repeated
    assert all(len(p) <= 4 * sr for _, p in out)
    assert len(out) == 3 and [a <= s <= b for s, (a, b) in zip(starts[1:], gaps)] == [True, True], starts
    for s, p in out:  # each piece's start is where the ones before it end
        assert s == pytest.approx(sum(len(q) for s2, q in out if s2 < s) / sr)
