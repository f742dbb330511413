"""openai-whisper checkpoints (`*.pt` with `dims` and `model_state_dict`) -> HF Whisper weights.

The names follow openai/whisper's model.py; the mapping is the one transformers' own conversion script uses.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SpeechtuneError

# openai-whisper parameter names inside a residual block -> HF's (under model.<side>.layers.<i>.)
IN_BLOCK = {
    "attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj", "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj", "attn_ln": "self_attn_layer_norm",
    "cross_attn.query": "encoder_attn.q_proj", "cross_attn.key": "encoder_attn.k_proj",
    "cross_attn.value": "encoder_attn.v_proj", "cross_attn.out": "encoder_attn.out_proj",
    "cross_attn_ln": "encoder_attn_layer_norm",
    "mlp.0": "fc1", "mlp.2": "fc2", "mlp_ln": "final_layer_norm",
}
# openai-whisper parameter names outside the blocks -> HF's
TOP_LEVEL = {
    "encoder.positional_embedding": "model.encoder.embed_positions.weight",
    "decoder.positional_embedding": "model.decoder.embed_positions.weight",
    "decoder.token_embedding.weight": "model.decoder.embed_tokens.weight",
    "encoder.ln_post.weight": "model.encoder.layer_norm.weight",
    "encoder.ln_post.bias": "model.encoder.layer_norm.bias",
    "decoder.ln.weight": "model.decoder.layer_norm.weight",
    "decoder.ln.bias": "model.decoder.layer_norm.bias",
}


def load_checkpoint(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    import torch
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise SpeechtuneError(f"{path}: cannot read as a PyTorch checkpoint ({str(e)[:200]})",
                              "pass an openai-whisper .pt file (with 'dims' and 'model_state_dict')") from None
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise SpeechtuneError(f"{path}: not an openai-whisper checkpoint (no 'dims'/'model_state_dict')",
                              "for a Hugging Face model pass its folder; for CTranslate2 pass the folder with model.bin")
    return ckpt["dims"], {k: v.float().numpy() for k, v in ckpt["model_state_dict"].items()}


def hf_dims(dims: dict) -> dict:
    return {
        "vocab_size": dims["n_vocab"], "num_mel_bins": dims["n_mels"], "d_model": dims["n_audio_state"],
        "encoder_layers": dims["n_audio_layer"], "decoder_layers": dims["n_text_layer"],
        "encoder_attention_heads": dims["n_audio_head"], "decoder_attention_heads": dims["n_text_head"],
        "encoder_ffn_dim": 4 * dims["n_audio_state"], "decoder_ffn_dim": 4 * dims["n_text_state"],
        "max_source_positions": dims["n_audio_ctx"], "max_target_positions": dims["n_text_ctx"],
    }


def to_hf_state_dict(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in sd.items():
        if key in TOP_LEVEL:
            out[TOP_LEVEL[key]] = value
            continue
        parts = key.split(".")
        if parts[1] == "blocks":  # encoder.blocks.3.attn.query.weight
            side, idx, rest, leaf = parts[0], parts[2], ".".join(parts[3:-1]), parts[-1]
            if rest not in IN_BLOCK:
                raise SpeechtuneError(f"openai checkpoint: unexpected tensor {key}")
            out[f"model.{side}.layers.{idx}.{IN_BLOCK[rest]}.{leaf}"] = value
        elif parts[1] in ("conv1", "conv2"):
            out[f"model.{key}"] = value
        elif key == "alignment_heads":
            continue
        else:
            raise SpeechtuneError(f"openai checkpoint: unexpected tensor {key}")
    return out
