"""GPU memory and FLOPs of one training step, computed from the model's real module tree and layer shapes.

Memory is what PyTorch holds at the worst moment of a training step. The step is walked as a list of blocks
(conv front end, each encoder/decoder layer, the LM head) in forward order; for each block we count the tensors
autograd saves for backward (by the rules PyTorch follows: a linear keeps its input only when its weight
trains, layer norm keeps its input, scaled-dot-product attention keeps q, k, v, out and the log-sum-exp, a
frozen part with no trainable part below it keeps nothing), its trainable parameters' gradients and the
largest temporary of its backward. Backward frees blocks from the top while gradients appear, so the peak is
the largest of "saved below + gradients above + this block's temporaries" plus weights and optimizer states.

FLOPs: forward 2 x params x tokens for every matmul plus attention scores; backward counts one matmul for the
weight gradient where the weight trains and one for the input gradient where something below needs it (so a
frozen encoder costs forward only, LoRA ~2x forward).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

from ..audio import SAMPLE_RATE, WINDOW_S
from .info import ModelInfo
from .setup import Setup

CUDA_OVERHEAD = 512 * 2**20       # CUDA context + cuBLAS workspace: never shows in torch's allocator stats
GiB = 2**30


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
    if family == "tts":
        return _tts_block_of(pname)
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
    if mode == "freeze-feature-encoder":
        return "feature_extractor" in pname
    if mode in ("head", "adapter"):  # roughly: only the head trains (adapters are a few percent at most)
        return not pname.startswith(("lm_head", "ctc_head"))
    return False


def trainable_by_block(info: ModelInfo, s: Setup) -> dict:
    """Trainable parameter count per block, LoRA adapters included (r x (in + out) for each target linear)."""
    stable = bool(getattr(info.config, "do_stable_layer_norm", False))
    return dict(_trainable(info.family, info.params, info.linears, stable, s.mode,
                           s.lora_r if s.mode == "lora" else 0, s.lora_targets, _decoder_only(info, s)))


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
        # softmax's output: CUDA autocast runs softmax in fp32; CPU autocast leaves it in bf16 (measured:
        # FastSpeech2's eager attention scores, tests/test_estimate.py)
        self.softmax = 4 if s.device == "cuda" or not self.auto else 2

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
        f = 2.0 * t * s.lora_r * (fin + fout)
        fwd += f
        bwd += 2 * f
        act += t * s.lora_r * by.a                       # lora_A output, kept by lora_B
        if s.lora_dropout > 0:
            # dropout output, kept by lora_A (under autocast: lora_A's bf16 copy of it); the dropout's own
            # mask only where its input is on the gradient path
            act += t * fin * ((2 if by.auto else 4) + (by.mask32 if input_grad else 0))
    return act, fwd, bwd


class _LayerTally:
    """Saved bytes, FLOPs and LoRA sites of one transformer layer, added up part by part in forward order."""

    def __init__(self, s: Setup, by: _Bytes, *, d, B, heads, train_w, lora, hid_p, out_copy):
        self.s, self.by, self.d, self.B, self.heads = s, by, d, B, heads
        self.train_w, self.lora, self.hid_p, self.out_copy = train_w, lora, hid_p, out_copy
        self.act = self.fwd = self.bwd = 0.0
        self.sites = {}

    def cons(self, name: str) -> int:
        """Linears that keep this input: a trainable one, and LoRA's lora_A unless its dropout makes a new tensor."""
        return int(self.train_w) + int(name in self.lora and self.s.lora_dropout == 0)

    def linear(self, tokens, fin, fout, need_in):
        f, b = _lin(tokens, fin, fout, self.train_w, need_in)
        self.fwd, self.bwd = self.fwd + f, self.bwd + b

    def attention(self, prefix, q_tokens, kv_tokens, Tq, Tk, q_input_grad, kv_input_grad, kv_shared_elsewhere):
        by, d, cons = self.by, self.d, self.cons
        # q/k/v projections: q from q_input, k and v from kv input (same tensor for self-attention).
        if kv_shared_elsewhere:   # cross-attention: the fp32 encoder output is counted once, outside
            act_q = by.inputs(cons("q_proj"), q_tokens * d)
            kv_cons = cons("k_proj") + cons("v_proj")
            act_kv = kv_tokens * d * 2 * kv_cons if by.auto else 0.0
            self.act += act_q + act_kv
        else:
            self.act += by.inputs(cons("q_proj") + cons("k_proj") + cons("v_proj"), q_tokens * d)
        for n, t, need in (("q_proj", q_tokens, q_input_grad), ("k_proj", kv_tokens, kv_input_grad),
                           ("v_proj", kv_tokens, kv_input_grad)):
            self.linear(t, d, d, need)
            if n in self.lora:
                self.sites[prefix + n] = (t, (d, d), need)
        # q, k, v, out + log-sum-exp
        self.act += (2 * q_tokens + 2 * kv_tokens) * d * by.a + self.B * self.heads * Tq * 4
        f = 4.0 * self.B * Tq * Tk * d
        self.fwd, self.bwd = self.fwd + f, self.bwd + 2 * f
        self.act += q_tokens * d * by.a if cons("out_proj") and self.out_copy else 0.0  # out_proj input (low)
        self.linear(q_tokens, d, d, True)
        if "out_proj" in self.lora:
            self.sites[prefix + "out_proj"] = (q_tokens, (d, d), True)
        if self.hid_p > 0:
            self.act += q_tokens * d * by.mask

    def ffn(self, tokens, ffn, act_p, pre_ln, norm):
        by, a, sd = self.by, self.by.a, tokens * self.d
        if pre_ln:
            self.act += norm
        self.act += by.inputs(self.cons("fc1"), sd)
        f1, b1 = _lin(tokens, self.d, ffn, self.train_w, True)
        self.act += tokens * ffn * a                                         # GELU input
        if act_p > 0:
            self.act += tokens * ffn * by.mask
        self.act += tokens * ffn * a if self.cons("fc2") else 0.0
        f2, b2 = _lin(tokens, ffn, self.d, self.train_w, True)
        self.fwd, self.bwd = self.fwd + f1 + f2, self.bwd + b1 + b2
        if self.hid_p > 0:
            self.act += sd * by.mask
        if not pre_ln:
            self.act += norm
        for n in ("fc1", "fc2"):
            if n in self.lora:
                self.sites[n] = (tokens, (self.d, ffn) if n == "fc1" else (ffn, self.d), True)


