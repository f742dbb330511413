"""Decode-time safeguards, written once over DecodingOptions for every runtime: openai-whisper's
`decode_with_fallback` and the no-speech rule of its `transcribe`, with faster-whisper's choice when every
temperature fails.

    for t in options.temperatures:                      (0.0, 0.2, ..., 1.0 by default)
        decode the clips still failing at t
        silent:  no_speech_prob > no_speech_threshold and avg_logprob < logprob_threshold
        failing: not silent and (compression_ratio(text) > compression_ratio_threshold
                                 or the text holds a repeated run
                                 or avg_logprob < logprob_threshold)
    stop when no clip is failing. A silent clip's text is "". A clip that fails at every temperature keeps the
    attempt with the highest avg_logprob among those under the compression threshold (else among all),
    marked `fallback_failed`.

The repeated run (metrics.hallucination.repeated_run: a 2-5 character piece 5 times or a 6-60 character one 3
times, back to back) is compare's raw-loop flag, added to openai-whisper's checks because a short loop
compresses too little to pass 2.4: an over-trained tiny.en wrote "the Prometheus and page Kubernetes and page
Kubernetes and page Kubernetes" (ratio 1.72) with the safeguards on (docs/benchmarks.md). It is switched with
the compression threshold (None turns both off). Speech that really repeats itself ("thank you thank you
thank you") costs its clip the fallback's decodings, and keeps its most likely text.

A runtime supplies `decode(indices, temperature) -> [Attempt]` for a subset of its batch (so a fallback
re-decodes only the clips that failed) and turns the attempts into Results with `result_of`. The no-speech
probability is the clip's, not the attempt's (it is read at <|startoftranscript|>, before any sampled
token): a back end that does not get it with each decoding passes `no_speech(indices)`, asked once, only
for the clips the rule could apply to (a first attempt under the log-probability threshold), so clean clips
cost nothing for it. A threshold that is None, or a statistic the back end does not compute (None), never
triggers its check; without `options.safeguards` one decoding is made and its text returned as it came.

Before any of that, `skip_inaudible` keeps clips that cannot hold speech away from the model: a peak under
SILENCE_PEAK (digital silence) or a length under MIN_SPEECH_S (a sliver) gives empty text undecoded. Whisper
writes a confident "you" on both (tiny.en: avg_logprob -0.38 on digital silence, so the no-speech rule,
which wants a doubtful decoding, keeps it). Every Whisper runtime's `transcribe_batch` and `transcribe` pass
through it, and the CTC runtime's too.
"""
from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..audio import SAMPLE_RATE
from ..metrics.hallucination import repeated_run
from .base import DecodingOptions, Result, Segment, seconds

# Fallback samples come from a generator seeded with this at every decoding call, so the same clips decode
# to the same texts every time (evaluate, compare and export's parity check stay reproducible). torch's and
# numpy's global state is left alone; CTranslate2 has one generator, reseeded.
SAMPLING_SEED = 0
# A clip whose peak stays under this (-80 dBFS, full scale 1.0) holds nothing audible: 16-bit audio's lowest
# step is 3.1e-5 (-90 dBFS), so this is dither and the three lowest steps. Quiet speech is far above it:
# scaled to a -40 dBFS peak, tiny.en still decodes a sentence word for word (tests/test_safeguards.py).
SILENCE_PEAK = 1e-4
# No word is shorter than this (a short syllable lasts about 0.1-0.2 s): a shorter clip holds no speech.
# tiny.en wrote "you" on a 0.01 s upload (issue 18).
MIN_SPEECH_S = 0.1


@dataclass(frozen=True)
class Attempt:
    """One decoding of one clip at one temperature, with what the back end measured of it."""
    text: str
    tokens: list[int] = field(default_factory=list)
    avg_logprob: float | None = None  # average_logprob's definition
    no_speech_prob: float | None = None  # P(<|nospeech|>) at the <|startoftranscript|> position
    temperature: float | None = None  # this and the two below: set by decode_with_fallback
    compression_ratio: float | None = None
    fallback_failed: bool = False


