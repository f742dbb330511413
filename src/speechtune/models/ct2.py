"""Read a CTranslate2 Whisper folder and turn it into Hugging Face Whisper weights, exactly.

The model.bin layout (ctranslate2/specs/model_spec.py `_serialize`, binary version 6), little-endian:

    u32 version | str spec_name | u32 revision | u32 n_variables
    n_variables x ( str name | u8 ndim | u32 dim[ndim] | u8 dtype | u32 nbytes | bytes )
    u32 n_aliases | n_aliases x ( str alias | str target )

where `str` is u16 length (including a trailing NUL) then the UTF-8 bytes and the NUL, and dtype indexes
(float32, int8, int16, int32, float16, bfloat16). Scalars (ndim 0) hold spec options such as num_heads.

CT2 fuses Whisper's attention projections: self-attention `linear_0` is [q; k; v] (k's bias is stored as
zeros because Whisper's k_proj has none) and cross-attention `linear_1` is [k; v]. Splitting them back
and casting fp16 -> fp32 loses nothing, which tests/test_models.py checks tensor by tensor. int8 (and int16)
weights are dequantized with their stored scales: close to the original, not equal (a runtime should run
such a folder as it is, as `runtimes.load_runtime` does; this path is for training from one).
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..errors import SpeechtuneError

_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


def read_model_bin(path: str | Path) -> dict[str, np.ndarray]:
    """All variables of a CT2 model.bin as numpy arrays (bfloat16 comes back as float32), aliases resolved."""
    path = Path(path)
    buf = memoryview(path.read_bytes())
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def string():
        nonlocal pos
        n = take("H")
        s = bytes(buf[pos:pos + n - 1]).decode("utf-8")
        pos += n
        return s

    try:
        version = take("I")
        if version < 5 or version > 6:
            raise SpeechtuneError(f"{path}: CTranslate2 binary version {version} is not supported (5-6 are)")
        spec = string()
        take("I")  # spec revision
        out: dict[str, np.ndarray] = {}
        for _ in range(take("I")):
            name = string()
            ndim = take("B")
            shape = [take("I") for _ in range(ndim)] if ndim else []
            dtype = _DTYPES[take("B")]
            nbytes = take("I")
            raw = buf[pos:pos + nbytes]
            pos += nbytes
            if dtype == "bfloat16":
                arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(raw, dtype=dtype)
            out[name] = arr.reshape(shape)
        for _ in range(take("I")):
            alias, target = string(), string()
            out[alias] = out[target]
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise SpeechtuneError(f"{path}: truncated or corrupt CTranslate2 model.bin ({e})",
                              "re-download or re-convert the model") from None
    if spec != "WhisperSpec":
        raise SpeechtuneError(f"{path}: a CTranslate2 {spec} model, not Whisper",
                              "speechtune converts CTranslate2 Whisper models only")
    out["_spec"] = np.array(spec)
    return dequantize(out)


def dequantize(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """int8/int16 weights (exports made with --quantization int8*, int16) back to float32, with the scale
    CTranslate2 stored beside each one (`<name>_scale`): it quantized as round(w * scale), one scale per
    output row for int8, one for the whole tensor for int16, so w = q / scale up to rounding."""
    for name in [n for n in v if n.endswith("_scale") and n[:-len("_scale")] in v]:
        q, scale = v[name[:-len("_scale")]], v.pop(name).astype(np.float32)
        if q.dtype.kind != "i":
            continue
        rows = q.reshape(q.shape[0], -1).astype(np.float32) if q.ndim > 1 else q.astype(np.float32)[None]
        rows = rows / (scale.reshape(-1, 1) if scale.ndim else scale)
        v[name[:-len("_scale")]] = rows.reshape(q.shape)
    return v


def _layers(v: dict, prefix: str) -> int:
    n = 0
    while f"{prefix}/layer_{n}/ffn/linear_0/weight" in v:
        n += 1
    return n


def whisper_dims(v: dict) -> dict:
    """The architecture, read off the tensors' shapes and the scalar spec options."""
    vocab, d_model = v["decoder/embeddings/weight"].shape
    return {
        "vocab_size": int(vocab),
        "num_mel_bins": int(v["encoder/conv1/weight"].shape[1]),
        "d_model": int(d_model),
        "encoder_layers": _layers(v, "encoder"),
        "decoder_layers": _layers(v, "decoder"),
        "encoder_attention_heads": int(v["encoder/num_heads"]),
        "decoder_attention_heads": int(v["decoder/num_heads"]),
        "encoder_ffn_dim": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(v["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(v["decoder/position_encodings/encodings"].shape[0]),
    }


def _linear(sd, v, src, dst, bias=True):
    sd[f"{dst}.weight"] = v[f"{src}/weight"]
    if bias:
        sd[f"{dst}.bias"] = v[f"{src}/bias"]


def _norm(sd, v, src, dst):
    sd[f"{dst}.weight"] = v[f"{src}/gamma"]
    sd[f"{dst}.bias"] = v[f"{src}/beta"]


def _split_qkv(sd, v, src, dst, d):
    w, b = v[f"{src}/weight"], v[f"{src}/bias"]
    sd[f"{dst}.q_proj.weight"], sd[f"{dst}.k_proj.weight"], sd[f"{dst}.v_proj.weight"] = w[:d], w[d:2 * d], w[2 * d:]
    sd[f"{dst}.q_proj.bias"], sd[f"{dst}.v_proj.bias"] = b[:d], b[2 * d:]


def _self_attention_and_ffn(sd, v, s: str, t: str, d: int) -> None:
    """The parts encoder and decoder layers share: self-attention (fused qkv), its norm, the FFN."""
    _split_qkv(sd, v, f"{s}/self_attention/linear_0", f"{t}.self_attn", d)
    _linear(sd, v, f"{s}/self_attention/linear_1", f"{t}.self_attn.out_proj")
    _norm(sd, v, f"{s}/self_attention/layer_norm", f"{t}.self_attn_layer_norm")
    _linear(sd, v, f"{s}/ffn/linear_0", f"{t}.fc1")
    _linear(sd, v, f"{s}/ffn/linear_1", f"{t}.fc2")
    _norm(sd, v, f"{s}/ffn/layer_norm", f"{t}.final_layer_norm")


def to_hf_state_dict(v: dict) -> dict[str, np.ndarray]:
    """HF WhisperForConditionalGeneration state dict (numpy, source dtype) from CT2 variables."""
    d = whisper_dims(v)["d_model"]
    sd: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        _linear(sd, v, f"encoder/{conv}", f"model.encoder.{conv}")
    sd["model.encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    for i in range(_layers(v, "encoder")):
        _self_attention_and_ffn(sd, v, f"encoder/layer_{i}", f"model.encoder.layers.{i}", d)
    _norm(sd, v, "encoder/layer_norm", "model.encoder.layer_norm")

    sd["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    sd["model.decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    for i in range(_layers(v, "decoder")):
        s, t = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _self_attention_and_ffn(sd, v, s, t, d)
        _linear(sd, v, f"{s}/attention/linear_0", f"{t}.encoder_attn.q_proj")
        kv_w, kv_b = v[f"{s}/attention/linear_1/weight"], v[f"{s}/attention/linear_1/bias"]
        sd[f"{t}.encoder_attn.k_proj.weight"], sd[f"{t}.encoder_attn.v_proj.weight"] = kv_w[:d], kv_w[d:]
        sd[f"{t}.encoder_attn.v_proj.bias"] = kv_b[d:]
        _linear(sd, v, f"{s}/attention/linear_2", f"{t}.encoder_attn.out_proj")
        _norm(sd, v, f"{s}/attention/layer_norm", f"{t}.encoder_attn_layer_norm")
    _norm(sd, v, "decoder/layer_norm", "model.decoder.layer_norm")
    # proj_out is tied to embed_tokens in HF; CT2 stores it as an alias of the same tensor.
    return sd
