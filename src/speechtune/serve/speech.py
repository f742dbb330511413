"""POST /v1/audio/speech: OpenAI's text-to-speech endpoint over a speechtune voice (`serve --voice joe`).

The JSON body is OpenAI's: `input` (1-4096 characters), `voice`, `model` (accepted and ignored, like the
transcription endpoint's: one server serves one voice), `response_format` (mp3 default, opus, aac, flac,
wav, pcm), `speed` (0.25-4.0). `voice` must name the served voice (any of its aliases, e.g. "joe" or
"en_US-joe-medium"); left out, the served voice speaks. `instructions` is accepted and ignored (a piper
voice has no style prompt); `stream_format: "sse"` is refused. The answer is the audio file's bytes with
its content type; `pcm` is raw 16-bit little-endian mono at 24 kHz, as the `openai` client expects.

Same rules as transcription: the API key (`_check_key` of app.py, passed in), OpenAI's error shape for
every client mistake, 503 with Retry-After while loading or when `--max-queue` requests already wait.
Synthesis runs on its own threads (`--workers`, default 1; each uses `--threads` cores), never on the
event loop or in the threadpool that decodes uploads.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import math
import threading
import time

from fastapi import Request
from fastapi.responses import Response

from ..errors import SpeechtuneError
from .config import ServeConfig

log = logging.getLogger("speechtune.serve")
ENDPOINT = "/v1/audio/speech"
MAX_INPUT_CHARS = 4096
MAX_BODY_BYTES = 1 << 20  # 4096 characters of JSON-escaped text are ~25 KB; anything near 1 MB is not a request
DEFAULT_FORMAT = "mp3"
# Synthesis is deterministic, so the waveforms of recent requests are kept (a prompt asked for in several
# formats, or by many callers, is synthesized once); only short ones, so the cache stays under ~60 MB.
CACHE_ENTRIES, CACHE_MAX_S = 32, 20.0


class SpeechMetrics:
    """The speech counterparts of the transcription metrics, on the app's registry."""

    def __init__(self, registry):
        from prometheus_client import Counter, Gauge, Histogram
        self.latency = Histogram("speechtune_speech_latency_seconds", "speech latency, request to audio",
                                 buckets=(.05, .1, .25, .5, 1, 2, 4, 8, 16, 32, 64, 128), registry=registry)
        self.characters = Counter("speechtune_speech_characters", "characters of text spoken", registry=registry)
        self.audio = Counter("speechtune_speech_audio_seconds", "seconds of audio synthesized", registry=registry)
        self.errors = Counter("speechtune_speech_errors", "failed speech requests by error type", ["type"],
                              registry=registry)
        self.queue = Gauge("speechtune_speech_queue_depth", "speech requests waiting or being synthesized",
                           registry=registry)


class Speaker:
    """A loaded voice, the threads that run it and the count of requests in flight."""

    def __init__(self, voice, workers: int = 1, max_queue: int = 64):
        self.voice = voice
        self.max_pending = max_queue + workers
        self.pending = 0
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="speechtune-tts")
        self._cache: collections.OrderedDict = collections.OrderedDict()

    def synthesize(self, text: str, speed: float):
        key = (text, speed)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        wav = self.voice.synthesize(text, speed=speed)
        if len(wav) <= CACHE_MAX_S * self.voice.sample_rate:
            with self._lock:
                self._cache[key] = wav
                while len(self._cache) > CACHE_ENTRIES:
                    self._cache.popitem(last=False)
        return wav

    def names(self) -> list[str]:
        return list(dict.fromkeys([self.voice.name, *self.voice.aliases]))

    def submit(self, fn, *args) -> concurrent.futures.Future | None:
        """The future of fn(*args) on a synthesis thread, or None when the queue is full."""
        with self._lock:
            if self.pending >= self.max_pending:
                return None
            self.pending += 1
        try:
            future = self._pool.submit(fn, *args)
        except RuntimeError:  # shut down
            with self._lock:
                self.pending -= 1
            return None
        future.add_done_callback(lambda _: self._done())
        return future

    def _done(self) -> None:
        with self._lock:
            self.pending -= 1

    def stop(self) -> None:
        self._pool.shutdown(wait=True)


def load(cfg: ServeConfig, state: dict) -> None:
    """Load the voice (state["speech"]); raises SpeechtuneError, which app._load reports on /health."""
    from ..tts import shared_voice
    voice = shared_voice(cfg.voice, threads=cfg.threads)
    state["speech"] = Speaker(voice, workers=max(cfg.workers, 1), max_queue=cfg.max_queue)
    log.info("voice ready: %s (%d Hz, %s)", voice.name, voice.sample_rate, voice.path)


def health(state: dict) -> dict:
    s = state.get("speech")
    return {"voice": s.voice.name, "voice_sample_rate": s.voice.sample_rate,
            "speech_queue_depth": s.pending} if s else {}


