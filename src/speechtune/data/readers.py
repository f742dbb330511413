"""Every input format `prepare` accepts, read into one kind of Row.

A reader never raises for one bad row: the row carries `error=(reason, detail)` and `prepare` reports it in
rejects.jsonl. Only an input that cannot be read at all (no such file, no header, no audio column, lines
that would merge into one row) raises SpeechtuneError. Relative audio paths resolve against the folder of
the file that names them. Every reader returns a Reading: the rows, plus for each file or dataset split
how many data lines (or dataset rows) it held and how many rows came of them, which stats.json reports.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpeechtuneError
from ..files import HASH_CHARS, cache_dir, write_atomic
from . import hf_datasets
from .languages import whisper_language

FORMATS = ("csv", "tsv", "jsonl", "audiofolder", "kaldi", "folder", "commonvoice", "hf")
AUDIO_COLS = ("path", "file", "filename", "file_name", "audio", "audio_filepath", "audio_path", "wav")
TEXT_COLS = ("text", "transcript", "transcription", "sentence", "normalized_text")
SPEAKER_COLS = ("speaker", "speaker_id", "spk", "client_id")
LANGUAGE_COLS = ("language", "lang", "locale")
AUDIO_EXTS = {".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".webm", ".mp4", ".wma",
              ".aif", ".aiff", ".caf", ".amr", ".3gp"}
SPLIT_NAMES = {"train": "train", "training": "train", "valid": "valid", "validation": "valid", "val": "valid",
               "dev": "valid", "test": "test", "eval": "test", "evaluation": "test"}
# A Common Voice release: clips/*.mp3 and one TSV per subset. train/dev/test are the release's own
# splits (speaker-disjoint by construction); validated.tsv is their superset, holding validated clips the
# release left out of them; other.tsv (not yet validated) and invalidated.tsv (voted down) are never read.
CV_SPLITS = {"train.tsv": "train", "dev.tsv": "valid", "test.tsv": "test"}
CV_VALIDATED = "validated.tsv"
CV_UNREAD = ("other.tsv", "invalidated.tsv")
CV_COLUMNS = {"client_id", "path", "sentence"}  # in every release's clip TSVs since the first
BAD_BYTES = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bytes that are not UTF-8
# A quote mark opening a field (at a line start or after a tab): only then can quoting change a TSV row.
QUOTE_OPENS_FIELD = re.compile(r'(?:^|\t)"', re.M)
# A quoted field that holds a doubled quote, a tab or a line break: what only a quoting writer produces.
QUOTING_NEEDED = re.compile(r'(?:^|\t)"(?:[^"\t\r\n]|"")*(?:""|[\t\r\n])', re.M)


@dataclass
class Row:
    source: str                 # the file this row was read from (for rejects.jsonl)
    line: int | None            # 1-based line in `source` (row number for datasets); None when the row is a file
    audio: str | None = None    # absolute path of the audio file
    text: str | None = None
    speaker: str | None = None
    language: str | None = None
    split: str | None = None    # train/valid/test when the input says so
    start: float | None = None  # segment bounds in seconds, when the input gives them
    end: float | None = None
    error: tuple[str, str] | None = None
    name: str | None = None     # what to call the audio when `audio` is only a copy (bytes from a dataset)

    @property
    def origin(self) -> str:
        """What the manifest's `source` says: the original audio file, plus the segment if any."""
        if self.start is None:
            return self.name or self.audio or self.source
        end = f"{self.end:.2f}" if self.end is not None else ""
        return f"{self.name or self.audio}@{self.start:.2f}-{end}"


@dataclass
class Reading:
    """What a reader returns: the rows, and how they account for the input."""
    rows: list[Row] = field(default_factory=list)
    # One dict per table file or dataset split read: file, split, lines (data lines, or dataset rows),
    # rows (rows read from them: always equal, or the reader raised).
    sources: list[dict] = field(default_factory=list)
    # What the input holds that prepare deliberately does not read (e.g. Common Voice's other.tsv): count each.
    not_used: dict[str, int] = field(default_factory=dict)
    format: str | None = None

    def add(self, other: "Reading") -> "Reading":
        self.rows += other.rows
        self.sources += other.sources
        self.not_used.update(other.not_used)
        return self

    @property
    def input_lines(self) -> int | None:
        """Data lines (dataset rows) of everything read; None for inputs without lines (kaldi, folder)."""
        return sum(s["lines"] for s in self.sources) if self.sources else None


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
    # Lexical (abspath), not Path.resolve(): a million-row Common Voice TSV would otherwise cost a
    # million realpath walks through the file system before any audio is read.
    p = os.path.expanduser(path)
    return p if os.path.isabs(p) else os.path.abspath(os.path.join(base, p))


