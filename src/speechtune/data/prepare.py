"""Turn messy recordings + transcripts into a clean, split, documented dataset (every reject explained).

Reads CSV/TSV, JSONL (NeMo or HF style), an HF audiofolder, a Kaldi data dir, a Common Voice release
(folder or TSV), a Hugging Face dataset (save_to_disk folder, parquet, a hub-like folder, or a hub name
with --hf-dataset), or a folder of audio files with same-named .txt transcripts. Writes
train/valid/test.jsonl, rejects.jsonl, stats.json, durations.png and audio/ (16 kHz mono wav) into OUT.
Exit status 0 when any clip was kept. Reject reasons: bad_row bad_encoding missing_text empty_text text_too_long missing_file undecodable
empty_audio non_finite bad_segment too_short too_long silent rate_mismatch duplicate_audio split_leak.

`--task tts` prepares one speaker's recordings to fine-tune a voice (`--voice`, default joe): audio at the
voice's sample rate with silence trimmed, 1-15 s, text normalised (numbers spelt out; `raw_text` keeps the
original), split by utterance, and tts_checks.py's reasons on top: unreadable_text unknown_phoneme clipped
other_speaker transcript_mismatch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE, AudioError, decode, load_audio, write_pcm16
from ..config import add_dataclass_args, build_config
from ..errors import SpeechtuneError
from ..files import write_atomic, write_json, write_jsonl
from ..metrics.voice import speaker_embeddings
from ..tts import load_voice
from ..tts.hearing import base_language, hear, listener_for
from ..tts.text import normalize as spell_out
from . import checks, readers, split, tts_checks

CHUNK = 64  # clips held in memory at a time by the tts speaker and transcript checks
CACHE_VERSION = "2"  # bump when processing changes, so old cache entries are not reused
TASKS = ("asr", "tts")
# min/max duration when not given: Whisper's (asr), piper's training recipe's (tts)
DURATIONS = {"asr": (0.3, 30.0), "tts": (tts_checks.MIN_DURATION, tts_checks.MAX_DURATION)}
TARGET_RMS_DB = -20.0
MAX_GAIN_DB = 30.0   # never boost a near-silent clip into loud noise


@dataclass
class PrepareConfig:
    format: str = field(default="auto", metadata={"help": "input format", "choices": ("auto",) + readers.FORMATS})
    audio_col: str | None = field(default=None, metadata={"help": "CSV/JSONL column with the audio path"})
    text_col: str | None = field(default=None, metadata={"help": "CSV/JSONL column with the transcript"})
    hf_dataset: str | None = field(default=None, metadata={
        "help": "a Hugging Face hub dataset to read instead of INPUT (datasets.load_dataset; needs network "
                "unless cached)"})
    hf_config: str | None = field(default=None, metadata={"help": "config of the HF dataset (e.g. zh-CN)"})
    hf_split: str | None = field(default=None, metadata={
        "help": "read only this split of the HF dataset (e.g. train); prepare then splits it"})
    language: str | None = field(default=None, metadata={"help": "language code for rows without one (en, zh, ...)"})
    task: str = field(default="asr", metadata={
        "help": "asr: recognition data (16 kHz); tts: one speaker's recordings to fine-tune --voice",
        "choices": TASKS})
    min_duration: float | None = field(default=None, metadata={
        "help": "seconds; shorter clips are rejected (none given: 0.3, with --task tts 1)"})
    max_duration: float | None = field(default=None, metadata={
        "help": "seconds; Whisper sees 30 s at a time (none given: 30, with --task tts 15)"})
    silence_db: float = field(default=-55.0, metadata={"help": "dBFS; clips whose loudest frame is quieter are silent"})
    check_rate: bool = field(default=True, metadata={"help": "reject implausible characters per second"})
    trim_silence: bool = field(default=False, metadata={"help": "cut leading/trailing silence (keeps 0.1 s)"})
    normalize: bool = field(default=False, metadata={"help": f"scale each clip to {TARGET_RMS_DB:.0f} dBFS RMS"})
    split_by: str = field(default="auto", metadata={
        "help": "keep speakers disjoint (speaker) or only transcripts (utterance); auto = speaker when "
                ">= 3 speakers are known", "choices": ["auto", "speaker", "utterance"]})
    valid_frac: float = field(default=0.1, metadata={"help": "fraction of clips for valid (>= 1 clip from 3 clips)"})
    test_frac: float = field(default=0.1, metadata={"help": "fraction of clips for test (>= 1 clip from 3 clips)"})
    seed: int = field(default=0, metadata={"help": "same seed, same split"})
    workers: int = field(default=2, metadata={"help": "decoding processes"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "prepared-audio cache (default $SPEECHTUNE_CACHE/prepare or ~/.cache/speechtune/prepare)"})
    # --task tts only
    voice: str = field(default=tts_checks.DEFAULT_VOICE, metadata={
        "help": "tts: the base voice (bundled name, piper .onnx or its folder) whose sample rate and phoneme "
                "map the clips must fit"})
    check_speaker: bool = field(default=True, metadata={
        "help": "tts: reject clips whose speaker embedding is far from the set's median voice"})
    speaker_floor: float = field(default=tts_checks.SPEAKER_FLOOR, metadata={
        "help": "tts: cosine to the median voice under which a clip is always another speaker"})
    speaker_k: float = field(default=tts_checks.SPEAKER_K, metadata={
        "help": "tts: also reject clips more than this many MADs under the set's median similarity"})
    check_transcript: bool = field(default=True, metadata={
        "help": "tts: transcribe each clip with the bundled Whisper and compare (--no-check-transcript is faster)"})
    max_cer: float = field(default=tts_checks.MAX_CER, metadata={
        "help": "tts: reject clips whose Whisper transcript has a higher CER than this (0 or less: no check)"})


def cache_root(cfg: PrepareConfig) -> Path:
    """Shared across runs and output folders: re-running with other split or duration options, or on a
    dataset that shares files with an earlier one, decodes nothing twice. out/audio/ hard-links into it,
    so the prepared dir stays self-contained without storing the audio twice."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    from ..files import cache_dir
    return cache_dir() / "prepare"


