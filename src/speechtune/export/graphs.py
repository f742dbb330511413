"""The two ONNX graphs of a Whisper model as torch modules, for `torch.onnx.export` (export/onnx.py).

Imported only when exporting: it loads torch at import time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.whisper import encoder_stem


def attention_op():
    """`speechtune::attention(q, k, v, heads)`: attention over [batch, frames, d_model] projections, as a torch
    op of its own (eager: `scaled_dot_product_attention`) so that the exporter writes it as onnxruntime's fused
    MultiHeadAttention. The encoder's attention over 1500 frames took 100 of tiny.en's 165 ms a clip as
    MatMul/Softmax/MatMul with the [heads, 1500, 1500] scores in memory between them; fused, the encoder takes
    133-140 ms. (ONNX's own Attention op, opset 23, ran no faster than the unfused graph.)"""
    if hasattr(torch.ops.speechtune, "attention"):
        return torch.ops.speechtune.attention

    # the schema spelt out: this module's annotations are strings (`from __future__ import annotations`)
    @torch.library.custom_op("speechtune::attention", mutates_args=(),
                             schema="(Tensor q, Tensor k, Tensor v, int heads) -> Tensor")
    def attention(q, k, v, heads):
        b, t, d = q.shape
        split = lambda x: x.view(b, -1, heads, d // heads).transpose(1, 2)  # noqa: E731
        return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, t, d)

    @attention.register_fake
    def _(q, k, v, heads):
        return torch.empty_like(q)

    return torch.ops.speechtune.attention


def heads(attn, x):
    """[B, T, D] -> [B, H, T, Dh]"""
    return x.view(x.shape[0], x.shape[1], -1, attn.head_dim).transpose(1, 2)


def merge(attn, o, x):
    """[B, H, T, Dh] -> out_proj([B, T, D])"""
    return attn.out_proj(o.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class EncoderGraph(torch.nn.Module):
    """transformers' WhisperEncoder (eval mode, attention as one fused op) followed by every decoder layer's
    cross-attention key/value projections."""

    def __init__(self, model):
        super().__init__()
        self.encoder, self.decoder = model.model.encoder, model.model.decoder

    def forward(self, input_features):
        e, attention = self.encoder, attention_op()
        h = encoder_stem(e, input_features)
        for layer in e.layers:  # transformers' WhisperEncoderLayer in eval mode, the attention one op
            a, x = layer.self_attn, layer.self_attn_layer_norm(h)
            h = h + a.out_proj(attention(a.q_proj(x), a.k_proj(x), a.v_proj(x), a.num_heads))
            h = h + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(h))))
        h = e.layer_norm(h)
        out = []
        for a in (layer.encoder_attn for layer in self.decoder.layers):
            out += [heads(a, a.k_proj(h)).transpose(2, 3).contiguous(), heads(a, a.v_proj(h)).contiguous()]
        return tuple(out)  # per layer: keys [B, H, Dh, frames], values [B, H, frames, Dh]

class DecoderGraph(torch.nn.Module):
    """transformers' WhisperDecoder (eval mode) on precomputed cross-attention keys/values, with a
    self-attention cache. It reads the new tokens, the cross-attention keys/values and every layer's cached
    self-attention keys/values (past_k_i, past_v_i), and returns the logits of the last position and the
    cache grown by the new tokens. Slot 0 of the cache is a placeholder that no query attends to: the first
    call passes a cache of that one slot, so no graph input is ever empty. Tests compare it with the HF
    model."""

    def __init__(self, model, untie: bool = False):
        super().__init__()
        self.decoder, self.proj_out, self.untie = model.model.decoder, model.proj_out, untie
        if untie:
            self.logits_weight = torch.nn.Parameter(model.proj_out.weight.detach().t().contiguous(),
                                                    requires_grad=False)

    def forward(self, input_ids, *memory):
        d = self.decoder
        cross, cache = memory[:2 * len(d.layers)], memory[2 * len(d.layers):]
        past, new = cache[0].shape[2], input_ids.shape[1]  # past counts the placeholder
        h = d.embed_tokens(input_ids) + d.embed_positions.weight[past - 1:past - 1 + new]
        # new token i sits in slot past + i and sees slots 1 .. past + i
        slots = torch.arange(past + new)
        visible = (slots >= 1) & (slots <= past + torch.arange(new)[:, None])
        grown = []
        for i, layer in enumerate(d.layers):
            a = layer.self_attn
            x = layer.self_attn_layer_norm(h)
            k = torch.cat([cache[2 * i], heads(a, a.k_proj(x))], dim=2)
            v = torch.cat([cache[2 * i + 1], heads(a, a.v_proj(x))], dim=2)
            grown += [k, v]
            # as transformers' WhisperAttention: q scaled before the product, no scaling inside it
            q = heads(a, a.q_proj(x) * a.scaling)
            h = h + merge(a, F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=1.0), x)
            a = layer.encoder_attn
            x = layer.encoder_attn_layer_norm(h)
            q = heads(a, a.q_proj(x) * a.scaling)
            h = h + merge(a, torch.softmax(q @ cross[2 * i], dim=-1) @ cross[2 * i + 1], x)
            h = h + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(h))))
        h = d.layer_norm(h[:, -1:])
        logits = (h @ self.logits_weight)[:, 0] if self.untie else self.proj_out(h)[:, 0]
        return (logits, *grown)

    def empty_cache(self, batch: int) -> list:
        a = self.decoder.layers[0].self_attn
        return [torch.zeros(batch, a.num_heads, 1, a.head_dim)] * (2 * len(self.decoder.layers))


def graph_modules(model, untie: bool = False):
    """The two graphs as torch modules. The encoder also projects its output into every decoder layer's
    cross-attention keys (stored transposed) and values, once per clip; the decoder reads them instead of the
    encoder output, so a decoding step neither redoes those projections over 1500 frames nor moves them
    around (one input per tensor: onnxruntime copies whatever a graph splits or transposes, at every step)."""
    return EncoderGraph(model).eval(), DecoderGraph(model, untie).eval()
