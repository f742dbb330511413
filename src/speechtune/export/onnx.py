"""ONNX export of Whisper's encoder and decoder with `torch.onnx.export(dynamo=True)`, for onnxruntime.

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

The graphs are decoded by `speechtune.runtimes.onnx.OnnxRuntime`.
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from ..errors import SpeechtuneError

QUANTIZATIONS = ("float32", "int8")
COPY = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "preprocessor_config.json", "processor_config.json", "special_tokens_map.json", "added_tokens.json",
        "vocab.json", "merges.txt", "normalizer.json")


@contextlib.contextmanager
def _attention_onnx():
    """The exporter's translation of `speechtune::attention`, for the length of an export."""
    import onnx
    import onnxscript
    from onnx.defs import OpSchema

    from .graphs import attention_op

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
        yield {attention_op().default: attention}
    finally:
        if ours:
            onnx.defs.deregister_schema("MultiHeadAttention", 1, "com.microsoft")


def export_onnx(model_dir: str | Path, out: str | Path, quantization: str = "float32") -> None:
    """Write encoder.onnx, decoder.onnx and the tokenizer/feature/generation files into `out` (new)."""
    import io
    import logging
    import warnings

    import torch

    from ..models import load_model
    from .graphs import graph_modules

    if quantization not in QUANTIZATIONS:
        raise SpeechtuneError(f"unknown ONNX quantization '{quantization}'", f"use one of {', '.join(QUANTIZATIONS)}")
    model_dir, out = Path(model_dir), Path(out)
    out.mkdir(parents=True)
    whisper = load_model(model_dir, device="cpu", dtype=torch.float32)
    cfg = whisper.model.config
    encoder, decoder = graph_modules(whisper.model, untie=quantization == "int8")
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
        _quantize_int8(out)
    for name in COPY:
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, out / name)


def _quantize_int8(out: Path) -> None:
    """Replace encoder.onnx and decoder.onnx in `out` by their dynamically quantized int8 versions."""
    for name in ("encoder", "decoder"):
        # the convolutions stay fp32: onnxruntime's ConvInteger took 36 ms of the encoder's 197 (batch 1),
        # its fp32 Conv 11 ms; the other op types it would quantize (Transpose, ...) only add copies
        quantize_int8(out / f"{name}.onnx", ("MatMul", "Gather"))


def quantize_int8(path: Path, op_types: tuple[str, ...], nodes: list[str] | None = None) -> None:
    """Replace the graph at `path` (and any external-data file beside it) by onnxruntime's dynamic int8
    quantization of its `op_types` (only the `nodes` named, when given), with one scale per output channel:
    per-tensor scales cost tiny.en 1 pt of WER on real English (5.78% against fp32's 4.82%, failing the
    parity check); per channel kept it within 0.2 pt. Every ONNX export's int8 goes through here."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic
    tmp = path.with_name(f"{path.stem}.int8.onnx")
    logging.disable(logging.WARNING)  # its advice to pre-process models goes to the root logger
    try:
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=list(op_types), **({"nodes_to_quantize": nodes} if nodes else {}))
    finally:
        logging.disable(logging.NOTSET)
    for f in path.parent.glob(f"{path.name}*"):  # the float graph and any external-data file beside it
        f.unlink()
    tmp.rename(path)