# ---- per clip, in worker processes ----------------------------------------------------------------

def _trim(wav: np.ndarray, db: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    loud = np.nonzero(db > max(db.max() - 40.0, -60.0))[0]
    if loud.size == 0:
        return wav
    f = int(checks.FRAME_S * sr)
    pad = int(0.1 * sr)
    return wav[max(0, loud[0] * f - pad): min(len(wav), (loud[-1] + 1) * f + pad)]


def _normalize(wav: np.ndarray) -> np.ndarray:
    rms_db = 10 * np.log10(np.mean(wav.astype(np.float64) ** 2) + 1e-12)
    gain = 10 ** (min(TARGET_RMS_DB - rms_db, MAX_GAIN_DB) / 20)
    out = wav * gain
    peak = np.abs(out).max()
    return out * (0.99 / peak) if peak > 0.99 else out


def _cut(wav: np.ndarray, start: float | None, end: float | None, sr: int = SAMPLE_RATE) -> np.ndarray | str:
    if start is None:
        return wav
    total = len(wav) / sr
    # Segment times are rounded by the tools that write them; allow 50 ms past the end.
    if start < 0 or start >= total or (end is not None and (end <= start or end > total + 0.05)):
        return f"segment {start:.2f}-{'end' if end is None else f'{end:.2f}'} s is outside the {total:.2f} s recording"
    return wav[int(start * sr): None if end is None else int(end * sr)]


def process_file(job: tuple) -> list[dict]:
    """Decode one audio file once and, for each (start, end) segment of it ((None, None) = the whole
    file), cut, measure, trim/normalise and store the clip in the cache: at 16 kHz, or for `tts` at the
    voice's rate `sr` and with its clipped fraction measured. Returns what the checks need, one dict per
    segment; segments whose result is already cached (same bytes + options) are read back."""
    audio, segments, trim, normalize, root, sr, tts = job
    try:
        data = Path(audio).read_bytes()
    except FileNotFoundError:
        return [{"reason": "missing_file", "detail": f"{audio}: file not found"}] * len(segments)
    except IsADirectoryError:
        return [{"reason": "missing_file", "detail": f"{audio}: is a folder, not an audio file"}] * len(segments)
    except OSError as e:
        return [{"reason": "missing_file", "detail": f"{audio}: cannot read ({e.strerror})"}] * len(segments)
    if not data:
        return [{"reason": "empty_audio", "detail": f"{audio}: file is empty (0 bytes)"}] * len(segments)
    digest = hashlib.sha256(data).hexdigest()
    out, todo = [], []
    for start, end in segments:
        task = f"|tts|{sr}" if tts else ""  # asr keys as before: earlier caches stay valid
        key = hashlib.sha256(f"{digest}|{start}|{end}|{trim}|{normalize}|{CACHE_VERSION}{task}".encode()).hexdigest()
        meta = Path(root) / key[:2] / f"{key}.json"
        info = _cached(meta)
        out.append(_named({**info, "cached": True}, audio) if info else None)
        if info is None:
            todo.append((len(out) - 1, start, end, meta))
    if not todo:
        return out
    try:
        wav = decode(data, name=audio, sr=sr)
    except AudioError as e:
        # libsndfile names the in-memory buffer by its address; drop it so rejects.jsonl is reproducible
        wav = {"reason": e.reason, "detail": re.sub(r"Error opening <_io\.BytesIO object at 0x\w+>: ", "", e.detail)}
    for k, start, end, meta in todo:
        info = dict(wav) if isinstance(wav, dict) else _process_segment(wav, start, end, trim, normalize,
                                                                       meta.with_suffix(".wav"), sr, tts)
        meta.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(meta, json.dumps(info))
        out[k] = _named({**info, "cached": False}, audio)
    return out


def _cached(meta: Path) -> dict | None:
    if not meta.is_file():
        return None
    try:
        info = json.loads(meta.read_text())
        wav = Path(info.get("wav", ""))
        if "reason" in info or (wav.is_file() and wav.stat().st_size == info["size"]):
            return info
    except (ValueError, KeyError, OSError):
        pass  # a damaged entry is simply redone
    return None


def _named(info: dict, audio: str) -> dict:
    # Cached results are shared by every file with the same bytes, so the path is added on the way out.
    return {**info, "detail": f"{audio}: {info['detail']}"} if "detail" in info else info


def _process_segment(wav: np.ndarray, start, end, trim: bool, normalize: bool, wav_path: Path,
                     sr: int = SAMPLE_RATE, tts: bool = False) -> dict:
    wav = _cut(wav, start, end, sr)
    if isinstance(wav, str):
        return {"reason": "bad_segment", "detail": wav}
    if wav.size == 0:
        return {"reason": "empty_audio", "detail": "zero samples"}
    db = checks.frame_db(wav, sr)
    info = {"peak_db": float(db.max()), "voiced": checks.voiced_seconds(db)}
    if trim:
        wav = _trim(wav, db, sr)
    if tts:  # measured after trimming (silence would dilute it), before any gain
        info["clipped"] = tts_checks.clipped_fraction(wav)
    if normalize:
        wav = _normalize(wav)
    pcm = (np.clip(wav, -1.0, 1.0) * 32767).round().astype("<i2")
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    write_pcm16(wav_path, pcm, sr)  # a torn cache file is caught by the size check on read
    info.update(duration=len(pcm) / sr, pcm_sha=hashlib.sha256(pcm.tobytes()).hexdigest(),
                wav=str(wav_path), size=wav_path.stat().st_size)
    return info


def _run(jobs: list[tuple], workers: int, progress: bool) -> list[list[dict]]:
    from tqdm import tqdm
    bar = dict(total=len(jobs), desc="prepare", unit="file", disable=not progress, file=sys.stderr)
    if workers <= 1 or len(jobs) < 2:
        return [process_file(j) for j in tqdm(jobs, **bar)]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    # forkserver: workers start from a clean process, not a fork of one that may hold threads (tokenizers,
    # torch) whose locks a fork could copy in a locked state.
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
        try:
            return list(tqdm(pool.map(process_file, jobs, chunksize=max(1, min(16, len(jobs) // (8 * workers)))),
                             **bar))
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        except BrokenProcessPool:
            raise SpeechtuneError(
                "a prepare worker process died",
                "a script that calls prepare() with workers > 1 must do so under `if __name__ == \"__main__\":` "
                "(Python's multiprocessing re-imports the script); otherwise a decoder crashed on a file: "
                "rerun with --workers 1 to see which") from None


# ---- the recipe ---------------------------------------------------------------------------------

def _clean_text(text: str | None) -> str | None:
    return " ".join(text.split()) if text is not None else None


def _check_out(out: Path, input_path: Path | None) -> None:
    if input_path is not None and out.resolve() == input_path.resolve():
        raise SpeechtuneError("--out must not be the input folder", "pick a new folder, e.g. prepared/")
    if out.exists() and any(out.iterdir()) and not (out / "stats.json").is_file():
        raise SpeechtuneError(f"{out} exists and is not an earlier prepare output",
                              "pick an empty or new folder for --out")


def _link(src: str, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or no hard links: copy
        shutil.copyfile(src, dst)


def prepare(input: str | Path | None, out_dir: str | Path, progress: bool = False, **options) -> dict:
    """Prepare `input` (None with the hf_dataset option) into `out_dir`; returns the stats written to
    stats.json. Options are PrepareConfig fields. Raises SpeechtuneError when the input can't be read or nothing usable remains
    (rejects.jsonl and stats.json are still written then)."""
    cfg = resolve(options.pop("config", None) or PrepareConfig(**options))
    t0 = time.time()
    input_path = Path(input).expanduser() if input is not None else None
    out = Path(out_dir).expanduser()
    reading = readers.read_input(input_path, cfg.format, cfg.audio_col, cfg.text_col, cfg.hf_dataset,
                                 cfg.hf_config, cfg.hf_split, cache_root(cfg) / "sources")
    rows = reading.rows
    _check_out(out, input_path)
    voice = load_voice(cfg.voice) if cfg.task == "tts" else None
    rejects: list[tuple[int, dict]] = []

    ok = _check_texts(rows, cfg, rejects)
    extra: dict[int, dict] = {}
    if voice:
        ok, extra = _check_tts_texts(rows, ok, voice, rejects)
    sr = voice.sample_rate if voice else SAMPLE_RATE
    results, t_process = _process_audio(rows, ok, cfg, progress, sr)
    kept = _check_audio(rows, ok, results, cfg, rejects)
    if voice:
        kept, found = _check_voice(rows, kept, cfg, sr, rejects, progress)
    splits, mode, leaks = _split(rows, kept, cfg, rejects)

    manifests = _write_manifests(out, rows, kept, splits, leaks, extra)
    rejects.sort(key=lambda x: x[0])
    write_jsonl(out / "rejects.jsonl", [r for _, r in rejects])
    stats = _stats(input_path or f"hf:{cfg.hf_dataset}", reading, cfg, mode, manifests, [r for _, r in rejects],
                   results, time.time() - t0)
    stats["seconds_processing"] = round(t_process, 2)  # decode/check/cache part, without reading and plots
    if voice:
        stats["tts"] = {"voice": voice.name, "sample_rate": sr, **found}
    write_json(out / "stats.json", stats)
    _plot(manifests, cfg, out / "durations.png")
    if stats["clips"]["kept"] == 0:
        top = ", ".join(f"{n} {k}" for k, n in list(stats["rejected"].items())[:3])
        raise SpeechtuneError(f"no usable clips: all {len(rows)} were rejected ({top})",
                              f"see {out / 'rejects.jsonl'} for each clip's reason")
    return stats


def resolve(cfg: PrepareConfig) -> PrepareConfig:
    """`cfg` with its task's defaults filled in: durations not given (asr 0.3-30 s, tts 1-15 s); tts also
    trims silence and splits by utterance (one speaker)."""
    if cfg.task not in TASKS:
        raise SpeechtuneError(f"unknown --task {cfg.task!r}", f"use one of {', '.join(TASKS)}")
    lo, hi = DURATIONS[cfg.task]
    cfg = dataclasses.replace(cfg, min_duration=lo if cfg.min_duration is None else cfg.min_duration,
                              max_duration=hi if cfg.max_duration is None else cfg.max_duration)
    if cfg.task != "tts":
        return cfg
    if cfg.split_by == "speaker":
        raise SpeechtuneError("--split-by speaker does not apply to --task tts: a voice is one speaker",
                              "drop --split-by (tts splits by utterance)")
    return dataclasses.replace(cfg, trim_silence=True, split_by="utterance")


def _reject(rejects: list, rows: list, i: int, reason: str, detail: str) -> None:
    """Record in `rejects` that rows[i] is dropped, with one of checks.REASONS (or tts_checks.REASONS) and a
    detail for the user."""
    assert reason in checks.REASONS or reason in tts_checks.REASONS, reason
    r = rows[i]
    rejects.append((i, {"source": r.source, "line": r.line, "reason": reason, "detail": detail}))


def _check_texts(rows: list, cfg: PrepareConfig, rejects: list) -> list[int]:
    """Set each row's language and clean its text; returns the indices of rows whose text passes the checks."""
    todo = []
    for i, r in enumerate(rows):
        lang = r.language or cfg.language
        r.language = lang.strip().lower() if lang else None
        if r.error:
            _reject(rejects, rows, i, *r.error)
        elif problem := checks.text_problem(r.text):
            _reject(rejects, rows, i, *problem)
        else:
            r.text = _clean_text(r.text)
            todo.append(i)
    counts = checks.token_counts([rows[i].text for i in todo], [rows[i].language for i in todo])
    ok = []
    for i, n in zip(todo, counts):
        if problem := checks.text_problem(rows[i].text, n):
            _reject(rejects, rows, i, *problem)
        else:
            ok.append(i)
    return ok


def _check_tts_texts(rows: list, ok: list[int], voice, rejects: list) -> tuple[list[int], dict[int, dict]]:
    """Normalise the text of rows[ok] for `voice` (numbers and abbreviations spelt out) and reject what the
    voice cannot say; returns the indices kept and, for each, the manifest fields tts adds (the original
    text as raw_text, the sample rate). Rows with no language get the voice's."""
    language = base_language(voice.language)
    kept, extra = [], {}
    for i in ok:
        r = rows[i]
        r.language = r.language or language
        raw, r.text = r.text, _clean_text(spell_out(r.text, r.language))
        if problem := tts_checks.unreadable(r.text, r.language) or tts_checks.phoneme_problem(voice, r.text):
            _reject(rejects, rows, i, *problem)
            continue
        kept.append(i)
        extra[i] = {"raw_text": raw, "sample_rate": voice.sample_rate}
    return kept, extra


def _process_audio(rows: list, ok: list[int], cfg: PrepareConfig, progress: bool,
                   sr: int = SAMPLE_RATE) -> tuple[list[dict], float]:
    """Run process_file over the audio of rows[ok] (stored at `sr`); returns one result per index in `ok` and
    the seconds taken."""
    root = cache_root(cfg)
    # One job per audio file: a long recording cut by Kaldi segments or NeMo offsets is decoded once.
    by_file: dict[str, list[int]] = {}
    for i in ok:
        by_file.setdefault(rows[i].audio, []).append(i)
    jobs = [(audio, [(rows[i].start, rows[i].end) for i in idx], cfg.trim_silence, cfg.normalize, str(root), sr,
             cfg.task == "tts") for audio, idx in by_file.items()]
    t_process = time.time()
    # matplotlib takes ~1 s to import; let that overlap with the decoding, which runs in worker processes.
    threading.Thread(target=importlib.import_module, args=("matplotlib.figure",), daemon=True).start()
    per_file = _run(jobs, cfg.workers, progress)
    info_of = {i: info for idx, infos in zip(by_file.values(), per_file) for i, info in zip(idx, infos)}
    results = [info_of[i] for i in ok]
    return results, time.time() - t_process


def _check_audio(rows: list, ok: list[int], results: list[dict], cfg: PrepareConfig,
                 rejects: list) -> list[tuple[int, dict]]:
    """Reject bad, implausible and duplicate audio; returns (row index, result) for each clip kept."""
    kept, seen = [], {}
    for i, info in zip(ok, results):
        r = rows[i]
        problem = (info["reason"], info["detail"]) if "reason" in info else checks.audio_problem(
            info, cfg.min_duration, cfg.max_duration, cfg.silence_db, r.start is not None)
        if not problem and "clipped" in info:  # measured for tts only
            problem = tts_checks.clipping_problem(info["clipped"])
        if not problem and cfg.check_rate:
            problem = checks.rate_problem(r.text, info["voiced"], r.language)
        if not problem and info["pcm_sha"] in seen:
            first = rows[seen[info["pcm_sha"]]]
            where = f" ({first.source}:{first.line})" if first.line else ""
            problem = ("duplicate_audio", f"{r.origin}: same audio as {first.origin}{where}")
        if problem:
            _reject(rejects, rows, i, *problem)
            continue
        seen[info["pcm_sha"]] = i
        kept.append((i, info))
    return kept


def _check_voice(rows: list, kept: list[tuple[int, dict]], cfg: PrepareConfig, sr: int, rejects: list,
                 progress: bool) -> tuple[list[tuple[int, dict]], dict]:
    """tts: reject other speakers, then transcripts Whisper does not hear; returns the clips kept and what
    the checks found (for stats.json: similarity bar, models, notes on checks skipped)."""
    found: dict = {"notes": []}
    if not cfg.check_speaker:
        found["notes"].append("speaker check off (--no-check-speaker)")
    elif len(kept) < tts_checks.MIN_SPEAKER_CLIPS:
        found["notes"].append(f"speaker check skipped: {len(kept)} clip(s) left, it needs "
                              f"{tts_checks.MIN_SPEAKER_CLIPS} to tell the odd one out")
    else:
        kept = _check_speaker(rows, kept, cfg, sr, rejects, found, progress)
    if not cfg.check_transcript or cfg.max_cer <= 0:
        found["notes"].append("transcript check off (" + ("--no-check-transcript)" if not cfg.check_transcript
                                                          else f"--max-cer {cfg.max_cer})"))
    elif kept:
        kept = _check_transcripts(rows, kept, cfg, rejects, found, progress)
    return kept, found


def _chunks(items: list, desc: str, progress: bool):
    from tqdm import tqdm
    with tqdm(total=len(items), desc=desc, unit="clip", leave=False, disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(items), CHUNK):
            yield items[start:start + CHUNK]
            bar.update(len(items[start:start + CHUNK]))


def _check_speaker(rows, kept, cfg, sr, rejects, found, progress) -> list[tuple[int, dict]]:
    """Reject the kept clips that sound like another speaker than the set's median voice; returns the rest
    and puts the median similarity and the bar into `found`."""
    emb = np.concatenate([speaker_embeddings([load_audio(info["wav"], sr) for _, info in part], sr)
                          for part in _chunks(kept, "speaker", progress)])
    similarity, median, threshold = tts_checks.speaker_similarity(emb, cfg.speaker_floor, cfg.speaker_k)
    found["speaker"] = {"median_similarity": round(median, 3), "threshold": round(threshold, 3)}
    out = []
    for (i, info), s in zip(kept, similarity):
        if problem := tts_checks.speaker_problem(float(s), median, threshold):
            _reject(rejects, rows, i, *problem)
        else:
            out.append((i, info))
    return out


def _check_transcripts(rows, kept, cfg, rejects, found, progress) -> list[tuple[int, dict]]:
    """Reject the kept clips whose text the bundled Whisper does not hear (CER over cfg.max_cer); returns the
    rest and puts the models used and the median CER into `found`."""
    by_model: dict[str, list[int]] = {}
    for k, (i, _) in enumerate(kept):
        by_model.setdefault(listener_for([rows[i].language]), []).append(k)
    cer, heard = [0.0] * len(kept), [""] * len(kept)
    for name, ks in by_model.items():
        for part in _chunks(ks, f"whisper {name}", progress):
            langs = [rows[kept[k][0]].language for k in part]
            hyps = hear([load_audio(kept[k][1]["wav"]) for k in part], langs, name)
            for k, h, c in zip(part, hyps, tts_checks.cers([rows[kept[k][0]].text for k in part], hyps, langs)):
                cer[k], heard[k] = c, h
    found["transcript"] = {"models": sorted(by_model), "max_cer": cfg.max_cer,
                           "median_cer": round(float(np.median(cer)), 3)}
    out = []
    for (i, info), c, h in zip(kept, cer, heard):
        if problem := tts_checks.transcript_problem(c, h, cfg.max_cer):
            _reject(rejects, rows, i, *problem)
        else:
            out.append((i, info))
    return out


def _split(rows: list, kept: list[tuple[int, dict]], cfg: PrepareConfig,
           rejects: list) -> tuple[list[str], str, set[int]]:
    """Assign each kept clip a split and reject leaks; returns the splits, the split mode and the leaked positions."""
    clips = [dict(text=rows[i].text, speaker=rows[i].speaker, split=rows[i].split) for i, _ in kept]
    splits, mode = split.assign(clips, cfg.split_by, cfg.valid_frac, cfg.test_frac, cfg.seed) if clips else ([], "none")
    leaks = set(split.find_leaks(clips, splits))
    for k in sorted(leaks):
        i = kept[k][0]
        _reject(rejects, rows, i, "split_leak", f"{rows[i].origin}: transcript and speaker also in the "
                                                f"{_winner(clips, splits, k)} split, kept there")
    return splits, mode, leaks


def _write_manifests(out: Path, rows: list, kept: list[tuple[int, dict]], splits: list[str],
                     leaks: set[int], extra: dict[int, dict] | None = None) -> dict[str, list[dict]]:
    """Link the kept audio into out/audio/ and write train/valid/test.jsonl (with `extra`'s fields for a row
    index, after its text); returns the manifest rows by split."""
    extra = extra or {}
    out.mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(exist_ok=True)
    manifests: dict[str, list[dict]] = {s: [] for s in split.SPLITS}
    for k, ((i, info), s) in enumerate(zip(kept, splits)):
        if k in leaks:
            continue
        r = rows[i]
        name = f"audio/{Path(info['wav']).stem[:20]}.wav"
        _link(info["wav"], out / name)
        manifests[s].append(dict(audio=name, text=r.text, **extra.get(i, {}), duration=round(info["duration"], 3),
                                 speaker=r.speaker, language=r.language, source=r.origin))
    _prune_audio(out, {m["audio"] for ms in manifests.values() for m in ms})
    for s, ms in manifests.items():
        write_jsonl(out / f"{s}.jsonl", ms)
    return manifests


def _winner(clips, splits, k) -> str:
    key = split.leak_key(clips[k]["text"], clips[k]["speaker"])
    return min((s for c, s in zip(clips, splits) if split.leak_key(c["text"], c["speaker"]) == key),
               key=lambda s: split.SPLIT_PRIORITY[s])


def _prune_audio(out: Path, keep: set[str]) -> None:
    """Drop audio an earlier run into the same folder wrote that this run no longer uses."""
    for p in (out / "audio").glob("*.wav"):
        if f"audio/{p.name}" not in keep:
            p.unlink()


def _stats(input_path, reading, cfg, mode, manifests, rejects, results, seconds) -> dict:
    rows = reading.rows
    hours = lambda ms: round(sum(m["duration"] for m in ms) / 3600, 4)  # noqa: E731
    speakers: dict = {}
    for s, ms in manifests.items():
        for m in ms:
            d = speakers.setdefault(m["speaker"] or "unknown", {"clips": 0, "hours": 0.0, "splits": []})
            d["clips"] += 1
            d["hours"] += m["duration"] / 3600
            if s not in d["splits"]:
                d["splits"].append(s)
    for d in speakers.values():
        d["hours"] = round(d["hours"], 4)
    by_reason: dict = {}
    for r in rejects:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    kept = sum(len(ms) for ms in manifests.values())
    if kept + len(rejects) != len(rows):  # every row is kept or rejected; anything else is a bug, said loudly
        raise RuntimeError(f"prepare lost rows: {len(rows)} read, {kept} kept, {len(rejects)} rejected")
    return {
        "input": str(input_path), "format": reading.format, "split_by": mode, "seed": cfg.seed,
        "clips": {"read": len(rows), "kept": kept, "rejected": len(rejects)},
        # Reconciliation: the data lines (dataset rows) of every file read, and the rows read from them.
        "input_lines": reading.input_lines, "rows_read": len(rows),
        "sources": reading.sources, "not_used": reading.not_used,
        "hours": hours([m for ms in manifests.values() for m in ms]),
        "splits": {s: {"clips": len(ms), "hours": hours(ms), "speakers": len({m["speaker"] for m in ms})}
                   for s, ms in manifests.items()},
        "speakers": dict(sorted(speakers.items())),
        "languages": {lang or "unknown": sum(1 for ms in manifests.values() for m in ms if m["language"] == lang)
                      for lang in sorted({m["language"] for ms in manifests.values() for m in ms}, key=str)},
        "rejected": dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))),
        "cache": {"hits": sum(1 for r in results if r.get("cached")),
                  "decoded": sum(1 for r in results if r.get("cached") is False)},
        "seconds": round(seconds, 2),
        "options": dataclasses.asdict(cfg),
    }


def _plot(manifests: dict, cfg: PrepareConfig, path: Path) -> None:
    # A bare Figure renders with Agg and leaves pyplot's global backend alone (prepare() may run in a notebook).
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    data = [[m["duration"] for m in manifests[s]] for s in split.SPLITS]
    if any(data):
        top = max(max(d) for d in data if d)
        bins = np.linspace(0, max(top, cfg.min_duration) * 1.02, 31)
        ax.hist(data, bins=bins, stacked=True, label=[f"{s} ({len(d)})" for s, d in zip(split.SPLITS, data)])
        ax.legend()
    ax.axvline(cfg.min_duration, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("clip duration (s)")
    ax.set_ylabel("clips")
    ax.set_title("Kept clips by duration")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)


def print_summary(stats: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console()
    t = Table(title=f"prepared {stats['input']} ({stats['format']}, split by {stats['split_by']})")
    for col in ("split", "clips", "minutes", "speakers"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for s, d in stats["splits"].items():
        t.add_row(s, str(d["clips"]), f"{d['hours'] * 60:.1f}", str(d["speakers"]))
    t.add_row("rejected", str(stats["clips"]["rejected"]), "", "", style="yellow")
    console.print(t)
    if stats["rejected"]:
        r = Table(title="rejected by reason")
        r.add_column("reason")
        r.add_column("clips", justify="right")
        r.add_column("meaning")
        for reason, n in stats["rejected"].items():
            r.add_row(reason, str(n), {**checks.REASONS, **tts_checks.REASONS}[reason])
        console.print(r)
    if "tts" in stats:
        tts = stats["tts"]
        console.print(f"voice {tts['voice']}: audio at {tts['sample_rate']} Hz" +
                      "".join(f"; {note}" for note in tts["notes"]))
    console.print(f"wrote {out}/ (train/valid/test.jsonl, rejects.jsonl, stats.json, durations.png); "
                  f"cache hits {stats['cache']['hits']}, decoded {stats['cache']['decoded']}, {stats['seconds']} s")


def add_arguments(parser) -> None:
    parser.add_argument("input", nargs="?", help="CSV/TSV, JSONL manifest, HF audiofolder, Kaldi data dir, Common "
                                                 "Voice release (folder or TSV), HF dataset (save_to_disk folder, "
                                                 "parquet, hub-like folder), or a folder of audio + same-named .txt; "
                                                 "none with --hf-dataset")
    parser.add_argument("out_dir", nargs="?", metavar="OUT", help="output folder (or --out)")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--config", help="YAML file with any of the options below")
    add_dataclass_args(parser, PrepareConfig)


def _paths(args, cfg: PrepareConfig) -> tuple[str | None, str]:
    """(input, out) from `INPUT OUT`, `INPUT --out OUT`, `--hf-dataset NAME OUT` or `--hf-dataset NAME --out OUT`."""
    given = [p for p in (args.input, args.out_dir) if p]
    wanted = (0 if cfg.hf_dataset else 1) + (0 if args.out else 1)
    if len(given) != wanted:
        what = "with --hf-dataset, prepare takes only" if cfg.hf_dataset else "prepare takes INPUT and"
        raise SpeechtuneError(f"{what} an output folder (OUT or --out); got {len(given)} path(s)",
                              "e.g. speechtune prepare data.csv prepared/  or  speechtune prepare --hf-dataset "
                              "NAME --out prepared/")
    inp = None if cfg.hf_dataset else given[0]
    return inp, args.out or given[-1]


def main(args) -> int:
    cfg = build_config(PrepareConfig, args.config, args)
    inp, out = _paths(args, cfg)
    stats = prepare(inp, out, progress=True, config=cfg)
    print_summary(stats, Path(out))
    return 0