def add_routes(app, cfg: ServeConfig, state: dict, metrics, api_error, check_key) -> None:
    """Register POST /v1/audio/speech. `api_error` is app.ApiError and `check_key` app's key check, passed
    in so that this module does not import app (which imports it)."""
    speech_metrics = SpeechMetrics(metrics.registry)

    @app.post(ENDPOINT)
    async def speech(request: Request):
        t0 = time.perf_counter()
        try:
            response, chars, seconds = await _speak(request, cfg, state, speech_metrics, api_error, check_key)
        except api_error as e:
            speech_metrics.errors.labels(e.code).inc()
            raise
        speech_metrics.latency.observe(time.perf_counter() - t0)
        speech_metrics.characters.inc(chars)
        speech_metrics.audio.inc(seconds)
        return response


async def _json_body(request: Request, api_error) -> dict:
    ctype = request.headers.get("content-type", "")
    if not ctype.split(";")[0].strip().lower() == "application/json":
        raise api_error(415, f"expected a JSON body (content type application/json), got '{ctype or 'none'}'",
                        "unsupported_content_type")
    length = request.headers.get("content-length")
    too_big = api_error(413, f"request body larger than {MAX_BODY_BYTES // 1024} KB", "body_too_large")
    if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_big
    try:
        data = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError) as e:
        raise api_error(400, f"malformed JSON body: {str(e)[:200]}", "malformed_body") from None
    if not isinstance(data, dict):
        raise api_error(400, "the JSON body must be an object with 'input' and 'voice'", "malformed_body")
    return data


def _params(data: dict, speaker: Speaker, api_error) -> dict:
    from ..tts.encode import FORMATS, unavailable

    text = data.get("input")
    if not isinstance(text, str):
        raise api_error(400, "'input' must be the text to speak, a string", "invalid_input", "input")
    if not text.strip():
        raise api_error(400, "'input' is empty: nothing to speak", "empty_input", "input")
    if len(text) > MAX_INPUT_CHARS:
        raise api_error(400, f"'input' is {len(text)} characters; at most {MAX_INPUT_CHARS}", "input_too_long",
                        "input")
    fmt = data.get("response_format", DEFAULT_FORMAT)
    if fmt is None:
        fmt = DEFAULT_FORMAT
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise api_error(400, f"response_format {str(fmt)[:40]!r} is not supported; use one of {', '.join(FORMATS)}",
                        "invalid_response_format", "response_format")
    reason = unavailable(fmt)
    if reason:
        raise api_error(400, f"{reason}; ask for another response_format (wav, flac and pcm always work)",
                        "format_unavailable", "response_format")
    speed = data.get("speed", 1.0)
    if speed is None:
        speed = 1.0
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or math.isnan(speed) \
            or not 0.25 <= speed <= 4.0:
        raise api_error(400, f"speed must be a number from 0.25 to 4.0, got {json.dumps(speed)[:40]}",
                        "invalid_speed", "speed")
    voice = data.get("voice")
    if isinstance(voice, dict):  # newer clients may send {"id": ...} for custom voices
        voice = voice.get("id")
    names = speaker.names()
    if voice is not None and (not isinstance(voice, str) or voice.lower() not in {n.lower() for n in names}):
        raise api_error(400, f"voice {str(voice)[:60]!r} is not served here; this server speaks with "
                             f"{', '.join(names)}", "invalid_voice", "voice")
    if data.get("stream_format") not in (None, "audio"):
        raise api_error(400, "stream_format 'sse' is not supported; leave it out (or 'audio')",
                        "unsupported_stream_format", "stream_format")
    for name in ("model", "instructions"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise api_error(400, f"'{name}' must be a string", f"invalid_{name}", name)
    return {"text": text, "format": fmt, "speed": float(speed)}


def _synthesize(speaker: Speaker, text: str, speed: float, fmt: str) -> tuple[bytes, float]:
    from ..tts.encode import encode
    wav = speaker.synthesize(text, speed)
    return encode(wav, speaker.voice.sample_rate, fmt), len(wav) / speaker.voice.sample_rate


async def _speak(request: Request, cfg: ServeConfig, state: dict, metrics: SpeechMetrics, api_error, check_key):
    from ..tts.encode import content_type

    check_key(request, cfg)
    if not cfg.voice:
        raise api_error(404, "this server has no voice; start it with --voice (e.g. speechtune serve --voice joe)",
                        "no_voice")
    speaker = state.get("speech")
    if speaker is None:
        raise api_error(503, "the voice is still loading" if not state.get("error") else "the server failed to load",
                        "not_ready", headers={"Retry-After": str(max(cfg.retry_after_s, 5))})
    p = _params(await _json_body(request, api_error), speaker, api_error)
    future = speaker.submit(_synthesize, speaker, p["text"], p["speed"], p["format"])
    if future is None:
        raise api_error(503, f"server busy: {speaker.pending} speech requests in flight; retry shortly",
                        "queue_full", headers={"Retry-After": str(cfg.retry_after_s)})
    metrics.queue.set(speaker.pending)
    try:
        data, seconds = await asyncio.wrap_future(future)
    except SpeechtuneError as e:  # text that normalises to nothing speakable, say
        raise api_error(400, e.message, "invalid_input", "input") from None
    except Exception as e:
        log.exception("synthesis failed")
        raise api_error(500, f"synthesis failed: {e.__class__.__name__}: {str(e)[:200]}", "synthesis_error") from None
    finally:
        metrics.queue.set(speaker.pending)
    return Response(content=data, media_type=content_type(p["format"])), len(p["text"]), seconds
