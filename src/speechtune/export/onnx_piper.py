"""ONNX export of a piper voice (what `speechtune train` makes of a piper voice, or any piper .onnx voice) in
piper's own voice format, and its parity check.

A piper voice already is an ONNX graph (piper's exporter wrote it; tts/piper_train.py), so the float32 export
is the voice's model.onnx + model.onnx.json copied into a folder every command reads as a voice. `--quantization
int8` is onnxruntime's dynamic quantization (int8 weights per output channel) of its MatMuls and Convs
(export/onnx.quantize_int8), a size option.

Parity (`check_piper`): both voices read the same sentences (the --data test split's texts, else built-in
ones) with the same noise seed at three speeds; float32 waveforms must agree to WAVE_TOLERANCE, and an int8
voice's intelligibility (Whisper's CER, tts.hearing) must stay within onnx_tts.MAX_CER_DELTA_PT of the
source's (when the source is intelligible at all).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from ..tts import load_voice, resolve_voice
from .onnx import quantize_int8
from .onnx_tts import CHECK_SPEEDS, intelligibility_line, intelligibility_parity, parity_texts, settle

QUANTIZATIONS = ("float32", "int8")
GRAPH = "model.onnx"
WAVE_TOLERANCE = 1e-4   # float32 is the same graph: any difference is a broken copy


def export_piper_onnx(model, out: str | Path, quantization: str = "float32") -> None:
    """Write the voice `model` (any piper voice spec) into the new folder `out` as model.onnx + .json."""
    from ..errors import SpeechtuneError
    if quantization not in QUANTIZATIONS:
        raise SpeechtuneError(f"--quantization {quantization}: a piper voice exports as {' or '.join(QUANTIZATIONS)}")
    onnx, config, _, _ = resolve_voice(model)
    out = Path(out)
    out.mkdir(parents=True)
    shutil.copyfile(onnx, out / GRAPH)
    if quantization == "int8":
        quantize_int8(out / GRAPH, ("MatMul", "Conv"))
    # after quantizing: quantize_int8 replaces every model.onnx* file
    shutil.copyfile(config, out / (GRAPH + ".json"))


def check_piper(model, target, quantization: str = "float32", data=None, max_cer_delta: float | None = None,
                progress: bool = True) -> dict:
    """Compare the exported voice in `target` with the voice `model`; raise ParityError with the figures when
    they differ by more than the tolerances."""
    texts, where = parity_texts(data)
    source, exported = load_voice(model), load_voice(target)
    seconds = {"source": 0.0, "exported": 0.0}
    diffs, lengths_differ = [], 0
    for text in texts:
        for speed in CHECK_SPEEDS:
            waves = {}
            for side, voice in (("source", source), ("exported", exported)):
                t0 = time.perf_counter()
                waves[side] = voice.synthesize(text, speed=speed, seed=0)
                seconds[side] += time.perf_counter() - t0
            a, b = waves["source"], waves["exported"]
            if len(a) != len(b):
                lengths_differ += 1
            else:
                diffs.append(float(np.abs(a - b).max(initial=0.0)))
    result = {"data": where, "sentences": len(texts), "speeds": list(CHECK_SPEEDS), "lengths_differ": lengths_differ,
              "wave_max_abs": max(diffs, default=0.0), "seconds": {k: round(v, 3) for k, v in seconds.items()}}
    if quantization == "float32":
        result["tolerance"] = {"wave_max_abs": WAVE_TOLERANCE}
        passed = not lengths_differ and result["wave_max_abs"] <= WAVE_TOLERANCE
    else:
        result["intelligibility"] = intelligibility_parity(source, exported, texts, max_cer_delta)
        passed = result["intelligibility"]["passed"]
    return settle(result, passed, where, parity_line)


def parity_line(p: dict) -> str:
    line = (f"{p['sentences']} sentences x {len(p['speeds'])} speeds: "
            f"{p['lengths_differ'] or 'no'} lengths differ, waveform |diff| max {p['wave_max_abs']:.2g}")
    if "tolerance" in p:
        line += f" (allowed {p['tolerance']['wave_max_abs']:g})"
    return line + intelligibility_line(p.get("intelligibility"), "source")
