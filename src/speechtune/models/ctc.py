"""CTC speech models: every type transformers' AutoModelForCTC maps (wav2vec2, HuBERT, WavLM, UniSpeech(-SAT),
data2vec-audio, SEW(-D), wav2vec2-BERT, wav2vec2-Conformer, Parakeet-CTC, ...), from a local folder or a hub id.

A model folder holds the weights, config.json, the feature extractor (preprocessor_config.json) and the
tokenizer. A pretrained encoder without a CTC head (facebook/wav2vec2-base, microsoft/wavlm-base-plus) has no
tokenizer: `build_vocab` makes a character vocabulary from the training transcripts (`[PAD]` is the CTC blank,
`|` the word delimiter, `[UNK]` what the vocabulary lacks; Chinese is written by character) and
`load_ctc(..., vocab=)` puts a fresh head of that size on the encoder.

MMS (facebook/mms-1b-all) ships one adapter per language (adapter.<lang>.safetensors: the adapter layers and
a head for that language's characters) and a vocab.json nested by language. Its spec names the language after
a colon, `facebook/mms-1b-all:cmn-script_simplified`, in every command; a fine-tuned MMS folder remembers
its language (the tokenizer's target_lang) and needs none.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import unicodedata
from pathlib import Path

from ..errors import SpeechtuneError

PAD, UNK, WORD_DELIMITER = "[PAD]", "[UNK]", "|"
# Scripts written without spaces between words: a transcript's spaces next to these are not word breaks.
_NO_SPACE = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# An MMS language's adapter weights, as transformers' Wav2Vec2ForCTC.load_adapter looks for them.
ADAPTER_FILES = ("adapter.{}.safetensors", "adapter.{}.bin")


def ctc_types() -> tuple[str, ...]:
    """The model types AutoModelForCTC loads (read from transformers, so a new one is picked up)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING_NAMES
    return tuple(MODEL_FOR_CTC_MAPPING_NAMES)


@dataclasses.dataclass
class CTCModel:
    model: object              # an AutoModelForCTC model
    feature_extractor: object  # what turns 16 kHz audio into the model's input (input_values or input_features)
    tokenizer: object          # frame ids <-> text (Wav2Vec2CTCTokenizer, ParakeetTokenizer, ...)
    path: Path
    fresh_vocab: bool = False  # the head was made for a vocabulary built from the training text
    # A CTC model takes no language token; scoring still follows each clip's language (or its script).
    multilingual = True

    @property
    def device(self):
        return self.model.device

    @property
    def blank_id(self) -> int:
        return self.model.config.pad_token_id


def split_lang(spec) -> tuple[str, str | None]:
    """A spec and the MMS language it names after a colon ("facebook/mms-1b-all:fra" -> ("facebook/mms-1b-all",
    "fra")); a spec that is an existing path, or names none, comes back whole with None."""
    s = str(spec)
    if ":" not in s or Path(s).expanduser().exists():
        return s, None
    base, lang = s.rsplit(":", 1)
    return (base, lang) if lang and "/" not in lang else (s, None)


def resolve_ctc(spec) -> Path:
    """The local folder of a CTC spec: the folder itself, or a hub id downloaded into the hub cache (with only
    the adapter of the MMS language the spec names: mms-1b-all has over a thousand)."""
    spec, lang = split_lang(spec)
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SpeechtuneError(f"{path}: no config.json", "pass a Hugging Face model folder")
        return path
    try:
        from huggingface_hub import snapshot_download
        adapters = [f.format(lang) for f in ADAPTER_FILES] if lang else []
        return Path(snapshot_download(str(spec), allow_patterns=["*.json", "*.txt", "*.model", *_weights(str(spec)),
                                                                 *adapters]))
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        reason = "offline mode (HF_HUB_OFFLINE=1) and not in the local hub cache" if offline else str(e)[:200]
        raise SpeechtuneError(f"model '{spec}': not a local folder, and hub id '{spec}' could not be fetched: "
                              f"{reason}", "pass a local model folder, or run where the hub is reachable") from None


def _weights(repo: str) -> list[str]:
    """The weight files to fetch: safetensors where the repo has them, else the older pytorch_model.bin
    (facebook's first wav2vec2 and HuBERT checkpoints); both when the file list cannot be read (offline). Only
    the model's own files: MMS's per-language adapter.*.safetensors are fetched one language at a time."""
    try:
        from huggingface_hub import list_repo_files
        files = list_repo_files(repo)
    except Exception:
        return ["model*.safetensors", "pytorch_model*.bin"]
    safe = any(f.startswith("model") and f.endswith(".safetensors") for f in files)
    return ["model*.safetensors"] if safe else ["pytorch_model*.bin"]


