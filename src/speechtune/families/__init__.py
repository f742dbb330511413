"""Model families: what differs between kinds of speech model, each behind one small interface.

A family is one module here with these names (whisper.py, ctc.py, tts.py, piper.py). The
commands never ask which family they hold: `train` calls these, `runtimes` decodes what they save, `export`
takes the formats they list.

    NAME                      "whisper" | "ctc" | "tts" | "piper"
    TASK                      "asr" (it transcribes: no-speech sets, --mix) | "tts" (it speaks)
    MODEL_TYPES               the transformers `model_type`s the family trains
    MODES                     the training modes it supports (`train --mode`); the first is the default
    DEFAULT_LR                {mode: peak lr} when --lr is not given
    EXPORT_FORMATS            what `speechtune export` can make of its models
    load(spec, device, dtype) -> a loaded model bundle (weights + processor + path); any spec the family reads
    resolve(spec) -> the local model folder of a spec (converted or downloaded when needed)
    load_for_training(cfg, rows, device, dtype) -> the bundle to train on `rows` (a CTC model may get a
                              vocabulary built from their transcripts, or refuse characters it lacks)
    default_lr(cfg, bundle) -> the lr for cfg.mode (a fresh CTC head needs more)
    clips(rows, bundle, cfg) -> the training split the loss reads (len, durations, labels)
    setup_training(cfg, model) -> which parameters train under cfg.mode (and adapters); returns the peft
                              wrapper or None
    encoder_cache(cfg, model, out, autocast) -> a cache of the frozen bottom's outputs (with a `note` and
                              `clear()`), or None
    loss(model, clips, idx, cache, cfg, step) -> the mean loss of one micro-batch
    save(model, peft_model, bundle, folder) -> a complete model folder, loadable offline by `load`

and, optionally:

    NAMED_MODELS              specs the family owns by name (tts: "fastspeech2-tiny", a fresh model)
    UNSUPPORTED_OPTIONS       TrainConfig fields train refuses for the family when set (tts: --mix, ...)
    default_guard(bundle, cfg) -> an eval set train guards with when no --guard is given, or None (tts: everyday
                              sentences the voice must keep reading intelligibly)
    claims(spec) -> bool      whether a spec no model_type names is the family's (piper: an ONNX voice)
    score(bundle, eval_set, cfg) -> {"error_rate", "metric"}: how train's evaluations judge the
                              model, when not by transcribing the set's audio (tts: Whisper's CER on what the
                              voice says)

A family whose trainer runs in a process of its own (piper: piper-tts is GPL-3.0) has, instead of load ...
save, `train_apart(cfg, train_rows, eval_rows, guard_rows, progress)` -> training_summary.json's fields, with
DEFAULT_LR, MODES, has_checkpoint(out) (what resumes) and WORK_FOLDERS (what a failed start leaves in --out).

`family_for(spec)` picks the family from what the spec is, without loading weights.
"""
from __future__ import annotations

from ..errors import SpeechtuneError
from ..models import model_type
from . import ctc, piper, tts, whisper

FAMILIES = (whisper, ctc, tts, piper)
__all__ = ["FAMILIES", "family_for", "model_type"]


def family_for(spec):
    """The family module that trains `spec`; a one-line error naming the spec and the families there are
    when none does. A spec whose type cannot be told here (a hub id) is tried as Whisper, whose loader
    reports what is wrong with it."""
    for family in FAMILIES:
        if str(spec) in getattr(family, "NAMED_MODELS", ()) or getattr(family, "claims", lambda _: False)(spec):
            return family
    kind = model_type(spec)
    for family in FAMILIES:
        if kind is None or kind in family.MODEL_TYPES:
            return family
    names = ", ".join(f"{f.NAME} ({', '.join(f.MODEL_TYPES)})" for f in FAMILIES)
    raise SpeechtuneError(f"model '{spec}': a {kind} model, which speechtune does not train",
                          f"speechtune trains {names}")