def _attn_layer(s: Setup, by: _Bytes, *, tokens, d, heads, ffn, B, T, train_w, grad_in, lora, cross=None,
                pre_ln=True, drop=(0.0, 0.0), out_copy=True):
    """One transformer layer (self-attention [+ cross-attention] + FFN) -> (act, trans, fwd, bwd, linear params).

    `cross`: (encoder tokens, encoder seq len, encoder needs grad) for a decoder layer.
    `drop`: (hidden dropout, activation dropout) probabilities; a mask is saved where p > 0.
    `out_copy`: SDPA's output takes the query's memory layout. Whisper makes q contiguous per head, so
    the (batch, time, dim) input of out_proj is a fresh copy; wav2vec2 passes views, so it shares storage.
    """
    sd = tokens * d
    norm = sd * 4 + 2 * tokens * 4                                           # a layer norm's input + statistics
    hid_p, act_p = drop
    t = _LayerTally(s, by, d=d, B=B, heads=heads, train_w=train_w, lora=lora, hid_p=hid_p, out_copy=out_copy)
    # self-attention (+ its layer norm)
    if pre_ln and (grad_in or train_w):
        t.act += norm
    t.attention("self.", tokens, tokens, T, T, grad_in, grad_in, False)
    if not pre_ln:
        t.act += norm                                                        # post-LN after the residual
    if cross is not None:
        enc_tokens, Tk, enc_grad = cross
        t.act += norm
        t.attention("cross.", tokens, enc_tokens, T, Tk, True, enc_grad, True)
    t.ffn(tokens, ffn, act_p, pre_ln, norm)
    la, lf, lb = _lora_terms(s, by, t.sites)
    act, fwd, bwd = t.act + la, t.fwd + lf, t.bwd + lb
    trans = tokens * ffn * by.a + sd * 4                                     # dGELU + the residual's grad
    if cross is not None:
        enc_tokens, _, enc_grad = cross
        trans += 2 * enc_tokens * d * by.a + (enc_tokens * d * 4 if enc_grad else 0)
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
    if s.gradient_checkpointing:
        blk.act, blk.trans = input_bytes, act + trans   # keep the input; rebuild the rest in backward
        blk.fwd, blk.bwd = fwd, bwd + fwd
    else:
        blk.act, blk.trans, blk.fwd, blk.bwd = act, trans, fwd, bwd
    return blk


