"""ONNX export of a FastSpeech2 voice: one graph, phoneme ids in, log-mel frames out, and its parity check.

    model.onnx   input_ids int64 [1, ids], length_scale float32 [1] (1 / speed) ->
                 mel float32 [1, frames, 80], durations int64 [1, ids]

The graph is FastSpeech2ConformerModel's inference path (eval mode: predicted durations, pitch and energy),
rebuilt from its submodules by `MelGraph` so that nothing depends on one sentence's shape: the length
regulator is one `repeat_interleave` (transformers loops over the batch in Python) and the relative
positional encodings are computed from the length (transformers slices a 2 x 5000-position table, which the
exporter stores as two constants of 5 MB for a 128-wide model and which stops at 5000 frames, 58 s).
Imported only when exporting: it loads torch at import time. Exported with the TorchScript exporter
(`dynamo=False`), as the CTC graph is. The folder is a voice
(tts.fastspeech_onnx.OnnxFastSpeechVoice): the graph beside the trained folder's phonemes.json and
speechtune_voice.json. `--quantization int8` is onnxruntime's dynamic quantization (int8 weights per output
channel) of the decoder's and postnet's MatMuls and Convs; the encoder and the duration, pitch and energy
predictors stay fp32, so the frame count is the fp32 graph's (QUANTIZED_MODULES). It is a size option, not a
speed one: on a CPU onnxruntime's ConvInteger is slower than its fp32 Conv (fastspeech2-tiny, 4 sentences,
1 thread: fp32 51 ms, int8 119 ms; 16.9 MB -> 11.1 MB).

Parity (`check_voice`): the exported voice and the torch voice read the same sentences (the --data test
split's texts, else SENTENCES) at three speeds; every sentence must give the same number of frames and log-mel
frames within MEL_TOLERANCE; for int8 the two voices' intelligibility (Whisper's CER, tts.hearing) must also
stay within MAX_CER_DELTA_PT (when the torch voice is intelligible at all).
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import SpeechtuneError
from ..tts.fastspeech import PHONEMES_FILE, VOICE_FILE, FastSpeechVoice, is_voice_folder
from ..tts.fastspeech_onnx import GRAPH, INPUTS, OUTPUTS, OnnxFastSpeechVoice
from .onnx import quantize_int8
from .parity import ParityError

QUANTIZATIONS = ("float32", "int8")
OPSET = 17
# Sentences of 1 to 13 words when no --data is given: short ones make few frames, long ones many, so a length
# the graph had fixed at export would show.
SENTENCES = ("Yes.", "The nurse measured the blood pressure.",
             "Please schedule the follow-up meeting for tomorrow morning, and check the dashboards after lunch.")
MAX_SENTENCES = 8        # of a --data test split: enough to see a broken graph, seconds to synthesize
CHECK_SPEEDS = (1.0, 0.5, 2.0)   # length_scale is an input: the slow and fast paths are checked too
# What --quantization int8 quantizes: the modules after the length regulator. Durations are rounded from the
# encoder's output, so int8 noise there moved phoneme boundaries by a frame (8 of 9 sentences changed length
# on a random 32-wide voice with the encoder's MatMuls int8); these keep the timing exact. Convs too: they
# hold 90% of the weights (MatMul-only int8 made a fastspeech2-tiny graph 5% smaller).
QUANTIZED_MODULES = ("decoder", "speech_decoder_postnet")
# Allowed |log-mel| difference, exported vs torch (natural-log units; a frame's values span about -11.5 to
# 2): (largest, mean), over 3 speeds of each sentence. fp32 measured at most 6.6e-6 / 7.3e-7 (float rounding)
# on a random 32-wide voice and two trained fastspeech2-tiny voices; int8 at most 0.19 / 0.032 (random),
# 0.12 / 0.028 and 0.082 / 0.018 (trained, their prepared test sentences).
MEL_TOLERANCE = {"float32": (1e-3, 1e-4), "int8": (1.0, 0.1)}
# Allowed intelligibility difference, int8 vs torch, in CER points on the checked sentences (a few words'
# worth of characters on 8 sentences). Not measured on a good voice: none was at hand.
MAX_CER_DELTA_PT = 5.0
# Above this CER the torch voice is not understood, and Whisper's transcripts of it are hallucinations that
# change with any noise (a voice at 100% CER read 130% in int8, with mels 0.028 apart on average): the CER
# comparison is reported but not enforced; the mel tolerance still is.
UNINTELLIGIBLE_CER = 0.5


def export_tts_onnx(model_dir: str | Path, out: str | Path, quantization: str = "float32") -> None:
    """Write model.onnx and the voice files (phonemes.json, speechtune_voice.json) into `out` (new)."""
    from transformers import FastSpeech2ConformerModel

    if quantization not in QUANTIZATIONS:
        raise SpeechtuneError(f"unknown ONNX quantization '{quantization}'", f"use one of {', '.join(QUANTIZATIONS)}")
    model_dir, out = Path(model_dir), Path(out)
    if not (is_voice_folder(model_dir) and (model_dir / "config.json").is_file()):
        raise SpeechtuneError(f"{model_dir}: not a FastSpeech2 voice folder written by speechtune",
                              "export the folder `speechtune train` wrote for the voice")
    out.mkdir(parents=True)
    model = FastSpeech2ConformerModel.from_pretrained(model_dir).eval()
    ids = torch.arange(1, 12).unsqueeze(0) % model.config.vocab_size
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), _dynamic_positions(model), contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python checks on shapes: checked by parity
        torch.onnx.export(MelGraph(model), (ids, torch.ones(1)), str(out / GRAPH), dynamo=False,
                          input_names=list(INPUTS), output_names=list(OUTPUTS), opset_version=OPSET,
                          dynamic_axes={"input_ids": {1: "ids"}, "mel": {1: "frames"}, "durations": {1: "ids"}})
    if quantization == "int8":
        _quantize_int8(out / GRAPH)
    for name in (VOICE_FILE, PHONEMES_FILE):
        shutil.copy(model_dir / name, out / name)


class MelGraph(torch.nn.Module):
    """FastSpeech2ConformerModel.forward in eval mode for one unpadded sentence, with tensor ops only."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, length_scale):
        m = self.model
        mask = torch.ones_like(input_ids)
        hidden = m.encoder(input_ids, mask.unsqueeze(-2), return_dict=False)[0]
        no_padding = torch.zeros_like(input_ids, dtype=torch.bool).unsqueeze(-1)
        pitch = m.pitch_predictor(hidden, no_padding)
        energy = m.energy_predictor(hidden, no_padding)
        durations = m.duration_predictor(hidden)  # eval: rounded frame counts, int64
        hidden = hidden + m.energy_embed(energy) + m.pitch_embed(pitch)
        # transformers' length_regulator: durations scaled and rounded (half to even, as ONNX Round); a
        # sentence predicted at 0 frames throughout gets one frame per id
        durations = torch.round(durations.float() * length_scale).long()
        durations = torch.where(durations.sum() == 0, torch.ones_like(durations), durations)
        frames = torch.repeat_interleave(hidden[0], durations[0], dim=0).unsqueeze(0)
        decoded = m.decoder(frames, None, return_dict=False)[0]
        return m.speech_decoder_postnet(decoded)[1], durations


