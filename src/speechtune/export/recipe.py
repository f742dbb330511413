"""Export a model to CTranslate2 (faster-whisper; Whisper) or ONNX (Whisper, CTC, FastSpeech2 voices), with a
parity check: WER/CER for recognition models (with --data), log-mel frames for voices (always; see onnx_tts).

The output folder is complete and self-contained: the exported weights, the tokenizer and feature settings,
speechtune_export.json (what `speechtune serve` reads) and export_summary.json (sizes on disk, and with
--data the PyTorch and exported WER/CER and RTF). It is built under a temporary name and renamed at the
end, so an interrupted or failed export (parity included) leaves nothing at --out.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import time
from pathlib import Path

from ..config import add_dataclass_args, build_config
from ..errors import SpeechtuneError
from ..files import temp_dir_beside, write_json
from ..runtimes import EXPORT_META, DecodingOptions, export_meta, load_runtime

FORMATS = ("ct2", "onnx")
# Allowed error-rate difference, exported vs PyTorch, in percentage points: int8 flips a word now and then,
# which on a test set of hundreds of clips stays well under half a point.
MAX_WER_DELTA_PT = 0.5
# (family, format) -> the module and function that write it: a format a family lists in EXPORT_FORMATS
EXPORTERS = {("whisper", "ct2"): ("ct2", "export_ct2"), ("whisper", "onnx"): ("onnx", "export_onnx"),
             ("ctc", "onnx"): ("onnx_ctc", "export_ctc_onnx"), ("tts", "onnx"): ("onnx_tts", "export_tts_onnx"),
             ("piper", "onnx"): ("onnx_piper", "export_piper_onnx")}
# family -> the module and function of its own parity check, run on every export (its result carries the
# `line` the console prints); a family not listed is checked by parity.check on --data, when given
PARITY = {"tts": ("onnx_tts", "check_voice"), "piper": ("onnx_piper", "check_piper")}
# families whose export folders hold no weights to export again (an exported voice is an ONNX graph; a CT2
# Whisper folder, by contrast, is a Whisper spec that converts back)
EXPORT_ONLY = ("tts", "piper")


def add_arguments(p) -> None:
    p.add_argument("model", help="model to export: a `speechtune train` folder, or any spec (tiny.en, base, "
                                 "HF folder, .pt, CT2 folder)")
    p.add_argument("--format", required=True, choices=FORMATS, help="ct2: CTranslate2 for faster-whisper; "
                                                                    "onnx: encoder + decoder for onnxruntime")
    p.add_argument("--out", required=True, help="output folder (must not exist, unless --overwrite)")
    p.add_argument("--quantization", help="ct2: int8 (default) | int8_float32 | int8_float16 | float16 | "
                                          "float32; onnx: float32 (default) | int8 (dynamic, weights only)")
    p.add_argument("--data", help="test manifest (.jsonl): run the parity check on it (a voice: a prepared "
                                  "folder or manifest whose test texts it reads; else built-in sentences)")
    p.add_argument("--max-wer-delta", type=float, default=None,
                   help=f"allowed WER (or CER) difference, exported vs PyTorch, in points (default: {MAX_WER_DELTA_PT}"
                        f"; a voice's int8 intelligibility CER: 5)")
    add_dataclass_args(p, DecodingOptions, skip=tuple(f for f in DecodingOptions.__dataclass_fields__
                                                      if f not in ("language", "batch_size")))
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _source_size(model_dir: Path) -> int:
    if model_dir.is_file():   # a piper voice's .onnx
        return model_dir.stat().st_size
    return sum((model_dir / n).stat().st_size for n in os.listdir(model_dir)
               if n.endswith((".safetensors", ".bin")) and (model_dir / n).is_file())


def _exporter(family: str, fmt: str):
    """The function that writes `fmt` for a model of `family` (EXPORTERS)."""
    module, name = EXPORTERS[(family, fmt)]
    return getattr(importlib.import_module(f".{module}", __package__), name)


def _parity(family: str, model_dir: Path, target: Path, quantization: str, data, max_wer_delta: float | None,
            options: DecodingOptions | None, progress: bool) -> dict | None:
    """The family's parity check of the export in `target` (raises ParityError), or None when it has none
    to run: a recognition model is checked on --data only, a voice always."""
    if family in PARITY:
        module, name = PARITY[family]
        check_family = getattr(importlib.import_module(f".{module}", __package__), name)
        return check_family(model_dir, target, quantization, data, max_wer_delta, progress)
    if not data:
        return None
    from .parity import check
    delta = MAX_WER_DELTA_PT if max_wer_delta is None else max_wer_delta
    return check(model_dir, load_runtime(target), data, delta, options, progress)


def convert(model_dir: Path, target: Path, fmt: str, quantization: str, source, family: str = "whisper") -> dict:
    """Write the export of the HF folder `model_dir` into `target` (which must not exist), with the
    speechtune_export.json that says which runtime reads it; returns that metadata."""
    _exporter(family, fmt)(model_dir, target, quantization)
    meta = {"format": fmt, "family": family, "quantization": quantization, "source": str(source),
            "source_dir": str(model_dir), "exported_with": "speechtune"}
    if family == "whisper":
        hf_config = json.loads((model_dir / "config.json").read_text())
        meta["max_target_positions"] = hf_config.get("max_target_positions", 448)
    write_json(target / EXPORT_META, meta)
    return meta


def export(model, fmt: str, out, quantization: str | None = None, data=None, max_wer_delta: float | None = None,
           options: DecodingOptions | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Export `model` (any spec) into `out`; returns the summary (also written as export_summary.json).
    `max_wer_delta` None: the family's default tolerance (MAX_WER_DELTA_PT; onnx_tts.MAX_CER_DELTA_PT)."""
    from ..families import family_for

    if fmt not in FORMATS:
        raise SpeechtuneError(f"unknown export format '{fmt}'", f"use one of {', '.join(FORMATS)}")
    done = export_meta(model)
    if done.get("family") in EXPORT_ONLY:
        raise SpeechtuneError(f"{model} is already an export ({done.get('format')}, {done.get('quantization')})",
                              f"export the folder it was made from: {done.get('source_dir')}")
    family = family_for(model)
    if fmt not in family.EXPORT_FORMATS:
        raise SpeechtuneError(f"{model}: a {family.NAME} model exports to {', '.join(family.EXPORT_FORMATS)}, "
                              f"not {fmt}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise SpeechtuneError(f"{out} already exists", "choose a new --out folder or pass --overwrite")
    model_dir = family.resolve(model)
    quantization = quantization or ("int8" if fmt == "ct2" else "float32")
    tmp = temp_dir_beside(out, prefix=f".{out.name}.")
    try:
        t0 = time.perf_counter()
        target = tmp / "model"
        meta = convert(model_dir, target, fmt, quantization, model, family.NAME)
        summary = {**meta, "export_s": round(time.perf_counter() - t0, 2),
                   "size_bytes": {"source": _source_size(model_dir), "export": dir_size(target)},
                   "parity": None}
        summary["parity"] = _parity(family.NAME, model_dir, target, quantization, data, max_wer_delta, options,
                                    progress)
        summary["size_mb"] = {k: round(v / 2**20, 2) for k, v in summary["size_bytes"].items()}
        write_json(target / "export_summary.json", summary)
        if out.exists():
            shutil.rmtree(out)
        target.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def main(args) -> int:
    options = build_config(DecodingOptions, None, args)
    summary = export(args.model, args.format, args.out, args.quantization, args.data, args.max_wer_delta,
                     options, args.overwrite)
    mb = summary["size_mb"]
    print(f"exported {args.model} -> {args.out} ({args.format}, {summary['quantization']}): "
          f"{mb['export']:.1f} MB on disk (source weights {mb['source']:.1f} MB)")
    p = summary["parity"]
    if p and "line" in p:
        print(f"parity on {p['data']}: {p['line']}: ok")
    elif p:
        m = p["metric"].upper()
        print(f"parity on {p['data']} ({p['clips']} clips): PyTorch {m} {100 * p['pytorch']['error_rate']:.2f}% "
              f"RTF {p['pytorch']['rtf']:.3f} | exported {m} {100 * p['exported']['error_rate']:.2f}% "
              f"RTF {p['exported']['rtf']:.3f} | delta {p['delta_pt']:+.2f} pt (allowed ±{p['max_delta_pt']}): ok")
    print(f"wrote {Path(args.out) / 'export_summary.json'}")
    return 0
