"""The Whisper family: an encoder-decoder trained on 30 s log-mel windows with teacher-forced labels that
start with Whisper's prefix tokens, decoded autoregressively (runtimes: hf, ct2, onnx).

Modes: `full` trains everything; `freeze-encoder` trains the decoder (the encoder's outputs are computed once
per clip and cached, train/encoder_cache.py); `lora` adds low-rank adapters to the decoder's linear layers
(and the encoder's with --lora-encoder), the base weights frozen.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import SpeechtuneError

NAME = "whisper"
TASK = "asr"
MODEL_TYPES = ("whisper",)
MODES = ("freeze-encoder", "full", "lora")  # the first is the default
# Safe defaults: a higher lr learns the domain faster but makes the model loop on domain terms on general
# speech (measured: lr 1e-4 x 4 epochs took general English WER from 7.8% to 49%; 2e-5 x 3 kept it at 8.2%).
DEFAULT_LR = {"full": 1e-5, "freeze-encoder": 2e-5, "lora": 5e-4}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
EXPORT_FORMATS = ("ct2", "onnx")


def load(spec, device: str | None = None, dtype=None):
    """A `models.Whisper` bundle for any spec (bundled name, HF folder, .pt, CT2 folder, hub id)."""
    from ..models import load_model
    return load_model(spec, device=device, dtype=dtype)


def resolve(spec) -> Path:
    """The local HF Whisper folder of any spec (converted and cached when needed)."""
    from ..models import resolve_model
    return resolve_model(spec)


def load_for_training(cfg, rows: list[dict], device: str | None = None, dtype=None):
    """The model to train (Whisper's vocabulary spells any text: `rows` change nothing)."""
    return load(cfg.model, device=device, dtype=dtype)


def default_lr(cfg, bundle) -> float:
    return DEFAULT_LR[cfg.mode]


def clips(rows: list[dict], bundle, cfg):
    """The training split: label ids with Whisper's prefix, log-mel features (train/data.py)."""
    from ..train.data import Clips
    return Clips(rows, bundle.processor, bundle.model.generation_config, cfg.language,
                 bundle.model.config.max_target_positions)


def encoder_cache(cfg, model, out: Path, autocast):
    """The cache of the frozen encoder bottom's outputs (train/encoder_cache.py), or None when nothing below
    the trained part is frozen or augmentation changes the input at every epoch. Its `note` says what it
    holds, for the plan line."""
    from ..train.encoder_cache import EncoderCache, frozen_depth
    augment = cfg.speed_perturb or cfg.noise_snr is not None or cfg.spec_augment
    encoder = model.get_encoder()
    depth = None if augment else frozen_depth(encoder)
    if depth is None:
        return None
    cache = EncoderCache(out / "encoder_cache", cfg.encoder_cache_mb, depth, autocast=autocast)
    n = len(encoder.layers)
    cache.note = ("encoder outputs cached" if depth == n else
                  f"encoder states cached below layer {depth + 1} of {n}")
    return cache


def _check_layers(cfg, model) -> None:
    for name, n, what in (("freeze_encoder_layers", len(model.get_encoder().layers), "encoder layers to freeze"),
                          ("train_decoder_layers", len(model.get_decoder().layers), "top decoder layers to train")):
        if not 0 <= getattr(cfg, name) <= n:
            raise SpeechtuneError(f"option {name}: {getattr(cfg, name)} is not between 0 and {n}, this model's "
                                  f"number of layers", f"pass how many {what} (0 = off)")


def _add_lora(cfg, model):
    import torch
    from peft import LoraConfig

    from ..models.registry import add_lora
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    wanted = list(cfg.lora_targets or LORA_TARGETS)
    bad = [t for t in wanted if t not in names]
    if bad:
        raise SpeechtuneError(f"lora_targets: no module named {', '.join(bad)} in this model",
                              f"Whisper's linear layers: {', '.join(sorted(names))}")
    # Decoder-only adapters leave the encoder untouched, so its outputs can be cached like freeze-encoder.
    targets = wanted if cfg.lora_encoder else (
        r".*decoder\.layers\.\d+\.(.*\.)?(" + "|".join(map(re.escape, wanted)) + ")")
    lconf = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                       target_modules=targets, bias="none")
    return add_lora(model, lconf)  # injects adapters into `model` in place, freezes the rest


