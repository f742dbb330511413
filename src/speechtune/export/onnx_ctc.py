"""ONNX export of a CTC model: one graph, audio features in, frame logits out, for onnxruntime.

    model.onnx   input_values [batch, samples] (or input_features [batch, frames, bins]), attention_mask when
                 the feature extractor makes one -> logits [batch, frames, vocab]

Exported with the TorchScript exporter (`dynamo=False`): torch.export fixed the audio length of wav2vec2's
convolutional stem to the example's. `--quantization int8` is onnxruntime's dynamic quantization of the
MatMuls (int8 weights per output channel); the convolutions stay fp32, as in the Whisper export. The feature
extractor, tokenizer and config are copied beside it; `runtimes.ctc.onnx_ctc_runtime` decodes it.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE
from ..errors import SpeechtuneError
from .onnx import quantize_int8

QUANTIZATIONS = ("float32", "int8")
OPSET = 17


def export_ctc_onnx(model_dir: str | Path, out: str | Path, quantization: str = "float32") -> None:
    """Write model.onnx and the files the runtime reads (config, feature extractor, tokenizer) into `out` (new)."""
    import torch

    from ..models.ctc import load_ctc
    if quantization not in QUANTIZATIONS:
        raise SpeechtuneError(f"unknown ONNX quantization '{quantization}'", f"use one of {', '.join(QUANTIZATIONS)}")
    model_dir, out = Path(model_dir), Path(out)
    out.mkdir(parents=True)
    bundle = load_ctc(model_dir, device="cpu", dtype=torch.float32)
    fe = bundle.feature_extractor
    # two clips of different lengths, so that batch and length are traced as variable
    wavs = [np.zeros(SAMPLE_RATE, np.float32), np.zeros(SAMPLE_RATE // 2, np.float32)]
    inputs = dict(fe(wavs, sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt",
                     return_attention_mask=bool(getattr(fe, "return_attention_mask", False))))
    names = list(inputs)
    axes = {n: {0: "batch", 1: "length"} for n in names}
    axes["logits"] = {0: "batch", 1: "frames"}

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, *args):
            return self.model(**dict(zip(names, args))).logits

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes: checked by parity
        torch.onnx.export(Logits(bundle.model.eval()), tuple(inputs[n] for n in names), str(out / "model.onnx"),
                          dynamo=False, input_names=names, output_names=["logits"], dynamic_axes=axes,
                          opset_version=OPSET)
    if quantization == "int8":
        quantize_int8(out / "model.onnx", ("MatMul",))
    bundle.model.config.save_pretrained(str(out))
    fe.save_pretrained(str(out))
    bundle.tokenizer.save_pretrained(str(out))

