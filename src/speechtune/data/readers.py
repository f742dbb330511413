"""Every input format `prepare` accepts, read into one kind of Row.

A reader never raises for one bad row: the row carries `error=(reason, detail)` and `prepare` reports it in
rejects.jsonl. Only an input that cannot be read at all (no such file, no header, no audio column) raises
SpeechtuneError. Relative audio paths resolve against the folder of the file that names them.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpeechtuneError

FORMATS = ("csv", "tsv", "jsonl", "audiofolder", "kaldi", "folder")
AUDIO_COLS = ("path", "file", "filename", "file_name", "audio", "audio_filepath", "audio_path", "wav")
TEXT_COLS = ("text", "transcript", "transcription", "sentence", "normalized_text")
SPEAKER_COLS = ("speaker", "speaker_id", "spk", "client_id")
LANGUAGE_COLS = ("language", "lang", "locale")
AUDIO_EXTS = {".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".webm", ".mp4", ".wma",
              ".aif", ".aiff", ".caf", ".amr", ".3gp"}
SPLIT_NAMES = {"train": "train", "training": "train", "valid": "valid", "validation": "valid", "val": "valid",
               "dev": "valid", "test": "test", "eval": "test", "evaluation": "test"}


@dataclass
class Row:
    source: str                 # the file this row was read from (for rejects.jsonl)
    line: int | None            # 1-based line in `source`; None when the row is a file, not a line
    audio: str | None = None    # absolute path of the audio file
    text: str | None = None
    speaker: str | None = None
    language: str | None = None
    split: str | None = None    # train/valid/test when the input says so
    start: float | None = None  # segment bounds in seconds, when the input gives them
    end: float | None = None
    error: tuple[str, str] | None = None

    @property
    def origin(self) -> str:
        """What the manifest's `source` says: the original audio file, plus the segment if any."""
        if self.start is None:
            return self.audio or self.source
        end = f"{self.end:.2f}" if self.end is not None else ""
        return f"{self.audio}@{self.start:.2f}-{end}"


def _bad(source, line, reason, detail) -> Row:
    return Row(str(source), line, error=(reason, detail))


def _clean(value) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _split(value, where: str) -> tuple[str | None, str | None]:
    """(normalised split, error detail)."""
    v = _clean(value)
    if v is None:
        return None, None
    if v.lower() not in SPLIT_NAMES:
        return None, f"{where}: unknown split {v!r} (use train, valid or test)"
    return SPLIT_NAMES[v.lower()], None


def _resolve(path: str, base: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _has_bad_bytes(*values) -> bool:
    # Files are decoded with surrogateescape: undecodable bytes survive as lone surrogates, row by row.
    return any(isinstance(v, str) and re.search("[\udc80-\udcff]", v) for v in values)


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SpeechtuneError(f"cannot read {path}: {e.strerror}") from None
    return raw.decode("utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8", errors="surrogateescape")


def _pick(names: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Path,
          required: bool = True) -> str | None:
    lower = {n.strip().lower(): n for n in names}
    if wanted:
        if wanted in names:
            return wanted
        if wanted.lower() in lower:
            return lower[wanted.lower()]
        raise SpeechtuneError(f"{path}: no column {wanted!r}", f"columns are: {', '.join(names)}")
    for c in candidates:
        if c in lower:
            return lower[c]
    if required:
        raise SpeechtuneError(f"{path}: no {what} column", f"name it one of {', '.join(candidates)}, or pass "
                              f"--{what}-col; columns are: {', '.join(names)}")
    return None


def read_table(path: Path, delimiter: str | None = None, audio_col: str | None = None,
               text_col: str | None = None, base: Path | None = None, split: str | None = None) -> list[Row]:
    """CSV/TSV with a header row."""
    text = _read_text(path)
    if not text.strip():
        raise SpeechtuneError(f"{path}: the file is empty", "the first line must be a header, e.g. path,text")
    if delimiter is None:
        first = text.splitlines()[0]
        delimiter = "\t" if path.suffix.lower() == ".tsv" or first.count("\t") > first.count(",") else ","
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except csv.Error as e:
        raise SpeechtuneError(f"{path}: cannot parse the header ({e})") from None
    if _has_bad_bytes(*header):
        raise SpeechtuneError(f"{path}: the header is not UTF-8", "re-save the file as UTF-8")
    a = _pick(header, audio_col, AUDIO_COLS, "audio", path)
    t = _pick(header, text_col, TEXT_COLS, "text", path)
    s = _pick(header, None, SPEAKER_COLS, "speaker", path, required=False)
    lang = _pick(header, None, LANGUAGE_COLS, "language", path, required=False)
    sp = _pick(header, None, ("split",), "split", path, required=False)
    base = base or path.parent
    rows = []
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            rows.append(_bad(path, reader.line_num, "bad_row", f"unparsable CSV row ({e})"))
            continue
        n = reader.line_num
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) != len(header):
            rows.append(_bad(path, n, "bad_row", f"{len(values)} fields, the header has {len(header)} "
                                                  "(an unquoted delimiter in the text?)"))
            continue
        rec = dict(zip(header, values))
        rows.append(_row_from_record(rec, a, t, s, lang, sp, path, n, base, split))
    return rows