def _freeze_layers(cfg, model) -> None:
    encoder = model.get_encoder()
    if cfg.freeze_encoder_layers:
        for m in [encoder.conv1, encoder.conv2, encoder.embed_positions, *encoder.layers[: cfg.freeze_encoder_layers]]:
            m.requires_grad_(False)
    if cfg.train_decoder_layers:
        decoder = model.get_decoder()
        keep = decoder.layers[-cfg.train_decoder_layers:]
        for n, p in decoder.named_parameters():
            if not any(p is q for m in keep for q in m.parameters()) and not n.startswith("layer_norm"):
                p.requires_grad_(False)


def setup_training(cfg, model):
    """Set what trains (cfg: a train.config.TrainConfig). Returns the peft wrapper (or None)."""
    from ..models.registry import set_checkpointing

    _check_layers(cfg, model)
    peft_model = None
    model.requires_grad_(True)
    if cfg.mode == "lora":
        peft_model = _add_lora(cfg, model)
    elif cfg.mode == "freeze-encoder":
        model.get_encoder().requires_grad_(False)
    _freeze_layers(cfg, model)
    if cfg.spec_augment:
        model.config.apply_spec_augment = True
        model.config.mask_time_prob = cfg.mask_time_prob
        model.config.mask_feature_prob = cfg.mask_feature_prob
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
        set_checkpointing(model, True, {"use_reentrant": False})
    if not any(p.requires_grad for p in model.parameters()):
        raise SpeechtuneError("nothing left to train with these freeze options")
    return peft_model


def loss(model, clips, idx, cache, cfg, step: int):
    """Mean cross-entropy of one micro-batch: from cached encoder states, or features through the encoder."""
    from ..train.data import augment_rng

    inner = getattr(model, "module", model)  # under DDP, the HF model is wrapped
    device, dtype = inner.device, next(inner.parameters()).dtype
    inputs, labels = (t.to(device) for t in clips.teacher(idx))
    if cache is not None:
        hidden = cache.batch(idx, clips, inner.get_encoder(), device, dtype)
        return model(encoder_outputs=(hidden,), decoder_input_ids=inputs, labels=labels).loss
    rng = augment_rng(cfg.seed, step, idx)  # augmentation draws depend on position only
    features = clips.features(idx, rng, cfg.speed_perturb or (), cfg.noise_snr).to(device, dtype)
    return model(input_features=features, decoder_input_ids=inputs, labels=labels).loss


def save(model, peft_model, bundle, folder: Path) -> None:
    """Write a complete HF Whisper folder (weights merged from any adapters, which are also kept under
    adapter/; tokenizer, generation config, preprocessor_config.json for faster-whisper) into `folder`."""
    from ..models.registry import set_checkpointing

    if peft_model is not None:
        peft_model.save_pretrained(str(folder / "adapter"))
        _fix_adapter_base(folder / "adapter", bundle.path)
        model = peft_model.merge_and_unload()
    set_checkpointing(model, False)
    model.config.use_cache = True
    model.config.apply_spec_augment = False
    model.save_pretrained(str(folder))
    bundle.processor.save_pretrained(str(folder))
    bundle.processor.feature_extractor.save_pretrained(str(folder))


def _fix_adapter_base(adapter: Path, base: Path) -> None:
    cfg_path = adapter / "adapter_config.json"
    c = json.loads(cfg_path.read_text(encoding="utf-8"))
    c["base_model_name_or_path"] = str(base)
    cfg_path.write_text(json.dumps(c, indent=2), encoding="utf-8")
