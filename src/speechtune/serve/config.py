"""`speechtune serve`'s options: one frozen dataclass, the flags made from it (config.add_dataclass_args).

Kept apart from app.py so that `speechtune --help` does not import FastAPI.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import option


@dataclass(frozen=True)
class ServeConfig:
    model: str = option("tiny.en", "CT2 export folder, or any model spec (tiny.en, base, HF folder, .pt)")
    backend: str = option("auto", "auto: CTranslate2 via faster-whisper; hf: transformers generate",
                          choices=("auto", "hf"))
    device: str = option("cpu", "cpu | cuda")
    threads: int = option(0, "CPU threads for the model (0: all cores)")
    workers: int = option(1, "model calls run in parallel, each on threads/workers cores (CT2 backend)")
    api_key: str | None = option(None, "require 'Authorization: Bearer KEY' (else $SPEECHTUNE_API_KEY, else open)")
    max_upload_mb: float = option(25.0, "largest upload accepted, in MB")
    # The byte cap does not bound the work: a 176 KB FLAC held an hour of silence (38 s of work, 3.6 GB peak).
    max_audio_seconds: float = option(1800.0, "longest audio a request may carry, in seconds (413 "
                                      "audio_too_long past it, told from the header where it has one)")
    max_queue: int = option(64, "requests waiting for the model before 503")
    max_long_jobs: int = option(4, "recordings over 30 s admitted at once (queued or decoding, a piece at a time "
                                "between short requests) before 503")
    max_batch: int = option(8, "most requests decoded in one batch", flag="--batch-size")
    retry_after_s: int = option(1, "Retry-After seconds sent with a 503 for a full queue")
    safeguards: bool = option(True, "decode-time safeguards (temperature fallback, compression-ratio, log-prob and "
                              "no-speech checks) on every request, as transcribe does; --no-safeguards: off")
    voice: str | None = option(None, "also serve this voice at POST /v1/audio/speech: joe (bundled), a piper .onnx "
                               "voice or a folder holding one; without a MODEL, serve only the voice")
