"""Transcribe audio files with any model spec or export: text, JSON lines, SRT or WebVTT.

The model is run by the runtime it was made for (`runtimes.load_runtime`): transformers for a model spec,
CTranslate2 for a CT2 export, onnxruntime for an ONNX export (greedy text or JSON, without segment times).
With --server, the files go to a running `speechtune serve` instead.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .audio import AudioError
from .config import add_dataclass_args, build_config
from .formats import FORMATS, format_result, print_result
from .runtimes import SAFEGUARD_FIELDS, DecodingOptions, check_options, load_runtime
from .runtimes.longform import open_recording, transcribe_pieces

# the decoding options a user sets here; timestamps follow from --format, batching from the file count
FLAGS = ("language", "task", "beam_size", "temperature", "prompt", *SAFEGUARD_FIELDS)


def add_arguments(p) -> None:
    p.add_argument("audio", nargs="+", help="audio files (wav, flac, mp3, ogg/opus, m4a, ...; any rate)")
    p.add_argument("--model", default="tiny.en",
                   help="model spec: tiny.en | base | HF folder | hub id | .pt; or an export folder "
                        "(CTranslate2, or ONNX: greedy, text or json without segments)")
    p.add_argument("--format", default="text", choices=FORMATS)
    add_dataclass_args(p, DecodingOptions, skip=tuple(f for f in DecodingOptions.__dataclass_fields__
                                                      if f not in FLAGS))
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--server", help="URL of a running `speechtune serve` to send the audio to instead")
    p.add_argument("--api-key", help="API key for --server (or SPEECHTUNE_API_KEY)")


def options_from(args) -> DecodingOptions:
    return build_config(DecodingOptions, None, args).replace(timestamps=args.format in ("srt", "vtt"))


def main(args) -> int:
    if args.server:
        from .serve.client import transcribe_remote  # the serve component owns the HTTP client side
        return transcribe_remote(args)
    options = options_from(args)
    runtime = load_runtime(args.model, args.device)
    check_options(runtime, options)
    failed = 0
    for path in args.audio:
        try:  # a long file is decoded as it is transcribed, in pieces: memory does not grow with its length
            wav, pieces = open_recording(Path(path), path)
            result = runtime.transcribe(wav, options) if pieces is None else transcribe_pieces(runtime, pieces, options)
        except AudioError as e:
            print(f"error: {e.source}: {e.detail}", file=sys.stderr)
            failed += 1
            continue
        print_result(path, format_result(path, result, args.format), args.format, len(args.audio) > 1)
        sys.stdout.flush()
    return 1 if failed else 0
