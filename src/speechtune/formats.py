"""A transcription as the user reads it: plain text, a JSON line, SubRip (SRT) or WebVTT.

Used alike by `transcribe` (local and --server) and by `serve`'s response formats.
"""
from __future__ import annotations

import dataclasses
import json

FORMATS = ("text", "json", "srt", "vtt")


def _clock(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cues(segments, duration: float | None):
    """(start, end, text) per segment, clamped to the audio's length when it is known: a back end may place a
    last segment past the end of the file, and a cue must never end before it starts."""
    for s in segments:
        start, end = s.start, s.end
        if duration is not None:
            start, end = min(start, duration), min(end, duration)
        yield start, max(start, end), s.text


def to_srt(segments, duration: float | None = None) -> str:
    return "\n".join(f"{i}\n{_clock(a, ',')} --> {_clock(b, ',')}\n{text}\n"
                     for i, (a, b, text) in enumerate(_cues(segments, duration), 1))


def to_vtt(segments, duration: float | None = None) -> str:
    return "WEBVTT\n\n" + "\n".join(f"{_clock(a, '.')} --> {_clock(b, '.')}\n{text}\n"
                                    for a, b, text in _cues(segments, duration))


def json_line(path: str, text: str, language, duration, segments) -> str:
    return json.dumps({"file": path, "text": text, "language": language,
                       "duration": None if duration is None else round(duration, 3),
                       "segments": [{"start": s.start, "end": s.end, "text": s.text} for s in segments]},
                      ensure_ascii=False)


def format_result(path: str, result, fmt: str) -> str:
    """`result`: a runtimes.Result (text, language, duration, segments)."""
    if fmt == "json":
        return json_line(path, result.text, result.language, result.duration, result.segments)
    if fmt == "srt":
        return to_srt(result.segments, result.duration)
    if fmt == "vtt":
        return to_vtt(result.segments, result.duration)
    return result.text


def print_result(path: str, out: str, fmt: str, many: bool) -> None:
    """One file's output on stdout; with several files, each is labelled with its path."""
    if fmt == "text" and many:
        print(f"{path}: {out}")
    elif fmt in ("srt", "vtt") and many:
        print(f"# {path}\n{out}")
    else:
        print(out)


def segment_dict(i: int, s) -> dict:
    """An OpenAI verbose_json segment."""
    return {"id": i, **dataclasses.asdict(s)}
