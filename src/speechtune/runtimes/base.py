"""What every decoding back end shares: the options, the result, the language rules and the length cap.

A runtime is one way of running a model (transformers' `generate`, CTranslate2, onnxruntime). Each one has
the same surface, so a command never asks which it holds:

    runtime.name            "hf" | "ct2" | "onnx"
    runtime.path            the folder it was loaded from
    runtime.multilingual    whether it takes a language token
    runtime.supports        the options beyond greedy text it can honour ({"beams", "sampling", "prompt",
                            "timestamps", "translate"}); asking for one it lacks is a one-line error (`check_options`)
    runtime.transcribe_batch(wavs, options, languages=None, prompts=None) -> [Result]
                            clips of at most 30 s; `languages`/`prompts` give each clip its own (None: the
                            options'); results in the order of `wavs`
    runtime.transcribe(wav, options) -> Result
                            any length, with real segment times when `options.timestamps`

`transcribe_many` routes a list of clips of any length through a runtime, grouped by language: the one
loop that evaluate, compare, export's parity check and train's evaluations all decode with.

Every runtime decodes with the decode-time safeguards of openai-whisper and faster-whisper (temperature
fallback, compression-ratio and log-probability checks, the no-speech rule), on by default with their
defaults; the logic is written once, in safeguards.py, and `--no-safeguards` restores a single decoding.
With them, a clip too quiet or too short to hold speech gets empty text without being decoded.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..audio import SAMPLE_RATE, WINDOW_S, WINDOW_SAMPLES
from ..config import option
from ..errors import SpeechtuneError

# No real transcript runs faster than this; a looping model stops here instead of at 448 tokens, which on a
# CPU is the difference between 1 s and 20 s per clip. Applied alike to every model and runtime, so
# comparisons stay fair.
MAX_TOKENS_PER_S = 15
# Room for the prefix and a short clip's few words on top of the per-second budget.
MIN_NEW_TOKENS = 32
# Whisper's decoder holds 448 positions; the prefix takes a few of them.
MAX_NEW_TOKENS = 440
# The hottest fallback temperature: openai-whisper's `np.arange(temperature, 1.0 + 1e-6, increment)`.
MAX_TEMPERATURE = 1.0


# The DecodingOptions fields of the decode-time safeguards: every command that decodes takes them as flags.
SAFEGUARD_FIELDS = ("safeguards", "temperature_increment_on_fallback", "compression_ratio_threshold",
                    "logprob_threshold", "no_speech_threshold")


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode, for every runtime and command alike (as openai/whisper's DecodingOptions). Commands
    take their decoding flags from these fields (config.add_dataclass_args), so no default is repeated."""
    language: str | None = option(None, "language code (e.g. en, zh) for clips whose line has none; "
                                  "multilingual models detect it when not given")
    task: str = option("transcribe", "transcribe | translate (multilingual models)",
                       choices=("transcribe", "translate"))
    beam_size: int = option(1, "beams for decoding (1: greedy)")
    temperature: float = option(0.0, "sampling temperature (0: deterministic); with safeguards, the first one "
                                "tried")
    # The safeguards below and their defaults are openai-whisper's and faster-whisper's (see safeguards.py).
    temperature_increment_on_fallback: float = option(
        0.2, "a decoding that fails a check is retried this much hotter, up to 1.0 (0: no retry)")
    compression_ratio_threshold: float | None = option(
        2.4, "fall back when the text's gzip compression ratio is above this: a loop (inf: never)")
    logprob_threshold: float | None = option(
        -1.0, "fall back when the average log-probability of the tokens is below this (=-inf: never)")
    no_speech_threshold: float | None = option(
        0.6, "empty text when the no-speech probability is above this and the average log-probability below "
        "--logprob-threshold (1: never)")
    safeguards: bool = option(True, "the fallback and checks above, and no text for a clip too quiet or too "
                              "short to hold speech; --no-safeguards: one decoding at --temperature, its text "
                              "as it comes")
    prompt: str | None = option(None, "text that biases the decoder (names, terms), as OpenAI's prompt")
    timestamps: bool = option(False, "segments with real cue times (long-form decoding)")
    batch_size: int = option(8, "clips per decoding batch")

    def replace(self, **changes) -> "DecodingOptions":
        return dataclasses.replace(self, **changes)

    @property
    def temperatures(self) -> tuple[float, ...]:
        """The temperatures a clip may be decoded at, in order: `temperature`, then one increment hotter at a
        time up to MAX_TEMPERATURE (0, 0.2, ..., 1.0 by default); only `temperature` without safeguards or
        without an increment."""
        step = self.temperature_increment_on_fallback
        if not self.safeguards or step <= 0 or self.temperature >= MAX_TEMPERATURE:
            return (self.temperature,)
        n = int((MAX_TEMPERATURE - self.temperature) / step + 1e-6)
        return tuple(round(self.temperature + i * step, 6) for i in range(n + 1))


