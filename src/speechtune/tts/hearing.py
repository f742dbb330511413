"""What the bundled Whisper hears: the one way the voice side transcribes audio, in `prepare --task tts`'s
transcript check, train's evaluations of a voice, compare for voices and the export parity check alike.

The listener is tiny.en for English (or an unknown language) and the multilingual base otherwise, read from
their CTranslate2 folders as shipped (the fastest runtime on a CPU, nothing converted). Each clip gets one
greedy decoding (HEARING), as TTS papers score intelligibility: the temperature fallback would re-decode an
unclear clip up to six times (it made prepare's check run at 1.3 clips/s on espeak-ng readings), rescuing
text a listener would not have understood. Language codes are reduced to their base ("en-us" -> "en").
"""
from __future__ import annotations

import functools

import numpy as np

from ..runtimes import DecodingOptions

ENGLISH, MULTILINGUAL = "tiny.en", "base"   # the bundled Whisper models that listen
HEARING = DecodingOptions(batch_size=16, safeguards=False)


def base_language(code: str | None) -> str:
    """"en_US" / "en-us" / "EN" -> "en"; "" for None."""
    return (code or "").replace("-", "_").split("_")[0].lower()


def listener_for(languages) -> str:
    """tiny.en when every language is English (or unknown), else base."""
    return ENGLISH if all(base_language(lang) in ("", "en") for lang in languages) else MULTILINGUAL


@functools.lru_cache(maxsize=2)
def listener(name: str):
    """The runtime of a bundled Whisper (a name of models.BUNDLED), or of any model spec, loaded once."""
    from ..models import BUNDLED
    from ..models.registry import bundled_ct2
    from ..runtimes import load_runtime
    return load_runtime(bundled_ct2(name) if name in BUNDLED else name)


def hear(wavs_16k: list[np.ndarray], languages: list[str | None], name: str | None = None) -> list[str]:
    """What the listener (`name`, else listener_for(languages)) hears in each 16 kHz clip. A language the
    multilingual model does not know is detected instead; the English model is told English."""
    runtime = listener(name or listener_for(languages))
    known = getattr(runtime, "languages", ())
    langs = [(base_language(lang) if base_language(lang) in known else None) if runtime.multilingual else "en"
             for lang in languages]
    from ..runtimes import transcribe_many
    return transcribe_many(runtime, wavs_16k, HEARING, langs)


def intelligibility(voice, texts: list[str], language: str | None = None,
                    wavs_16k: list | None = None) -> tuple[list[str], dict]:
    """(what the listener hears in `voice` reading each text, score_corpus's CER figures). `language`
    defaults to the voice's; `wavs_16k`: the voice's readings of `texts` at 16 kHz, when the caller has
    them already (else they are synthesized here)."""
    from ..audio import SAMPLE_RATE, resample
    from ..metrics.score import score_corpus
    lang = base_language(language or voice.language) or "en"
    wavs = wavs_16k if wavs_16k is not None else [resample(voice.synthesize(t), voice.sample_rate, SAMPLE_RATE)
                                                 for t in texts]
    hyps = hear(wavs, [lang] * len(texts))
    return hyps, score_corpus(texts, hyps, language=[lang] * len(texts), metric="cer")
