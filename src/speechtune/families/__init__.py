"""Model families: what differs between kinds of speech model, each behind one small interface.

A family is one module here with these names (whisper.py is the first; CTC encoders and text-to-speech
voices come next). The commands never ask which family they hold: `train` calls these, `runtimes` decodes
what they save, `export` takes the formats they list.

    NAME                      "whisper"
    MODEL_TYPES               the transformers `model_type`s the family trains
    MODES                     the training modes it supports (`train --mode`)
    EXPORT_FORMATS            what `speechtune export` can make of its models
    load(spec, device, dtype) -> a loaded model bundle (weights + processor + path); any spec the family reads
    setup_training(cfg, model) -> which parameters train under cfg.mode (and adapters); returns the peft
                              wrapper or None
    loss(model, clips, idx, cache, cfg, step) -> the mean loss of one micro-batch
    save(model, peft_model, bundle, folder) -> a complete model folder, loadable offline by `load`

`family_for(spec)` picks the family from what the spec is, without loading weights.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import SpeechtuneError
from . import whisper

FAMILIES = (whisper,)


def model_type(spec) -> str | None:
    """The transformers model_type a local spec declares (config.json), "whisper" for the forms only Whisper
    has (bundled names, openai .pt, CTranslate2 folders), None when it cannot be told without the hub."""
    from ..models import BUNDLED
    path = Path(str(spec)).expanduser()
    if str(spec) in BUNDLED or path.suffix in (".pt", ".pth") or (path / "model.bin").is_file():
        return "whisper"
    config = path / "config.json"
    if path.is_dir() and config.is_file():
        try:
            return json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, json.JSONDecodeError):
            raise SpeechtuneError(f"{config}: not valid JSON", "re-download or re-save the model folder") from None
    return None


def family_for(spec):
    """The family module that trains `spec`; a one-line error naming the spec and the families there are
    when none does. A spec whose type cannot be told here (a hub id) is tried as Whisper, whose loader
    reports what is wrong with it."""
    kind = model_type(spec)
    for family in FAMILIES:
        if kind is None or kind in family.MODEL_TYPES:
            return family
    names = ", ".join(f"{f.NAME} ({', '.join(f.MODEL_TYPES)})" for f in FAMILIES)
    raise SpeechtuneError(f"model '{spec}': a {kind} model, which speechtune does not train",
                          f"speechtune trains {names}")