def _has_bad_bytes(*values) -> bool:
    # Files are decoded with surrogateescape: undecodable bytes survive as lone surrogates, row by row.
    return BAD_BYTES.search("".join(v for v in values if isinstance(v, str))) is not None


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


def _blank(line: str, delimiter: str) -> bool:
    # A line of nothing but spaces and delimiters (`,,,` from a spreadsheet) is no row and no data line.
    return not line.replace(delimiter, "").strip()


def tsv_quoting(lines: list[str]) -> tuple[bool, str]:
    """Whether a TSV is demonstrably quoted, and why. Common Voice and most TSV writers do not quote, and
    a sentence may begin with a quote mark, so a TSV is read with tabs as the only delimiter and no
    quoting unless (1) every header field is quoted, or (2) read with quoting, every row that has a
    field starting with a quote is well formed (strict CSV rules, closing quote right before a tab or
    the line end) and keeps the header's field count, and some field comes out holding what only
    quoting can carry: a tab, a line break or a (doubled) quote mark. A field that is merely wrapped in
    quotes ("Yes.") is no evidence either way; read without quoting, it keeps its quote marks."""
    header = lines[0].rstrip("\r\n").split("\t") if lines else []
    if header and all(len(h) >= 2 and h[0] == h[-1] == '"' for h in header):
        return True, "every header field is quoted"
    if not any(QUOTE_OPENS_FIELD.search(line) for line in lines):
        return False, "no field starts with a quote"
    reader = csv.reader(lines, delimiter="\t", strict=True)
    width, prev, evidence = None, 0, None
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            return False, f"line {reader.line_num} is not valid quoted TSV ({e})"
        first, prev = prev + 1, reader.line_num
        width = len(values) if width is None else width
        raw = "".join(lines[first - 1:prev])
        if values and QUOTE_OPENS_FIELD.search(raw):
            if len(values) != width:
                return False, f"read with quoting, line {first} would have {len(values)} fields, not {width}"
            if evidence is None and QUOTING_NEEDED.search(raw):
                evidence = first
    if evidence is None:
        return False, "no quoted field holds a tab, line break or quote mark"
    return True, f"line {evidence} has a quoted field holding a tab, line break or quote mark"


