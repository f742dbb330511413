"""Model architectures by name and a GPU catalog, so estimates work without downloading any weights.

Each architecture is the subset of its Hugging Face config.json that changes the module tree; the rest is the
transformers class default. `build_meta(name)` makes the real module on the meta device (no memory, no
weights), so parameter counts come from the module tree itself, not from a formula of our own.

GPU prices are on-demand list prices per GPU-hour seen at common clouds in 2025 (edit `GPUS` or pass
`--price NAME=USD`); peak FLOP/s are the vendor's dense (non-sparse) tensor-core figures with fp32 accumulate.
"""
from __future__ import annotations

from dataclasses import dataclass

# Whisper sizes: openai/whisper-* config.json. `.en` models have one token fewer than the multilingual ones;
# large-v3 added a language token (51866) and 128 mel bins.
_WHISPER = {
    "tiny": dict(d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
                 decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536, vocab_size=51865),
    "base": dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                 decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, vocab_size=51865),
    "small": dict(d_model=768, encoder_layers=12, decoder_layers=12, encoder_attention_heads=12,
                  decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, vocab_size=51865),
    "medium": dict(d_model=1024, encoder_layers=24, decoder_layers=24, encoder_attention_heads=16,
                   decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, vocab_size=51865),
    "large-v3": dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                     decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, vocab_size=51866,
                     num_mel_bins=128),
    "large-v3-turbo": dict(d_model=1280, encoder_layers=32, decoder_layers=4, encoder_attention_heads=20,
                           decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120,
                           vocab_size=51866, num_mel_bins=128),
}
for _size in ("tiny", "base", "small", "medium"):
    _WHISPER[f"{_size}.en"] = dict(_WHISPER[_size], vocab_size=51864)

# CTC encoders, fine-tuned with a 32-character head (the LibriSpeech vocabulary). Base models use a group-norm
# conv front end and post-LN transformer; large ones layer norm everywhere ("stable layer norm").
_CTC_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 feat_extract_norm="group", conv_bias=False, do_stable_layer_norm=False, vocab_size=32)
_CTC_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True, vocab_size=32)


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str          # "whisper" or "ctc"
    model_type: str      # transformers model_type: whisper, wav2vec2, hubert
    config: dict
    source: str          # the hub id whose config this mirrors


ARCHITECTURES: dict[str, Architecture] = {
    **{name: Architecture(name, "whisper", "whisper", cfg, f"openai/whisper-{name}") for name, cfg in _WHISPER.items()},
    "wav2vec2-base": Architecture("wav2vec2-base", "ctc", "wav2vec2", _CTC_BASE, "facebook/wav2vec2-base-960h"),
    "wav2vec2-large": Architecture("wav2vec2-large", "ctc", "wav2vec2", _CTC_LARGE,
                                   "facebook/wav2vec2-large-960h-lv60-self"),
    "hubert-base": Architecture("hubert-base", "ctc", "hubert", _CTC_BASE, "facebook/hubert-base-ls960"),
    "hubert-large": Architecture("hubert-large", "ctc", "hubert", _CTC_LARGE, "facebook/hubert-large-ls960-ft"),
}
# Accept the hub ids and "whisper-small" style names too.
ALIASES = {**{a.source: n for n, a in ARCHITECTURES.items()},
           **{f"whisper-{n}": n for n in _WHISPER}, "large": "large-v3", "turbo": "large-v3-turbo"}

# Reference only (not buildable here): parameter counts of the TTS models people ask about next to ASR.
TTS_REFERENCE_PARAMS = {"piper (medium voice)": 15_000_000, "speecht5_tts": 144_000_000,
                        "kokoro-82m": 82_000_000, "xtts-v2": 467_000_000}


def lookup(name: str) -> Architecture | None:
    key = name.strip()
    key = ALIASES.get(key, key)
    return ARCHITECTURES.get(key)


def hf_config(arch: Architecture):
    """The transformers config object for a catalog architecture."""
    import transformers
    cls = {"whisper": transformers.WhisperConfig, "wav2vec2": transformers.Wav2Vec2Config,
           "hubert": transformers.HubertConfig}[arch.model_type]
    return cls(**arch.config)


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float            # what torch.cuda.get_device_properties reports, not the marketing GB
    tflops: dict                 # precision -> dense peak TFLOP/s; a missing precision has no fast path
    usd_per_hour: float

    def peak_flops(self, precision: str) -> float | None:
        t = self.tflops.get(precision)
        return t * 1e12 if t else None


def _gpu(name, mem, bf16, fp16, fp32, usd):
    return GPU(name, mem, {k: v for k, v in (("bf16", bf16), ("fp16", fp16), ("fp32", fp32)) if v}, usd)


# fp32 is plain fp32 (PyTorch leaves TF32 matmuls off by default). T4 and V100 have no bf16 tensor cores.
# GeForce cards run fp16/bf16 tensor ops with fp32 accumulate at half their headline rate.
GPUS: dict[str, GPU] = {g.name: g for g in (
    _gpu("T4", 14.6, None, 65, 8.1, 0.35),
    _gpu("L4", 22.0, 121, 121, 30.3, 0.80),
    _gpu("A10", 22.0, 125, 125, 31.2, 0.75),
    _gpu("V100", 15.8, None, 125, 15.7, 2.48),
    _gpu("RTX3060", 11.7, 25.6, 25.6, 12.7, 0.10),
    _gpu("RTX3090", 23.6, 71, 71, 35.6, 0.22),
    _gpu("RTX4090", 23.6, 165, 165, 82.6, 0.40),
    _gpu("A100-40GB", 39.4, 312, 312, 19.5, 1.29),
    _gpu("A100-80GB", 79.1, 312, 312, 19.5, 1.79),
    _gpu("H100", 79.1, 989, 989, 67, 2.99),
    _gpu("H200", 139.8, 989, 989, 67, 3.79),
)}


def find_gpu(name: str) -> GPU | None:
    key = name.replace(" ", "").replace("_", "-").lower()
    for g in GPUS.values():
        if g.name.lower() == key or g.name.lower().replace("-", "") == key.replace("-", ""):
            return g
    return None