@dataclass
class Segment:
    start: float
    end: float
    text: str
    # What the back end knows of the segment; None where it does not compute it (never a made-up number).
    tokens: list[int] = field(default_factory=list)
    seek: int | None = None  # the window's start, in mel frames (10 ms)
    temperature: float | None = None
    avg_logprob: float | None = None
    compression_ratio: float | None = None
    no_speech_prob: float | None = None
    # Every temperature failed the safeguards' checks: the text is the best attempt (faster-whisper's choice),
    # likely a loop or a guess; False where it passed or the back end does not tell.
    fallback_failed: bool = False


@dataclass
class Result:
    text: str
    language: str | None
    duration: float
    segments: list[Segment] = field(default_factory=list)


def max_new_tokens(seconds: float) -> int:
    """The decoding length cap for a clip (or batch) whose longest audio lasts `seconds`."""
    return int(min(MAX_NEW_TOKENS, MIN_NEW_TOKENS + MAX_TOKENS_PER_S * min(seconds, WINDOW_S)))


def seconds(wav: np.ndarray) -> float:
    return len(wav) / SAMPLE_RATE


def check_language(runtime, language: str | None) -> None:
    """One rule for every runtime: an English-only model takes no other language; a multilingual one takes
    the codes it knows (`runtime.languages`)."""
    if not language:
        return
    if not runtime.multilingual:
        if language != "en":
            raise SpeechtuneError(f"language '{language}' asked of an English-only model ({runtime.path.name})",
                                  "use a multilingual model such as the bundled 'base'")
        return
    if language not in runtime.languages:
        raise SpeechtuneError(f"unknown language '{language}' for this model",
                              "use a Whisper language code such as en, zh, de, ja")


def check_options(runtime, options: DecodingOptions) -> None:
    """A one-line error when `options` ask for what the runtime cannot do, before any audio is decoded."""
    # the fallback's hotter decodings are sampling too, for a model that decodes token by token (a CTC model
    # labels every frame at once: nothing to fall back from)
    sampling = options.temperature > 0 or (getattr(runtime, "autoregressive", True) and max(options.temperatures) > 0)
    wanted = {"beams": options.beam_size > 1, "sampling": sampling,
              "prompt": bool(options.prompt), "timestamps": options.timestamps,
              "translate": options.task == "translate"}
    missing = [k for k, on in wanted.items() if on and k not in runtime.supports]
    if missing:
        raise SpeechtuneError(f"{runtime.path}: the {runtime.name} runtime decodes without {', '.join(missing)}",
                              "decode greedily as text, or use the source model (or a CTranslate2 export)")
    if options.beam_size < 1 or options.batch_size < 1:
        raise SpeechtuneError("--beam-size and --batch-size must be at least 1")
    if options.temperature < 0 or options.temperature_increment_on_fallback < 0:
        raise SpeechtuneError("--temperature and --temperature-increment-on-fallback must be at least 0",
                              "0 decodes deterministically; --no-safeguards turns the fallback off")
    check_language(runtime, options.language)


def decode_language(runtime, language: str | None) -> str | None:
    """The language token a clip is decoded with: none for an English-only model."""
    return language if runtime.multilingual else None


def join_segments(texts: list[str]) -> str:
    """One text from consecutive segments: a space before a segment that starts with an ASCII character
    (Latin-script words), none before one that starts in a script written without spaces (Han, kana, ...)."""
    texts = [t.strip() for t in texts if t.strip()]
    return "".join((" " if i and t[:1].isascii() else "") + t for i, t in enumerate(texts))


def transcribe_many(runtime, wavs: list[np.ndarray], options: DecodingOptions,
                    languages: list[str | None] | None = None) -> list[str]:
    """Texts of clips of any length, in order. Clips are grouped by language (each clip's, else the options');
    those up to 30 s decode in batches sorted by length (padding stays out of each batch), longer ones one at a
    time through the runtime's long-form path."""
    languages = languages or [options.language] * len(wavs)
    for lang in set(languages):
        check_language(runtime, lang)
    languages = [decode_language(runtime, lang) for lang in languages]
    texts = [""] * len(wavs)
    for lang in dict.fromkeys(languages):
        opts = options.replace(language=lang)
        idx = sorted((i for i, x in enumerate(languages) if x == lang), key=lambda i: len(wavs[i]))
        short = [i for i in idx if len(wavs[i]) <= WINDOW_SAMPLES]
        for start in range(0, len(short), options.batch_size):
            part = short[start:start + options.batch_size]
            for i, r in zip(part, runtime.transcribe_batch([wavs[i] for i in part], opts)):
                texts[i] = r.text
        for i in idx:
            if len(wavs[i]) > WINDOW_SAMPLES:
                texts[i] = runtime.transcribe(wavs[i], opts).text
    return texts


def warm_up(runtime, options: DecodingOptions) -> None:
    """One untimed call: first-call setup (allocations, thread pools, a CUDA context) is not per-clip cost.
    Without safeguards: with them, one second of digital silence would not reach the model at all."""
    runtime.transcribe_batch([np.zeros(SAMPLE_RATE, dtype=np.float32)],
                             options.replace(language=None, safeguards=False))
