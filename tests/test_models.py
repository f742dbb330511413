"""Model specs: CT2 conversion is exact, openai .pt converts, HF folders load, bad specs get clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speechtune.errors import SpeechtuneError
from speechtune.models import load_model, resolve_model
from speechtune.models import ct2
from tests.conftest import bundled_ct2_dir


def _ct2_convert(hf_dir, out, quantization="float16"):
    import ctranslate2
    ctranslate2.converters.TransformersConverter(str(hf_dir), copy_files=["tokenizer.json"]).convert(
        str(out), quantization=quantization, force=True)
    return out


def test_ct2_reader_round_trips_ctranslate2_writer(tiny_whisper_dir, tmp_path):
    """Our reader reads what ctranslate2's own converter wrote, and splitting the fusions gives back HF."""
    ct2_dir = _ct2_convert(tiny_whisper_dir, tmp_path / "ct2", "float32")
    hf = resolve_model(ct2_dir)
    from safetensors.torch import load_file
    src = load_file(str(tiny_whisper_dir / "model.safetensors"))
    back = load_file(str(hf / "model.safetensors"))
    assert set(src) == set(back)
    for k in src:
        assert torch.equal(src[k], back[k]), k


@pytest.mark.e2e
def test_bundled_tiny_en_conversion_is_exact():
    """Every converted fp32 tensor cast back to fp16 equals the CT2 source bit for bit."""
    src_dir = bundled_ct2_dir("tiny.en")
    variables = ct2.read_model_bin(src_dir / "model.bin")
    hf = resolve_model("tiny.en")
    from safetensors.torch import load_file
    sd = load_file(str(hf / "model.safetensors"))
    assert sd["model.encoder.conv1.weight"].dtype == torch.float32
    d = sd["model.decoder.embed_tokens.weight"].shape[1]
    checked = 0
    for name, arr in variables.items():
        if arr.ndim == 0 or name.startswith("_"):
            continue
        parts = _hf_parts(name, d, sd)
        got = torch.cat([p.reshape(-1) for p in parts]).half().numpy()
        want = arr.reshape(-1)
        assert np.array_equal(got.view(np.uint16), want.view(np.uint16)), name
        checked += 1
    assert checked >= 100


def _hf_parts(name, d, sd):
    """The HF tensors that together make the CT2 variable `name` (a fused one is their concatenation)."""
    zeros = torch.zeros(d)
    side, rest = name.split("/", 1)
    if rest.startswith("layer_") and rest[6].isdigit():
        layer, rest = rest.split("/", 1)
        base = f"model.{side}.layers.{layer[6:]}"
        table = {
            "self_attention/linear_0/weight": ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"],
            "self_attention/linear_0/bias": ["self_attn.q_proj.bias", None, "self_attn.v_proj.bias"],
            "self_attention/linear_1/weight": ["self_attn.out_proj.weight"], "self_attention/linear_1/bias": ["self_attn.out_proj.bias"],
            "self_attention/layer_norm/gamma": ["self_attn_layer_norm.weight"], "self_attention/layer_norm/beta": ["self_attn_layer_norm.bias"],
            "attention/linear_0/weight": ["encoder_attn.q_proj.weight"], "attention/linear_0/bias": ["encoder_attn.q_proj.bias"],
            "attention/linear_1/weight": ["encoder_attn.k_proj.weight", "encoder_attn.v_proj.weight"],
            "attention/linear_1/bias": [None, "encoder_attn.v_proj.bias"],
            "attention/linear_2/weight": ["encoder_attn.out_proj.weight"], "attention/linear_2/bias": ["encoder_attn.out_proj.bias"],
            "attention/layer_norm/gamma": ["encoder_attn_layer_norm.weight"], "attention/layer_norm/beta": ["encoder_attn_layer_norm.bias"],
            "ffn/linear_0/weight": ["fc1.weight"], "ffn/linear_0/bias": ["fc1.bias"],
            "ffn/linear_1/weight": ["fc2.weight"], "ffn/linear_1/bias": ["fc2.bias"],
            "ffn/layer_norm/gamma": ["final_layer_norm.weight"], "ffn/layer_norm/beta": ["final_layer_norm.bias"],
        }
        return [zeros if n is None else sd[f"{base}.{n}"] for n in table[rest]]
    top = {
        "conv1/weight": "conv1.weight", "conv1/bias": "conv1.bias", "conv2/weight": "conv2.weight",
        "conv2/bias": "conv2.bias", "position_encodings/encodings": "embed_positions.weight",
        "layer_norm/gamma": "layer_norm.weight", "layer_norm/beta": "layer_norm.bias",
        "embeddings/weight": "embed_tokens.weight", "projection/weight": "embed_tokens.weight",
    }
    return [sd[f"model.{side}.{top[rest]}"]]