def relative_positions(x, dim: int):
    """The relative positional encodings of a sequence like `x` [batch, length, ...] from its length, as
    FastSpeech2ConformerRelPositionalEncoding.extend_pos_enc computes them (2 x length - 1 positions)."""
    position = torch.arange(x.size(1), dtype=torch.float32, device=x.device).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=x.device) * -(math.log(10000.0) / dim))
    angles = position * div_term
    positive = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(x.size(1), dim)
    negative = torch.stack([torch.sin(-angles), torch.cos(-angles)], dim=-1).reshape(x.size(1), dim)
    return torch.cat([torch.flip(positive, [0]), negative[1:]], dim=0).unsqueeze(0).to(x.dtype)


@contextlib.contextmanager
def _dynamic_positions(model):
    """Each relative positional encoding of `model` computed from the length, for the length of an export
    (eval mode: its dropout does nothing)."""
    from transformers.models.fastspeech2_conformer import modeling_fastspeech2_conformer as fs
    patched = [m for m in model.modules() if isinstance(m, fs.FastSpeech2ConformerRelPositionalEncoding)]
    for m in patched:
        m.forward = lambda x, m=m: (x * m.input_scale, relative_positions(x, m.embed_dim))
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def _quantize_int8(path: Path) -> None:
    """Replace the graph at `path` by one whose decoder and postnet MatMuls and Convs have int8 weights."""
    import onnx
    nodes = [n.name for n in onnx.load(str(path)).graph.node
             if n.op_type in ("MatMul", "Conv") and set(n.name.split("/")) & set(QUANTIZED_MODULES)]
    if not nodes:  # the exporter named the nodes otherwise: an "int8" graph with nothing quantized
        raise SpeechtuneError(f"{path}: no decoder node to quantize", "export --quantization float32")
    quantize_int8(path, ("MatMul", "Conv"), nodes)


def parity_texts(data=None) -> tuple[list[str], str]:
    """(the sentences to check, where they come from): the first MAX_SENTENCES texts of `data`'s test split
    (a prepared folder or a manifest), else SENTENCES."""
    if not data:
        return list(SENTENCES), "built-in sentences"
    from ..tts.judge import test_rows
    rows, where = test_rows(data)
    return [r["text"] for r in rows[:MAX_SENTENCES]], where


def check_voice(model_dir, target, quantization: str = "float32", data=None, max_cer_delta: float | None = None,
                progress: bool = True) -> dict:
    """Compare the exported voice in `target` with the torch voice in `model_dir` (see the module doc); raise
    ParityError with the figures when they differ by more than the tolerances."""
    texts, where = parity_texts(data)
    torch_voice, onnx_voice = FastSpeechVoice.load(model_dir), OnnxFastSpeechVoice.load(target)
    sentences = [torch_voice.phoneme_ids(s) for t in texts for s in torch_voice.phonemize(t)]
    seconds = {"pytorch": 0.0, "exported": 0.0}
    errors, bad_frames, n = [], [], 0
    for ids in sentences:
        for speed in CHECK_SPEEDS:
            mels = {}
            for side, voice in (("pytorch", torch_voice), ("exported", onnx_voice)):
                t0 = time.perf_counter()
                mels[side] = voice.mel_ids(ids, speed)
                seconds[side] += time.perf_counter() - t0
            a, b = mels["pytorch"], mels["exported"]
            if a.shape != b.shape:
                bad_frames.append({"ids": len(ids), "speed": speed, "pytorch": len(a), "exported": len(b)})
            else:
                errors.append(np.abs(a - b))
                n += len(a)
    diff = np.concatenate(errors) if errors else np.zeros((0, 1))
    max_abs, mean_abs = MEL_TOLERANCE[quantization]
    result = {"data": where, "sentences": len(sentences), "speeds": list(CHECK_SPEEDS), "frames": n,
              "frames_differ": bad_frames, "mel_max_abs": float(diff.max(initial=0.0)),
              "mel_mean_abs": float(diff.mean()) if diff.size else 0.0,
              "tolerance": {"mel_max_abs": max_abs, "mel_mean_abs": mean_abs},
              "seconds": {k: round(v, 3) for k, v in seconds.items()}}
    passed = not bad_frames and result["mel_max_abs"] <= max_abs and result["mel_mean_abs"] <= mean_abs
    if passed and quantization != "float32":
        result["intelligibility"] = intelligibility_parity(torch_voice, onnx_voice, texts, max_cer_delta)
        passed = result["intelligibility"]["passed"]
    return settle(result, passed, where, parity_line)


def settle(result: dict, passed: bool, where: str, line) -> dict:
    """A voice parity check's end: its verdict and console line (`line(result)`) in `result`, ParityError with
    the figures when it failed."""
    result["passed"] = passed
    result["line"] = line(result)
    if not passed:
        raise ParityError(f"parity check failed on {where}: {result['line']}",
                          "inspect the export, or export --quantization float32", result)
    return result


def intelligibility_parity(torch_voice, onnx_voice, texts: list[str], max_cer_delta: float | None) -> dict:
    """Whisper's CER of each voice reading `texts` (tts.hearing.intelligibility), and whether they agree
    (always, for a torch voice above UNINTELLIGIBLE_CER: `enforced` false)."""
    from ..tts.hearing import intelligibility
    allowed = MAX_CER_DELTA_PT if max_cer_delta is None else max_cer_delta
    cer = {side: intelligibility(v, texts, torch_voice.language)[1]["error_rate"]
           for side, v in (("pytorch", torch_voice), ("exported", onnx_voice))}
    delta = 100 * (cer["exported"] - cer["pytorch"])
    enforced = cer["pytorch"] <= UNINTELLIGIBLE_CER
    return {**cer, "metric": "cer", "delta_pt": round(delta, 3), "max_delta_pt": allowed, "enforced": enforced,
            "passed": abs(delta) <= allowed or not enforced}


def parity_line(p: dict) -> str:
    """One line of a check_voice result, for the console and for ParityError."""
    tol, differ = p["tolerance"], len(p["frames_differ"])
    line = (f"{p['sentences']} sentences x {len(p['speeds'])} speeds, {p['frames']} frames: "
            f"{f'{differ} frame counts differ' if differ else 'frame counts equal'}, log-mel |diff| max "
            f"{p['mel_max_abs']:.2g} (allowed {tol['mel_max_abs']:g}) mean {p['mel_mean_abs']:.2g} "
            f"(allowed {tol['mel_mean_abs']:g})")
    return line + intelligibility_line(p.get("intelligibility"), "PyTorch")


def intelligibility_line(s: dict | None, source: str) -> str:
    """The parity line's part for intelligibility_parity's result `s` ("" without one)."""
    if not s:
        return ""
    return (f"; Whisper CER {source} {100 * s['pytorch']:.1f}% exported {100 * s['exported']:.1f}% "
            f"({s['delta_pt']:+.1f} pt, allowed ±{s['max_delta_pt']:g}"
            f"{')' if s['enforced'] else f'; not enforced: the {source} voice is unintelligible)'}")
