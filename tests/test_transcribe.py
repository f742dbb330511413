"""`speechtune transcribe`: formats, bad files reported one line each while the rest still run."""
from __future__ import annotations

import json
import subprocess
import sys


from speechtune.audio import write_wav
from speechtune.cli import main
from speechtune.runtimes import DecodingOptions


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


def test_cli_help_is_fast_and_lists_commands():
    out = subprocess.run([sys.executable, "-m", "speechtune", "--help"], capture_output=True, text=True, check=True)
    assert "transcribe" in out.stdout


def test_generate_warnings_that_are_not_the_users_doing_are_dropped(tiny_whisper_dir, tone):
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
        # audible clips: silent ones never reach generate (safeguards.skip_inaudible)
        runtime.transcribe_batch([tone, tone[:8000]], DecodingOptions())
        log.warning("a warning of its own")
    finally:
        log.removeHandler(keep)
        log.setLevel(level)
    assert seen == ["a warning of its own"]


def test_python_api_transcribes_a_file(tiny_whisper_dir, tmp_path, tone):
    """The README's three lines, in a fresh interpreter (where `speechtune.transcribe` is the function)."""
    clip = tmp_path / "tone.wav"
    write_wav(clip, tone)
    code = ("from speechtune import load_model, transcribe\n"
            f"w = load_model({str(tiny_whisper_dir)!r}, device='cpu')\n"
            f"r = transcribe(w, {str(clip)!r})\n"
            f"t = transcribe({str(tiny_whisper_dir)!r}, {str(clip)!r}, timestamps=True)\n"
            "assert isinstance(r.text, str) and r.duration > 0 and isinstance(t.segments, list), (r, t)\n"
            "print('ok', len(t.segments))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-2000:]
