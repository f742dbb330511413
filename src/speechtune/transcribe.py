"""Transcribe audio files with any model spec: text, JSON lines, SRT or WebVTT.

Clips up to 30 s are decoded in batches; longer audio goes through Whisper's own sequential long-form
decoding (timestamps on, each 30 s window shifted to the last complete segment), which is also what gives
SRT/VTT their cue times. An ONNX export (`speechtune export --format onnx`) is run by onnxruntime through
its own greedy loop (`export.onnx.OnnxWhisper`): text or JSON, without segment times.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, AudioError, decode
from .errors import SpeechtuneError

WINDOW_S = 30.0
# No real transcript runs faster than this; a looping model stops here instead of at 448 tokens, which on a
# CPU is the difference between 1 s and 20 s per clip. Applied alike to every model, so comparisons stay fair.
MAX_TOKENS_PER_S = 15


@dataclasses.dataclass
class Segment:
    start: float
    end: float
    text: str


@dataclasses.dataclass
class Result:
    text: str
    segments: list[Segment]
    language: str | None
    duration: float


def _generate_kwargs(whisper, language: str | None, num_beams: int = 1, temperature: float = 0.0) -> dict:
    kw: dict = {"num_beams": num_beams}
    if temperature > 0:
        kw.update(do_sample=True, temperature=temperature)
    if whisper.multilingual:
        kw["task"] = "transcribe"
        if language:
            kw["language"] = language
    elif language and language != "en":
        raise SpeechtuneError(f"language '{language}' asked of an English-only model ({whisper.path.name})",
                              "use a multilingual model such as the bundled 'base'")
    return kw


def _features(whisper, wavs: list[np.ndarray], long_form: bool = False):
    fe = whisper.processor.feature_extractor
    if long_form:
        inputs = fe(wavs, sampling_rate=SAMPLE_RATE, return_tensors="pt", truncation=False,
                    padding="longest", return_attention_mask=True)
        if inputs.input_features.shape[-1] < 3000:  # long-form needs at least one full window
            inputs = fe(wavs, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True)
    else:
        inputs = fe(wavs, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True)
    model = whisper.model
    return (inputs.input_features.to(model.device, model.dtype), inputs.attention_mask.to(model.device))


def max_new_tokens(seconds: float) -> int:
    return int(min(440, 32 + MAX_TOKENS_PER_S * min(seconds, WINDOW_S)))


def transcribe_batch(whisper, wavs: list[np.ndarray], language: str | None = None, batch_size: int = 8,
                     num_beams: int = 1, temperature: float = 0.0, progress: bool = False) -> list[str]:
    """Texts for clips of at most 30 s each (longer ones are cut to the first window: use `transcribe`)."""
    import torch

    kw = _generate_kwargs(whisper, language, num_beams, temperature)
    # Sorting by length keeps padding work out of each batch's decoder loop; results go back in order.
    order = sorted(range(len(wavs)), key=lambda i: len(wavs[i]))
    texts: list[str] = [""] * len(wavs)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, desc="transcribing", unit="batch", leave=False)
    for idx in batches:
        features, mask = _features(whisper, [wavs[i] for i in idx])
        longest = max(len(wavs[i]) for i in idx) / SAMPLE_RATE
        with torch.inference_mode():
            out = whisper.model.generate(features, attention_mask=mask, max_new_tokens=max_new_tokens(longest),
                                         **kw)
        for i, text in zip(idx, whisper.tokenizer.batch_decode(out, skip_special_tokens=True)):
            texts[i] = text.strip()
    return texts


def transcribe(whisper, audio: str | Path | np.ndarray, language: str | None = None, timestamps: bool = False,
               num_beams: int = 1, temperature: float = 0.0, prompt: str | None = None) -> Result:
    """One file or waveform of any length. `timestamps=True` fills segments with real cue times."""
    import torch

    wav = audio if isinstance(audio, np.ndarray) else decode(audio)
    duration = len(wav) / SAMPLE_RATE
    kw = _generate_kwargs(whisper, language, num_beams, temperature)
    if prompt:
        kw["prompt_ids"] = torch.tensor(whisper.tokenizer.get_prompt_ids(prompt), device=whisper.model.device)
    if duration <= WINDOW_S and not timestamps:
        features, mask = _features(whisper, [wav])
        with torch.inference_mode():
            out = whisper.model.generate(features, attention_mask=mask, **kw)
        text = whisper.tokenizer.decode(out[0], skip_special_tokens=True).strip()
        if prompt:  # generate returns the prompt in front of the transcript
            text = text[len(prompt.strip()):].strip() if text.startswith(prompt.strip()) else text
        return Result(text, [Segment(0.0, round(duration, 3), text)] if text else [], language, duration)
    features, mask = _features(whisper, [wav], long_form=True)
    with torch.inference_mode():
        out = whisper.model.generate(features, attention_mask=mask, return_timestamps=True,
                                     return_segments=True, condition_on_prev_tokens=False, **kw)
    segments = []
    for seg in out["segments"][0]:
        text = whisper.tokenizer.decode(seg["tokens"], skip_special_tokens=True).strip()
        if text:
            segments.append(Segment(round(float(seg["start"]), 3), round(min(float(seg["end"]), duration), 3), text))
    text = " ".join(s.text for s in segments) if whisper.multilingual is False else "".join(
        (" " if s.text[:1].isascii() and i else "") + s.text for i, s in enumerate(segments))
    return Result(text.strip(), segments, language, duration)


def _clock(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(segments: list[Segment]) -> str:
    return "\n".join(f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n"
                     for i, s in enumerate(segments, 1))


def to_vtt(segments: list[Segment]) -> str:
    return "WEBVTT\n\n" + "\n".join(f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n" for s in segments)


def format_result(path: str, result: Result, fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"file": path, "text": result.text, "language": result.language,
                           "duration": round(result.duration, 3),
                           "segments": [dataclasses.asdict(s) for s in result.segments]}, ensure_ascii=False)
    if fmt == "srt":
        return to_srt(result.segments)
    if fmt == "vtt":
        return to_vtt(result.segments)
    return result.text


def add_arguments(p) -> None:
    p.add_argument("audio", nargs="+", help="audio files (wav, flac, mp3, ogg/opus, m4a, ...; any rate)")
    p.add_argument("--model", default="tiny.en",
                   help="model spec: tiny.en | base | HF folder | hub id | .pt | CT2 folder; or an ONNX export "
                        "(greedy, text or json without segments)")
    p.add_argument("--language", help="language code for multilingual models (e.g. en, zh); default: detect")
    p.add_argument("--format", default="text", choices=["text", "json", "srt", "vtt"])
    p.add_argument("--beam-size", type=int, default=1)
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--server", help="URL of a running `speechtune serve` to send the audio to instead")
    p.add_argument("--api-key", help="API key for --server (or SPEECHTUNE_API_KEY)")


def _print(path: str, out: str, fmt: str, many: bool) -> None:
    if fmt == "text" and many:
        print(f"{path}: {out}")
    elif fmt in ("srt", "vtt") and many:
        print(f"# {path}\n{out}")
    else:
        print(out)


def main(args) -> int:
    if args.server:
        from .serve.client import transcribe_remote  # the serve component owns the HTTP client side
        return transcribe_remote(args)
    from .export.recipe import export_format
    onnx = export_format(args.model) == "onnx"
    if onnx and (args.format in ("srt", "vtt") or args.beam_size > 1):
        raise SpeechtuneError(f"{args.model}: an ONNX export decodes greedily, without timestamps",
                              "use --format text or json and --beam-size 1, or transcribe with the source model")
    whisper = load_for_cli(args.model, args.device, onnx)
    failed = 0
    for path in args.audio:
        try:
            wav = decode(Path(path), name=path)
        except AudioError as e:
            print(f"error: {e.source}: {e.detail}", file=sys.stderr)
            failed += 1
            continue
        if onnx:
            r = whisper.transcribe(wav, language=args.language)
            result = Result(r["text"], [], r["language"], len(wav) / SAMPLE_RATE)
        else:
            result = transcribe(whisper, wav, language=args.language, timestamps=args.format in ("srt", "vtt"),
                                num_beams=args.beam_size)
        _print(path, format_result(path, result, args.format), args.format, len(args.audio) > 1)
        sys.stdout.flush()
    return 1 if failed else 0


def load_for_cli(spec: str, device: str | None = None, onnx: bool = False):
    if onnx:  # an ONNX export runs in onnxruntime on the CPU
        from .export import load_runtime
        return load_runtime(Path(spec).expanduser())
    from .models import load_model
    return load_model(spec, device=device)
