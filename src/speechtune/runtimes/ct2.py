"""A CTranslate2 Whisper folder as a runtime, through faster-whisper (CPU or CUDA, any quantization).

Clips up to 30 s are decoded in one batched `ctranslate2.models.Whisper.generate` call (which is what lets
`serve` batch concurrent requests), through the shared safeguards (safeguards.py) with CTranslate2's scores
and no-speech probabilities; a fallback re-decodes only the clips that failed. Longer audio, or a request for
timestamps, goes through faster-whisper's own sequential 30 s windows, with its temperature fallback and
thresholds (the same rules and defaults) set from the same options.
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
from .safeguards import (SAMPLING_SEED, Attempt, average_logprob, decode_with_fallback, empty_result, inaudible,
                         needs_fallback, result_of, skip_inaudible)
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
        language (None: detected for multilingual models). Inaudible clips are not decoded
        (safeguards.skip_inaudible)."""
        return skip_inaudible(self._transcribe_audible, wavs, options, languages, prompts, self.multilingual)

    def _transcribe_audible(self, wavs: list[np.ndarray], options: DecodingOptions,
                            languages: list[str | None], prompts: list[str | None]) -> list[Result]:
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
        tok = self._tokenizer(None)
        scored = options.safeguards

        def decode(idx: list[int], temperature: float) -> list[Attempt]:
            # a fallback for some clips encodes just those again: cheap beside the decoding it repeats
            memory = enc if len(idx) == n else self.fw.model.encode(ctranslate2.StorageView.from_array(feats[idx]))
            sampled = temperature > 0
            if sampled and options.safeguards:
                ctranslate2.set_random_seed(SAMPLING_SEED)
            results = self.fw.model.generate(
                memory, [token_prompts[i] for i in idx], beam_size=1, max_length=max_length, suppress_blank=True,
                suppress_tokens=self.suppress, sampling_temperature=temperature if sampled else 1.0,
                sampling_topk=0 if sampled else 1, return_scores=scored, return_no_speech_prob=scored)
            return [self._attempt(r, tok, scored) for r in results]

        attempts = decode_with_fallback(decode, n, options)
        return [result_of(a, lang if self.multilingual else "en", seconds(w))
                for a, lang, w in zip(attempts, languages, wavs)]

    @staticmethod
    def _attempt(r, tok, scored: bool) -> Attempt:
        """An attempt from a generate result. CTranslate2's score is the summed log-probability over the
        length (length_penalty 1); recovered as faster-whisper does."""
        tokens = list(r.sequences_ids[0])
        if not scored:
            return Attempt(tok.decode(tokens).strip(), tokens)
        return Attempt(tok.decode(tokens).strip(), tokens, average_logprob(r.scores[0] * len(tokens), len(tokens)),
                       r.no_speech_prob)

    def transcribe(self, wav: np.ndarray, options: DecodingOptions) -> Result:
        """Any length: faster-whisper's sequential windows, with segment times and its own fallback."""
        import ctranslate2

        if inaudible(wav, options):
            return empty_result(wav, options.language if self.multilingual else "en")
        on = options.safeguards
        if on:
            ctranslate2.set_random_seed(SAMPLING_SEED)  # before the segments are decoded, as they are iterated
        # the cap per window, within the decoder's positions (faster-whisper refuses more)
        previous = self._tokenizer(options.language).encode(" " + options.prompt.strip()) if options.prompt else []
        room = self.fw.max_length - len(self.fw.get_prompt(self._tokenizer(options.language), previous, True))
        segments, info = self.fw.transcribe(
            wav, language=decode_language(self, options.language), beam_size=1,
            temperature=list(options.temperatures), initial_prompt=options.prompt or None, vad_filter=False,
            without_timestamps=not options.timestamps, condition_on_previous_text=False,
            max_new_tokens=min(max_new_tokens(seconds(wav)), room),
            compression_ratio_threshold=options.compression_ratio_threshold if on else None,
            log_prob_threshold=options.logprob_threshold if on else None,
            no_speech_threshold=options.no_speech_threshold if on else None)
        segs = [self._segment(s, options) for s in segments]
        return Result(join_segments([s.text for s in segs]), info.language, seconds(wav), segs)

    @staticmethod
    def _segment(s, options: DecodingOptions) -> Segment:
        """A faster-whisper segment; it keeps a window that failed at every temperature, which still fails."""
        stats = Attempt(s.text, avg_logprob=s.avg_logprob, no_speech_prob=s.no_speech_prob,
                        compression_ratio=s.compression_ratio)
        return Segment(round(s.start, 3), round(s.end, 3), s.text.strip(), list(s.tokens), s.seek, s.temperature,
                       s.avg_logprob, s.compression_ratio, s.no_speech_prob, needs_fallback(stats, options))
