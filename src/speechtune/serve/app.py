"""The HTTP side: FastAPI app with the OpenAI transcription endpoint, health and Prometheus metrics.

POST /v1/audio/transcriptions takes the same multipart form as OpenAI's (file, model, language, prompt,
response_format, temperature), so the official `openai` client works against it unchanged; `model` is
accepted and ignored (one server serves one model). Every client mistake gets a 4xx with OpenAI's error
shape, `{"error": {"message", "type", "param", "code"}}`, naming the problem; the server keeps serving.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import math
import threading
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import SpeechtuneError
from .config import ServeConfig

log = logging.getLogger("speechtune.serve")
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
MAX_PROMPT_CHARS = 2000
# AudioError reason -> (status, what to say): undecodable bytes are an unsupported media type.
AUDIO_STATUS = {"empty_audio": 400, "non_finite": 400, "undecodable": 415, "missing_file": 400,
                "audio_too_long": 413}
# How often a waiting request checks that its client is still there (a gone client's job is cancelled).
DISCONNECT_POLL_S = 0.5
# The status logged for a request whose client closed the connection first (nginx's 499; never sent).
CLIENT_CLOSED = 499


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers


def error_response(status: int, message: str, code: str, param: str | None = None, headers=None) -> JSONResponse:
    kind = {401: "authentication_error", 413: "invalid_request_error", 503: "server_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.registry = r = CollectorRegistry()
        self.requests = Counter("speechtune_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("speechtune_request_latency_seconds", "transcription latency, upload to answer",
                                 buckets=(.05, .1, .25, .5, 1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.audio = Counter("speechtune_audio_seconds", "seconds of audio transcribed", registry=r)
        self.queue = Gauge("speechtune_queue_depth", "jobs waiting for the model", registry=r)
        self.errors = Counter("speechtune_errors", "failed transcription requests by error type", ["type"], registry=r)
        self.batch = Histogram("speechtune_batch_size", "jobs per batched model call",
                               buckets=(1, 2, 4, 8, 16, 32), registry=r)
        self.ready = Gauge("speechtune_ready", "1 once the model is loaded", registry=r)
        self.cancelled = Counter("speechtune_cancelled", "transcriptions cancelled because the client went away",
                                 registry=r)


class BodyLimit:
    """Answer 413 as soon as a request body passes the cap, whether it declares a length or streams."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = error_response(413, f"upload larger than the server's limit of {self.limit / 2**20:g} MB",
                                 "file_too_large", "file")
        length = dict(scope["headers"]).get(b"content-length")
        if length and length.isdigit() and int(length) > self.limit:
            return await too_big(scope, receive, send)
        seen = 0
        started = False

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooBig()
            return msg

        async def tracked(msg):
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted, tracked)
        except _TooBig:
            if not started:
                await too_big(scope, receive, send)


class _TooBig(Exception):
    pass


def _too_big(e: BaseException) -> bool:
    # Raised inside receive(), it may reach the handler wrapped by a middleware's task group.
    if isinstance(e, _TooBig):
        return True
    if isinstance(e, BaseExceptionGroup):
        return any(_too_big(x) for x in e.exceptions)
    return e.__cause__ is not None and _too_big(e.__cause__) or e.__context__ is not None and _too_big(e.__context__)


def create_app(cfg: ServeConfig, backend=None) -> FastAPI:
    """The app; the model loads in a background thread at startup (or `backend` is used as given), and
    /health answers 503 until it is ready."""
    metrics = Metrics()
    state = {"worker": None, "error": None, "backend": None}

    async def lifespan(app):
        threading.Thread(target=_load, args=(cfg, backend, state, metrics), name="speechtune-load",
                         daemon=True).start()
        yield
        # uvicorn has already let in-flight requests finish; this drains anything still queued.
        if state["worker"]:
            await run_in_threadpool(state["worker"].stop)
        if state.get("speech"):
            await run_in_threadpool(state["speech"].stop)

    app = FastAPI(title="speechtune", lifespan=lifespan)
    app.state.metrics, app.state.serve = metrics, state
    _add_error_handlers(app, metrics)
    app.add_middleware(BodyLimit, limit=int(cfg.max_upload_mb * 2**20))
    _add_routes(app, cfg, state, metrics)
    from .speech import add_routes as add_speech_routes
    add_speech_routes(app, cfg, state, metrics, ApiError, _check_key)
    return app


