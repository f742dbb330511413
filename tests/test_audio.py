"""audio.py, the only codec code: any common format and rate in, 16 kHz mono float32 out."""
from __future__ import annotations

import numpy as np

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