def _whisper_blocks(info: ModelInfo, s: Setup) -> tuple[list, float]:
    c, by, B = info.config, _Bytes(s), s.batch_size
    d, V, a = c.d_model, c.vocab_size, by.a
    T = max(1, round(c.max_source_positions * s.audio_seconds / WINDOW_S))
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


def conv_lengths(c, samples: int) -> list:
    lengths, t = [], samples
    for k, st in zip(c.conv_kernel, c.conv_stride):
        t = (t - k) // st + 1
        lengths.append(max(t, 1))
    return lengths


def _ctc_stem(c, by: _Bytes, B: int, samples: int, lengths: list, full: bool) -> Block:
    stem = Block("stem", "feature encoder (CNN)")
    a, cin = by.a, 1
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
    return stem


def _ctc_proj(c, by: _Bytes, tok: int, full: bool, lora: bool) -> Block:
    a, d = by.a, c.hidden_size
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
        if not c.do_stable_layer_norm:
            proj.act += tok * d * 4 + 2 * tok * 4 + (tok * d * by.mask if c.hidden_dropout > 0 else 0)
        proj.trans = 2 * tok * d * 4
    return proj


def _ctc_blocks(info: ModelInfo, s: Setup) -> tuple[list, float]:
    c, by, B = info.config, _Bytes(s), s.batch_size
    a, d, V = by.a, c.hidden_size, c.vocab_size
    samples = int(round(s.audio_seconds * SAMPLE_RATE))
    lengths = conv_lengths(c, samples)
    T = lengths[-1]
    tok = B * T
    full, lora = s.mode == "full", s.mode == "lora"
    lora_set = set(s.lora_targets) if lora else set()
    stable = c.do_stable_layer_norm
    blocks = [_ctc_stem(c, by, B, samples, lengths, full), _ctc_proj(c, by, tok, full, lora)]
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


# ------------------------------------------------------------------------ FastSpeech2Conformer (tts family)
#
# transformers' FastSpeech2ConformerModel in train mode (modeling_fastspeech2_conformer.py): a conformer encoder
# over the phoneme ids, three variance predictors (duration, pitch, energy: conv + ReLU + layer norm + dropout
# stacks) and the pitch/energy embeddings on the ids, the length regulator that repeats each id for its
# duration, a conformer decoder over the mel frames, and the postnet (a linear to 80 mel bands, conv +
# batch norm + tanh layers) with the L1/MSE losses. Its attention is eager with relative positions: every
# layer keeps B x heads x T x T scores (softmax output, dropout mask and output), so the decoder's memory
# grows with frames squared as well as linearly; everything else is batch x length x width. transformers'
# FastSpeech2 has no gradient checkpointing (the flag is accepted and changes nothing), so none is modelled.

def tts_frames(seconds: float, sample_rate: int) -> int:
    """Mel frames of a clip of `seconds` at the voice's rate (tts.features.n_frames: centred STFT)."""
    from ..tts.features import n_frames
    return n_frames(int(round(seconds * sample_rate)))


def tts_shape(info: ModelInfo, s: Setup) -> tuple[int, int]:
    """(phoneme ids, mel frames) of the widest micro-batch: label_tokens ids, audio_seconds of frames."""
    from .info import voice_sample_rate
    return s.label_tokens, tts_frames(s.audio_seconds, voice_sample_rate(info))


def _tts_block_of(pname: str) -> str:
    m = re.match(r"(encoder|decoder)\.conformer_layers\.(\d+)\.", pname)
    if m:
        return f"{m.group(1)[:3]}{m.group(2)}"
    if pname.startswith("encoder."):
        return "embed"
    if pname.startswith("speech_decoder_postnet."):
        return "postnet"
    return "variance"        # duration/pitch/energy predictors and embeddings, speaker/language embeddings


