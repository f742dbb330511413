"""The model side of the server: which runtime serves a spec, and one worker thread fed by a bounded queue.

Requests never touch the model directly: the HTTP handler puts a Job on a bounded queue (full -> the handler
answers 503) and awaits its future. The worker takes whatever is waiting, up to `max_batch` jobs, and
decodes the short plain ones (<= 30 s, no timestamps asked) in one batched call: on CPU that is where
concurrent load gets its throughput, since one big matrix product beats several small ones. Audio over 30 s
and requests for segments go one at a time through the runtime's long-form path.

Runtimes (speechtune.runtimes):
- ct2 (default): a CTranslate2 folder through faster-whisper, which covers the whole API (prompts, sampling,
  timestamps) on CPU and CUDA, and mixes languages and prompts within one batch. A bundled model runs from
  the CT2 folder it ships as, quantized to int8 as it loads; any other model spec is resolved to a Hugging
  Face folder and exported once to CT2 int8 in the cache. (The ONNX export decodes
  faster on CPU, but greedily only, without prompts or timestamps: it is not a serving runtime.)
- hf: transformers `generate` (`--backend hf`), for when CT2 is not wanted.

Long recordings (over 30 s) never sit in memory whole: the upload is decoded as it is transcribed, a piece of
about 30 s at a time (runtimes.longform), and between two pieces the worker serves whatever short jobs
are waiting, so a short request waits behind at most one piece, not behind an hour. At most
`max_long_running` threads decode long pieces at once and at most `max_long` long jobs are admitted (more:
503). A job whose client has gone is cancelled: a waiting one is skipped, a long one stops at its next piece.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import queue
import shutil
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from ..audio import SAMPLE_RATE, WINDOW_SAMPLES
from ..errors import SpeechtuneError
from ..files import cache_dir, hash_files, publish_dir, temp_dir_beside
from ..runtimes import DecodingOptions, export_format, export_meta, load_runtime
from ..runtimes.longform import LongTranscript

# Short batches served, while a long job waits, before the long job gets its next piece: short requests come
# first, but a steady stream of them must not stall a long one for ever.
SHORT_TURNS_PER_PIECE = 4

log = logging.getLogger("speechtune.serve")


class QueueFull(Exception):
    pass


class Cancelled(Exception):
    """The job's client went away before it was done."""


@dataclasses.dataclass
class Job:
    """One request: `wav` (whole) or `pieces` (a long recording, see runtimes.longform.open_recording), and
    how to decode it."""
    wav: np.ndarray | None = None
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    timestamps: bool = False
    safeguards: bool = True
    pieces: Iterator | None = None
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    transcript: LongTranscript | None = None  # set by the worker for a long job

    @property
    def long(self) -> bool:
        return self.pieces is not None

    @property
    def batchable(self) -> bool:
        return not self.long and len(self.wav) <= WINDOW_SAMPLES and not self.timestamps

    @property
    def duration(self) -> float:
        """The audio's length (a long job's: what has been decoded of it so far)."""
        if self.long:
            return self.transcript.seconds if self.transcript else 0.0
        return len(self.wav) / SAMPLE_RATE

    def cancel(self) -> None:
        """Give up on this job: skipped if it has not started, stopped at the next piece if it is long."""
        self.cancelled.set()
        self.future.cancel()

    def options(self) -> DecodingOptions:
        return DecodingOptions(language=self.language, temperature=self.temperature, prompt=self.prompt,
                               timestamps=self.timestamps, safeguards=self.safeguards)


