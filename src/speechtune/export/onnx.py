"""ONNX export of Whisper's encoder and decoder with `torch.onnx.export(dynamo=True)`, and a greedy decoder
for onnxruntime.

The exporter is PyTorch's own (torch.export + onnxscript), which handles transformers 5 models as they are;
optimum's ONNX exporter is not used because it lags transformers' major versions. Two graphs:

    encoder.onnx  input_features [batch, n_mels, 3000] -> per decoder layer i: cross_k_i [batch, heads,
                  head_dim, 1500] (keys, transposed) and cross_v_i [batch, heads, 1500, head_dim]
    decoder.onnx  input_ids [batch, new tokens], cross_k_0, cross_v_0, ..., past_k_0, past_v_0, ... [batch,
                  heads, slots, head_dim] -> logits [batch, vocab] (last position), present_k_0, present_v_0, ...
                  (the past grown by the new tokens)

The encoder's self-attention is onnxruntime's MultiHeadAttention (a contrib op, domain com.microsoft), so the
graphs are for onnxruntime, the runtime `OnnxWhisper` uses. The encoder graph ends with every decoder layer's
cross-attention key/value projections of its output: computed once per clip, where a decoder reading the
encoder output would redo them over 1500 frames at every step. The decoder keeps a self-attention cache whose
slot 0 is a placeholder no query attends to, so the first call (the whole prefix, past of that one slot)
and the later ones (one token) run the same graph and no input is ever empty. Without the cache, every
step re-ran the whole prefix through every layer, cross-attention over 1500 frames included: a batch-8 step
of tiny.en int8 took 8 ms at 1 token, 27 ms at 20 and 42 ms at 40.

`--quantization int8` applies onnxruntime's dynamic quantization: int8 weights of the MatMuls with one scale
per output channel, activations quantized on the fly, and an int8 token-embedding table (rows dequantized after
the lookup). The convolutions stay fp32. The logits projection gets its own int8 copy of the (tied) embedding,
stored transposed: sharing one table made the decoder dequantize all of it, 51865 x d_model floats, at every
step (8 of the 13 ms a tiny.en step took).

Greedy decoding, as `OnnxWhisper.transcribe_batch` does it (the same rules HF `generate` applies with one
beam, so on the same weights both give the same tokens):

    1. features = WhisperFeatureExtractor(wav) padded to 30 s;  kv = encoder(features)  (all its outputs)
    2. tokens = <|startoftranscript|> [<|lang|> <|transcribe|>] <|notimestamps|>   (language detected from
       the first decoder step's logits over language tokens when not given, multilingual models only)
    3. repeat: logits, cache = decoder(the tokens not yet in the cache, *kv, *cache);
       logits[suppress_tokens] = -inf; on the first step also logits[begin_suppress_tokens] = -inf;
       next = argmax; a sequence that produced <|endoftext|> leaves the batch (HF keeps it, padded: the same
       tokens); stop when all have ended, the length reaches max_target_positions (448), or after
       `speechtune.transcribe.max_new_tokens(seconds)` new tokens (the cap HF decoding uses here too).
    4. text = tokenizer.decode(generated, skip_special_tokens=True)
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import SpeechtuneError

QUANTIZATIONS = ("float32", "int8")
COPY = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "preprocessor_config.json", "processor_config.json", "special_tokens_map.json", "added_tokens.json",
        "vocab.json", "merges.txt", "normalizer.json")
WINDOW = 30 * 16000


def _attention():
    """`speechtune::attention(q, k, v, heads)`: attention over [batch, frames, d_model] projections, as a torch
    op of its own (eager: `scaled_dot_product_attention`) so that the exporter writes it as onnxruntime's fused
    MultiHeadAttention. The encoder's attention over 1500 frames took 100 of tiny.en's 165 ms a clip as
    MatMul/Softmax/MatMul with the [heads, 1500, 1500] scores in memory between them; fused, the encoder takes
    133-140 ms. (ONNX's own Attention op, opset 23, ran no faster than the unfused graph.)"""
    import torch
    import torch.nn.functional as F

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


@contextlib.contextmanager
def _attention_onnx():
    """The exporter's translation of `speechtune::attention`, for the length of an export."""
    import onnx
    import onnxscript
    from onnx.defs import OpSchema

    # onnxscript builds nodes from onnx's schema registry, which holds no onnxruntime contrib op: the part of
    # MultiHeadAttention's schema used here (scale defaults to 1/sqrt(head_dim), as in Whisper), registered
    # for the export only, so that onnx's checker in the same process is left as it was
    ours = not onnx.defs.has("MultiHeadAttention", "com.microsoft")
    if ours:
        arg = OpSchema.FormalParameter
        onnx.defs.register_schema(OpSchema(
            "MultiHeadAttention", "com.microsoft", 1, inputs=[arg("query", "T"), arg("key", "T"), arg("value", "T")],
            outputs=[arg("output", "T")], type_constraints=[("T", ["tensor(float)"], "")],
            attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "")]))
    msft = onnxscript.values.Opset("com.microsoft", 1)

    def attention(q, k, v, heads: int):
        return msft.MultiHeadAttention(q, k, v, num_heads=heads)

    try:
        yield {_attention().default: attention}
    finally:
        if ours:
            onnx.defs.deregister_schema("MultiHeadAttention", 1, "com.microsoft")


