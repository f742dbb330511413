"""What makes a folder a complete Hugging Face Whisper model: config, generation config, tokenizer, features.

The CT2 and openai `.pt` converters produce bare weights; this module writes everything around them so the
folder loads offline with `WhisperForConditionalGeneration.from_pretrained` and `WhisperProcessor`, and so
`generate` picks the right prefix tokens: English-only models get `<|startoftranscript|><|notimestamps|>`,
multilingual ones also `<|lang|><|transcribe|>`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TIMESTAMP_COUNT = 1501  # <|0.00|> .. <|30.00|> in steps of 0.02 s


def _added(token_id: int, content: str, special: bool) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def complete_tokenizer_json(src: Path, vocab_size: int) -> dict:
    """The CT2 tokenizer.json without timestamp tokens gets them appended, so `generate(return_timestamps=True)`
    decodes segments; for large-v3's 51866-token vocabulary, `<|yue|>` is inserted where v3 put it."""
    tok = json.loads(Path(src).read_text(encoding="utf-8"))
    added = tok["added_tokens"]
    contents = {a["content"] for a in added}
    if vocab_size == 51866 and "<|yue|>" not in contents:
        yue_id = next(a["id"] for a in added if a["content"] == "<|translate|>")
        for a in added:
            if a["id"] >= yue_id:
                a["id"] += 1
        added.append(_added(yue_id, "<|yue|>", True))
        added.sort(key=lambda a: a["id"])
    if "<|0.00|>" not in contents:
        first = max(a["id"] for a in added) + 1
        n = min(TIMESTAMP_COUNT, vocab_size - first)
        added.extend(_added(first + i, "<|%.2f|>" % (i * 0.02), False) for i in range(n))
    return tok


def special_ids(tok: dict) -> dict[str, int]:
    return {a["content"]: a["id"] for a in tok["added_tokens"]}


def multilingual(vocab_size: int) -> bool:
    # Whisper's English-only models use the 51864-token GPT-2 vocabulary; every multilingual one is larger.
    return vocab_size >= 51865


def build_generation_config(tok: dict, vocab_size: int, decoder_layers: int, decoder_heads: int,
                            suppress: list[int], alignment_heads: list | None, max_length: int = 448):
    from transformers import GenerationConfig

    ids = special_ids(tok)
    eot = ids["<|endoftext|>"]
    cfg = {
        "decoder_start_token_id": ids["<|startoftranscript|>"],
        "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot,
        "no_timestamps_token_id": ids["<|notimestamps|>"],
        "prev_sot_token_id": ids["<|startofprev|>"],
        "suppress_tokens": list(map(int, suppress)),
        "begin_suppress_tokens": [220, eot],
        "max_initial_timestamp_index": 50,
        "max_length": max_length,
        "return_timestamps": False,
        "is_multilingual": multilingual(vocab_size),
        # Without alignment heads HF cannot compute word timestamps; the default below is CT2's own.
        "alignment_heads": alignment_heads or [[layer, head] for layer in range(decoder_layers // 2, decoder_layers)
                                               for head in range(decoder_heads)],
    }
    if cfg["is_multilingual"]:
        cfg["lang_to_id"] = {t: i for t, i in ids.items()
                             if len(t) <= 9 and t[2:-2].isalpha() and t[2:-2].islower() and t not in
                             ("<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
                              "<|nocaptions|>", "<|notimestamps|>", "<|endoftext|>")}
        cfg["task_to_id"] = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    return GenerationConfig(**cfg)


def write_hf_folder(out: Path, state_dict: dict[str, np.ndarray], dims: dict, tokenizer_json: Path,
                    suppress: list[int], alignment_heads: list | None) -> None:
    """Write a complete HF Whisper folder into `out` (which must exist and be empty). Weights become fp32."""
    import torch
    from safetensors.torch import save_file
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    tok = complete_tokenizer_json(tokenizer_json, dims["vocab_size"])
    ids = special_ids(tok)
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    eot = ids["<|endoftext|>"]
    config = WhisperConfig(
        **dims,
        decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        # Suppress lists live in generation_config.json only: a copy in config.json makes generate() warn.
        begin_suppress_tokens=None, suppress_tokens=None,
        tie_word_embeddings=True, architectures=["WhisperForConditionalGeneration"],
    )
    config.save_pretrained(out)
    gen = build_generation_config(tok, dims["vocab_size"], dims["decoder_layers"],
                                  dims["decoder_attention_heads"], suppress, alignment_heads,
                                  dims["max_target_positions"])
    gen.save_pretrained(out)
    tensors = {k: torch.from_numpy(np.array(v)).to(torch.float32) for k, v in state_dict.items()}
    tensors.pop("proj_out.weight", None)  # tied to model.decoder.embed_tokens.weight
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    # pad = <|endoftext|> as in OpenAI's own HF uploads: collators (and the HF fine-tuning recipe) need one.
    tokenizer = WhisperTokenizer(tokenizer_file=str(out / "tokenizer.json"), pad_token="<|endoftext|>",
                                 model_max_length=dims["max_target_positions"])
    features = WhisperFeatureExtractor(feature_size=dims["num_mel_bins"])
    WhisperProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out)
    features.save_pretrained(out)  # preprocessor_config.json: faster-whisper and older transformers read it


def prefix_ids(generation_config, language: str | None = None, task: str = "transcribe",
               timestamps: bool = False) -> list[int]:
    """The decoder prompt Whisper expects before the text: what `generate` forces and what training labels
    must start with. English-only: <|sot|><|notimestamps|>; multilingual: <|sot|><|lang|><|task|>[...]."""
    g = generation_config
    ids = [g.decoder_start_token_id]
    if getattr(g, "is_multilingual", False):
        if language:
            key = language if language.startswith("<|") else f"<|{language}|>"
            if key not in g.lang_to_id:
                from ..errors import SpeechtuneError
                raise SpeechtuneError(f"unknown language '{language}' for this model",
                                      "use a Whisper language code such as en, zh, de, ja")
            ids.append(g.lang_to_id[key])
        ids.append(g.task_to_id[task])
    if not timestamps:
        ids.append(g.no_timestamps_token_id)
    return ids


def encoder_stem(encoder, features):
    """transformers' WhisperEncoder up to its first layer: two GELU convolutions and the position embeddings,
    [B, mels, 3000] -> [B, 1500, d_model]. For code that runs the encoder's layers itself (the training cache
    of a frozen bottom, the ONNX graph); tests compare both with the HF encoder."""
    import torch.nn.functional as F

    hidden = F.gelu(encoder.conv2(F.gelu(encoder.conv1(features)))).transpose(1, 2)
    return hidden + encoder.embed_positions.weight


class _GenerateNoise:
    """transformers' Whisper `generate` warns on every call about what it does itself: it passes the
    suppress lists beside a generation_config, and our per-batch `max_new_tokens` sits beside the model's
    own max_length of 448. Neither is the user's doing, and in training they repeat at every evaluation."""
    NOISE = ("`max_new_tokens` will take precedence", "together with generation-related arguments")

    def filter(self, record) -> bool:
        return not any(n in record.getMessage() for n in self.NOISE)


def quiet_generate_warnings() -> None:
    import logging

    log = logging.getLogger("transformers.generation.utils")
    if not any(isinstance(f, _GenerateNoise) for f in log.filters):
        log.addFilter(_GenerateNoise())
