"""CTranslate2 export through ctranslate2's own Transformers converter, and the runtime serve uses for it.

The converter writes model.bin, config.json (with the suppress lists) and vocabulary.json; we copy the
Hugging Face tokenizer.json and preprocessor_config.json next to them because faster-whisper downloads a
tokenizer from the hub when a folder has none, and reads the mel settings (80 or 128 bins) from the latter.

`CT2Whisper` runs such a folder with faster-whisper. Clips up to 30 s are decoded in one batched
`ctranslate2.models.Whisper.generate` call (which is what lets `serve` batch concurrent requests); longer
audio, or a request for timestamps, goes through faster-whisper's own sequential 30 s windows.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import SpeechtuneError

QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "float16", "float32")
COPY_FILES = ("tokenizer.json", "preprocessor_config.json")
WINDOW_SAMPLES = 30 * 16000


def export_ct2(model_dir: str | Path, out: str | Path, quantization: str = "int8") -> None:
    """Convert the HF Whisper folder `model_dir` into `out` (which must not exist yet)."""
    import ctranslate2.converters
    from transformers.utils import logging as hf_logging

    if quantization not in QUANTIZATIONS:
        raise SpeechtuneError(f"unknown CTranslate2 quantization '{quantization}'",
                              f"use one of {', '.join(QUANTIZATIONS)}")
    model_dir = Path(model_dir)
    missing = [n for n in COPY_FILES if not (model_dir / n).is_file()]
    if missing:
        raise SpeechtuneError(f"{model_dir}: missing {', '.join(missing)}; faster-whisper needs them offline",
                              "export a folder written by `speechtune train`, or a full Hugging Face Whisper folder")
    hf_logging.disable_progress_bar()
    converter = ctranslate2.converters.TransformersConverter(str(model_dir), copy_files=list(COPY_FILES))
    converter.convert(str(out), quantization=quantization)


def compute_type(folder: str | Path, device: str = "cpu") -> str:
    """The compute type a folder was exported with (what speechtune_export.json says), fit to the device:
    CTranslate2 has no fast fp16 on CPU, so float16 exports run as float32 there."""
    meta = Path(folder) / "speechtune_export.json"
    q = json.loads(meta.read_text()).get("quantization", "default") if meta.is_file() else "default"
    if device == "cpu" and q in ("float16", "int8_float16"):
        return "int8_float32" if q.startswith("int8") else "float32"
    return q


class CT2Whisper:
    """A CTranslate2 Whisper folder loaded with faster-whisper."""

    def __init__(self, folder: str | Path, device: str = "cpu", compute: str | None = None, threads: int = 0,
                 workers: int = 1):
        from faster_whisper import WhisperModel

        self.path = Path(folder)
        if not (self.path / "tokenizer.json").is_file():
            raise SpeechtuneError(f"{folder}: CTranslate2 folder has no tokenizer.json (faster-whisper would "
                                  "try to download one)", "re-export with `speechtune export --format ct2`")
        self.fw = WhisperModel(str(self.path), device=device, compute_type=compute or compute_type(folder, device),
                               cpu_threads=threads or max(1, (os.cpu_count() or 1) // workers), num_workers=workers)
        self.multilingual = self.fw.model.is_multilingual
        # faster-whisper assumes Whisper's 448 decoder positions; a smaller model must stop at its own limit.
        meta = self.path / "speechtune_export.json"
        if meta.is_file():
            self.fw.max_length = min(self.fw.max_length, json.loads(meta.read_text()).get("max_target_positions", 448))
        self.suppress = json.loads((self.path / "config.json").read_text()).get("suppress_ids", [-1]) or [-1]
        self._fe = None

    def _tokenizer(self, language: str | None):
        from faster_whisper.tokenizer import Tokenizer
        return Tokenizer(self.fw.hf_tokenizer, self.multilingual, task="transcribe", language=language or "en")

    def check_language(self, language: str | None) -> None:
        from faster_whisper.tokenizer import _LANGUAGE_CODES
        if not language:
            return
        if not self.multilingual and language != "en":
            raise SpeechtuneError(f"language '{language}' asked of an English-only model",
                                  "use a multilingual model such as the bundled 'base'")
        if language not in _LANGUAGE_CODES:
            raise SpeechtuneError(f"unknown language '{language}'", "use a Whisper code such as en, zh, de, ja")

    def features(self, wav: np.ndarray) -> np.ndarray:
        # transformers' log-mel, the one the model was trained and scored with: faster-whisper's own differs
        # in the last digits, enough to flip a word of a fine-tuned model and fail the parity check.
        if self._fe is None:
            from transformers import WhisperFeatureExtractor
            self._fe = WhisperFeatureExtractor.from_pretrained(self.path)
        return self._fe(wav, sampling_rate=16000, return_tensors="np").input_features[0]

    def transcribe_batch(self, wavs: list[np.ndarray], language: str | None = None, temperature: float = 0.0,
                         prompts: list[str | None] | None = None, languages: list[str | None] | None = None,
                         max_new_tokens: int | None = None) -> list[dict]:
        """Greedy (or sampled, temperature > 0) texts of clips <= 30 s in one batch: [{text, language}].

        Each clip may carry its own prompt and language (None: detected for multilingual models)."""
        import ctranslate2

        n = len(wavs)
        languages = languages or [language] * n
        prompts = prompts or [None] * n
        feats = np.ascontiguousarray(np.stack([self.features(w) for w in wavs]).astype(np.float32))
        enc = self.fw.model.encode(ctranslate2.StorageView.from_array(feats))
        if self.multilingual and any(lang is None for lang in languages):
            detected = [r[0][0][2:-2] for r in self.fw.model.detect_language(enc)]
            languages = [lang or d for lang, d in zip(languages, detected)]
        token_prompts = []
        for lang, text in zip(languages, prompts):
            tok = self._tokenizer(lang if self.multilingual else None)
            previous = tok.encode(" " + text.strip()) if text else []
            token_prompts.append(self.fw.get_prompt(tok, previous, without_timestamps=True))
        # The same length cap as `speechtune.transcribe` (tokens per second of audio), so a looping model
        # stops early and comparisons with the PyTorch model decode alike.
        from ..transcribe import max_new_tokens as cap
        budget = max_new_tokens or cap(max(len(w) for w in wavs) / 16000)
        max_length = min(self.fw.max_length, max(len(p) for p in token_prompts) + budget)
        results = self.fw.model.generate(
            enc, token_prompts, beam_size=1, max_length=max_length, suppress_blank=True,
            suppress_tokens=self.suppress, sampling_temperature=temperature if temperature > 0 else 1.0,
            sampling_topk=0 if temperature > 0 else 1)
        tok = self._tokenizer(None)
        return [{"text": tok.decode(r.sequences_ids[0]).strip(), "language": lang if self.multilingual else "en"}
                for r, lang in zip(results, languages)]

    def transcribe(self, wav: np.ndarray, language: str | None = None, temperature: float = 0.0,
                   prompt: str | None = None, timestamps: bool = True) -> dict:
        """Any length: faster-whisper's sequential windows, with segment times. {text, language, segments}."""
        segments, info = self.fw.transcribe(
            wav, language=language if self.multilingual else None, beam_size=1,
            temperature=temperature if temperature > 0 else [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            initial_prompt=prompt or None, vad_filter=False, without_timestamps=not timestamps,
            condition_on_previous_text=False)
        segs = [{"id": i, "seek": s.seek, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text.strip(),
                 "tokens": list(s.tokens), "temperature": s.temperature, "avg_logprob": s.avg_logprob,
                 "compression_ratio": s.compression_ratio, "no_speech_prob": s.no_speech_prob}
                for i, s in enumerate(segments)]
        text = ("" if self.multilingual and (info.language in ("zh", "ja", "ko", "th")) else " ").join(
            s["text"] for s in segs)
        return {"text": text.strip(), "language": info.language, "segments": segs}