def _row_from_record(rec: dict, a, t, s, lang, sp, path: Path, n: int, base: Path, split: str | None) -> Row:
    audio, text = rec.get(a), rec.get(t)
    if isinstance(audio, dict):  # {"audio": {"path": ...}} (Hugging Face datasets style)
        audio = audio.get("path")
    if _has_bad_bytes(*[v for v in rec.values() if isinstance(v, str)]):
        return _bad(path, n, "bad_encoding", "the row is not valid UTF-8 (re-save the file as UTF-8)")
    if not isinstance(audio, str) or not audio.strip():
        return _bad(path, n, "bad_row", f"no audio path in column {a!r}")
    if text is not None and not isinstance(text, str):
        return _bad(path, n, "bad_row", f"{t!r} must be a string, got {type(text).__name__}")
    row_split, err = _split(rec.get(sp) if sp else None, f"column {sp!r}")
    if err:
        return _bad(path, n, "bad_row", err)
    return Row(str(path), n, audio=_resolve(audio.strip(), base), text=text,
               speaker=_clean(rec.get(s)) if s else None, language=_clean(rec.get(lang)) if lang else None,
               split=row_split or split)


def read_jsonl(path: Path, audio_col: str | None = None, text_col: str | None = None,
               base: Path | None = None, split: str | None = None) -> list[Row]:
    """NeMo manifests (`audio_filepath`, `text`, `duration`, `offset`), `{"audio": {"path"}, "sentence"}`
    lines, and speechtune's own manifest lines."""
    text = _read_text(path)
    base = base or path.parent
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if _has_bad_bytes(line):
            rows.append(_bad(path, n, "bad_encoding", "the line is not valid UTF-8 (re-save the file as UTF-8)"))
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append(_bad(path, n, "bad_row", f"not valid JSON ({e.msg} at column {e.colno})"))
            continue
        if not isinstance(rec, dict):
            rows.append(_bad(path, n, "bad_row", f"expected a JSON object, got {type(rec).__name__}"))
            continue
        keys = list(rec)
        a = audio_col if audio_col in rec else next((k for k in AUDIO_COLS if k in rec), None)
        t = text_col if text_col in rec else next((k for k in TEXT_COLS if k in rec), None)
        if a is None:
            rows.append(_bad(path, n, "bad_row", f"no audio field (one of {', '.join(AUDIO_COLS)}); "
                                                  f"keys are {', '.join(keys)}"))
            continue
        if t is None:
            rows.append(_bad(path, n, "bad_row", f"no text field (one of {', '.join(TEXT_COLS)})"))
            continue
        s = next((k for k in SPEAKER_COLS if k in rec), None)
        lang = next((k for k in LANGUAGE_COLS if k in rec), None)
        row = _row_from_record(rec, a, t, s, lang, "split" if "split" in rec else None, path, n, base, split)
        if row.error is None and "offset" in rec:
            # NeMo: offset + duration cut a segment out of a longer recording.
            try:
                row.start = float(rec["offset"])
                row.end = row.start + float(rec["duration"]) if rec.get("duration") is not None else None
            except (TypeError, ValueError):
                row = _bad(path, n, "bad_row", "offset/duration must be numbers (seconds)")
        rows.append(row)
    return rows


