"""Serve a model over HTTP with an OpenAI-compatible API: POST /v1/audio/transcriptions, /health, /metrics.

MODEL is a CTranslate2 export (served through faster-whisper), a bundled model (its shipped CTranslate2 folder,
int8 on load) or any other model spec, which is exported once to CTranslate2 int8 in the cache (`--backend
hf` serves it through transformers instead). The API key
comes from --api-key or the SPEECHTUNE_API_KEY environment variable; without one the server is open, so
keep it on 127.0.0.1 unless one is set. Ctrl-C / SIGTERM stops taking requests and finishes those in flight.
With --voice (e.g. joe), POST /v1/audio/speech speaks as OpenAI's does; without a MODEL only the voice is
served (docs/tts.md).
"""
from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .config import ServeConfig


def add_arguments(p) -> None:
    from ..config import add_dataclass_args
    p.add_argument("model", nargs="?", help=ServeConfig.__dataclass_fields__["model"].metadata["help"] +
                   "; leave it out with --voice to serve only speech")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    add_dataclass_args(p, ServeConfig, skip=("model", "retry_after_s"))


def config_from_args(args) -> ServeConfig:
    from ..config import build_config
    cfg = build_config(ServeConfig, None, args)
    return dataclasses.replace(cfg, api_key=cfg.api_key or os.environ.get("SPEECHTUNE_API_KEY") or None)


def _uvicorn_server(cfg, host: str, port: int, backend=None, log_level: str = "info"):
    import uvicorn

    from .app import create_app
    config = uvicorn.Config(create_app(cfg, backend), host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=60, access_log=False)
    return uvicorn.Server(config)


def main(args) -> int:
    from ..errors import SpeechtuneError
    cfg = config_from_args(args)
    for name, flag in (("max_queue", "--max-queue"), ("max_batch", "--batch-size"), ("workers", "--workers")):
        if getattr(cfg, name) < 1:
            raise SpeechtuneError(f"{flag} must be at least 1")
    if cfg.max_upload_mb <= 0 or cfg.max_audio_seconds <= 0:
        raise SpeechtuneError("--max-upload-mb and --max-audio-seconds must be positive")
    if args.model is None and not cfg.voice:
        raise SpeechtuneError("nothing to serve", "name a MODEL to transcribe, a --voice to speak, or both")
    if cfg.voice:
        from ..tts import resolve_voice
        resolve_voice(cfg.voice)  # an unknown voice is a one-line error too, before the server starts
    # A wrong spec is a user mistake: say so in one line before any server starts. Non-CT2 specs are
    # converted here (once, cached), so the server's background load is only the model itself.
    from .worker import prepare_model
    cfg = dataclasses.replace(cfg, model=str(prepare_model(cfg.model, cfg.backend)) if args.model else "")
    if cfg.api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host} with no API key; anyone who can reach it can use it",
              file=sys.stderr)
    print(f"speechtune serve: loading {' and '.join(filter(None, (args.model, cfg.voice)))}; "
          f"http://{args.host}:{args.port}/health says when it is ready",
          file=sys.stderr)
    _uvicorn_server(cfg, args.host, args.port).run()
    return 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 300, proc: subprocess.Popen | None = None) -> dict:
    import httpx
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
        try:
            r = httpx.get(f"{url}/health", timeout=5)
            if r.status_code == 200:
                return r.json()
            last = r.text
            if r.json().get("status") == "failed":
                raise RuntimeError(f"server failed to load the model: {last}")
        except httpx.HTTPError as e:
            last = str(e)
        time.sleep(0.2)
    raise TimeoutError(f"server at {url} not ready after {timeout:.0f} s ({last[:200]})")


class Server:
    """A running server: `.url`, `.stop()`; also a context manager.

    In-process (`start_server`): uvicorn in a thread of this process, on a socket bound before it starts,
    so port 0 picks a free port without a race. As a subprocess (`start_subprocess`): `speechtune serve`
    in its own process, stopped with SIGTERM (graceful: in-flight requests finish)."""

    def __init__(self, url: str, uvicorn_server=None, thread=None, proc=None):
        self.url, self._server, self._thread, self.proc = url, uvicorn_server, thread, proc

    @property
    def app(self):
        return self._server.config.app if self._server else None

    def stop(self, timeout: float = 60) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_server(model, host: str = "127.0.0.1", port: int = 0, backend=None, wait: bool = True,
                 log_level: str = "warning", **options) -> Server:
    """Start a server in this process (a thread) and wait until its model is loaded. `options` are
    ServeConfig fields (api_key, max_upload_mb, max_queue, max_batch, threads, backend name as `kind`)."""
    kind = options.pop("kind", "auto")
    cfg = ServeConfig(model=str(model), backend=kind, **options)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = _uvicorn_server(cfg, host, sock.getsockname()[1], backend, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="speechtune-serve", daemon=True)
    thread.start()
    url = f"http://{host}:{sock.getsockname()[1]}"
    s = Server(url, server, thread)
    if wait:
        try:
            wait_ready(url)
        except BaseException:
            s.stop()
            raise
    return s


def start_subprocess(model, host: str = "127.0.0.1", port: int | None = None, args: list[str] = (),
                     wait: bool = True, timeout: float = 300, log: Path | None = None) -> Server:
    """Run `speechtune serve` as a child process on a free port; returns once it is ready."""
    port = port or free_port(host)
    cmd = [sys.executable, "-m", "speechtune", "serve", str(model), "--host", host, "--port", str(port), *args]
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if log else subprocess.DEVNULL)
    s = Server(f"http://{host}:{port}", proc=proc)
    if wait:
        try:
            wait_ready(s.url, timeout, proc)
        except BaseException:
            s.stop()
            raise
    return s