def _feature_extractor(folder: Path, config):
    from transformers import AutoFeatureExtractor, Wav2Vec2FeatureExtractor
    if (folder / "preprocessor_config.json").is_file():
        return AutoFeatureExtractor.from_pretrained(folder)
    # Pretrained-only checkpoints sometimes ship none: wav2vec2's own defaults. Layer-norm feature encoders
    # (the "large" ones) need an attention mask over padding; group-norm ones are trained on zero padding.
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                    return_attention_mask=getattr(config, "feat_extract_norm", "") == "layer")


def has_tokenizer(folder: Path) -> bool:
    """Whether a model folder carries a tokenizer (a pretrained encoder without a CTC head has none)."""
    return any((Path(folder) / n).is_file() for n in ("vocab.json", "tokenizer.json", "tokenizer_config.json"))


def languages(folder: Path) -> list[str]:
    """The languages of a vocab.json nested by language (MMS); [] for a one-language vocabulary."""
    vocab = Path(folder) / "vocab.json"
    try:
        data = json.loads(vocab.read_text(encoding="utf-8")) if vocab.is_file() else {}
    except (OSError, json.JSONDecodeError):
        raise SpeechtuneError(f"{vocab}: not valid JSON", "re-download or re-save the model folder") from None
    return sorted(data) if data and all(isinstance(v, dict) for v in data.values()) else []


def _saved_lang(folder: Path) -> str | None:
    config = Path(folder) / "tokenizer_config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("target_lang") if config.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _adapter_lang(spec, folder: Path) -> tuple[str | None, bool]:
    """For a model whose vocabulary is nested by language (MMS): the language to use, and whether its adapter
    is loaded from the folder's adapter.<lang> file (False: a fine-tuned folder whose weights already hold
    it). (None, False) for any other model."""
    base, lang = split_lang(spec)
    langs = languages(folder)
    if not langs:
        if lang:
            raise SpeechtuneError(f"model '{spec}': ':{lang}' names an MMS language, but this model's vocabulary "
                                  "has no languages", f"drop ':{lang}' from the model spec")
        return None, False
    saved = _saved_lang(folder)
    lang = lang or saved
    if lang is None:
        shown = ", ".join(l for l in ("eng", "cmn-script_simplified", "fra", "spa", "deu") if l in langs) \
            or ", ".join(langs[:5])
        raise SpeechtuneError(f"model '{spec}': holds adapters for {len(langs)} languages and the spec names "
                              "none", f"name one after a colon, e.g. {base}:{langs[0]} (it has {shown}, ...)")
    if lang not in langs:
        near = [l for l in langs if l.startswith(lang[:3])][:8]
        raise SpeechtuneError(f"model '{spec}': no language '{lang}' among its {len(langs)}",
                              f"its codes are ISO 639-3 ({', '.join(near or langs[:8])}, ...)")
    if any((folder / f.format(lang)).is_file() for f in ADAPTER_FILES):
        return lang, True
    if lang == saved:
        return lang, False
    raise SpeechtuneError(f"model '{spec}': no adapter.{lang}.safetensors in {folder}",
                          f"this folder was fine-tuned for '{saved}'; use that, or the original MMS model")


def _tokenizer(folder: Path, lang: str | None = None):
    """The folder's tokenizer (for MMS, set to `lang`), or None when it has none."""
    if not has_tokenizer(folder):
        return None
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(folder, **({"target_lang": lang} if lang else {}))
    except (OSError, ValueError, TypeError) as e:
        raise SpeechtuneError(f"{folder}: cannot load its tokenizer ({str(e)[:200]})",
                              "re-save the model folder, or pass --new-vocab to build one from the transcripts") from None


