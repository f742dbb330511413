"""The model side of the server: backends, and one worker thread fed by a bounded queue.

Requests never touch the model directly: the HTTP handler puts a Job on a bounded queue (full -> the handler
answers 503) and awaits its future. The worker takes whatever is waiting, up to `max_batch` jobs, and
decodes the short plain ones (<= 30 s, no timestamps asked) in one batched generate call: on CPU that is
where concurrent load gets its throughput, since one big matrix product beats several small ones. Audio
over 30 s and requests for segments go one at a time through the backend's long-form path.

Backends:
- CT2: a CTranslate2 folder through faster-whisper (`export.ct2.CT2Whisper`), which covers the whole API
  (prompts, sampling, timestamps) on CPU and CUDA. Any other model spec is resolved to a Hugging Face folder
  and exported once to CT2 int8 in the cache. (The ONNX export decodes faster on CPU, but greedily only,
  without prompts or timestamps: it is not a serving backend.)
- HF: transformers `generate` through `speechtune.transcribe`, for when CT2 is not wanted (`--backend hf`).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import queue
import threading
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE
from ..errors import SpeechtuneError

log = logging.getLogger("speechtune.serve")
WINDOW = 30 * SAMPLE_RATE


class QueueFull(Exception):
    pass


@dataclasses.dataclass
class Job:
    wav: np.ndarray
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    timestamps: bool = False
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)

    @property
    def batchable(self) -> bool:
        return len(self.wav) <= WINDOW and not self.timestamps

    @property
    def duration(self) -> float:
        return len(self.wav) / SAMPLE_RATE


class CT2Backend:
    name = "ct2"
    batched = True

    def __init__(self, folder: Path, device: str = "cpu", threads: int = 0, workers: int = 1):
        from ..export.ct2 import CT2Whisper
        # workers > 1: CTranslate2 runs that many calls in parallel, each on threads // workers cores.
        self.runtime = CT2Whisper(folder, device=device, threads=threads, workers=workers)
        self.multilingual = self.runtime.multilingual
        self.path = Path(folder)

    def check_language(self, language):
        self.runtime.check_language(language)

    def batch(self, jobs: list[Job]) -> list[dict]:
        return self.runtime.transcribe_batch([j.wav for j in jobs], temperature=jobs[0].temperature,
                                             prompts=[j.prompt for j in jobs], languages=[j.language for j in jobs])

    def single(self, job: Job) -> dict:
        return self.runtime.transcribe(job.wav, job.language, job.temperature, job.prompt, timestamps=True)


class HFBackend:
    name = "hf"
    batched = True

    def __init__(self, spec, device: str | None = None):
        from ..models import load_model
        self.whisper = load_model(spec, device=device)
        self.multilingual = self.whisper.multilingual
        self.path = self.whisper.path

    def check_language(self, language):
        from ..models.whisper import prefix_ids
        if language and not self.multilingual and language != "en":
            raise SpeechtuneError(f"language '{language}' asked of an English-only model",
                                  "use a multilingual model such as the bundled 'base'")
        if language and self.multilingual:
            prefix_ids(self.whisper.model.generation_config, language)

    def batch(self, jobs: list[Job]) -> list[dict]:
        from ..transcribe import transcribe_batch
        if any(j.prompt for j in jobs):  # HF generate takes one prompt per call
            return [self.single(j) for j in jobs]
        lang = jobs[0].language if self.multilingual else None
        texts = transcribe_batch(self.whisper, [j.wav for j in jobs], language=lang, batch_size=len(jobs),
                                 temperature=jobs[0].temperature)
        return [{"text": t, "language": lang or ("en" if not self.multilingual else None)} for t in texts]

    def single(self, job: Job) -> dict:
        from ..transcribe import transcribe
        r = transcribe(self.whisper, job.wav, language=job.language if self.multilingual else None,
                       timestamps=True, temperature=job.temperature, prompt=job.prompt)
        segs = [{"id": i, "seek": 0, "start": s.start, "end": s.end, "text": s.text, "tokens": [],
                 "temperature": job.temperature, "avg_logprob": 0.0, "compression_ratio": 0.0,
                 "no_speech_prob": 0.0} for i, s in enumerate(r.segments)]
        return {"text": r.text, "language": r.language or ("en" if not self.multilingual else None), "segments": segs}


def ct2_for(spec, quantization: str = "int8") -> Path:
    """A CT2 folder for any spec: itself if it is one, else an export cached by the weights' content hash."""
    from ..export.ct2 import export_ct2
    from ..models import cache_dir, resolve_model
    from ..models.registry import is_ct2

    path = Path(str(spec)).expanduser()
    if path.is_dir() and is_ct2(path) and (path / "tokenizer.json").is_file():
        return path
    hf = resolve_model(spec)
    h = hashlib.sha256()
    for f in sorted(hf.glob("*.safetensors")) + [hf / "config.json"]:
        h.update(f.read_bytes())
    out = cache_dir() / "serve" / f"ct2-{quantization}-{h.hexdigest()[:20]}"
    if (out / "model.bin").is_file():
        return out
    import shutil
    import tempfile
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ct2-", dir=out.parent))
    try:
        export_ct2(hf, tmp / "m", quantization)
        positions = json.loads((hf / "config.json").read_text()).get("max_target_positions", 448)
        (tmp / "m" / "speechtune_export.json").write_text(json.dumps(
            {"format": "ct2", "quantization": quantization, "source": str(spec), "source_dir": str(hf),
             "max_target_positions": positions}))
        try:
            (tmp / "m").rename(out)
        except OSError:  # another process finished the same export first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def prepare_model(spec, backend: str = "auto") -> Path:
    """The folder a backend loads: an HF folder for `hf`, else a CT2 folder (converted and cached if needed)."""
    from ..export.recipe import export_format
    from ..models import resolve_model
    folder = Path(str(spec)).expanduser()
    if export_format(folder) == "onnx":
        raise SpeechtuneError(f"{folder}: an ONNX export; serve runs CTranslate2 exports or any model spec",
                              "serve the CT2 export (speechtune export --format ct2) or the source model")
    return resolve_model(spec) if backend == "hf" else ct2_for(spec)


