"""CTranslate2 export through ctranslate2's own Transformers converter (runtimes/ct2.py runs the result).

The converter writes model.bin, config.json (with the suppress lists) and vocabulary.json; we copy the
Hugging Face tokenizer.json and preprocessor_config.json next to them because faster-whisper downloads a
tokenizer from the hub when a folder has none, and reads the mel settings (80 or 128 bins) from the latter.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import SpeechtuneError

QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "float16", "float32")
COPY_FILES = ("tokenizer.json", "preprocessor_config.json")


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
