"""Read a manifest (.jsonl, one clip per line) into dicts with absolute audio paths.

Accepts the prepared-dir line `{"audio","text","duration","speaker","language","source"}` and the looser
lines people already have (`audio`, `text`, maybe `duration_s`, other keys kept as they are). A relative
`audio` path resolves against the manifest's folder, so a manifest and its audio/ move together.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import SpeechtuneError


def read_manifest(path: str | Path) -> list[dict]:
    """Every line as a dict with `audio` absolute, `text` a str, `duration`, `speaker`, `language` set
    (None where unknown) and `line` (1-based, for messages). Raises SpeechtuneError naming file:line."""
    p = Path(path)
    if not p.is_file():
        raise SpeechtuneError(f"manifest not found: {p}", "pass a .jsonl file with one {\"audio\", \"text\"} per line")
    rows = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rows.append(_parse_line(line, p, n))
    if not rows:
        raise SpeechtuneError(f"{p}: no clips in the manifest", "each line needs {\"audio\": ..., \"text\": ...}")
    return rows


def _parse_line(line: str, p: Path, n: int) -> dict:
    where = f"{p}:{n}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise SpeechtuneError(f"{where}: not valid JSON ({e.msg})", "each line must be one JSON object") from None
    if not isinstance(row, dict):
        raise SpeechtuneError(f"{where}: expected a JSON object, got {type(row).__name__}")
    audio, text = row.get("audio"), row.get("text")
    if not isinstance(audio, str) or not audio:
        raise SpeechtuneError(f"{where}: missing \"audio\" (a path to the clip)",
                              "relative paths resolve against the manifest's folder")
    if not isinstance(text, str):
        raise SpeechtuneError(f"{where}: missing \"text\" (the reference transcript)")
    language = row.get("language")
    if language is not None and not isinstance(language, str):
        raise SpeechtuneError(f"{where}: \"language\" must be a code like \"en\" or null")
    duration = row.get("duration", row.get("duration_s"))
    out = dict(row)
    out.update(
        audio=str((p.parent / audio).resolve()) if not Path(audio).is_absolute() else audio,
        text=text,
        duration=float(duration) if isinstance(duration, (int, float)) else None,
        speaker=row.get("speaker"),
        language=language.lower() if language else None,
        source=row.get("source", audio),
        line=n,
    )
    return out