def _conformer_layer(by: _Bytes, module: dict, c, B: int, T: int) -> tuple[float, float, float]:
    """(saved bytes, backward temporaries, forward FLOPs) of one conformer layer over B x T positions.

    Post-LN, macaron style (FFN, attention, conv module, FFN, final norm), as FastSpeech2Conformer's default
    config (normalize_before False, macaron and conv module on). Saved, per position: each linear or conv's
    input (under autocast its own bf16 copy of an fp32 input), ReLU/GLU/SiLU/batch-norm inputs or outputs,
    a mask per dropout, each layer norm's fp32 input and statistics; per head, the T x T softmax output,
    its dropout mask and output; and the linear_pos projection of the 2T-1 relative positions.
    """
    d, F, h = c.hidden_size, module["linear_units"], module["num_attention_heads"]
    p, pa = module["dropout_rate"], module["attention_dropout_rate"]
    N, P, lo, m = B * T, 2 * T - 1, by.a, by.mask
    norm = N * d * 4 + 2 * N * 4
    drop = N * d * m if p > 0 else 0.0

    def ffn():  # conv1 (kernel k) -> ReLU -> dropout -> conv2 -> dropout; then the residual's layer norm
        return by.inputs(1, N * d) + N * F * lo + (N * F * (m + lo) if p > 0 else 0) + drop + norm

    attn = (by.inputs(3, N * d) + 2 * by.inputs(1, N * d)     # q/k/v input; q + pos_bias_u and + pos_bias_v
            + 2 * N * d * lo                                 # k and v, kept by the score matmuls
            + (P * d * 2 if by.auto else 0) + P * d * lo     # linear_pos input (bf16 copy) and output
            + B * h * T * T * (by.softmax + (m + (2 if by.auto else 4) if pa > 0 else 0))  # softmax, dropout
            + N * d * lo + drop + norm)                      # linear_out input, dropout, layer norm
    conv = (by.inputs(1, N * d) + 2 * N * d * lo             # pointwise_conv1 input, GLU input
            + 4 * N * d * lo + drop + norm)                  # depthwise, batch norm, SiLU, pointwise_conv2 inputs
    act = 2 * ffn() + attn + conv + norm                     # + the final layer norm
    # backward of the scores: their gradient, and the relative-shift's padded (T x 2T) gradients
    trans = B * h * T * T * 4 * 3 + 2 * N * F * 4
    k, kc = c.positionwise_conv_kernel_size, module["kernel_size"]
    fwd = (2 * 2 * (2.0 * N * d * F * k)                     # two FFNs of two convs each
           + 4 * 2.0 * N * d * d + 2.0 * P * d * d           # q, k, v, out; linear_pos
           + 8.0 * B * T * T * d                             # q.k, q.pos (2T-1 wide), attn.v
           + 2.0 * N * d * 2 * d + 2.0 * N * d * kc + 2.0 * N * d * d)   # conv module
    return act, trans, fwd


def _predictor(by: _Bytes, tokens: int, cin: int, chans: int, layers: int, kernel: int, dropout: float):
    """(saved bytes without the shared input, FLOPs) of a variance predictor: conv -> ReLU -> layer norm ->
    dropout, `layers` times, then a linear to 1. ReLU keeps its output, layer norm its fp32 input (under
    autocast a separate fp32 copy), the next conv or the linear the dropout's output."""
    act = fwd = 0.0
    for i in range(layers):
        n = tokens * chans
        act += n * by.a + (n * 4 if by.auto else 0) + 2 * tokens * 4
        act += n * by.mask + by.inputs(1, n) if dropout > 0 else by.inputs(1, n)
        fwd += 2.0 * tokens * (cin if i == 0 else chans) * chans * kernel
    return act, fwd + 2.0 * tokens * chans


def _tts_variance(c, by: _Bytes, B: int, n: int, T: int, d: int) -> Block:
    """Duration, pitch and energy predictors and embeddings over the encoder output, then the length
    regulator (repeat_interleave keeps its int64 index per frame) and the decoder's input scaling/dropout."""
    blk = Block("variance", "variance predictors + length regulator")
    blk.act = by.inputs(3, B * n * d)           # the encoder output, read by the three predictors' first convs
    for layers, chans, kernel, p in ((c.duration_predictor_layers, c.duration_predictor_channels,
                                      c.duration_predictor_kernel_size, c.duration_predictor_dropout_rate),
                                     (c.pitch_predictor_layers, c.pitch_predictor_channels,
                                      c.pitch_predictor_kernel_size, c.pitch_predictor_dropout),
                                     (c.energy_predictor_layers, c.energy_predictor_channels,
                                      c.energy_predictor_kernel_size, c.energy_predictor_dropout)):
        a, f = _predictor(by, B * n, d, chans, layers, kernel, p)
        blk.act, blk.fwd = blk.act + a, blk.fwd + f
    blk.fwd += 2 * 2.0 * B * n * d              # pitch and energy embeddings (1 -> d convs)
    blk.act += B * T * 8                        # the regulator's index
    pos_p = c.decoder_config["positional_dropout_rate"]
    blk.act += B * T * d * by.mask + (2 * T - 1) * d * (by.mask + (0 if by.auto else 4)) if pos_p > 0 else 0
    blk.trans = 2 * B * T * d * 4
    return blk