def read_table(path: Path, delimiter: str | None = None, audio_col: str | None = None,
               text_col: str | None = None, base: Path | None = None, split: str | None = None) -> Reading:
    """CSV/TSV with a header row; one Row per data line. A CSV is read with standard quoting (strict:
    a quote mark may only open or close a whole field); a TSV with tabs as the only delimiter and no
    quoting, unless tsv_quoting() finds it demonstrably quoted. A row with the wrong number of fields is
    a bad_row reject. The lines are reconciled with the rows: a row that would span several lines (an
    unbalanced quote swallowing the lines after it) is a SpeechtuneError naming the lines, never a
    merged transcript."""
    text = _read_text(path)
    if not text.strip():
        raise SpeechtuneError(f"{path}: the file is empty", "the first line must be a header, e.g. path,text")
    lines = io.StringIO(text, newline="").readlines()  # split at \n, \r\n, \r only, as csv does
    if delimiter is None:
        first = lines[0]
        delimiter = "\t" if path.suffix.lower() == ".tsv" or first.count("\t") > first.count(",") else ","
    quoted, why = tsv_quoting(lines) if delimiter == "\t" else (True, "CSV")
    dialect = dict(strict=True) if quoted else dict(quoting=csv.QUOTE_NONE)
    reader = csv.reader(lines, delimiter=delimiter, **dialect)
    try:
        header = [h.strip() for h in next(reader)]
    except csv.Error as e:
        raise SpeechtuneError(f"{path}: cannot parse the header ({e})") from None
    if reader.line_num > 1:
        raise SpeechtuneError(f"{path}: the header runs over lines 1-{reader.line_num} (an unbalanced quote)",
                              "the first line must be the header, one name per column")
    if _has_bad_bytes(*header):
        raise SpeechtuneError(f"{path}: the header is not UTF-8", "re-save the file as UTF-8")
    a = _pick(header, audio_col, AUDIO_COLS, "audio", path)
    t = _pick(header, text_col, TEXT_COLS, "text", path)
    s = _pick(header, None, SPEAKER_COLS, "speaker", path, required=False)
    lang = _pick(header, None, LANGUAGE_COLS, "language", path, required=False)
    sp = _pick(header, None, ("split",), "split", path, required=False)
    base = base or path.parent
    rows, merged, prev = [], [], reader.line_num
    while True:
        try:
            values, err = next(reader), None
        except StopIteration:
            break
        except csv.Error as e:
            values, err = None, str(e)
        n, prev = prev + 1, reader.line_num
        if prev > n:  # one record over several lines: never a row, always the user's to fix
            merged.append((n, prev, err is None and len(values) == len(header)))
        elif _blank(lines[n - 1], delimiter):
            continue
        elif err:
            fix = '; quote the whole field and double each quote inside it ("She said ""hi""")' if quoted else ""
            rows.append(_bad(path, n, "bad_row", f"unparsable row ({err}){fix}"))
        elif len(values) != len(header):
            rows.append(_bad(path, n, "bad_row", _field_count(len(values), len(header), delimiter)))
        else:
            rows.append(_row_from_record(dict(zip(header, values)), a, t, s, lang, sp, path, n, base, split))
    data_lines = sum(1 for line in lines[1:] if not _blank(line, delimiter))
    if merged or data_lines != len(rows):
        raise _merge_error(path, merged, data_lines, len(rows), quoted, why)
    source = dict(file=str(path), split=split, lines=data_lines, rows=len(rows),
                  quoting="csv" if quoted else "none", quoting_why=why)
    return Reading(rows, [source])


def _field_count(got: int, want: int, delimiter: str) -> str:
    what = "a tab" if delimiter == "\t" else "a comma (quote that field)"
    why = f"{what} inside the text?" if got > want else "a missing field?"
    return f"{got} fields, the header has {want} ({why})"


def _merge_error(path: Path, merged: list, data_lines: int, n_rows: int, quoted: bool, why: str) -> SpeechtuneError:
    """The lines that were read as one row, the first named with its cause."""
    if not merged:  # cannot happen: every line is one row or blank; kept so a bug is loud, not silent
        return SpeechtuneError(f"{path}: {data_lines} data lines but {n_rows} rows read",
                               "please report this with the file")
    first, last, whole = merged[0]
    cause = (f"a quoted field from line {first} to line {last} holds a line break" if whole
             else f"an unbalanced quote at line {first}")
    more = "".join(f", {a}-{b}" for a, b, _ in merged[1:4]) + (", ..." if len(merged) > 4 else "")
    also = f"; also lines {more[2:]}" if more else ""
    fix = ("a transcript must be on one line: remove the line break" if whole else
           'close the quote, or quote the whole field and double each quote inside it ("She said ""hi""")')
    mode = f"this TSV was read with quoting because {why}; " if quoted and why != "CSV" else ""
    return SpeechtuneError(f"{path}: lines {first}-{last} were read as one row ({cause}){also}", mode + fix)


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
               base: Path | None = None, split: str | None = None) -> Reading:
    """NeMo manifests (`audio_filepath`, `text`, `duration`, `offset`), `{"audio": {"path"}, "sentence"}`
    lines, and speechtune's own manifest lines. One Row per non-blank line."""
    text = _read_text(path)
    base = base or path.parent
    rows = []
    # Only \n, \r\n and \r end a line: str.splitlines() would also cut at U+2028 and the like, which
    # json.dumps(ensure_ascii=False) leaves raw inside a transcript.
    for n, line in enumerate(io.StringIO(text, newline="").readlines(), 1):
        line = line.rstrip("\r\n")
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
    return Reading(rows, [dict(file=str(path), split=split, lines=len(rows), rows=len(rows))])