def read_audiofolder(folder: Path, audio_col=None, text_col=None) -> list[Row]:
    """Hugging Face audiofolder: metadata.csv/.jsonl beside the audio (`file_name` column), optionally in
    train/, validation/, test/ subfolders, which then fix the split."""
    parts = [(folder, None)] + [(d, SPLIT_NAMES[d.name.lower()]) for d in sorted(folder.iterdir())
                                if d.is_dir() and d.name.lower() in SPLIT_NAMES]
    rows = []
    for d, split in parts:
        for name in ("metadata.csv", "metadata.tsv", "metadata.jsonl"):
            meta = d / name
            if not meta.is_file():
                continue
            if name.endswith("jsonl"):
                rows += read_jsonl(meta, audio_col or "file_name", text_col, d, split)
            else:
                rows += read_table(meta, None, audio_col, text_col, d, split)
    return rows


def _kaldi_lines(path: Path) -> list[tuple[int, str, str, bool]]:
    """(line number, key, rest, undecodable) for every non-blank line of a Kaldi table file."""
    out = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        key, _, rest = line.strip().partition(" ")
        out.append((n, key, rest.strip(), _has_bad_bytes(line)))
    return out


def _kaldi_wav(rest: str, scp: Path, n: int) -> tuple[str | None, str | None]:
    if rest.endswith("|"):
        return None, f"piped wav.scp entries are not supported ({rest[:60]}); run the command once and " \
                     "point wav.scp at the resulting file"
    if re.search(r"\.(ark|scp):\d+$", rest) or rest.startswith("ark:"):
        return None, "archive (.ark) entries are not supported; point wav.scp at audio files"
    p = Path(rest)
    if not p.is_absolute():
        # Kaldi recipes run from the folder above data/; accept paths relative to either.
        for base in (scp.parent, scp.parent.parent, scp.parent.parent.parent, Path.cwd()):
            if (base / p).exists():
                return str((base / p).resolve()), None
        return str((scp.parent / p).resolve()), None
    return rest, None


def read_kaldi(folder: Path) -> list[Row]:
    """wav.scp + text, optional utt2spk and segments (segment id, recording id, start, end)."""
    scp_path, text_path = folder / "wav.scp", folder / "text"
    if not text_path.is_file():
        raise SpeechtuneError(f"{folder}: a Kaldi data dir needs a `text` file beside wav.scp")
    wavs = {key: (n, rest, bad) for n, key, rest, bad in _kaldi_lines(scp_path)}
    texts = {key: (n, rest, bad) for n, key, rest, bad in _kaldi_lines(text_path)}
    spk = {key: rest for _, key, rest, _ in _kaldi_lines(folder / "utt2spk")} if (folder / "utt2spk").is_file() else {}
    segments = {}
    seg_path = folder / "segments"
    if seg_path.is_file():
        for n, key, rest, _ in _kaldi_lines(seg_path):
            segments[key] = (n, rest.split())
    rows = []
    utts = list(segments) if segments else list(wavs)
    for utt in utts + [u for u in texts if u not in (segments or wavs)]:
        start = end = None
        if segments and utt in segments:
            n, fields = segments[utt]
            if len(fields) != 3:
                rows.append(_bad(seg_path, n, "bad_row", f"{utt}: expected `segment recording start end`"))
                continue
            rec = fields[0]
            try:
                start, end = float(fields[1]), float(fields[2])
            except ValueError:
                rows.append(_bad(seg_path, n, "bad_row", f"{utt}: start/end must be seconds"))
                continue
            end = None if end < 0 else end  # Kaldi uses -1 for "to the end of the recording"
        else:
            rec = utt
        if utt not in texts:
            n = segments[utt][0] if segments else wavs[utt][0]
            rows.append(_bad(seg_path if segments else scp_path, n, "missing_text", f"{utt}: no line in `text`"))
            continue
        tn, text, tbad = texts[utt]
        if tbad:
            rows.append(_bad(text_path, tn, "bad_encoding", f"{utt}: transcript is not valid UTF-8"))
            continue
        if rec not in wavs:
            rows.append(_bad(text_path, tn, "missing_file", f"{utt}: recording {rec!r} is not in wav.scp"))
            continue
        wn, wrest, wbad = wavs[rec]
        audio, err = (None, "wav.scp line is not valid UTF-8") if wbad else _kaldi_wav(wrest, scp_path, wn)
        if err:
            rows.append(_bad(scp_path, wn, "bad_row", f"{rec}: {err}"))
            continue
        rows.append(Row(str(text_path), tn, audio=audio, text=text, speaker=spk.get(utt), start=start, end=end))
    return rows


