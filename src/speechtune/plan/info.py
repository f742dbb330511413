"""What the planner knows about a model: its transformers config and real module tree (built on the meta
device: no memory, no weights), from a catalog name, a model spec or folder, a config or a loaded model; and
which catalog GPU this machine's CUDA device is.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from ..errors import SpeechtuneError
from . import catalog


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str                   # "whisper", "ctc" or "tts"
    config: object                # transformers config
    params: tuple                 # (name, numel, requires_grad by default)
    linears: tuple                # (module name, in_features, out_features)
    path: str | None = None       # HF folder it came from, if any
    buffers: int = 0              # elements of the module's buffers (FastSpeech2's position tables, BN stats)

    @property
    def total(self) -> int:
        return sum(n for _, n, _ in self.params)


# CTC encoders built as wav2vec2 is (convolutional stem, convolutional positions, post- or pre-norm
# transformer blocks): the activation model of memory.py describes them. Conformer blocks (wav2vec2-conformer,
# Parakeet) and SEW's down-sampling are not modelled yet.
PLANNED_CTC_TYPES = ("wav2vec2", "hubert", "wavlm", "unispeech", "unispeech-sat", "data2vec-audio")
# Text-to-speech: transformers' FastSpeech2ConformerModel, what the tts family trains (families/tts.py).
PLANNED_TTS_TYPES = ("fastspeech2_conformer",)
# Phoneme ids of the bundled joe voice (its .onnx.json `num_symbols`): the vocabulary of a fresh
# `fastspeech2-tiny` that `speechtune train` builds on it (another `--voice` changes only the embedding).
JOE_SYMBOLS = 256
# joe's sample rate: a fresh voice's mel frames are HOP_LENGTH samples of it (a voice folder says its own).
JOE_SAMPLE_RATE = 22050


def family_of(model_type: str) -> str:
    if model_type == "whisper":
        return "whisper"
    if model_type in PLANNED_CTC_TYPES:
        return "ctc"
    if model_type in PLANNED_TTS_TYPES:
        return "tts"
    raise SpeechtuneError(f"model type {model_type!r} is not one the planner knows",
                          f"supported: whisper, {', '.join(PLANNED_CTC_TYPES + PLANNED_TTS_TYPES)} "
                          "(see `speechtune estimate --help`)")


def build_meta(config):
    """The real training module on the meta device: the exact module tree, no memory, no weights."""
    import torch
    import transformers
    with torch.device("meta"):
        if config.model_type == "whisper":
            return transformers.WhisperForConditionalGeneration(config)
        if config.model_type in PLANNED_TTS_TYPES:
            return transformers.FastSpeech2ConformerModel(config)
        return transformers.AutoModelForCTC.from_config(config)


def _info_from_module(name: str, config, module) -> ModelInfo:
    import torch
    params = tuple((n, p.numel(), p.requires_grad) for n, p in module.named_parameters())
    linears = tuple((n, m.in_features, m.out_features) for n, m in module.named_modules()
                    if isinstance(m, torch.nn.Linear))
    buffers = sum(b.numel() for b in module.buffers())
    return ModelInfo(name, family_of(config.model_type), config, params, linears, buffers=buffers)


@lru_cache(maxsize=32)
def _info_cached(name: str, config_json: str, model_type: str) -> ModelInfo:
    import json
    import transformers
    values = json.loads(config_json)
    values.pop("model_type", None)
    config = transformers.AutoConfig.for_model(model_type, **values)
    return _info_from_module(name, config, build_meta(config))


def _info_from_config(name: str, config) -> ModelInfo:
    family_of(config.model_type)
    return _info_cached(name, config.to_json_string(use_diff=True), config.model_type)


def model_info(model) -> ModelInfo:
    """Catalog name, local folder/spec, transformers config or loaded model -> ModelInfo (cached)."""
    import transformers
    if isinstance(model, ModelInfo):
        return model
    if isinstance(model, transformers.PretrainedConfig):
        return _info_from_config(getattr(model, "name_or_path", "") or model.model_type, model)
    if hasattr(model, "config") and hasattr(model, "named_parameters"):
        # An already-loaded model (maybe wrapped by PEFT): its config is enough, and a meta copy is cheap.
        cfg = model.config
        return _info_from_config(getattr(cfg, "name_or_path", "") or cfg.model_type, cfg)
    spec = str(model)
    arch = catalog.lookup(spec)
    if arch is not None:
        return _info_from_config(arch.name, catalog.hf_config(arch))
    if spec in _named_voices():
        return _info_from_config(spec, fresh_voice_config(spec))
    path = _folder_from_spec(spec)
    return replace(_info_from_config(spec, _read_config(path)), path=str(path))


def _named_voices() -> tuple:
    from ..families import tts
    return tts.NAMED_MODELS


def fresh_voice_config(preset: str, num_symbols: int = JOE_SYMBOLS):
    """The config of the fresh FastSpeech2 voice `speechtune train --model PRESET` builds on joe's phonemes."""
    from ..tts.fastspeech import new_config
    return new_config(num_symbols, preset)


def voice_sample_rate(info: ModelInfo) -> int:
    """The rate a TTS model's mel frames are counted at: its voice folder's (speechtune_voice.json), else
    joe's, the base voice of a fresh one."""
    return _folder_sample_rate(info.path) if info.path else JOE_SAMPLE_RATE


@lru_cache(maxsize=32)
def _folder_sample_rate(path: str) -> int:
    import json

    from ..tts.fastspeech import VOICE_FILE
    try:
        return int(json.loads((Path(path) / VOICE_FILE).read_text(encoding="utf-8"))["sample_rate"])
    except (OSError, ValueError, KeyError, TypeError):
        return JOE_SAMPLE_RATE   # a bare FastSpeech2 folder: no voice file says otherwise


def _folder_from_spec(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not _is_hf_folder(path) and not path.exists() and spec.count("/") == 1:
        from ..models import model_type
        from ..models.ctc import resolve_ctc
        if model_type(spec) in PLANNED_CTC_TYPES:  # a CTC hub id (from the hub cache, or online)
            return resolve_ctc(spec)
    if not _is_hf_folder(path):
        # CTranslate2 folders, openai .pt files, bundled names, hub ids: the models module makes an HF folder
        try:
            from ..models import resolve_model
        except ImportError:
            raise SpeechtuneError(f"unknown model {spec!r}",
                                  f"use a catalog name ({', '.join(catalog.ARCHITECTURES)}) "
                                  "or a Hugging Face folder with config.json") from None
        path = Path(resolve_model(spec))
    return path


def _is_hf_folder(path: Path) -> bool:
    import json
    try:
        return "model_type" in json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def _read_config(path: Path):
    import transformers
    try:
        return transformers.AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise SpeechtuneError(f"{path / 'config.json'}: not a readable model config ({e})") from None


def gpu_catalog_name(device_name: str) -> str:
    """torch's CUDA device name ("NVIDIA A100-SXM4-80GB") -> the catalog's GPU name ("A100-80GB")."""
    n = device_name.upper()
    for key, name in (("H200", "H200"), ("H100", "H100"), ("A100", "A100-80GB" if "80" in n else "A100-40GB"),
                      ("A10", "A10"), ("L4", "L4"), ("T4", "T4"), ("V100", "V100"), ("4090", "RTX4090"),
                      ("3090", "RTX3090"), ("3060", "RTX3060")):
        if key in n:
            return name
    return device_name