def read_audiofolder(folder: Path, audio_col=None, text_col=None) -> Reading:
    """Hugging Face audiofolder: metadata.csv/.jsonl beside the audio (`file_name` column), optionally in
    train/, validation/, test/ subfolders, which then fix the split."""
    parts = [(folder, None)] + [(d, SPLIT_NAMES[d.name.lower()]) for d in sorted(folder.iterdir())
                                if d.is_dir() and d.name.lower() in SPLIT_NAMES]
    reading = Reading()
    for d, split in parts:
        for name in ("metadata.csv", "metadata.tsv", "metadata.jsonl"):
            meta = d / name
            if not meta.is_file():
                continue
            if name.endswith("jsonl"):
                reading.add(read_jsonl(meta, audio_col or "file_name", text_col, d, split))
            else:
                reading.add(read_table(meta, None, audio_col, text_col, d, split))
    return reading


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


def read_kaldi(folder: Path) -> Reading:
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
    return Reading(rows)


def read_folder(folder: Path) -> Reading:
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
    return Reading(rows)


def _header(path: Path) -> list[str]:
    """The first line's fields of a TSV, without reading the rest."""
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        return [h.strip().strip('"') for h in f.readline().rstrip("\r\n").split("\t")]


def is_commonvoice(path: Path) -> bool:
    """A Common Voice release folder (clips/ and train/dev/test or validated TSVs), or a TSV with Common
    Voice's columns beside a clips/ folder."""
    if path.is_dir():
        return (path / "clips").is_dir() and any((path / n).is_file() for n in (*CV_SPLITS, CV_VALIDATED))
    return (path.suffix.lower() == ".tsv" and (path.parent / "clips").is_dir()
            and CV_COLUMNS <= set(_header(path)))


def _cv_tsv(tsv: Path, split: str | None, audio_col: str | None, text_col: str | None) -> Reading:
    """One Common Voice TSV: `path` is a file name under clips/, `sentence` the text, `client_id` the
    speaker, `locale` the language (as Whisper's code)."""
    reading = read_table(tsv, "\t", audio_col or "path", text_col or "sentence", tsv.parent / "clips", split)
    for r in reading.rows:
        r.language = whisper_language(r.language)
    return reading