def test_generation_config_english_only_and_multilingual(tiny_whisper_dir, tiny_multilingual_dir):
    en = json.loads((tiny_whisper_dir / "generation_config.json").read_text())
    assert en["is_multilingual"] is False and en["decoder_start_token_id"] == 50257
    assert en["no_timestamps_token_id"] == 50362 and en["eos_token_id"] == 50256
    assert "lang_to_id" not in en
    ml = json.loads((tiny_multilingual_dir / "generation_config.json").read_text())
    assert ml["is_multilingual"] is True and ml["decoder_start_token_id"] == 50258
    assert ml["lang_to_id"]["<|zh|>"] == 50260 and ml["lang_to_id"]["<|en|>"] == 50259
    assert len(ml["lang_to_id"]) == 99
    assert ml["task_to_id"] == {"transcribe": 50359, "translate": 50358}
    assert ml["no_timestamps_token_id"] == 50363 and ml["begin_suppress_tokens"] == [220, 50257]
    assert ml["alignment_heads"]  # default: the upper half of the decoder


def test_tokenizer_round_trip_and_timestamps(tiny_multilingual_dir):
    from transformers import WhisperProcessor
    tok = WhisperProcessor.from_pretrained(tiny_multilingual_dir).tokenizer
    assert tok.convert_tokens_to_ids("<|0.00|>") == 50364
    assert tok.convert_tokens_to_ids("<|30.00|>") == 51864
    ids = tok("甚至出现交易 medical", add_special_tokens=False).input_ids
    assert tok.decode(ids) == "甚至出现交易 medical"


def test_prefix_tokens_in_generate(tiny_multilingual_dir, tone):
    w = load_model(tiny_multilingual_dir, device="cpu")
    feats = w.processor.feature_extractor(tone, sampling_rate=16000, return_tensors="pt").input_features
    from speechtune.models.whisper import prefix_ids
    prefix = prefix_ids(w.model.generation_config, "zh")
    assert prefix == [50258, 50260, 50359, 50363]
    # generate() must have decoded after exactly this prefix: its first token is the argmax after it,
    # with the suppress lists applied.
    out = w.model.generate(feats, language="zh", task="transcribe", max_new_tokens=1)
    with torch.no_grad():
        logits = w.model(feats, decoder_input_ids=torch.tensor([prefix])).logits[0, -1]
    g = w.model.generation_config
    logits[g.suppress_tokens + g.begin_suppress_tokens] = -float("inf")
    logits[g.no_timestamps_token_id + 1:] = -float("inf")  # timestamps are off
    logits[list(g.lang_to_id.values()) + list(g.task_to_id.values()) + [50258, 50361, 50362, 50363]] = -float("inf")
    assert out[0, -1].item() == logits.argmax().item()


def test_openai_pt_checkpoint_converts(tiny_whisper_dir, tmp_path):
    """An openai-style .pt built from the tiny HF model by the inverse mapping maps back tensor for tensor."""
    from safetensors.torch import load_file
    from speechtune.models import openai_pt
    sd = load_file(str(tiny_whisper_dir / "model.safetensors"))
    inverse = {}
    for k, v in sd.items():
        for ok, hk in openai_pt.TOP_LEVEL.items():
            if hk == k:
                inverse[ok] = v
        if ".layers." in k:
            side, rest = k[len("model."):].split(".layers.")
            idx, name = rest.split(".", 1)
            module, leaf = name.rsplit(".", 1)
            ok = {v_: k_ for k_, v_ in openai_pt.IN_BLOCK.items()}[module]
            inverse[f"{side}.blocks.{idx}.{ok}.{leaf}"] = v
        elif ".conv" in k:
            inverse[k[len("model."):]] = v
    cfg = json.loads((tiny_whisper_dir / "config.json").read_text())
    dims = dict(n_mels=80, n_vocab=cfg["vocab_size"], n_audio_ctx=1500, n_audio_state=cfg["d_model"],
                n_audio_head=2, n_audio_layer=2, n_text_ctx=448, n_text_state=cfg["d_model"], n_text_head=2,
                n_text_layer=2)
    pt = tmp_path / "tiny.pt"
    torch.save({"dims": dims, "model_state_dict": inverse}, pt)
    loaded_dims, loaded = openai_pt.load_checkpoint(pt)
    assert openai_pt.hf_dims(loaded_dims)["encoder_ffn_dim"] == 4 * cfg["d_model"]  # openai's fixed ratio
    mapped = openai_pt.to_hf_state_dict(loaded)
    assert set(mapped) == set(sd) - {"proj_out.weight"}
    for k, v in mapped.items():
        assert np.array_equal(v, sd[k].numpy()), k


def test_bad_specs_fail_clearly(tmp_path):
    with pytest.raises(SpeechtuneError, match="no such file or folder"):
        resolve_model("./missing-model")
    with pytest.raises(SpeechtuneError, match="HF_HUB_OFFLINE"):
        resolve_model("openai/whisper-small")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpeechtuneError, match="not a Whisper model folder"):
        resolve_model(tmp_path / "empty")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SpeechtuneError, match="cannot read"):
        resolve_model(bad)
    broken = tmp_path / "ct2"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "tokenizer.json").write_text("{}")
    (broken / "model.bin").write_bytes(b"\x06\x00\x00\x00\x05\x00Whi")
    with pytest.raises(SpeechtuneError, match="truncated or corrupt"):
        resolve_model(broken)


def test_second_resolve_uses_cache(tiny_whisper_dir, tmp_path):
    ct2_dir = _ct2_convert(tiny_whisper_dir, tmp_path / "ct2")
    first = resolve_model(ct2_dir)
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(ct2_dir) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime
