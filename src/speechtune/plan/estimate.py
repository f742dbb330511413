"""GPU memory, time and cost of fine-tuning, computed from the model's real module tree and layer shapes.

Memory is what PyTorch holds at the worst moment of a training step. The step is walked as a list of blocks
(conv front end, each encoder/decoder layer, the LM head) in forward order; for each block we count the tensors
autograd saves for backward (by the rules PyTorch follows: a linear keeps its input only when its weight
trains, layer norm keeps its input, scaled-dot-product attention keeps q, k, v, out and the log-sum-exp, a
frozen part with no trainable part below it keeps nothing), its trainable parameters' gradients and the
largest temporary of its backward. Backward frees blocks from the top while gradients appear, so the peak is
the largest of "saved below + gradients above + this block's temporaries" plus weights and optimizer states.

Time is FLOPs / (peak FLOP/s x utilisation): forward 2 x params x tokens for every matmul plus attention
scores; backward counts one matmul for the weight gradient where the weight trains and one for the input
gradient where something below needs it (so a frozen encoder costs forward only, LoRA ~2x forward).
`calibrate()` runs real steps and replaces the assumed utilisation with the measured one.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from ..errors import SpeechtuneError
from . import catalog

MODES = ("full", "freeze-encoder", "lora")
PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "adamw-8bit")
# Fraction of the tensor-core peak that eager PyTorch + SDPA fine-tuning sustains, data loading included.
# Wide layers keep the tensor cores busy (large models: about a third of peak); narrow ones (tiny/base,
# d_model <= 512) are bound by kernel launches and memory traffic. These are assumptions, not measurements:
# `--calibrate` on the target GPU replaces them.
UTILISATION_BY_WIDTH = ((512, 0.15), (1024, 0.25), (10**9, 0.35))
CUDA_OVERHEAD = 512 * 2**20       # CUDA context + cuBLAS workspace: never shows in torch's allocator stats
FIT_FRACTION = 0.92               # leave ~8% for the caching allocator's fragmentation
GiB = 2**30


# --------------------------------------------------------------------------------------------- model info

@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str                   # "whisper" or "ctc"
    config: object                # transformers config
    params: tuple                 # (name, numel, requires_grad by default)
    linears: tuple                # (module name, in_features, out_features)
    path: str | None = None       # HF folder it came from, if any

    @property
    def total(self) -> int:
        return sum(n for _, n, _ in self.params)


def _family(model_type: str) -> str:
    if model_type == "whisper":
        return "whisper"
    if model_type in ("wav2vec2", "hubert"):
        return "ctc"
    raise SpeechtuneError(f"model type {model_type!r} is not one the planner knows",
                          "supported: whisper, wav2vec2, hubert (see `speechtune estimate --help`)")


def build_meta(config):
    """The real training module on the meta device: the exact module tree, no memory, no weights."""
    import torch
    import transformers
    cls = {"whisper": transformers.WhisperForConditionalGeneration, "wav2vec2": transformers.Wav2Vec2ForCTC,
           "hubert": transformers.HubertForCTC}[config.model_type]
    with torch.device("meta"):
        return cls(config)


def _info_from_module(name: str, config, module) -> ModelInfo:
    import torch
    params = tuple((n, p.numel(), p.requires_grad) for n, p in module.named_parameters())
    linears = tuple((n, m.in_features, m.out_features) for n, m in module.named_modules()
                    if isinstance(m, torch.nn.Linear))
    return ModelInfo(name, _family(config.model_type), config, params, linears)


@lru_cache(maxsize=32)
def _info_cached(name: str, config_json: str, model_type: str) -> ModelInfo:
    import json
    import transformers
    cls = {"whisper": transformers.WhisperConfig, "wav2vec2": transformers.Wav2Vec2Config,
           "hubert": transformers.HubertConfig}[model_type]
    config = cls(**json.loads(config_json))
    return _info_from_module(name, config, build_meta(config))


def _info_from_config(name: str, config) -> ModelInfo:
    _family(config.model_type)
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
    path = _folder_from_spec(spec)
    return replace(_info_from_config(spec, _read_config(path)), path=str(path))


def _folder_from_spec(spec: str) -> Path:
    path = Path(spec).expanduser()
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


# ----------------------------------------------------------------------------------------------- options

@dataclass(frozen=True)
class Setup:
    mode: str = "full"
    batch_size: int = 8
    grad_accum: int = 1
    precision: str = "bf16"
    optimizer: str = "adamw"
    grad_checkpointing: bool = False
    lora_rank: int = 16
    lora_targets: tuple = ("q_proj", "v_proj")
    lora_encoder: bool = True     # Whisper: adapters in the encoder too (False: decoder only, encoder frozen)
    lora_dropout: float = 0.0
    audio_seconds: float = 30.0
    label_tokens: int = 448
    device: str = "cuda"          # "cuda" or "cpu": CUDA context, dropout-mask width

    def check(self) -> None:
        for name, value, ok in (("mode", self.mode, MODES), ("precision", self.precision, PRECISIONS),
                                ("optimizer", self.optimizer, OPTIMIZERS)):
            if value not in ok:
                raise SpeechtuneError(f"--{name} {value!r} is not one of {', '.join(ok)}")
        for name in ("batch_size", "grad_accum", "lora_rank", "label_tokens"):
            if getattr(self, name) < 1:
                raise SpeechtuneError(f"--{name.replace('_', '-')} must be at least 1")
        if self.audio_seconds <= 0:
            raise SpeechtuneError("--audio-seconds must be positive")


# ------------------------------------------------------------------------------------ blocks of one step

@dataclass
class Block:
    key: str               # matches _block_of() for parameter names
    name: str
    act: float = 0.0       # bytes saved for backward
    grad: float = 0.0      # bytes of gradients of this block's trainable parameters
    trans: float = 0.0     # largest temporary while this block's backward runs
    fwd: float = 0.0       # forward FLOPs
    bwd: float = 0.0       # backward FLOPs


def _block_of(family: str, pname: str, stable: bool = False) -> str:
    m = re.search(r"(encoder|decoder)\.layers\.(\d+)\.", pname)
    if m:
        return f"{m.group(1)[:3]}{m.group(2)}"
    if family == "whisper":
        for prefix, block in (("model.encoder.layer_norm", "enc_final"), ("model.encoder.", "stem"),
                              ("model.decoder.embed_positions", "dec_embed"), ("model.decoder.layer_norm",
                              "dec_final"), ("model.decoder.embed_tokens", "head"), ("proj_out", "head")):
            if pname.startswith(prefix):
                return block
    else:
        if "feature_extractor" in pname:
            return "stem"
        if "lm_head" in pname:
            return "head"
        if "encoder.layer_norm" in pname and stable:
            return "enc_final"
        return "proj"
    return "head"


def _frozen_by_mode(family: str, mode: str, pname: str) -> bool:
    if mode == "lora":
        return True
    if mode == "freeze-encoder":
        return pname.startswith("model.encoder.") if family == "whisper" else "feature_extractor" in pname
    return False


def trainable_by_block(info: ModelInfo, s: Setup) -> dict:
    """Trainable parameter count per block, LoRA adapters included (r x (in + out) for each target linear)."""
    stable = bool(getattr(info.config, "do_stable_layer_norm", False))
    return dict(_trainable(info.family, info.params, info.linears, stable, s.mode,
                           s.lora_rank if s.mode == "lora" else 0, s.lora_targets, _decoder_only(info, s)))


@lru_cache(maxsize=64)
def _trainable(family, params, linears, stable, mode, rank, targets, decoder_only) -> tuple:
    out: dict = {}
    for name, n, req in params:
        if req and not _frozen_by_mode(family, mode, name):
            b = _block_of(family, name, stable)
            out[b] = out.get(b, 0) + n
    for name, fin, fout in (_lora_sites(linears, targets, decoder_only) if mode == "lora" else ()):
        b = _block_of(family, name + ".", stable)
        out[b] = out.get(b, 0) + rank * (fin + fout)
    return tuple(out.items())


def _decoder_only(info: ModelInfo, s: Setup) -> bool:
    return info.family == "whisper" and not s.lora_encoder


def lora_sites(info: ModelInfo, s: Setup) -> list:
    return _lora_sites(info.linears, s.lora_targets, _decoder_only(info, s))


def _lora_sites(linears, targets, decoder_only=False) -> list:
    """The linears PEFT would wrap: targets match the last name component, inside transformer layers."""
    pattern = r"decoder\.layers\.\d+\." if decoder_only else r"layers\.\d+\."
    return [(n, i, o) for n, i, o in linears if n.rsplit(".", 1)[-1] in targets and re.search(pattern, n)]


class _Bytes:
    """Byte widths and saving rules that depend on precision and device."""

    def __init__(self, s: Setup):
        self.auto = s.precision != "fp32"
        self.a = 2 if self.auto else 4                  # matmul outputs: bf16/fp16 under autocast
        self.mask = 1 if s.device == "cuda" else self.a  # CUDA dropout keeps a bool mask; CPU a float one
        self.mask32 = 1 if s.device == "cuda" else 4     # ... of a fp32 input

    def inputs(self, consumers: int, elems: float, already_low: bool = False) -> float:
        """A tensor read by `consumers` linears that keep their input: fp32 shares one copy; autocast casts
        a fp32 input separately for each linear (activations are not in autocast's cache)."""
        if consumers <= 0:
            return 0.0
        if not self.auto:
            return elems * 4
        return elems * 2 * (1 if already_low else consumers)


def _lin(tokens, fin, fout, train, need_in):
    f = 2.0 * tokens * fin * fout
    return f, f * (int(train) + int(need_in))


def _lora_terms(s: Setup, by: _Bytes, sites: dict):
    """Extra saved bytes and FLOPs of adapters; `sites`: name -> (tokens, (in, out), input needs grad)."""
    act = fwd = bwd = 0.0
    for t, (fin, fout), input_grad in sites.values():
        f = 2.0 * t * s.lora_rank * (fin + fout)
        fwd += f
        bwd += 2 * f
        act += t * s.lora_rank * by.a                       # lora_A output, kept by lora_B
        if s.lora_dropout > 0:
            # dropout output, kept by lora_A (under autocast: lora_A's bf16 copy of it); the dropout's own
            # mask only where its input is on the gradient path
            act += t * fin * ((2 if by.auto else 4) + (by.mask32 if input_grad else 0))
    return act, fwd, bwd


def _attn_layer(s: Setup, by: _Bytes, *, tokens, d, heads, ffn, B, T, train_w, grad_in, lora, cross=None,
                pre_ln=True, drop=(0.0, 0.0), out_copy=True):
    """One transformer layer (self-attention [+ cross-attention] + FFN) -> (act, trans, fwd, bwd, linear params).

    `cross`: (encoder tokens, encoder seq len, encoder needs grad) for a decoder layer.
    `drop`: (hidden dropout, activation dropout) probabilities; a mask is saved where p > 0.
    `out_copy`: SDPA's output takes the query's memory layout. Whisper makes q contiguous per head, so
    the (batch, time, dim) input of out_proj is a fresh copy; wav2vec2 passes views, so it shares storage.
    """
    a, act, fwd, bwd = by.a, 0.0, 0.0, 0.0
    stats = 2 * tokens * 4
    sd = tokens * d
    # linears that keep this input: trainable ones, and LoRA's lora_A unless its dropout makes a new tensor
    cons = lambda n: int(train_w) + int(n in lora and s.lora_dropout == 0)  # noqa: E731
    hid_p, act_p = drop
    sites = {}

    def attention(prefix, q_tokens, kv_tokens, Tq, Tk, q_input_grad, kv_input_grad, kv_shared_elsewhere):
        nonlocal act, fwd, bwd
        # q/k/v projections: q from q_input, k and v from kv input (same tensor for self-attention).
        if kv_shared_elsewhere:   # cross-attention: the fp32 encoder output is counted once, outside
            act_q = by.inputs(cons("q_proj"), q_tokens * d)
            kv_cons = cons("k_proj") + cons("v_proj")
            act_kv = kv_tokens * d * 2 * kv_cons if by.auto else 0.0
            act += act_q + act_kv
        else:
            act += by.inputs(cons("q_proj") + cons("k_proj") + cons("v_proj"), q_tokens * d)
        for n, t, need in (("q_proj", q_tokens, q_input_grad), ("k_proj", kv_tokens, kv_input_grad),
                           ("v_proj", kv_tokens, kv_input_grad)):
            f, b = _lin(t, d, d, train_w, need)
            fwd, bwd = fwd + f, bwd + b
            if n in lora:
                sites[prefix + n] = (t, (d, d), need)
        act += (2 * q_tokens + 2 * kv_tokens) * d * a + B * heads * Tq * 4   # q, k, v, out + log-sum-exp
        f = 4.0 * B * Tq * Tk * d
        fwd, bwd = fwd + f, bwd + 2 * f
        act += q_tokens * d * a if cons("out_proj") and out_copy else 0.0    # out_proj input (already low)
        f, b = _lin(q_tokens, d, d, train_w, True)
        fwd, bwd = fwd + f, bwd + b
        if "out_proj" in lora:
            sites[prefix + "out_proj"] = (q_tokens, (d, d), True)
        if hid_p > 0:
            act += q_tokens * d * by.mask

    # self-attention (+ its layer norm)
    if pre_ln and (grad_in or train_w):
        act += sd * 4 + stats
    attention("self.", tokens, tokens, T, T, grad_in, grad_in, False)
    if not pre_ln:
        act += sd * 4 + stats                                                # post-LN after the residual
    if cross is not None:
        enc_tokens, Tk, enc_grad = cross
        act += sd * 4 + stats
        attention("cross.", tokens, enc_tokens, T, Tk, True, enc_grad, True)
    # FFN
    if pre_ln:
        act += sd * 4 + stats
    act += by.inputs(cons("fc1"), sd)
    f1, b1 = _lin(tokens, d, ffn, train_w, True)
    act += tokens * ffn * a                                                  # GELU input
    if act_p > 0:
        act += tokens * ffn * by.mask
    act += tokens * ffn * a if cons("fc2") else 0.0
    f2, b2 = _lin(tokens, ffn, d, train_w, True)
    fwd, bwd = fwd + f1 + f2, bwd + b1 + b2
    if hid_p > 0:
        act += sd * by.mask
    if not pre_ln:
        act += sd * 4 + stats
    for n in ("fc1", "fc2"):
        if n in lora:
            sites[n] = (tokens, (d, ffn) if n == "fc1" else (ffn, d), True)
    la, lf, lb = _lora_terms(s, by, sites)
    act, fwd, bwd = act + la, fwd + lf, bwd + lb
    trans = tokens * ffn * a + sd * 4                                        # dGELU + the residual's grad
    if cross is not None:
        enc_tokens, _, enc_grad = cross
        trans += 2 * enc_tokens * d * a + (enc_tokens * d * 4 if enc_grad else 0)
    # bf16 weight copies stay alive (saved) where the linear's input needs a gradient
    n_lin = (4 if grad_in else 1) * d * d + 2 * d * ffn
    if cross is not None:
        n_lin += (4 if cross[2] else 2) * d * d
    return act, trans, fwd, bwd, n_lin


def _finish_layer(blk: Block, s: Setup, by: _Bytes, act, trans, fwd, bwd, n_lin, input_bytes, active):
    if not active:
        blk.fwd = fwd
        return blk
    if by.auto:
        act += 2 * n_lin                       # bf16 weight copies kept for the input gradient
    if s.grad_checkpointing:
        blk.act, blk.trans = input_bytes, act + trans   # keep the input; rebuild the rest in backward
        blk.fwd, blk.bwd = fwd, bwd + fwd
    else:
        blk.act, blk.trans, blk.fwd, blk.bwd = act, trans, fwd, bwd
    return blk


def _whisper_blocks(info: ModelInfo, s: Setup) -> tuple[list, float]:
    c, by, B = info.config, _Bytes(s), s.batch_size
    d, V, a = c.d_model, c.vocab_size, by.a
    T = max(1, round(c.max_source_positions * s.audio_seconds / 30.0))
    L = min(s.label_tokens, c.max_target_positions)
    se, sd = B * T, B * L
    full, lora = s.mode == "full", s.mode == "lora"
    lora_set = set(s.lora_targets) if lora else set()
    enc_lora = lora_set if s.lora_encoder else set()
    enc_active = full or bool(enc_lora)
    blocks = []

    stem = Block("stem", "encoder conv front end")
    mel = c.num_mel_bins
    f1, b1 = _lin(B * 2 * T, mel * 3, d, full, False)
    f2, b2 = _lin(B * T, d * 3, d, full, full)
    stem.fwd, stem.bwd = f1 + f2, b1 + b2
    if full:
        stem.act = B * mel * 2 * T * (2 if by.auto else 4) + 2 * B * d * 2 * T * a + B * d * T * a
        stem.act += 2 * (mel * 3 * d + 3 * d * d) if by.auto else 0
        stem.trans = 2 * B * d * 2 * T * a
    blocks.append(stem)

    for i in range(c.encoder_layers):
        act, trans, fwd, bwd, n_lin = _attn_layer(
            s, by, tokens=se, d=d, heads=c.encoder_attention_heads, ffn=c.encoder_ffn_dim, B=B, T=T,
            train_w=full, grad_in=full or (bool(enc_lora) and i > 0), lora=enc_lora)
        blk = Block(f"enc{i}", f"encoder layer {i}")
        blocks.append(_finish_layer(blk, s, by, act, trans, fwd, bwd, n_lin, se * d * 4, enc_active))

    # The fp32 encoder output stays alive to the end: the model output holds it and every cross-attention
    # k/v projection reads it.
    held = se * d * 4
    blocks.append(Block("enc_final", "encoder final norm", act=held + (held + 2 * se * 4 if enc_active else 0)))

    dec_train = not lora
    blocks.append(Block("dec_embed", "decoder embeddings", trans=2 * V * d * 4 if dec_train else 0))
    for j in range(c.decoder_layers):
        act, trans, fwd, bwd, n_lin = _attn_layer(
            s, by, tokens=sd, d=d, heads=c.decoder_attention_heads, ffn=c.decoder_ffn_dim, B=B, T=L,
            train_w=dec_train, grad_in=dec_train or j > 0, lora=lora_set, cross=(se, T, enc_active))
        blk = Block(f"dec{j}", f"decoder layer {j}")
        blocks.append(_finish_layer(blk, s, by, act, trans, fwd, bwd, n_lin, sd * d * 4, True))

    blocks.append(Block("dec_final", "decoder final norm",
                        act=sd * d * 4 + 2 * sd * 4 + by.inputs(int(dec_train), sd * d)))
    head = Block("head", "LM head + loss", act=sd * V * 4 + (2 * V * d if by.auto else 0))
    head.trans = 2 * sd * V * 4 + (sd * V * 2 if by.auto else 0)
    head.fwd, head.bwd = _lin(sd, d, V, dec_train, True)
    blocks.append(head)
    logits = sd * V * a        # the model output holds the logits through backward
    return blocks, logits


def _conv_lengths(c, samples: int) -> list:
    lengths, t = [], samples
    for k, st in zip(c.conv_kernel, c.conv_stride):
        t = (t - k) // st + 1
        lengths.append(max(t, 1))
    return lengths


def _ctc_blocks(info: ModelInfo, s: Setup) -> tuple[list, float]:
    c, by, B = info.config, _Bytes(s), s.batch_size
    a, d, V = by.a, c.hidden_size, c.vocab_size
    samples = int(round(s.audio_seconds * 16000))
    lengths = _conv_lengths(c, samples)
    T = lengths[-1]
    tok = B * T
    full, lora = s.mode == "full", s.mode == "lora"
    lora_set = set(s.lora_targets) if lora else set()
    stable = c.do_stable_layer_norm
    blocks = []

    stem = Block("stem", "feature encoder (CNN)")
    cin = 1
    for i, (cout, k, t) in enumerate(zip(c.conv_dim, c.conv_kernel, lengths)):
        f, b = _lin(B * t, cin * k, cout, full, full and i > 0)
        stem.fwd, stem.bwd = stem.fwd + f, stem.bwd + b
        if full:
            n = B * cout * t
            normed = c.feat_extract_norm == "layer" or i == 0
            # norm (fp32) keeps its input, GELU keeps its input, the next conv keeps GELU's output
            nxt = by.inputs(1, n, already_low=not normed) if i + 1 < len(lengths) else 0
            stem.act += (8 * n if normed else n * a) + nxt
            stem.act += 2 * B * t * 4 if c.feat_extract_norm == "layer" else 0     # layer-norm statistics
            stem.trans = max(stem.trans, 2 * n * 4)
        cin = cout
    if full:
        stem.act += B * samples * (2 if by.auto else 4)
    blocks.append(stem)

    proj_active = not lora
    proj = Block("proj", "feature projection + positional conv")
    C = c.conv_dim[-1]
    k_pos, g_pos = c.num_conv_pos_embeddings, c.num_conv_pos_embedding_groups
    f, b = _lin(tok, C, d, proj_active, full)
    fp, bp = _lin(tok, d // g_pos * k_pos, d, proj_active, proj_active)
    proj.fwd, proj.bwd = f + fp, b + bp
    if proj_active:
        pos_params = d * (d // g_pos) * k_pos
        proj.act = tok * C * 4 + 2 * tok * 4 + by.inputs(1, tok * C)                 # LN input, projection input
        proj.act += (tok * d * by.mask if c.feat_proj_dropout > 0 else 0)
        proj.act += by.inputs(1, tok * d) + tok * d * a + pos_params * (6 if by.auto else 4)
        if not stable:
            proj.act += tok * d * 4 + 2 * tok * 4 + (tok * d * by.mask if c.hidden_dropout > 0 else 0)
        proj.trans = 2 * tok * d * 4
    blocks.append(proj)

    for i in range(c.num_hidden_layers):
        act, trans, fwd, bwd, n_lin = _attn_layer(
            s, by, tokens=tok, d=d, heads=c.num_attention_heads, ffn=c.intermediate_size, B=B, T=T,
            train_w=not lora, grad_in=not lora or i > 0, lora=lora_set, pre_ln=stable,
            drop=(c.hidden_dropout, c.activation_dropout), out_copy=False)
        blk = Block(f"enc{i}", f"encoder layer {i}")
        blocks.append(_finish_layer(blk, s, by, act, trans, fwd, bwd, n_lin, tok * d * 4, True))
    if stable:
        blocks.append(Block("enc_final", "encoder final norm", act=tok * d * 4 + 2 * tok * 4))
    S = max(1, min(s.label_tokens, T // 2))
    head = Block("head", "CTC head + loss")
    head.act = (tok * d * by.mask if c.final_dropout > 0 else 0) + by.inputs(int(not lora), tok * d)
    head.act += tok * V * 4 + B * T * (2 * S + 1) * 4          # log-probs + CTC forward variables
    head.trans = 2 * tok * V * 4 + B * T * (2 * S + 1) * 4
    head.fwd, head.bwd = _lin(tok, d, V, not lora, True)
    blocks.append(head)
    return blocks, tok * V * a


def step_blocks(info: ModelInfo, s: Setup) -> tuple[list, float]:
    """Blocks of one micro-batch in forward order, with gradient bytes filled in; plus persistent bytes."""
    blocks, persistent = (_whisper_blocks if info.family == "whisper" else _ctc_blocks)(info, s)
    index = {b.key: b for b in blocks}
    for key, n in trainable_by_block(info, s).items():
        (index.get(key) or blocks[-1]).grad += n * 4
    return blocks, persistent


# ------------------------------------------------------------------------------------------------ memory

def memory(info: ModelInfo, s: Setup) -> dict:
    """Peak bytes of one training step, split into what is alive at that moment."""
    blocks, persistent = step_blocks(info, s)
    n_train = sum(trainable_by_block(info, s).values())
    n_adapters = n_train - sum(n for name, n, req in info.params
                               if req and not _frozen_by_mode(info.family, s.mode, name))
    weights = (info.total + max(n_adapters, 0)) * 4      # fp32 master weights, also under autocast
    opt_bytes = n_train * (8 if s.optimizer == "adamw" else 2 + 8 / 256)
    grads_all = sum(b.grad for b in blocks)
    overhead = CUDA_OVERHEAD if s.device == "cuda" else 0
    accum = s.grad_accum > 1         # with accumulation, last micro-batch's gradients live through forward

    best = (-1.0, 0.0, 0.0, "")
    acts_below = [0.0]
    for b in blocks:
        acts_below.append(acts_below[-1] + b.act)
    grads_above = 0.0
    for k in range(len(blocks) - 1, -1, -1):
        b = blocks[k]
        grads_above += b.grad
        g = grads_all if accum else grads_above
        act_now = acts_below[k + 1] + b.trans + persistent
        if act_now + g > best[0]:
            best = (act_now + g, act_now, g, f"backward of {b.name}")
    # Optimizer step: all gradients, plus one temporary of the trainable size for multi-tensor AdamW on GPU
    # (CPU runs the per-tensor loop: temporaries of the largest tensor only).
    largest = max((n for name, n, req in info.params
                   if req and not _frozen_by_mode(info.family, s.mode, name)), default=0)
    opt_tmp = n_train * 4 if s.device == "cuda" else 2 * largest * 4
    if grads_all + opt_tmp > best[0]:
        best = (grads_all + opt_tmp, opt_tmp, grads_all, "optimizer step")
    _, act_peak, grad_peak, where = best
    total = weights + opt_bytes + grad_peak + act_peak + overhead
    return {"weights": weights, "gradients": grad_peak, "optimizer": opt_bytes, "activations": act_peak,
            "overhead": overhead, "total": total, "peak_at": where, "gradients_all": grads_all,
            "activations_saved": sum(b.act for b in blocks) + persistent, "trainable_params": n_train}


def flops(info: ModelInfo, s: Setup) -> dict:
    blocks, _ = step_blocks(info, s)
    fwd = sum(b.fwd for b in blocks)
    bwd = sum(b.bwd for b in blocks)
    enc = sum(b.fwd for b in blocks if b.name.startswith(("encoder", "feature"))) if info.family == "whisper" else 0
    return {"forward": fwd, "backward": bwd, "micro_batch": fwd + bwd, "step": (fwd + bwd) * s.grad_accum,
            "encoder_forward": enc}


# ------------------------------------------------------------------------------------------- the estimate

@dataclass
class GpuRow:
    gpu: str
    memory_gib: float
    status: str                  # "fits", "tight", "no", "no bf16"
    headroom_gib: float
    max_batch: int
    step_seconds: float | None
    epoch_hours: float | None
    total_hours: float | None
    cost_usd: float | None
    usd_per_hour: float


@dataclass
class Estimate:
    model: str
    family: str
    mode: str
    precision: str
    optimizer: str
    batch_size: int
    grad_accum: int
    grad_checkpointing: bool
    lora_rank: int | None
    audio_seconds: float
    label_tokens: int
    params_total: int
    params_trainable: int
    memory: dict                 # bytes at the peak: weights, gradients, optimizer, activations, overhead, total
    flops_per_step: float
    utilisation: float
    gpus: list = field(default_factory=list)
    recommendation: str = ""
    notes: list = field(default_factory=list)
    calibration: dict | None = None
    clips_per_epoch: int | None = None
    epochs: float | None = None

    def fits(self, device_bytes: int) -> bool:
        return self.memory["total"] <= device_bytes * FIT_FRACTION

    def to_dict(self) -> dict:
        return asdict(self)


def default_utilisation(info: ModelInfo) -> float:
    width = getattr(info.config, "d_model", None) or getattr(info.config, "hidden_size", 1024)
    return next(u for w, u in UTILISATION_BY_WIDTH if width <= w)


def encoder_frozen(s: Setup) -> bool:
    return s.mode == "freeze-encoder" or (s.mode == "lora" and not s.lora_encoder)


def _times(s: Setup, rate: float, fl: dict, n_clips, epochs, encoder_cache) -> tuple:
    """(seconds per step, hours per epoch, hours in total) at `rate` FLOP/s."""
    step = fl["step"] / rate
    if n_clips is None:
        return step, None, None
    steps = math.ceil(n_clips / (s.batch_size * s.grad_accum))
    epoch = steps * step / 3600
    total = epoch * epochs
    if encoder_cache and encoder_frozen(s) and epochs > 1 and fl["encoder_forward"]:
        # later epochs reuse the cached encoder outputs: no encoder forward
        total -= steps * s.grad_accum * fl["encoder_forward"] / rate / 3600 * (epochs - 1)
    return step, epoch, total


def max_batch(info: ModelInfo, s: Setup, budget_bytes: float, cap: int = 4096) -> int:
    fits = lambda b: memory(info, replace(s, batch_size=b))["total"] <= budget_bytes  # noqa: E731
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= cap and fits(hi):
        lo, hi = hi, hi * 2
    if hi > cap:
        return cap
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def estimate(model, mode: str = "full", batch_size: int = 8, *, grad_accum: int = 1, precision: str = "bf16",
             optimizer: str = "adamw", grad_checkpointing: bool = False, lora_rank: int = 16,
             lora_targets=("q_proj", "v_proj"), lora_dropout: float = 0.0, lora_encoder: bool = True,
             audio_seconds: float = 30.0,
             label_tokens: int = 448, dataset_hours: float | None = None, epochs: float = 1.0,
             clip_seconds: float = 5.0, clips: int | None = None, gpus=None, utilisation: float | None = None,
             prices: dict | None = None,
             device: str = "cuda", encoder_cache: bool = True, calibration: dict | None = None,
             recommend: bool = True) -> Estimate:
    """Memory, time and cost of fine-tuning `model` (catalog name, spec, config or loaded model)."""
    info = model_info(model)
    s = Setup(mode=mode, batch_size=int(batch_size), grad_accum=int(grad_accum), precision=precision,
              optimizer=optimizer, grad_checkpointing=bool(grad_checkpointing), lora_rank=int(lora_rank),
              lora_targets=tuple(lora_targets), lora_dropout=float(lora_dropout), lora_encoder=bool(lora_encoder),
              audio_seconds=float(audio_seconds), label_tokens=int(label_tokens), device=device)
    s.check()
    mem = memory(info, s)
    mem_gpu = mem if device == "cuda" else memory(info, replace(s, device="cuda"))
    fl = flops(info, s)
    util = utilisation or default_utilisation(info)
    notes = []
    if calibration and calibration.get("utilisation"):
        util = calibration["utilisation"]
        notes.append(f"utilisation {util:.0%} measured by --calibrate on {calibration['device']}")
    else:
        notes.append(f"utilisation {util:.0%} of peak FLOP/s assumed (--calibrate measures it)")
    n_clips = clips
    if dataset_hours and not clips:
        n_clips = max(1, round(dataset_hours * 3600 / clip_seconds))
    if n_clips:
        if info.family == "whisper":
            avg = "" if clips else f" of {clip_seconds:g} s on average"
            notes.append(f"{n_clips} clips{avg}, each padded to "
                         f"{audio_seconds:g} s by Whisper's feature extractor: compute is per clip, not per second")
        else:
            notes.append(f"{n_clips} clips of {clip_seconds:g} s, estimated as padded to --audio-seconds "
                         f"{audio_seconds:g} (CTC batches pad to the longest clip)")
    if info.family == "whisper" and label_tokens >= 448:
        typical = memory(info, replace(s, label_tokens=64, device="cuda"))["total"]
        notes.append(f"label tokens 448 = Whisper's maximum, the worst case; with 64 (a 5-10 s sentence) the "
                     f"peak is {typical / GiB:.1f} GiB: pass --label-tokens for your data")
    if encoder_frozen(s) and encoder_cache and epochs > 1 and info.family == "whisper":
        notes.append("epochs after the first reuse cached encoder outputs (speechtune train does this "
                     "when no audio augmentation is on)")
    if info.family == "ctc" and mode != "full":
        notes.append("wav2vec2/HuBERT: freeze-encoder (and LoRA) freeze the convolutional feature encoder "
                     "(freeze_feature_encoder()); the transformer trains")
    prices = prices or {}
    rows = []
    chosen = [catalog.GPUS[n] for n in catalog.GPUS] if not gpus else [_gpu_or_error(g) for g in gpus]
    for g in chosen:
        budget = g.memory_gib * GiB
        price = prices.get(g.name, g.usd_per_hour)
        if not g.peak_flops(precision):
            rows.append(GpuRow(g.name, g.memory_gib, f"no {precision}", 0.0, 0, None, None, None, None, price))
            continue
        total = mem_gpu["total"]
        status = "fits" if total <= budget * FIT_FRACTION else ("tight" if total <= budget else "no")
        rate = g.peak_flops(precision) * util
        if calibration and calibration.get("gpu") == g.name and calibration.get("achieved_flops"):
            rate = calibration["achieved_flops"]      # measured on this very GPU
        step, epoch, tot = _times(s, rate, fl, n_clips, epochs, encoder_cache)
        cost = tot * price if tot is not None else None
        rows.append(GpuRow(g.name, g.memory_gib, status, (budget - total) / GiB,
                           max_batch(info, replace(s, device="cuda"), budget * FIT_FRACTION),
                           step, epoch, tot, cost, price))
    if calibration and calibration.get("device") == "cpu" and calibration.get("achieved_flops"):
        step, epoch, tot = _times(s, calibration["achieved_flops"], fl, n_clips, epochs, encoder_cache)
        rows.append(GpuRow("this CPU", 0.0, "measured", 0.0, 0, step, epoch, tot, None, 0.0))
    est = Estimate(model=info.name, family=info.family, mode=mode, precision=precision, optimizer=optimizer,
                   batch_size=s.batch_size, grad_accum=s.grad_accum, grad_checkpointing=s.grad_checkpointing,
                   lora_rank=s.lora_rank if mode == "lora" else None, audio_seconds=s.audio_seconds,
                   label_tokens=s.label_tokens, params_total=info.total, params_trainable=mem["trainable_params"],
                   memory=mem, flops_per_step=fl["step"], utilisation=util, gpus=rows, notes=notes,
                   calibration=calibration, clips_per_epoch=n_clips, epochs=epochs if n_clips else None)
    if recommend:
        est.recommendation = _recommend(est, info, s, dict(dataset_hours=dataset_hours, clips=clips, epochs=epochs,
                                                           clip_seconds=clip_seconds, gpus=gpus,
                                                           utilisation=util, prices=prices,
                                                           encoder_cache=encoder_cache))
    return est


def _gpu_or_error(name: str):
    g = catalog.find_gpu(name)
    if g is None:
        raise SpeechtuneError(f"unknown GPU {name!r}", f"known: {', '.join(catalog.GPUS)} (or 'all')")
    return g


def _describe(est: Estimate) -> str:
    extras = [est.precision]
    if est.grad_checkpointing:
        extras.append("gradient checkpointing")
    if est.optimizer != "adamw":
        extras.append(est.optimizer)
    mode = {"full": "full fine-tune", "freeze-encoder": "frozen-encoder fine-tune",
            "lora": f"LoRA r={est.lora_rank}"}[est.mode]
    accum = f" (x{est.grad_accum} accumulation)" if est.grad_accum > 1 else ""
    return f"{mode} fits at batch {est.batch_size}{accum} with {' + '.join(extras)}"


def _cheapest(est: Estimate):
    ok = [r for r in est.gpus if r.status == "fits" and r.step_seconds]
    if est.clips_per_epoch:
        key = lambda r: (r.cost_usd, r.total_hours)  # noqa: E731
    else:
        key = lambda r: r.step_seconds * r.usd_per_hour  # noqa: E731
    return min(ok, key=key) if ok else None


def _line(est: Estimate, row) -> str:
    gb = f"{row.memory_gib:.0f} GiB"
    if row.total_hours is not None:
        t = f"{row.total_hours:.1f} h" if row.total_hours >= 1 else f"{max(row.total_hours * 60, 1):.0f} min"
        return f"{row.gpu} {gb}: {_describe(est)}; {t}, ${max(row.cost_usd, 0.01):.2f}"
    return f"{row.gpu} {gb}: {_describe(est)}; {row.step_seconds:.2f} s/step (~${row.usd_per_hour:.2f}/h)"


def _recommend(est: Estimate, info: ModelInfo, s: Setup, kw: dict) -> str:
    row = _cheapest(est)
    if row is not None:
        return _line(est, row)
    # Nothing fits as asked: try the usual memory savers, least intrusive first.
    variants = []
    if not s.grad_checkpointing:
        variants.append(dict(grad_checkpointing=True))
    if s.precision == "fp32":
        variants.append(dict(precision="bf16", grad_checkpointing=True))
    if s.optimizer == "adamw" and s.mode != "lora":
        variants.append(dict(grad_checkpointing=True, optimizer="adamw-8bit"))
    if s.mode != "lora":
        variants.append(dict(mode="lora", grad_checkpointing=True))
    for half in (2, 4, 8, 16):
        if s.batch_size // half >= 1:
            variants.append(dict(batch_size=s.batch_size // half, grad_accum=s.grad_accum * half,
                                 grad_checkpointing=True))
    base = dict(mode=s.mode, batch_size=s.batch_size, grad_accum=s.grad_accum, precision=s.precision,
                optimizer=s.optimizer, grad_checkpointing=s.grad_checkpointing, lora_rank=s.lora_rank,
                lora_targets=s.lora_targets, lora_dropout=s.lora_dropout, lora_encoder=s.lora_encoder,
                audio_seconds=s.audio_seconds,
                label_tokens=s.label_tokens)
    for v in variants:
        alt = estimate(info, **{**base, **v}, **kw, recommend=False)
        row = _cheapest(alt)
        if row is not None:
            return f"nothing in the list fits as asked; {_line(alt, row)}"
    return "nothing in the GPU list fits even with checkpointing, LoRA and batch 1: use several GPUs (FSDP/DeepSpeed)"


# -------------------------------------------------------------------------------------------- summary

def _gib(x: float) -> str:
    return f"{x / GiB:.1f}"


def format_summary(est, n_clips: int | None = None, device_bytes: int | None = None, **options) -> str:
    """A few lines for `speechtune train` to print before it starts; warns when the run will not fit.

    `est` is an Estimate, or a training config (speechtune.train's TrainConfig or anything with the same
    field names) that is turned into one for the device this process will train on; `options` override
    estimate() arguments (e.g. label_tokens=<longest label in the data>).
    """
    if not isinstance(est, Estimate):
        est, device_bytes = _estimate_for_training(est, n_clips, device_bytes, options)
    m = est.memory
    lines = [f"estimate: {est.model} {est.mode}, {est.precision}, batch {est.batch_size}"
             f"{' x' + str(est.grad_accum) if est.grad_accum > 1 else ''}: peak {_gib(m['total'])} GiB "
             f"(weights {_gib(m['weights'])}, gradients {_gib(m['gradients'])}, optimizer {_gib(m['optimizer'])}, "
             f"activations {_gib(m['activations'])}, overhead {_gib(m['overhead'])}); "
             f"{est.params_trainable / 1e6:.1f}M of {est.params_total / 1e6:.1f}M parameters train"]
    timed = [r for r in est.gpus if r.step_seconds and r.status != "no"]
    if len(est.gpus) == 1 and timed:
        r = timed[0]
        when = f", {_hours_text(r.total_hours)} for {est.epochs:g} epoch(s)" if r.total_hours else ""
        lines.append(f"on {r.gpu}: about {r.step_seconds:.2g} s per step{when} "
                     f"(at {est.utilisation:.0%} of peak FLOP/s, an assumption)")
    if device_bytes and not est.fits(device_bytes):
        lines.append(f"warning: this needs about {_gib(m['total'])} GiB but the device has "
                     f"{_gib(device_bytes)} GiB; lower --batch-size (with --grad-accum), turn on gradient "
                     "checkpointing, or use --mode lora")
    if est.recommendation:
        lines.append(f"cheapest GPU that fits: {est.recommendation}")
    return "\n".join(lines)


def _hours_text(h: float) -> str:
    return f"{h:.1f} h" if h >= 1 else f"{max(h * 60, 1):.0f} min"


def _estimate_for_training(cfg, n_clips, device_bytes, options) -> tuple:
    import torch
    get = lambda name, default=None: getattr(cfg, name, default)  # noqa: E731
    device = str(get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.startswith("cuda")
    precision = {"no": "fp32", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}.get(get("precision", "auto"))
    if precision is None:       # "auto", as the trainer resolves it
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if on_gpu else "fp32"
    gpus = None
    if on_gpu:
        props = torch.cuda.get_device_properties(torch.device(device))
        device_bytes = device_bytes or props.total_memory
        g = catalog.find_gpu(_gpu_catalog_name(props.name))
        gpus = [g.name] if g else None
    kw = dict(grad_accum=get("grad_accum", 1), precision=precision,
              grad_checkpointing=bool(get("gradient_checkpointing", get("grad_checkpointing", False))),
              lora_rank=get("lora_r", get("lora_rank", 16)),
              lora_targets=tuple(get("lora_targets", ("q_proj", "v_proj"))),
              lora_dropout=get("lora_dropout", 0.0), lora_encoder=bool(get("lora_encoder", True)),
              epochs=get("epochs", 1.0) or 1.0, clips=n_clips, device="cuda" if on_gpu else "cpu",
              gpus=gpus or ["A10"], recommend=False)
    kw.update(options)
    est = estimate(get("model"), get("mode", "full"), get("batch_size", 8), **kw)
    if not on_gpu:
        est.gpus = []           # no GPU here: the memory figure is the CPU run's; no GPU timing to show
    return est, device_bytes


# ------------------------------------------------------------------------------------------ calibration

def _proc_bytes(key: str, path: str = "/proc/self/status") -> int | None:
    """A "Key:  123 kB" line of a /proc file, in bytes (None where there is no /proc)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _fix_malloc_threshold() -> None:
    # glibc raises its mmap threshold after big frees, so freed tensors stay in the heap and RSS overstates
    # what torch holds. A fixed threshold sends every tensor >= 128 KiB to mmap and back to the OS on free.
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)     # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _cpu_flops_probe() -> float:
    import torch
    x = torch.randn(512, 512)
    torch.mm(x, x)
    t = time.perf_counter()
    for _ in range(8):
        torch.mm(x, x)
    return 8 * 2 * 512**3 / max(time.perf_counter() - t, 1e-9)


def build_training(info: ModelInfo, s: Setup, device: str, load_weights: bool = False):
    """The model (random weights unless `load_weights` and it came from a folder), set up for the mode; its
    optimizer; one batch; and a function that runs one training step."""
    import copy
    import torch
    import transformers

    from ..models.registry import add_lora, set_checkpointing
    config = copy.deepcopy(info.config)
    if info.family == "whisper":
        config.max_source_positions = max(1, round(config.max_source_positions * s.audio_seconds / 30.0))
        cls = transformers.WhisperForConditionalGeneration
    else:
        config.layerdrop = 0.0                   # every layer runs, as the estimate assumes
        config.mask_time_prob = 0.0
        cls = {"wav2vec2": transformers.Wav2Vec2ForCTC, "hubert": transformers.HubertForCTC}[config.model_type]
    torch.manual_seed(0)
    if load_weights and info.path and config.to_dict() == info.config.to_dict():
        model = cls.from_pretrained(info.path, config=config).to(device)
        for p in model.parameters():
            # safetensors may map the file lazily; own the memory now so it is not counted as step memory
            p.data = p.data.clone()
    else:
        model = cls(config).to(device)
    model.train()
    if s.mode == "freeze-encoder" and info.family == "whisper":
        model.model.encoder.requires_grad_(False)
    elif s.mode != "full" and info.family == "ctc":
        # also for LoRA: otherwise wav2vec2 marks the CNN input as requiring grad and records it all
        model.freeze_feature_encoder()
    if s.grad_checkpointing:
        set_checkpointing(model, True)
    if s.mode == "lora":
        import peft
        targets = sorted({n for n, _, _ in lora_sites(info, s)})
        model = add_lora(model, peft.LoraConfig(r=s.lora_rank, lora_alpha=2 * s.lora_rank,
                                                lora_dropout=s.lora_dropout, target_modules=targets))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    B = s.batch_size
    g = torch.Generator().manual_seed(0)
    if info.family == "whisper":
        L = min(s.label_tokens, config.max_target_positions)
        batch = {"input_features": torch.randn(B, config.num_mel_bins, 2 * config.max_source_positions,
                                               generator=g),
                 "labels": torch.randint(0, config.vocab_size - 1, (B, L), generator=g), "use_cache": False}
    else:
        samples = int(round(s.audio_seconds * 16000))
        T = _conv_lengths(config, samples)[-1]
        S = max(1, min(s.label_tokens, T // 2))
        batch = {"input_values": torch.randn(B, samples, generator=g),
                 "labels": torch.randint(1, config.vocab_size, (B, S), generator=g)}
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(s.precision)
    dev_type = "cuda" if str(device).startswith("cuda") else "cpu"
    scaler = torch.amp.GradScaler(dev_type) if s.precision == "fp16" else None

    def step():
        with torch.autocast(dev_type, dtype=dtype, enabled=dtype is not None):
            out = model(**batch)
        loss = out.loss
        (scaler.scale(loss) if scaler else loss).backward()
        del out, loss
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)

    return model, opt, step


def calibrate(model, mode: str = "full", batch_size: int = 2, *, steps: int = 3, device: str | None = None,
              max_step_seconds: float = 90.0, progress: bool = True, load_weights: bool = False,
              **options) -> dict:
    """Run `steps` real training steps (after one warm-up) of the architecture with random weights.

    Returns step time, measured peak memory (CUDA: allocator peak; CPU: resident-set high-water mark above the
    loaded model), the predicted figures for the same run and the utilisation / FLOP/s this implies.
    """
    import torch
    info = model_info(model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    opts = {k: v for k, v in options.items() if k in Setup.__dataclass_fields__}
    s = Setup(mode=mode, batch_size=batch_size, device=dev_type, **opts)
    s.check()
    if dev_type == "cpu" and s.precision == "fp16":
        raise SpeechtuneError("--precision fp16 needs a CUDA GPU to calibrate", "use fp32 or bf16 on a CPU")
    fl = flops(info, s)
    predicted = memory(info, s)
    if dev_type == "cpu":
        guess = fl["step"] / (0.5 * _cpu_flops_probe())
        if guess > max_step_seconds:
            raise SpeechtuneError(
                f"calibrating {info.name} at batch {batch_size} on this CPU would take about {guess:.0f} s per "
                f"step ({steps + 1} steps)", "calibrate on a GPU, or with a smaller --batch-size or model")
        avail = _proc_bytes("MemAvailable", "/proc/meminfo")
        if avail and predicted["total"] > 0.8 * avail:
            raise SpeechtuneError(f"calibrating needs about {_gib(predicted['total'])} GiB, this machine has "
                                  f"{_gib(avail)} GiB free", "use a smaller --batch-size or model")
        _fix_malloc_threshold()
    net, opt, step = build_training(info, s, device, load_weights)
    import gc
    gc.collect()
    if dev_type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        have_hwm = _reset_peak_rss()
        base = _proc_bytes("VmRSS") or 0
    times, cpu_times = [], []
    from tqdm import tqdm
    for i in tqdm(range(steps + 1), desc="calibrating", disable=not progress, leave=False):
        t, c = time.perf_counter(), time.process_time()
        step()
        if dev_type == "cuda":
            torch.cuda.synchronize()
        if i:     # the first step allocates optimizer states and warms kernels: not timed
            times.append(time.perf_counter() - t)
            cpu_times.append(time.process_time() - c)
    if dev_type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
        weights_measured = base
    else:
        hwm = _proc_bytes("VmHWM") if have_hwm else None
        peak = (hwm - base) if hwm else None
        weights_measured = None
    step_s = sorted(times)[len(times) // 2]
    achieved = fl["step"] / step_s
    result = {"device": device if dev_type == "cpu" else f"cuda ({torch.cuda.get_device_name()})",
              "step_seconds": step_s, "step_times": times, "cpu_seconds": sorted(cpu_times)[len(cpu_times) // 2],
              "flops_per_step": fl["step"], "achieved_flops": achieved,
              "measured_peak_bytes": peak, "weights_bytes_measured": weights_measured,
              # what the measurement covers: everything above the loaded model (weights) and, on CUDA, context
              "predicted_peak_bytes": predicted["total"] - predicted["weights"] - predicted["overhead"],
              "predicted_at": predicted["peak_at"], "utilisation": None, "gpu": None}
    if dev_type == "cuda":
        g = catalog.find_gpu(_gpu_catalog_name(torch.cuda.get_device_name()))
        peak_flops = g.peak_flops(s.precision) if g else None
        if g and peak_flops:
            result.update(gpu=g.name, utilisation=achieved / peak_flops)
    del net, opt, step
    return result


def _gpu_catalog_name(device_name: str) -> str:
    n = device_name.upper()
    for key, name in (("H200", "H200"), ("H100", "H100"), ("A100", "A100-80GB" if "80" in n else "A100-40GB"),
                      ("A10", "A10"), ("L4", "L4"), ("T4", "T4"), ("V100", "V100"), ("4090", "RTX4090"),
                      ("3090", "RTX3090"), ("3060", "RTX3060")):
        if key in n:
            return name
    return device_name
