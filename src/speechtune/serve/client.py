"""`speechtune transcribe --server URL`: send each file to a running `speechtune serve`, print like local mode.

Files are uploaded as they are (the server decodes them); any failure (unreadable file, HTTP error,
connection refused) is reported on stderr naming the file, and the exit status is 1 if any file failed.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# local --format -> the response_format asked of the server
RESPONSE_FORMAT = {"text": "json", "json": "verbose_json", "srt": "srt", "vtt": "vtt"}


def request(url: str, path: str | Path, fmt: str = "text", model: str | None = None, language: str | None = None,
            api_key: str | None = None, timeout: float = 600, client=None):
    """POST one file; returns the parsed JSON (json formats) or the text body. Raises RuntimeError."""
    import httpx

    endpoint = url.rstrip("/") + ("" if url.rstrip("/").endswith("/v1") else "/v1") + "/audio/transcriptions"
    data = {"response_format": RESPONSE_FORMAT[fmt]}
    if model:
        data["model"] = str(model)
    if language:
        data["language"] = language
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with open(path, "rb") as f:
        files = {"file": (Path(path).name, f, "application/octet-stream")}
        try:
            r = (client or httpx).post(endpoint, data=data, files=files, headers=headers, timeout=timeout)
        except httpx.HTTPError as e:
            raise RuntimeError(f"cannot reach {url}: {e.__class__.__name__}: {e}") from None
    if r.status_code != 200:
        try:
            message = r.json()["error"]["message"]
        except Exception:
            message = r.text[:300]
        raise RuntimeError(f"server answered {r.status_code}: {message}")
    return r.json() if data["response_format"].endswith("json") else r.text


def transcribe_remote(args) -> int:
    from ..formats import json_line, print_result
    from ..runtimes import Segment

    api_key = getattr(args, "api_key", None) or os.environ.get("SPEECHTUNE_API_KEY")
    failed = 0
    for path in args.audio:
        if not Path(path).is_file():
            print(f"error: {path}: file not found", file=sys.stderr)
            failed += 1
            continue
        try:
            body = request(args.server, path, args.format, getattr(args, "model", None),
                           getattr(args, "language", None), api_key)
        except (RuntimeError, OSError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        if args.format == "text":
            out = body["text"]
        elif args.format == "json":
            segments = [Segment(s["start"], s["end"], s["text"]) for s in body.get("segments") or []]
            out = json_line(path, body["text"], body.get("language"), body.get("duration"), segments)
        else:
            out = body.rstrip("\n")
        print_result(path, out, args.format, len(args.audio) > 1)
        sys.stdout.flush()
    return 1 if failed else 0
