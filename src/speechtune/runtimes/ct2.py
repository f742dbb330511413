"""A CTranslate2 Whisper folder as a runtime, through faster-whisper (CPU or CUDA, any quantization).

Clips up to 30 s are decoded in one batched `ctranslate2.models.Whisper.generate` call (which is what lets
`serve` batch concurrent requests); longer audio, or a request for timestamps, goes through faster-whisper's
own sequential 30 s windows, with its temperature fallback.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE
from ..errors import SpeechtuneError
from .base import (DecodingOptions, Result, Segment, check_language, decode_language, join_segments,
                   max_new_tokens, seconds)

# faster-whisper's own default fallback, as openai-whisper's: retried hotter when a window fails its checks
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# What an export's speechtune_export.json may say, and what runs on a CPU instead: CTranslate2 has no fast
# fp16 on CPU.
CPU_COMPUTE = {"float16": "float32", "int8_float16": "int8_float32", "bfloat16": "float32",
               "int8_bfloat16": "int8_float32"}


def compute_type(folder: str | Path, device: str = "cpu") -> str:
    """The compute type a folder was exported with (what speechtune_export.json says), fit to the device."""
    meta = Path(folder) / "speechtune_export.json"
    q = json.loads(meta.read_text()).get("quantization", "default") if meta.is_file() else "default"
    return CPU_COMPUTE.get(q, q) if device == "cpu" else q


class CT2Runtime:
    """A CTranslate2 Whisper folder loaded with faster-whisper."""
    name = "ct2"
    supports = frozenset({"sampling", "prompt", "timestamps"})

    def __init__(self, folder: str | Path, device: str = "cpu", compute: str | None = None, threads: int = 0,
                 workers: int = 1):
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        self.path = Path(folder)
        if not (self.path / "tokenizer.json").is_file():
            raise SpeechtuneError(f"{folder}: CTranslate2 folder has no tokenizer.json (faster-whisper would "
                                  "try to download one)", "re-export with `speechtune export --format ct2`")
        self.fw = WhisperModel(str(self.path), device=device, compute_type=compute or compute_type(folder, device),
                               cpu_threads=threads or max(1, (os.cpu_count() or 1) // workers), num_workers=workers)
        self.multilingual = self.fw.model.is_multilingual
        self.languages = set(_LANGUAGE_CODES)
        # faster-whisper assumes Whisper's 448 decoder positions; a smaller model must stop at its own limit.
        meta = self.path / "speechtune_export.json"
        if meta.is_file():
            self.fw.max_length = min(self.fw.max_length, json.loads(meta.read_text()).get("max_target_positions", 448))
        self.suppress = json.loads((self.path / "config.json").read_text()).get("suppress_ids", [-1]) or [-1]
        self._fe = None

    def check_language(self, language: str | None) -> None:
        check_language(self, language)

    def _tokenizer(self, language: str | None):
        from faster_whisper.tokenizer import Tokenizer
        return Tokenizer(self.fw.hf_tokenizer, self.multilingual, task="transcribe", language=language or "en")

    def features(self, wav: np.ndarray) -> np.ndarray:
        # transformers' log-mel, the one the model was trained and scored with: faster-whisper's own differs
        # in the last digits, enough to flip a word of a fine-tuned model and fail the parity check.
        if self._fe is None:
            from transformers import WhisperFeatureExtractor
            # a folder as CTranslate2's converter leaves it (the bundled ones) has no preprocessor_config.json:
            # Whisper's defaults with the model's own number of mel bins are what it would hold
            self._fe = (WhisperFeatureExtractor.from_pretrained(self.path)
                        if (self.path / "preprocessor_config.json").is_file()
                        else WhisperFeatureExtractor(feature_size=self.fw.model.n_mels))
        return self._fe(wav, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]

    def transcribe_batch(self, wavs: list[np.ndarray], options: DecodingOptions,
                         languages: list[str | None] | None = None,
                         prompts: list[str | None] | None = None) -> list[Result]:
        """Greedy (or sampled) texts of clips <= 30 s in one batch; each clip may carry its own prompt and
        language (None: detected for multilingual models)."""
        import ctranslate2

        n = len(wavs)
        languages = [decode_language(self, x) for x in (languages or [options.language] * n)]
        prompts = prompts or [options.prompt] * n
        feats = np.ascontiguousarray(np.stack([self.features(w) for w in wavs]).astype(np.float32))
        enc = self.fw.model.encode(ctranslate2.StorageView.from_array(feats))
        if self.multilingual and any(lang is None for lang in languages):
            detected = [r[0][0][2:-2] for r in self.fw.model.detect_language(enc)]
            languages = [lang or d for lang, d in zip(languages, detected)]
        token_prompts = []
        for lang, text in zip(languages, prompts):
            tok = self._tokenizer(lang)
            previous = tok.encode(" " + text.strip()) if text else []
            token_prompts.append(self.fw.get_prompt(tok, previous, without_timestamps=True))
        budget = max_new_tokens(max(seconds(w) for w in wavs))
        max_length = min(self.fw.max_length, max(len(p) for p in token_prompts) + budget)
        sampled = options.temperature > 0
        results = self.fw.model.generate(
            enc, token_prompts, beam_size=1, max_length=max_length, suppress_blank=True,
            suppress_tokens=self.suppress, sampling_temperature=options.temperature if sampled else 1.0,
            sampling_topk=0 if sampled else 1)
        tok = self._tokenizer(None)
        return [Result(tok.decode(r.sequences_ids[0]).strip(), lang if self.multilingual else "en", seconds(w))
                for r, lang, w in zip(results, languages, wavs)]

    def transcribe(self, wav: np.ndarray, options: DecodingOptions) -> Result:
        """Any length: faster-whisper's sequential windows, with segment times."""
        segments, info = self.fw.transcribe(
            wav, language=decode_language(self, options.language), beam_size=1,
            temperature=options.temperature if options.temperature > 0 else list(FALLBACK_TEMPERATURES),
            initial_prompt=options.prompt or None, vad_filter=False, without_timestamps=not options.timestamps,
            condition_on_previous_text=False)
        segs = [Segment(round(s.start, 3), round(s.end, 3), s.text.strip(), list(s.tokens), s.seek, s.temperature,
                        s.avg_logprob, s.compression_ratio, s.no_speech_prob) for s in segments]
        return Result(join_segments([s.text for s in segs]), info.language, seconds(wav), segs)
