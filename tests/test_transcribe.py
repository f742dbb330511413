"""`speechtune transcribe`: formats, bad files reported one line each while the rest still run."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from speechtune.audio import decode, write_wav
from speechtune.cli import main
from speechtune.formats import to_srt, to_vtt
from speechtune.runtimes import DecodingOptions, Segment


def test_bad_files_reported_and_others_transcribed(tiny_whisper_dir, tmp_path, tone, capsys):
    good = tmp_path / "good.wav"
    write_wav(good, tone)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    rc = main(["transcribe", str(tmp_path / "missing.wav"), str(empty), str(text), str(good),
               "--model", str(tiny_whisper_dir), "--format", "json"])
    out, err = capsys.readouterr()
    assert rc == 1
    lines = [json.loads(line) for line in out.splitlines()]
    assert [row["file"] for row in lines] == [str(good)]
    errors = err.strip().splitlines()
    assert len(errors) == 3
    assert "missing.wav: file not found" in errors[0]
    assert "empty.wav: file is empty" in errors[1]
    assert "notes.wav: not a decodable audio file" in errors[2]


def test_unknown_model_is_one_line_error(tmp_path, tone, capsys):
    good = tmp_path / "good.wav"
    write_wav(good, tone)
    assert main(["transcribe", str(good), "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model") and "Traceback" not in err


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


def test_srt_and_vtt_format():
    segs = [Segment(0.0, 2.5, "hello"), Segment(2.5, 3661.25, "world")]
    assert to_srt(segs) == "1\n00:00:00,000 --> 00:00:02,500\nhello\n\n2\n00:00:02,500 --> 01:01:01,250\nworld\n"
    assert to_vtt(segs).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nhello\n")


def test_cli_help_is_fast_and_lists_commands():
    out = subprocess.run([sys.executable, "-m", "speechtune", "--help"], capture_output=True, text=True, check=True)
    assert "transcribe" in out.stdout


def test_generate_warnings_that_are_not_the_users_doing_are_dropped(tiny_whisper_dir):
    # transformers warns at every generate call about arguments its Whisper code passes itself; a Python
    # API user training a model got two such lines per evaluation batch (the CLI mutes transformers).
    import logging

    from speechtune.runtimes import load_runtime

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    log = logging.getLogger("transformers.generation.utils")
    level, keep = log.level, Keep()
    log.setLevel(logging.WARNING)  # other tests' commands may have turned transformers' verbosity down
    log.addHandler(keep)
    try:
        runtime = load_runtime(tiny_whisper_dir, device="cpu")
        runtime.transcribe_batch([np.zeros(16000, np.float32), np.zeros(8000, np.float32)], DecodingOptions())
        log.warning("a warning of its own")
    finally:
        log.removeHandler(keep)
        log.setLevel(level)
    assert seen == ["a warning of its own"]