def compression_ratio(text: str) -> float:
    """openai-whisper's measure of repetition: UTF-8 bytes / zlib-compressed bytes. Sentences score ~0.8-1.3;
    the loop `n.14.14.13.14...` of issue 18 scores 11 and more."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def average_logprob(sum_logprob: float, n_tokens: int) -> float:
    """openai-whisper's avg_logprob: the log-probabilities of the text tokens and of the <|endoftext|> that
    ends them (at temperature 1, after token suppression), summed, over n_tokens + 1."""
    return sum_logprob / (n_tokens + 1)


def no_speech_token(generation_config) -> int:
    """<|nospeech|> (<|nocaptions|> in older vocabularies): just before <|notimestamps|> in every Whisper
    vocabulary, as transformers finds it too."""
    return generation_config.no_timestamps_token_id - 1


def is_silent(a: Attempt, options: DecodingOptions) -> bool:
    """The no-speech rule: likely no speech, and a decoding the model itself doubts."""
    if not options.safeguards or options.no_speech_threshold is None or a.no_speech_prob is None:
        return False
    doubtful = options.logprob_threshold is None or (a.avg_logprob is not None
                                                     and a.avg_logprob < options.logprob_threshold)
    return a.no_speech_prob > options.no_speech_threshold and doubtful


def too_repetitive(a: Attempt, options: DecodingOptions) -> bool:
    """Over the compression threshold, or holding a repeated run (see the module docstring)."""
    limit = options.compression_ratio_threshold
    if limit is None:
        return False
    return (a.compression_ratio is not None and a.compression_ratio > limit) or repeated_run(a.text) is not None


def too_unlikely(a: Attempt, options: DecodingOptions) -> bool:
    limit = options.logprob_threshold
    return limit is not None and a.avg_logprob is not None and a.avg_logprob < limit


def needs_fallback(a: Attempt, options: DecodingOptions) -> bool:
    """Whether `a` fails a check and should be decoded again hotter (a silent clip never is)."""
    if not options.safeguards or is_silent(a, options):
        return False
    return too_repetitive(a, options) or too_unlikely(a, options)


def measured(a: Attempt, temperature: float) -> Attempt:
    return dataclasses.replace(a, temperature=temperature, compression_ratio=round(compression_ratio(a.text), 4))


def settle(attempts: list[Attempt], options: DecodingOptions) -> Attempt:
    """The attempt a clip keeps from its attempts in temperature order (see the module docstring)."""
    last = attempts[-1]
    if needs_fallback(last, options):
        clean = [a for a in attempts if not too_repetitive(a, options)] or attempts
        best = max(clean, key=lambda a: -float("inf") if a.avg_logprob is None else a.avg_logprob)
        return dataclasses.replace(best, fallback_failed=True)
    if is_silent(last, options):
        return dataclasses.replace(last, text="", tokens=[])
    return last


def may_be_silent(a: Attempt, options: DecodingOptions) -> bool:
    """Whether the no-speech rule could apply to `a`, its no-speech probability aside."""
    return options.safeguards and options.no_speech_threshold is not None and (
        options.logprob_threshold is None or too_unlikely(a, options))


def decode_with_fallback(decode: Callable[[list[int], float], list[Attempt]], n: int, options: DecodingOptions,
                         no_speech: Callable[[list[int]], list[float]] | None = None) -> list[Attempt]:
    """The kept attempt of each of `n` clips, in order. `decode(indices, temperature)` decodes those clips of
    the batch at that temperature and returns their attempts in the order of `indices`; `no_speech` as in
    the module docstring."""
    tried: list[list[Attempt]] = [[] for _ in range(n)]
    probs: dict[int, float] = {}
    todo = list(range(n))
    for k, t in enumerate(options.temperatures):
        attempts = [measured(a, t) for a in decode(todo, t)]
        if k == 0 and no_speech is not None:
            ask = [i for i, a in zip(todo, attempts) if may_be_silent(a, options)]
            probs = dict(zip(ask, no_speech(ask))) if ask else {}
        for i, a in zip(todo, attempts):
            tried[i].append(dataclasses.replace(a, no_speech_prob=probs[i]) if i in probs else a)
        todo = [i for i in todo if needs_fallback(tried[i][-1], options)]
        if not todo:
            break
    return [settle(attempts, options) for attempts in tried]


def result_of(a: Attempt, language: str | None, duration: float) -> Result:
    """A clip's Result: its text, and one segment over the clip carrying the attempt's figures (none when
    the text is empty, as for a silent clip)."""
    segments = [Segment(0.0, round(duration, 3), a.text, list(a.tokens), 0, a.temperature, a.avg_logprob,
                        a.compression_ratio, a.no_speech_prob, a.fallback_failed)] if a.text else []
    return Result(a.text, language, duration, segments)


def inaudible(wav: np.ndarray, options: DecodingOptions) -> bool:
    """Whether, with safeguards on, `wav` (16 kHz) is too quiet (peak under SILENCE_PEAK) or too short
    (under MIN_SPEECH_S) to hold speech: its text is "" without decoding."""
    if not options.safeguards:
        return False
    return len(wav) < MIN_SPEECH_S * SAMPLE_RATE or float(np.max(np.abs(wav))) < SILENCE_PEAK


def empty_result(wav: np.ndarray, language: str | None) -> Result:
    """What an inaudible clip transcribes to: no text, no segments."""
    return Result("", language, seconds(wav), [])


def skip_inaudible(transcribe_batch: Callable, wavs: list[np.ndarray], options: DecodingOptions,
                   languages: list[str | None] | None, prompts: list[str | None] | None,
                   multilingual: bool) -> list[Result]:
    """A runtime's `transcribe_batch(wavs, options, languages, prompts)` run on the audible clips only; the
    inaudible ones get `empty_result` (their language: the clip's or the options', "en" for an English-only
    model). Results in the order of `wavs`; the runtime is not called when no clip is audible."""
    languages = languages or [options.language] * len(wavs)
    prompts = prompts or [options.prompt] * len(wavs)
    keep = [i for i, w in enumerate(wavs) if not inaudible(w, options)]
    results = [empty_result(w, lang if multilingual else "en") for w, lang in zip(wavs, languages)]
    if keep:
        decoded = transcribe_batch([wavs[i] for i in keep], options, [languages[i] for i in keep],
                                   [prompts[i] for i in keep])
        for i, r in zip(keep, decoded):
            results[i] = r
    return results