def load_backend(spec, backend: str = "auto", device: str = "cpu", threads: int = 0, workers: int = 1):
    folder = prepare_model(spec, backend)
    if backend == "hf":
        return HFBackend(folder, device=device)
    return CT2Backend(folder, device=device, threads=threads, workers=workers)


class Worker:
    """Thread(s) running the model (one per backend worker); a bounded queue in front of them."""

    def __init__(self, backend, max_queue: int = 64, max_batch: int = 8, on_batch=None, threads: int = 1):
        self.backend = backend
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.max_batch = max_batch
        self.on_batch = on_batch or (lambda n: None)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"speechtune-worker-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def depth(self) -> int:
        return self.queue.qsize()

    def submit(self, job: Job) -> concurrent.futures.Future:
        if self._stop.is_set():
            raise QueueFull("shutting down")
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"queue full ({self.queue.maxsize} waiting)") from None
        return job.future

    def _take(self) -> list[Job]:
        jobs = [self.queue.get(timeout=0.2)]
        while len(jobs) < self.max_batch:
            try:
                jobs.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return jobs

    def _run(self) -> None:
        while not (self._stop.is_set() and self.queue.empty()):
            try:
                jobs = self._take()
            except queue.Empty:
                continue
            live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            groups: dict = {}
            for j in live:
                key = ("batch", j.temperature) if j.batchable else ("single", id(j))
                if self.backend.name == "hf" and j.batchable:
                    key += (j.language,)
                groups.setdefault(key, []).append(j)
            for key, group in groups.items():
                self._process(group, batched=key[0] == "batch")

    def _process(self, jobs: list[Job], batched: bool) -> None:
        try:
            if batched:
                self.on_batch(len(jobs))
                results = self.backend.batch(jobs)
            else:
                results = [self.backend.single(j) for j in jobs]
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
