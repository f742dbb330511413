"""Writing files so that a reader never sees half of one, content hashes, and the caches' root.

Every output of speechtune is written under a temporary name and renamed into place (a rename is atomic on
one file system), so an interrupted command leaves the old file or the new one, never a mix.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

HASH_CHARS = 20  # hex digits of sha256 kept in cache keys: 80 bits, no collision among a user's models
CHUNK = 1 << 22  # bytes read at a time when hashing: large model files never sit in memory whole


def cache_dir() -> Path:
    """$SPEECHTUNE_CACHE, else $XDG_CACHE_HOME/speechtune, else ~/.cache/speechtune."""
    root = os.environ.get("SPEECHTUNE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "speechtune")
    return Path(root)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write under a temporary name unique to this process, then rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: str | Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """One JSON object per line (UTF-8, not escaped), written atomically: the manifest format."""
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def temp_dir_beside(final: Path, prefix: str = ".tmp-") -> Path:
    """An empty folder on the same file system as `final`, to build it in and then `publish_dir`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename a finished folder into place. If another process published the same content first, theirs is
    complete: ours is dropped (cache entries are keyed by content, so both are the same)."""
    try:
        tmp.rename(final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def hash_files(*paths: Path, chars: int = HASH_CHARS) -> str:
    """sha256 over the files' bytes, in order, as hex (`chars` digits)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    return h.hexdigest()[:chars]