def _modules(model, untie: bool = False):
    """The two graphs as torch modules. The encoder also projects its output into every decoder layer's
    cross-attention keys (stored transposed) and values, once per clip; the decoder reads them instead of the
    encoder output, so a decoding step neither redoes those projections over 1500 frames nor moves them
    around (one input per tensor: onnxruntime copies whatever a graph splits or transposes, at every step)."""
    import torch
    import torch.nn.functional as F

    from ..models.whisper import encoder_stem

    decoder, proj_out = model.model.decoder, model.proj_out

    def heads(attn, x):  # [B, T, D] -> [B, H, T, Dh]
        return x.view(x.shape[0], x.shape[1], -1, attn.head_dim).transpose(1, 2)

    def merge(attn, o, x):  # [B, H, T, Dh] -> out_proj([B, T, D])
        return attn.out_proj(o.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = model.model.encoder, decoder

        def forward(self, input_features):
            e, attention = self.encoder, _attention()
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

    class Decoder(torch.nn.Module):
        """transformers' WhisperDecoder (eval mode) on precomputed cross-attention keys/values, with a
        self-attention cache. It reads the new tokens, the cross-attention keys/values and every layer's cached
        self-attention keys/values (past_k_i, past_v_i), and returns the logits of the last position and the
        cache grown by the new tokens. Slot 0 of the cache is a placeholder that no query attends to: the first
        call passes a cache of that one slot, so no graph input is ever empty. Tests compare it with the HF
        model."""

        def __init__(self):
            super().__init__()
            self.decoder, self.proj_out = decoder, proj_out
            if untie:
                self.logits_weight = torch.nn.Parameter(proj_out.weight.detach().t().contiguous(), requires_grad=False)

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
            logits = (h @ self.logits_weight)[:, 0] if untie else self.proj_out(h)[:, 0]
            return (logits, *grown)

        def empty_cache(self, batch: int) -> list:
            a = self.decoder.layers[0].self_attn
            return [torch.zeros(batch, a.num_heads, 1, a.head_dim)] * (2 * len(self.decoder.layers))

    return Encoder().eval(), Decoder().eval()


def export_onnx(model_dir: str | Path, out: str | Path, quantization: str = "float32") -> None:
    """Write encoder.onnx, decoder.onnx and the tokenizer/feature/generation files into `out` (new)."""
    import io
    import logging
    import warnings

    import torch

    from ..models import load_model

    if quantization not in QUANTIZATIONS:
        raise SpeechtuneError(f"unknown ONNX quantization '{quantization}'", f"use one of {', '.join(QUANTIZATIONS)}")
    model_dir, out = Path(model_dir), Path(out)
    out.mkdir(parents=True)
    whisper = load_model(model_dir, device="cpu", dtype=torch.float32)
    cfg = whisper.model.config
    encoder, decoder = _modules(whisper.model, untie=quantization == "int8")
    features = torch.zeros(1, cfg.num_mel_bins, 2 * cfg.max_source_positions)
    batch = torch.export.Dim("batch", min=1, max=256)
    tokens = torch.export.Dim("tokens", min=1, max=cfg.max_target_positions)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    # torch.export's own deprecation and axis-naming warnings are about its internals, nothing a user can act on
    with torch.inference_mode(False), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings(), _attention_onnx() as translations:
        warnings.simplefilter("ignore", (FutureWarning, UserWarning))
        cross = encoder(features)
        names = [f"cross_{kv}_{i}" for i in range(len(cross) // 2) for kv in "kv"]
        torch.onnx.export(encoder, (features,), str(out / "encoder.onnx"), dynamo=True, verbose=False,
                          input_names=["input_features"], output_names=names,
                          dynamic_shapes={"input_features": {0: batch}}, custom_translation_table=translations)
        ids = torch.tensor([[whisper.model.generation_config.decoder_start_token_id] * 2])
        # an example cache of 3 slots, not the first call's 1: torch.export fixes any dimension it sees as 1
        cache = [torch.cat([c] * 3, dim=2) for c in decoder.empty_cache(1)]
        past = torch.export.Dim("past", min=1, max=cfg.max_target_positions)
        cached = [f"{kv}_{i}" for i in range(len(cache) // 2) for kv in "kv"]
        torch.onnx.export(decoder, (ids, *cross, *cache), str(out / "decoder.onnx"), dynamo=True, verbose=False,
                          input_names=["input_ids", *names, *(f"past_{n}" for n in cached)],
                          output_names=["logits", *(f"present_{n}" for n in cached)],
                          dynamic_shapes=({0: batch, 1: tokens},  # *memory: one tuple
                                          ({0: batch},) * len(cross) + ({0: batch, 2: past},) * len(cache)))
    if quantization == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic
        for name in ("encoder", "decoder"):
            src = out / f"{name}.onnx"
            tmp = out / f"{name}.int8.onnx"
            # one scale per output channel: per-tensor scales cost tiny.en 1 pt of WER on real English
            # (5.78% against fp32's 4.82%, failing the parity check); per channel kept it within 0.2 pt
            logging.disable(logging.WARNING)  # its advice to pre-process models goes to the root logger
            try:
                # the convolutions stay fp32: onnxruntime's ConvInteger took 36 ms of the encoder's 197 (batch 1),
                # its fp32 Conv 11 ms; the other op types it would quantize (Transpose, ...) only add copies
                quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                                 op_types_to_quantize=["MatMul", "Gather"])
            finally:
                logging.disable(logging.NOTSET)
            for f in out.glob(f"{name}.onnx*"):  # the float graph and any external-data file beside it
                f.unlink()
            tmp.rename(src)
    for name in COPY:
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, out / name)


class OnnxWhisper:
    """An ONNX export run with onnxruntime (CPU), greedy decoding as in the module docstring."""

    def __init__(self, folder: str | Path, threads: int = 0):
        import onnxruntime as ort
        from transformers import GenerationConfig, WhisperFeatureExtractor, WhisperTokenizer

        self.path = Path(folder)
        for name in ("encoder.onnx", "decoder.onnx", "generation_config.json", "tokenizer.json"):
            if not (self.path / name).is_file():
                raise SpeechtuneError(f"{folder}: not an ONNX Whisper export (no {name})",
                                      "export with `speechtune export MODEL --format onnx --out DIR`")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        # idle onnxruntime threads otherwise spin between runs, taking the cores from the Python work between
        # them (features, the greedy loop): 17% of the wall time on tiny.en at batch 1 (docs/benchmarks.md)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.encoder = ort.InferenceSession(str(self.path / "encoder.onnx"), opts, providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(self.path / "decoder.onnx"), opts, providers=["CPUExecutionProvider"])
        # what the encoder hands the decoder, in order: cross_k_0, cross_v_0, ...; older exports pass one tensor
        # (encoder_hidden_states, or cross_kv)
        self.memory = [i.name for i in self.decoder.get_inputs()[1:] if not i.name.startswith("past_")]
        # the decoder's self-attention cache inputs; none in exports made before it had one
        self.past = [i for i in self.decoder.get_inputs() if i.name.startswith("past_")]
        self.gen = GenerationConfig.from_pretrained(self.path)
        self.features = WhisperFeatureExtractor.from_pretrained(self.path)
        self.tokenizer = WhisperTokenizer.from_pretrained(self.path)
        self.multilingual = bool(getattr(self.gen, "is_multilingual", False))
        self.max_length = json.loads((self.path / "config.json").read_text()).get("max_target_positions", 448)

    def encode(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        """What the decoder reads, each array batch first: every layer's cross-attention keys and values (the
        encoder output itself in exports made before the encoder graph computed those)."""
        feats = self.features(wavs, sampling_rate=16000, return_tensors="np").input_features.astype(np.float32)
        # one clip per run: the attention scores of a batch of 8 (432 MB a layer for tiny.en) outgrow the caches,
        # and a clip took 208 ms in a batch of 8 against 165 ms alone (no gain at 2 or 4 either)
        runs = [self.encoder.run(None, {"input_features": feats[i:i + 1]}) for i in range(len(feats))]
        return [np.concatenate(parts) for parts in zip(*runs)]

    def step(self, ids: np.ndarray, memory: list[np.ndarray], cache: list[np.ndarray] | None = None):
        """Logits after each row of `ids` [batch, tokens], and the self-attention cache to pass with the same rows
        next time; only the tokens the cache lacks are fed (all of them when it is None)."""
        feed = dict(zip(self.memory, memory))
        if not self.past:  # exports made before the cache re-read the whole prefix at every step
            out = self.decoder.run(None, {"input_ids": ids.astype(np.int64), **feed})[0]
            return (out if out.ndim == 2 else out[:, -1]), None  # older still: every position's logits
        if cache is None:  # one placeholder slot (see the module docstring)
            cache = [np.zeros((len(ids), p.shape[1], 1, p.shape[3]), dtype=np.float32) for p in self.past]
        feed.update(zip((p.name for p in self.past), cache))
        logits, *cache = self.decoder.run(None, {"input_ids": ids[:, cache[0].shape[2] - 1:].astype(np.int64), **feed})
        return logits, cache

    def detect_language(self, hidden: list[np.ndarray]) -> list[str]:
        lang_ids = np.array(sorted(self.gen.lang_to_id.values()))
        first = np.full((len(hidden[0]), 1), self.gen.decoder_start_token_id)
        best = lang_ids[self.step(first, hidden)[0][:, lang_ids].argmax(-1)]
        names = {v: k[2:-2] for k, v in self.gen.lang_to_id.items()}
        return [names[int(i)] for i in best]

    def generate(self, hidden: list[np.ndarray], prefixes: list[list[int]], max_new_tokens: int | None = None) -> list[list[int]]:
        """Greedy tokens after each prefix (prefixes of equal length), without the prefix and the final EOT."""
        eot = self.gen.eos_token_id
        suppress = np.array(self.gen.suppress_tokens or [], dtype=np.int64)
        begin = np.array(self.gen.begin_suppress_tokens or [], dtype=np.int64)
        ids = np.array(prefixes, dtype=np.int64)
        start = ids.shape[1]
        limit = self.max_length if max_new_tokens is None else min(self.max_length, start + max_new_tokens)
        rows = np.arange(len(ids))  # the caller's row of each sequence still decoding
        out: list[list[int]] = [[] for _ in prefixes]
        cache = None
        while len(rows) and ids.shape[1] < limit:
            logits, cache = self.step(ids, hidden, cache)
            logits[:, suppress] = -np.inf
            if ids.shape[1] == start:
                logits[:, begin] = -np.inf
            ids = np.concatenate([ids, logits.argmax(-1)[:, None]], axis=1)
            live = ids[:, -1] != eot
            if not live.all():
                # finished sequences leave the batch: every step reads each row's cross-attention keys and
                # values (18 MB a clip for tiny.en), the bulk of a step's time at batch 8
                for r, seq in zip(rows[~live], ids[~live]):
                    out[r] = seq[start:-1].tolist()
                rows, ids, hidden = rows[live], ids[live], [m[live] for m in hidden]
                cache = None if cache is None else [c[live] for c in cache]
        for r, seq in zip(rows, ids):
            out[r] = seq[start:].tolist()
        return out

    def prefix(self, language: str | None) -> list[int]:
        from ..models.whisper import prefix_ids
        return prefix_ids(self.gen, language if self.multilingual else None)

    def transcribe_batch(self, wavs: list[np.ndarray], language: str | None = None,
                         max_new_tokens: int | None = None, **_) -> list[dict]:
        """Greedy texts of clips <= 30 s: [{text, language, tokens}]."""
        from ..transcribe import max_new_tokens as cap
        max_new_tokens = max_new_tokens or cap(max(len(w) for w in wavs) / 16000)  # as speechtune.transcribe
        hidden = self.encode(wavs)
        langs = [language] * len(wavs)
        if self.multilingual and language is None:
            langs = self.detect_language(hidden)
        results: list[dict] = [{}] * len(wavs)
        for lang in dict.fromkeys(langs):  # one prefix length per group keeps the batch rectangular
            idx = [i for i, x in enumerate(langs) if x == lang]
            tokens = self.generate([m[idx] for m in hidden], [self.prefix(lang)] * len(idx), max_new_tokens)
            for i, t in zip(idx, tokens):
                results[i] = {"text": self.tokenizer.decode(t, skip_special_tokens=True).strip(),
                              "language": lang if self.multilingual else "en", "tokens": t}
        return results

    def transcribe(self, wav: np.ndarray, language: str | None = None, **_) -> dict:
        """Any length, in consecutive 30 s windows (no timestamp-guided seeking: words at a cut may split)."""
        parts = [wav[i:i + WINDOW] for i in range(0, len(wav), WINDOW)]
        results = self.transcribe_batch(parts, language)
        return {"text": " ".join(r["text"] for r in results if r["text"]),
                "language": results[0]["language"] if results else language}