def _tsv_paths(tsv: Path) -> set[str]:
    """The `path` column of a Common Voice TSV, read as Common Voice writes it (tabs, no quoting)."""
    rows = csv.reader(io.StringIO(_read_text(tsv), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(rows, [])
    if "path" not in header:
        return set()
    k = header.index("path")
    return {r[k].strip() for r in rows if len(r) > k}


def _data_lines(tsv: Path) -> int:
    return sum(1 for line in io.StringIO(_read_text(tsv), newline="").readlines()[1:] if line.strip())


def read_commonvoice(path: Path, audio_col: str | None = None, text_col: str | None = None) -> Reading:
    """A Common Voice release folder, or one of its TSVs. From the folder, train.tsv, dev.tsv and test.tsv
    are read and keep their split (dev -> valid; when only one is there, prepare splits it); validated.tsv is read only when none of them is there
    (then prepare splits it, by speaker), and otherwise its rows outside them are counted in not_used,
    never added. other.tsv and invalidated.tsv are never read (counted in not_used). A single TSV given
    on its own is read unsplit: prepare splits it."""
    if path.is_file():
        return _cv_tsv(path, None, audio_col, text_col)
    present = [n for n in CV_SPLITS if (path / n).is_file()]
    reading = Reading()
    for n in present:  # one split alone would leave valid and test empty: prepare splits it instead
        reading.add(_cv_tsv(path / n, CV_SPLITS[n] if len(present) > 1 else None, audio_col, text_col))
    validated = path / CV_VALIDATED
    if not present and not validated.is_file():
        raise SpeechtuneError(f"{path}: no {', '.join(CV_SPLITS)} or {CV_VALIDATED}",
                              "pass a Common Voice release folder (the one holding clips/), or one of its TSVs")
    if not present:
        reading.add(_cv_tsv(validated, None, audio_col, text_col))
    elif validated.is_file():
        used = set().union(*(_tsv_paths(path / n) for n in present))
        reading.not_used[f"{CV_VALIDATED} rows not in {', '.join(present)}"] = len(_tsv_paths(validated) - used)
    for n in CV_UNREAD:
        if (path / n).is_file():
            reading.not_used[n] = _data_lines(path / n)
    return reading


def _store_audio(data: bytes, ref: str | None, work_dir: Path) -> str:
    """Write audio bytes from a dataset to a file named by their hash under `work_dir` (once: a rerun finds
    it), keeping the original extension for decoders and messages; returns the file's path."""
    digest = hashlib.sha256(data).hexdigest()
    ext = Path(ref).suffix.lower() if ref and Path(ref).suffix.lower() in AUDIO_EXTS else ""
    path = work_dir / digest[:2] / f"{digest[:HASH_CHARS]}{ext}"
    if not (path.is_file() and path.stat().st_size == len(data)):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    return str(path)


def _audio_column(part, wanted: str | None) -> str:
    """--audio-col, else the first Audio-typed column, else a path column by name."""
    if wanted or not part.audio_columns:
        return _pick(part.columns, wanted, AUDIO_COLS, "audio", Path(part.source))
    return part.audio_columns[0]


def _dataset_row(rec: dict, cols: tuple, part, n: int, split: str | None, work_dir: Path) -> Row:
    """One dataset row: embedded audio bytes are written to a file, a path resolves against the dataset."""
    a, t, s, lang, sp = cols
    value, name = rec.get(a), None
    if isinstance(value, dict):  # an Audio column's storage
        data, ref = value.get("bytes"), value.get("path")
    elif isinstance(value, bytes):
        data, ref = value, None
    else:
        data, ref = None, value
    if data is not None:
        name = ref or f"{part.source}:{n}"
        rec = {**rec, a: _store_audio(data, ref, work_dir)}
    elif isinstance(ref, str) and ref.strip():
        rec = {**rec, a: ref}
    row = _row_from_record(rec, a, t, s, lang, sp, Path(part.source), n, part.base or Path.cwd(), split)
    row.name, row.language = name, whisper_language(row.language)
    return row


def read_parts(parts: list, audio_col: str | None, text_col: str | None, work_dir: Path,
               split: str | None = None) -> Reading:
    """Rows of Hugging Face dataset parts (hf_datasets.Part). With `split`, only the parts of that split
    are read. When the parts hold splits named train/validation/test (SPLIT_NAMES), only those are read
    and a split with another name (Common Voice's `other`, `invalidated`) is counted in not_used; with
    two or more of them the rows keep their split, with one (or `split`) prepare splits its rows."""
    if split:
        chosen = [p for p in parts if (p.name or "").lower() == split.lower()]
        if not chosen:
            names = sorted({p.name or "(unnamed)" for p in parts})
            raise SpeechtuneError(f"no split {split!r} in {parts[0].source}", f"splits: {', '.join(names)}")
        parts = chosen
    known = {SPLIT_NAMES[p.name.lower()] for p in parts if (p.name or "").lower() in SPLIT_NAMES}
    reading = Reading()
    for part in parts:
        fixed = SPLIT_NAMES.get((part.name or "").lower())
        if known and fixed is None:
            reading.not_used[f"{part.source} (split {part.name})"] = part.num_rows
            continue
        reading.add(_read_part(part, audio_col, text_col, work_dir, fixed if len(known) > 1 else None))
    return reading


def _read_part(part, audio_col, text_col, work_dir: Path, split: str | None) -> Reading:
    where = Path(part.source)
    cols = (_audio_column(part, audio_col), _pick(part.columns, text_col, TEXT_COLS, "text", where),
            _pick(part.columns, None, SPEAKER_COLS, "speaker", where, required=False),
            _pick(part.columns, None, LANGUAGE_COLS, "language", where, required=False),
            _pick(part.columns, None, ("split",), "split", where, required=False))
    rows = []
    for batch in part.batches():
        for rec in batch.to_pylist():
            rows.append(_dataset_row(rec, cols, part, len(rows) + 1, split, work_dir))
    if len(rows) != part.num_rows:  # the dataset's own count; a difference would be rows lost unseen
        raise SpeechtuneError(f"{part.source}: {part.num_rows} rows in the dataset but {len(rows)} read",
                              "the dataset files may be damaged; rewrite them with save_to_disk/to_parquet")
    return Reading(rows, [dict(file=part.source, split=split, dataset_split=part.name, lines=part.num_rows,
                               rows=len(rows))])


def detect_format(path: Path) -> str:
    if path.is_file():
        ext = path.suffix.lower()
        if ext == ".tsv" and is_commonvoice(path):
            return "commonvoice"
        if ext in (".csv", ".tsv"):
            return "tsv" if ext == ".tsv" else "csv"
        if ext in (".jsonl", ".json", ".ndjson"):
            return "jsonl"
        if ext in (".parquet", ".arrow"):
            return "hf"
        raise SpeechtuneError(f"{path}: cannot tell the format from the extension {ext!r}",
                              f"pass --format, one of {', '.join(FORMATS)}")
    if (path / "wav.scp").is_file():
        return "kaldi"
    metas = ("metadata.csv", "metadata.tsv", "metadata.jsonl")
    if any((path / m).is_file() for m in metas) or any(
            (d / m).is_file() for d in path.iterdir() if d.is_dir() and d.name.lower() in SPLIT_NAMES for m in metas):
        return "audiofolder"
    if is_commonvoice(path):
        return "commonvoice"
    if hf_datasets.is_dataset_dir(path) or hf_datasets.has_parquet(path):
        return "hf"
    return "folder"


def read_input(path: str | Path | None, fmt: str = "auto", audio_col: str | None = None,
               text_col: str | None = None, hf_dataset: str | None = None, hf_config: str | None = None,
               hf_split: str | None = None, work_dir: str | Path | None = None) -> Reading:
    """The rows of any supported input (a path, or with `hf_dataset` a hub dataset by name); the
    Reading's `format` says which reader read it. `work_dir` receives audio bytes embedded in datasets
    (default: the prepare cache's sources/ folder)."""
    work = Path(work_dir) if work_dir else cache_dir() / "prepare" / "sources"
    if hf_dataset:
        if path is not None:
            raise SpeechtuneError("give an input path or --hf-dataset, not both")
        reading = read_parts(hf_datasets.open_hub(hf_dataset, hf_config, hf_split), audio_col, text_col, work)
        reading.format = "hf"
        return _nonempty(reading, f"hf:{hf_dataset}")
    if path is None:
        raise SpeechtuneError("no input given", "pass a data file or folder, or --hf-dataset NAME")
    p = Path(path).expanduser()
    if not p.exists():
        raise SpeechtuneError(f"input not found: {p}", "pass a CSV/TSV/JSONL manifest or a data folder")
    fmt = detect_format(p) if fmt in (None, "auto") else fmt
    if fmt not in FORMATS:
        raise SpeechtuneError(f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    needs_dir = fmt in ("audiofolder", "kaldi", "folder")
    if needs_dir != p.is_dir() and fmt not in ("commonvoice", "hf"):
        raise SpeechtuneError(f"{p}: format {fmt} needs a {'folder' if needs_dir else 'file'}")
    if (hf_config or hf_split) and fmt != "hf":
        raise SpeechtuneError(f"--hf-config/--hf-split apply to Hugging Face datasets, not to a {fmt} input")
    if fmt in ("csv", "tsv"):
        reading = read_table(p, "\t" if fmt == "tsv" else None, audio_col, text_col)
    elif fmt == "jsonl":
        reading = read_jsonl(p, audio_col, text_col)
    elif fmt == "audiofolder":
        reading = read_audiofolder(p, audio_col, text_col)
    elif fmt == "kaldi":
        reading = read_kaldi(p)
    elif fmt == "commonvoice":
        reading = read_commonvoice(p, audio_col, text_col)
    elif fmt == "hf":
        reading = read_parts(hf_datasets.open_path(p, hf_config), audio_col, text_col, work, hf_split)
    else:
        reading = read_folder(p)
    reading.format = fmt
    return _nonempty(reading, str(p))


def _nonempty(reading: Reading, where: str) -> Reading:
    if not reading.rows:
        raise SpeechtuneError(f"{where}: no clips found in this {reading.format} input",
                              "check the path; a folder input needs audio files with same-named .txt transcripts")
    return reading