def _tts_postnet(c, by: _Bytes, B: int, T: int, d: int) -> Block:
    """feat_out (d -> mels), the postnet's conv + batch norm (+ tanh) + dropout layers, and the loss: L1 of
    the masked frames before and after the postnet against the labels (three fp32 copies of the frames)."""
    blk = Block("postnet", "postnet + loss")
    M, mel, lo = B * T, c.num_mel_bins, by.a
    blk.act = by.inputs(1, M * d) + M * mel * lo  # feat_out input; its output, kept by the first conv
    n_layers, units = c.speech_decoder_postnet_layers, c.speech_decoder_postnet_units
    kernel, p = c.speech_decoder_postnet_kernel, c.speech_decoder_postnet_dropout
    cin = mel
    blk.fwd = 2.0 * M * d * mel
    for i in range(n_layers):
        last = i == n_layers - 1
        cout = mel if last else units
        blk.act += M * cout * lo                               # batch norm input
        blk.act += 0 if last else M * cout * lo                # tanh output
        blk.act += M * cout * by.mask if p > 0 else 0
        blk.act += 0 if last or p == 0 else M * cout * lo      # dropout output, the next conv's input
        blk.fwd += 2.0 * M * cin * cout * kernel
        cin = cout
    blk.act += 3 * M * mel * 4                                 # L1 inputs: before, after, labels (masked)
    blk.trans = 4 * M * mel * 4 + 2 * M * units * 4
    return blk


def _tts_blocks(info: ModelInfo, s: Setup) -> tuple[list, float]:
    c, by, B = info.config, _Bytes(s), s.batch_size
    d = c.hidden_size
    n, T = tts_shape(info, s)
    params = dict(trainable_by_block(info, replace(s, mode="full")))
    embed = Block("embed", "phoneme embedding")
    enc_p = c.encoder_config["positional_dropout_rate"]
    embed.act = B * n * 8 + (B * n * d * by.mask + (2 * n - 1) * d * (by.mask + (0 if by.auto else 4))
                             if enc_p > 0 else 0)
    embed.trans = B * n * d * 4
    blocks = [embed]
    for prefix, module, length in (("enc", c.encoder_config, n), ("dec", c.decoder_config, T)):
        if prefix == "dec":
            blocks.append(_tts_variance(c, by, B, n, T, d))
        for i in range(module["layers"]):
            act, trans, fwd = _conformer_layer(by, module, c, B, length)
            key = f"{prefix}{i}"
            if by.auto:
                act += 2 * params.get(key, 0)     # bf16 weight copies kept for the input gradient
            blocks.append(Block(key, f"{'encoder' if prefix == 'enc' else 'decoder'} layer {i}", act=act,
                                trans=trans, fwd=fwd, bwd=2 * fwd))
    blocks.append(_tts_postnet(c, by, B, T, d))
    for b in blocks:
        b.bwd = b.bwd or 2 * b.fwd              # everything trains (one mode: full)
    return blocks, 0.0       # the family's loss keeps only the loss of the model's output


def step_blocks(info: ModelInfo, s: Setup) -> tuple[list, float]:
    """Blocks of one micro-batch in forward order, with gradient bytes filled in; plus persistent bytes."""
    build = {"whisper": _whisper_blocks, "ctc": _ctc_blocks, "tts": _tts_blocks}[info.family]
    blocks, persistent = build(info, s)
    index = {b.key: b for b in blocks}
    for key, n in trainable_by_block(info, s).items():
        (index.get(key) or blocks[-1]).grad += n * 4
    return blocks, persistent


def memory(info: ModelInfo, s: Setup) -> dict:
    """Peak bytes of one training step, split into what is alive at that moment."""
    blocks, persistent = step_blocks(info, s)
    n_train = sum(trainable_by_block(info, s).values())
    n_adapters = n_train - sum(n for name, n, req in info.params
                               if req and not _frozen_by_mode(info.family, s.mode, name))
    # fp32 master weights, also under autocast; and buffers (FastSpeech2's position tables)
    weights = (info.total + max(n_adapters, 0) + info.buffers) * 4
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