def ct2_for(spec, quantization: str = "int8") -> Path:
    """A CT2 folder for any spec: itself if it is one, the shipped CT2 folder for a bundled model (CTranslate2
    quantizes it as it loads, see load_backend), else an export cached by the weights' content hash."""
    from ..export import convert
    from ..models import BUNDLED, resolve_model
    from ..models.registry import bundled_ct2

    path = Path(str(spec)).expanduser()
    if export_format(path) == "ct2":
        return path
    if str(spec) in BUNDLED:
        return bundled_ct2(str(spec))
    hf = resolve_model(spec)
    key = hash_files(*sorted(hf.glob("*.safetensors")), hf / "config.json")
    out = cache_dir() / "serve" / f"ct2-{quantization}-{key}"
    if (out / "model.bin").is_file():
        return out
    tmp = temp_dir_beside(out, prefix=".ct2-")
    try:
        convert(hf, tmp / "m", "ct2", quantization, spec)
        publish_dir(tmp / "m", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def prepare_model(spec, backend: str = "auto") -> Path:
    """The folder a runtime loads: a CTC model or its ONNX export as it is; for Whisper an HF folder for `hf`,
    else a CT2 folder (converted and cached if needed)."""
    from ..models import model_type, resolve_model
    from ..models.ctc import ctc_types, resolve_ctc, split_lang
    if export_format(spec) == "onnx" and export_meta(spec).get("family") == "ctc":
        return Path(str(spec)).expanduser()
    if export_format(spec) is None and model_type(spec) in ctc_types():
        lang = split_lang(spec)[1]  # an MMS language stays on the folder's spec
        return Path(f"{resolve_ctc(spec)}:{lang}") if lang else resolve_ctc(spec)
    if export_format(spec) == "onnx":
        raise SpeechtuneError(f"{spec}: an ONNX export; serve runs CTranslate2 exports or any model spec",
                              "serve the CT2 export (speechtune export --format ct2) or the source model")
    return resolve_model(spec) if backend == "hf" else ct2_for(spec)


def load_backend(spec, backend: str = "auto", device: str = "cpu", threads: int = 0, workers: int = 1):
    """The runtime serving `spec`: ct2 unless `backend` is "hf"."""
    from ..models.registry import is_bundled_folder
    folder = prepare_model(spec, backend)
    # a bundled model is served from its shipped (float) CT2 folder, quantized to int8 as it loads: the
    # int8 a CT2 export would have, without converting CT2 -> HF -> CT2
    compute = "int8" if backend != "hf" and export_format(folder) == "ct2" and is_bundled_folder(folder) else None
    return load_runtime(folder, device=device, threads=threads, workers=workers, compute=compute)


class Worker:
    """Thread(s) running the model (one per backend worker); a bounded queue of short jobs and a bounded
    line of long ones in front of them."""

    def __init__(self, backend, max_queue: int = 64, max_batch: int = 8, on_batch=None, threads: int = 1,
                 max_long: int = 4, max_long_running: int = 1):
        self.backend = backend
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.max_batch = max_batch
        self.on_batch = on_batch or (lambda n: None)
        self.max_long, self.max_long_running = max_long, max_long_running
        self._long: collections.deque[Job] = collections.deque()
        self._long_running = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"speechtune-worker-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def depth(self) -> int:
        return self.queue.qsize() + len(self._long) + self._long_running

    def submit(self, job: Job) -> concurrent.futures.Future:
        if self._stop.is_set():
            raise QueueFull("shutting down")
        if job.long:
            with self._lock:
                if len(self._long) + self._long_running >= self.max_long:
                    raise QueueFull(f"{self.max_long} long recordings already admitted")
                job.transcript = LongTranscript(self.backend, job.pieces, job.options())
                self._long.append(job)
            return job.future
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"queue full ({self.queue.maxsize} waiting)") from None
        return job.future

    def _take(self, block: bool) -> list[Job]:
        try:
            jobs = [self.queue.get(timeout=0.2) if block else self.queue.get_nowait()]
        except queue.Empty:
            return []
        while len(jobs) < self.max_batch:
            try:
                jobs.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return jobs

    def _long_waiting(self) -> bool:
        return bool(self._long) and self._long_running < self.max_long_running

    def _run(self) -> None:
        short_turns = 0
        while not (self._stop.is_set() and self.queue.empty() and not self._long and not self._long_running):
            jobs = self._take(block=not self._long_waiting())
            if jobs:
                self._run_short(jobs)
                short_turns += 1
                if short_turns < SHORT_TURNS_PER_PIECE or not self._long_waiting():
                    continue
            job = self._pop_long()
            if job is not None:
                short_turns = 0
                self._step_long(job)

    def _run_short(self, jobs: list[Job]) -> None:
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        groups: dict = {}
        for j in live:
            key = ("batch", j.temperature) if j.batchable else ("single", id(j))
            groups.setdefault(key, []).append(j)
        for key, group in groups.items():
            self._process(group, batched=key[0] == "batch")

    def _pop_long(self) -> Job | None:
        with self._lock:
            if not self._long or self._long_running >= self.max_long_running:
                return None
            self._long_running += 1
            return self._long.popleft()

    def _step_long(self, job: Job) -> None:
        """One piece of a long job; it goes back to the head of the line while pieces remain."""
        more = False
        try:
            if not job.future.running() and not job.future.set_running_or_notify_cancel():
                return  # cancelled before its first piece
            if job.cancelled.is_set():
                job.future.set_exception(Cancelled())
                return
            more = job.transcript.step()
            if not more:
                job.future.set_result(job.transcript.result())
        except Exception as e:  # an AudioError part-way through the file, or the model's: for this caller only
            if not isinstance(e, SpeechtuneError):
                log.exception("model failure")
            job.future.set_exception(e)
            more = False
        finally:
            with self._lock:
                self._long_running -= 1
                if more:
                    self._long.appendleft(job)

    def _process(self, jobs: list[Job], batched: bool) -> None:
        try:
            if batched:
                self.on_batch(len(jobs))
                results = self.backend.transcribe_batch([j.wav for j in jobs], jobs[0].options(),
                                                        [j.language for j in jobs], [j.prompt for j in jobs])
            else:
                results = [self.backend.transcribe(j.wav, j.options()) for j in jobs]
        except Exception as e:  # one bad batch must not kill the worker: each caller gets the error
            log.exception("model failure")
            for j in jobs:
                j.future.set_exception(e)
            return
        for j, r in zip(jobs, results):
            j.future.set_result(r)

    def stop(self, timeout: float | None = 60) -> None:
        """Finish everything already queued, then stop the thread."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