def _load(cfg: ServeConfig, backend, state: dict, metrics: Metrics) -> None:
    """Load the runtime and start the worker; a failure is kept in `state` for /health and the log."""
    try:
        if cfg.voice:
            from .speech import load as load_voice
            load_voice(cfg, state)
        if cfg.model or backend is not None:
            from .worker import Worker, load_backend
            b = backend or load_backend(cfg.model, cfg.backend, cfg.device, cfg.threads, cfg.workers)
            state["backend"] = b
            state["worker"] = Worker(b, cfg.max_queue, cfg.max_batch, on_batch=metrics.batch.observe,
                                     threads=cfg.workers if b.name == "ct2" else 1, max_long=cfg.max_long_jobs)
            log.info("model ready: %s (%s backend)", b.path, b.name)
        state["ready"] = True
        metrics.ready.set(1)
    except SpeechtuneError as e:
        log.error("model failed to load: %s", e)
        state["error"] = str(e)
    except Exception as e:  # shown on /health and in the log; the process stays up to say so
        log.exception("model failed to load")
        state["error"] = f"{e.__class__.__name__}: {e}"


def _add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Every error as OpenAI's JSON error object; every response counted by endpoint and status."""
    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error_response(e.status, e.message, e.code, e.param, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(e.status_code, f"{request.method} {request.url.path}: {e.detail}", code)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e):
        return error_response(400, f"invalid request: {e.errors()[:1]}", "invalid_request")

    app.add_middleware(CountRequests, metrics=metrics)


class CountRequests:
    """Every response counted by endpoint and status. Plain ASGI, not @app.middleware("http"): that wrapper
    hides the client's disconnect from the handler, which then cannot cancel the job of a client gone."""
    ENDPOINTS = ("/v1/audio/transcriptions", "/v1/audio/speech", "/health", "/metrics")

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def tracked(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)
        try:
            await self.app(scope, receive, tracked)
        finally:
            endpoint = scope["path"] if scope["path"] in self.ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, str(status)).inc()


