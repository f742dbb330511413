"""Decoding back ends behind one interface (see base.py): transformers (hf), CTranslate2 (ct2), onnxruntime (onnx)
for Whisper; greedy CTC decoding over transformers or onnxruntime logits (ctc.py) for CTC encoders.

`load_runtime(spec)` is the one place that decides which runtime reads a model: an export folder is run by
the runtime it was made for (its speechtune_export.json, else the files it holds), a CTC model folder or hub
id by the CTC runtime, anything else is loaded as a Hugging Face Whisper model. So an int8 CTranslate2
folder is decoded by CTranslate2, never through a conversion back to PyTorch weights.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import SpeechtuneError
from .base import (MAX_TOKENS_PER_S, SAFEGUARD_FIELDS, DecodingOptions, Result, Segment, check_options, max_new_tokens,
                   transcribe_many, warm_up)

__all__ = ["EXPORT_META", "export_meta", "MAX_TOKENS_PER_S", "SAFEGUARD_FIELDS", "DecodingOptions", "Result", "Segment", "check_options", "export_format",
           "load_runtime", "max_new_tokens", "runtime_for", "transcribe_audio", "transcribe_many", "warm_up"]

EXPORT_META = "speechtune_export.json"  # written by `speechtune export` into every export folder


def export_meta(spec) -> dict:
    """What an export folder's speechtune_export.json says ({} when it has none)."""
    meta = Path(str(spec)).expanduser() / EXPORT_META
    return json.loads(meta.read_text()) if meta.is_file() else {}


def export_format(spec) -> str | None:
    """"ct2" or "onnx" for an export folder (what speechtune_export.json says, else what files it holds);
    None for anything else (a model spec: bundled name, HF folder, .pt, hub id)."""
    folder = Path(str(spec)).expanduser()
    if not folder.is_dir():
        return None
    meta = folder / EXPORT_META
    if meta.is_file():
        return json.loads(meta.read_text())["format"]
    from ..models.registry import is_ct2
    if is_ct2(folder):
        return "ct2"
    return "onnx" if (folder / "encoder.onnx").is_file() else None


def load_runtime(spec, device: str | None = None, threads: int = 0, workers: int = 1, compute: str | None = None):
    """The runtime for any spec: CT2Runtime or OnnxRuntime for an export folder, else HFRuntime. `compute`
    overrides a CT2 folder's compute type (CTranslate2 converts the weights as it loads them)."""
    from ..models import model_type
    from ..models.ctc import ctc_types
    fmt = export_format(spec)
    if fmt == "onnx" and export_meta(spec).get("family") == "ctc":
        from .ctc import onnx_ctc_runtime
        return onnx_ctc_runtime(Path(str(spec)).expanduser(), threads=threads)
    if fmt is None and model_type(spec) in ctc_types():
        from ..models.ctc import load_ctc
        return runtime_for(load_ctc(spec, device=device))
    if fmt == "ct2":
        from .ct2 import CT2Runtime
        return CT2Runtime(Path(str(spec)).expanduser(), device=device or "cpu", compute=compute, threads=threads,
                          workers=workers)
    if fmt == "onnx":
        if device and device != "cpu":
            raise SpeechtuneError(f"{spec}: an ONNX export runs on the CPU (onnxruntime)", "drop --device")
        from .onnx import OnnxRuntime
        return OnnxRuntime(Path(str(spec)).expanduser(), threads=threads)
    from ..models import load_model
    return runtime_for(load_model(spec, device=device))


def runtime_for(model, device: str | None = None):
    """A runtime for what a caller holds: a spec or export folder (via load_runtime), a runtime as it is, a
    loaded `models.Whisper` bundle as HFRuntime, a loaded `models.ctc.CTCModel` as the CTC runtime."""
    import os
    if isinstance(model, (str, os.PathLike)):
        return load_runtime(model, device)
    if hasattr(model, "transcribe_batch"):
        return model
    from ..models.ctc import CTCModel
    if isinstance(model, CTCModel):
        from .ctc import hf_ctc_runtime
        return hf_ctc_runtime(model)
    from .hf import HFRuntime
    return HFRuntime(model)


def transcribe_audio(model, audio, options: DecodingOptions | None = None, **fields) -> Result:
    """One file (any format, any rate) or 16 kHz waveform of any length, through any model: a spec or export
    folder, a loaded `models.Whisper`, or a runtime. `fields` set DecodingOptions fields (language="zh",
    timestamps=True, ...). What `speechtune.transcribe` is in the Python API."""
    import numpy as np

    from ..audio import decode
    runtime = runtime_for(model)
    options = (options or DecodingOptions()).replace(**fields)
    check_options(runtime, options)
    wav = audio if isinstance(audio, np.ndarray) else decode(audio)
    return runtime.transcribe(wav, options)