def ctc_text(text: str) -> str:
    """A transcript as a character vocabulary spells it: NFKC, lower case, punctuation and symbols dropped
    (apostrophes inside words kept), one space between words, none next to Han or kana characters."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(c)[0] in "PSZ" and c != "'" else c for c in text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    text = re.sub(rf"\s+(?=[{_NO_SPACE}])|(?<=[{_NO_SPACE}])\s+", "", " ".join(text.split()))
    return text.strip()


def build_vocab(texts) -> dict[str, int]:
    """A character vocabulary for `texts` (as `ctc_text` spells them): [PAD] (the blank) = 0, [UNK] = 1,
    `|` (between words) = 2, then the characters in code-point order."""
    chars = sorted({c for t in texts for c in ctc_text(t) if c != " "})
    return {PAD: 0, UNK: 1, WORD_DELIMITER: 2, **{c: i + 3 for i, c in enumerate(chars)}}


def vocab_tokenizer(vocab: dict[str, int], folder: Path):
    """A Wav2Vec2CTCTokenizer over `vocab` (its vocab.json written into `folder`)."""
    from transformers import Wav2Vec2CTCTokenizer
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), unk_token=UNK, pad_token=PAD,
                                word_delimiter_token=WORD_DELIMITER, bos_token=None, eos_token=None,
                                do_lower_case=False)


def label_text(tokenizer, text: str) -> str:
    """`text` in the form the tokenizer's vocabulary is written in: a character vocabulary gets `ctc_text`,
    upper-cased when its letters are all capitals (wav2vec2-base-960h); a subword one gets the text as is."""
    vocab = tokenizer.get_vocab()
    if WORD_DELIMITER not in vocab:
        return text.strip()
    letters = [t for t in vocab if len(t) == 1 and t.isalpha() and t.lower() != t.upper()]
    spelled = ctc_text(text)
    return spelled.upper() if letters and all(t.isupper() for t in letters) else spelled


def unknown_chars(tokenizer, text: str) -> set[str]:
    """Characters of `text` (as `label_text` spells it) that the tokenizer can only write as its unknown token."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return set()
    spelled = label_text(tokenizer, text)
    if unk not in tokenizer(spelled, add_special_tokens=False).input_ids:
        return set()
    return {c for c in set(spelled) - {" "} if unk in tokenizer(c, add_special_tokens=False).input_ids}


def load_ctc(spec, device: str | None = None, dtype=None, vocab: dict[str, int] | None = None,
             work: Path | None = None) -> CTCModel:
    """A CTC model bundle. With `vocab` (from build_vocab), the model gets a fresh CTC head of that size and a
    tokenizer written under `work`; without it, the folder must hold a tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCTC
    from transformers.utils import logging as hf_logging

    folder = resolve_ctc(spec)
    config = AutoConfig.from_pretrained(folder)
    if config.model_type not in ctc_types():
        raise SpeechtuneError(f"model '{spec}': a {config.model_type} model, not one AutoModelForCTC loads",
                              f"CTC types: {', '.join(ctc_types())}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    fe = _feature_extractor(folder, config)
    lang, from_adapter = (None, False) if vocab else _adapter_lang(spec, folder)
    tokenizer = vocab_tokenizer(vocab, work or folder) if vocab else _tokenizer(folder, lang)
    if tokenizer is None:
        raise SpeechtuneError(f"{folder}: no tokenizer (a pretrained encoder without a CTC head)",
                              "train it with `speechtune train`, which builds a vocabulary from the transcripts")
    extra = {}
    if vocab:  # a fresh head: sized to the vocabulary, the blank being [PAD]
        extra = {"vocab_size": len(vocab), "pad_token_id": vocab[PAD], "ignore_mismatched_sizes": True}
    elif from_adapter:  # the language's adapter and head replace the default ones (their sizes differ)
        extra = {"target_lang": lang, "ignore_mismatched_sizes": True}
    hf_logging.disable_progress_bar()
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: lm_head" is the point of a fresh head, not news
    try:
        model = AutoModelForCTC.from_pretrained(folder, dtype=dtype or torch.float32, **extra)
    except (OSError, ValueError, RuntimeError) as e:
        raise SpeechtuneError(f"{folder}: cannot load as a CTC model ({str(e)[:300]})") from None
    finally:
        hf_logging.set_verbosity(previous)
    model.to(device).eval()
    return CTCModel(model, fe, tokenizer, folder, fresh_vocab=bool(vocab))


def save_ctc(bundle: CTCModel, model, folder: Path) -> None:
    """A complete folder `load_ctc` reads offline: weights, config, feature extractor, tokenizer."""
    model.save_pretrained(str(folder))
    bundle.feature_extractor.save_pretrained(str(folder))
    bundle.tokenizer.save_pretrained(str(folder))
    lang = getattr(bundle.tokenizer, "target_lang", None)
    if lang and getattr(model.config, "adapter_attn_dim", None):
        # the tuned language's adapter on its own too, as MMS ships them: another MMS base can load it
        from safetensors.torch import save_file
        save_file({k: v.detach().contiguous().cpu() for k, v in model._get_adapters().items()},
                  str(folder / ADAPTER_FILES[0].format(lang)))