def _add_routes(app: FastAPI, cfg: ServeConfig, state: dict, metrics: Metrics) -> None:
    """/health, /metrics and POST /v1/audio/transcriptions."""
    @app.get("/health")
    async def health():
        if state.get("ready"):
            from .speech import health as speech_health
            b = state["backend"]
            model = {"model": str(b.path), "backend": b.name, "queue_depth": state["worker"].depth()} if b else {}
            return {"status": "ready", **model, **speech_health(state)}
        if state["error"]:
            return JSONResponse({"status": "failed", "error": state["error"]}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        metrics.queue.set(state["worker"].depth() if state["worker"] else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        t0 = time.perf_counter()
        try:
            response, seconds = await _transcribe(request, cfg, state, metrics)
        except ApiError as e:
            metrics.errors.labels(e.code).inc()
            raise
        metrics.latency.observe(time.perf_counter() - t0)
        metrics.audio.inc(seconds)
        return response


def _check_key(request: Request, cfg: ServeConfig) -> None:
    if not cfg.api_key:
        return
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not given or not hmac.compare_digest(given.encode(), cfg.api_key.encode()):
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                       "invalid_api_key" if given else "missing_api_key")


async def _form(request: Request):
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise ApiError(415, f"expected a multipart/form-data upload with a 'file' field, got content type "
                            f"'{ctype or 'none'}'", "unsupported_content_type")
    try:
        return await request.form(max_files=1, max_fields=16)
    except Exception as e:  # python-multipart/starlette raise several types for broken bodies
        if _too_big(e):
            raise ApiError(413, "upload larger than the server's limit", "file_too_large", "file") from None
        raise ApiError(400, f"malformed multipart body: {str(e)[:200] or e.__class__.__name__}",
                       "malformed_body") from None


def _field(form, name: str) -> str | None:
    v = form.get(name)
    if v is None or isinstance(v, str):
        return v.strip() if isinstance(v, str) else None
    raise ApiError(400, f"'{name}' must be a text field, not a file", "invalid_field", name)


def _params(form, backend) -> dict:
    fmt = _field(form, "response_format") or "json"
    if fmt not in FORMATS:
        raise ApiError(400, f"response_format '{fmt}' is not supported; use one of {', '.join(FORMATS)}",
                       "invalid_response_format", "response_format")
    t = _field(form, "temperature") or "0"
    try:
        temperature = float(t)
    except ValueError:
        raise ApiError(400, f"temperature must be a number between 0 and 1, got '{t[:40]}'",
                       "invalid_temperature", "temperature") from None
    if not (0.0 <= temperature <= 1.0) or math.isnan(temperature):
        raise ApiError(400, f"temperature must be between 0 and 1, got {temperature}", "invalid_temperature",
                       "temperature")
    language = (_field(form, "language") or "").lower() or None
    if language:
        try:
            backend.check_language(language)
        except SpeechtuneError as e:
            raise ApiError(400, e.message, "invalid_language", "language") from None
    prompt = _field(form, "prompt") or None
    if prompt and len(prompt) > MAX_PROMPT_CHARS:
        raise ApiError(400, f"prompt is {len(prompt)} characters; at most {MAX_PROMPT_CHARS}", "prompt_too_long",
                       "prompt")
    for name, asked, ability in (("prompt", bool(prompt), "prompt"), ("temperature", temperature > 0, "sampling")):
        if asked and ability not in backend.supports:  # a CTC model labels frames: no prompt, no sampling
            raise ApiError(400, f"this model ({backend.name} runtime) decodes without {name}; leave it out",
                           f"unsupported_{name}", name)
    _field(form, "model")
    return {"format": fmt, "temperature": temperature, "language": language, "prompt": prompt}


async def _transcribe(request: Request, cfg: ServeConfig, state: dict, metrics: Metrics):
    from ..audio import AudioError
    from ..runtimes.longform import open_recording
    from .worker import Job, QueueFull

    _check_key(request, cfg)
    worker = state["worker"]
    if worker is None and state.get("ready"):
        raise ApiError(404, "this server serves only a voice (POST /v1/audio/speech); start it with a MODEL to "
                            "transcribe", "no_model")
    if worker is None:
        raise ApiError(503, "the model is still loading" if not state["error"] else "the model failed to load",
                       "not_ready", headers={"Retry-After": str(max(cfg.retry_after_s, 5))})
    form = await _form(request)
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "no audio: send the recording as a file in the multipart field 'file'",
                       "missing_file", "file")
    p = _params(form, state["backend"])
    data = await upload.read()
    name = upload.filename or "upload"
    try:
        wav, pieces = await run_in_threadpool(open_recording, data, name, cfg.max_audio_seconds)
    except AudioError as e:
        raise _audio_error(name, e) from None
    del data  # a long job's pieces hold the bytes they decode from; a short one needs them no more
    job = Job(wav, p["language"], p["prompt"], p["temperature"], timestamps=p["format"] in ("srt", "vtt", "verbose_json"),
              safeguards=cfg.safeguards, pieces=pieces)
    try:
        future = worker.submit(job)
    except QueueFull as e:
        raise ApiError(503, f"server busy: {e}; retry shortly", "queue_full",
                       headers={"Retry-After": str(cfg.retry_after_s)}) from None
    metrics.queue.set(worker.depth())
    try:
        result = await _result(future, request, job)
    except ClientGone:
        metrics.cancelled.inc()
        log.info("client went away: job cancelled after %.1f s of audio", job.duration)
        return Response(status_code=CLIENT_CLOSED), job.duration
    except AudioError as e:  # a long upload that breaks, or runs past the cap, part-way through
        raise _audio_error(name, e) from None
    except Exception as e:
        raise ApiError(500, f"transcription failed: {e.__class__.__name__}: {str(e)[:200]}", "model_error") from None
    return _render(result, p["format"], job.duration), job.duration


class ClientGone(Exception):
    pass


def _audio_error(name: str, e) -> ApiError:
    return ApiError(AUDIO_STATUS.get(e.reason, 400), f"{name}: {e.detail}", e.reason, "file")


async def _result(future, request: Request, job):
    """The job's result; when the client disconnects first, the job is cancelled (its slot freed, a long job
    stopped at its next piece) and ClientGone raised."""
    waiting = asyncio.wrap_future(future)
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
        if done:
            return waiting.result()
        if await request.is_disconnected():
            job.cancel()
            raise ClientGone()


def _render(result, fmt: str, duration: float):
    """A runtimes.Result in the OpenAI response format asked for."""
    from ..formats import segment_dict, to_srt, to_vtt
    from ..runtimes import Segment

    text = result.text
    if fmt == "json":
        return {"text": text}
    if fmt == "text":
        return PlainTextResponse(text + "\n")
    segments = result.segments or ([Segment(0.0, round(duration, 3), text)] if text else [])
    if fmt == "srt":
        return PlainTextResponse(to_srt(segments, duration))
    if fmt == "vtt":
        return PlainTextResponse(to_vtt(segments, duration))
    return {"task": "transcribe", "language": result.language or "", "duration": round(duration, 3),
            "text": text, "segments": [segment_dict(i, s) for i, s in enumerate(segments)]}