def read_folder(folder: Path) -> list[Row]:
    """Audio files with a same-named .txt transcript beside each. A file in a subfolder takes the first
    subfolder's name as its speaker (the usual speaker/clip.wav layout)."""
    rows = []
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    audio = {p.with_suffix(""): p for p in files if p.suffix.lower() in AUDIO_EXTS}
    transcripts = {p.with_suffix(""): p for p in files if p.suffix.lower() == ".txt"}
    for stem in sorted(set(audio) | set(transcripts)):
        rel = stem.relative_to(folder)
        speaker = rel.parts[0] if len(rel.parts) > 1 else None
        if stem not in transcripts:
            rows.append(Row(str(audio[stem]), None, error=("missing_text", f"no {stem.name}.txt beside the audio")))
            continue
        txt = transcripts[stem]
        if stem not in audio:
            rows.append(Row(str(txt), None, error=("missing_file", "a transcript with no audio file of the same name")))
            continue
        try:
            text = txt.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            rows.append(Row(str(txt), None,
                            error=("bad_encoding", f"not valid UTF-8 (byte {e.start}); re-save as UTF-8")))
            continue
        rows.append(Row(str(txt), None, audio=str(audio[stem].resolve()), text=text, speaker=speaker))
    return rows


def detect_format(path: Path) -> str:
    if path.is_file():
        ext = path.suffix.lower()
        if ext in (".csv", ".tsv"):
            return "tsv" if ext == ".tsv" else "csv"
        if ext in (".jsonl", ".json", ".ndjson"):
            return "jsonl"
        raise SpeechtuneError(f"{path}: cannot tell the format from the extension {ext!r}",
                              f"pass --format, one of {', '.join(FORMATS)}")
    if (path / "wav.scp").is_file():
        return "kaldi"
    metas = ("metadata.csv", "metadata.tsv", "metadata.jsonl")
    if any((path / m).is_file() for m in metas) or any(
            (d / m).is_file() for d in path.iterdir() if d.is_dir() and d.name.lower() in SPLIT_NAMES for m in metas):
        return "audiofolder"
    return "folder"


def read_input(path: str | Path, fmt: str = "auto", audio_col: str | None = None,
               text_col: str | None = None) -> tuple[str, list[Row]]:
    """(format, rows) for any supported input."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SpeechtuneError(f"input not found: {p}", "pass a CSV/TSV/JSONL manifest or a data folder")
    fmt = detect_format(p) if fmt in (None, "auto") else fmt
    if fmt not in FORMATS:
        raise SpeechtuneError(f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    needs_dir = fmt in ("audiofolder", "kaldi", "folder")
    if needs_dir != p.is_dir():
        raise SpeechtuneError(f"{p}: format {fmt} needs a {'folder' if needs_dir else 'file'}")
    if fmt in ("csv", "tsv"):
        rows = read_table(p, "\t" if fmt == "tsv" else None, audio_col, text_col)
    elif fmt == "jsonl":
        rows = read_jsonl(p, audio_col, text_col)
    elif fmt == "audiofolder":
        rows = read_audiofolder(p, audio_col, text_col)
    elif fmt == "kaldi":
        rows = read_kaldi(p)
    else:
        rows = read_folder(p)
    if not rows:
        raise SpeechtuneError(f"{p}: no clips found in this {fmt} input",
                              "check the path; a folder input needs audio files with same-named .txt transcripts")
    return fmt, rows
