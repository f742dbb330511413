"""One training run as the planner sees it: the options that shape memory and time, under `speechtune train`'s
field names and defaults (speechtune.train.config.TrainConfig). setup_from_config builds it from a training
config (train's, or the estimate CLI's); setup_from_options from estimate()/calibrate() keyword arguments.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

from ..errors import SpeechtuneError
from ..families import FAMILIES, whisper
from ..train.config import train_default

# Every family's modes; the planner treats a CTC mode other than `full` as the feature encoder frozen.
MODES = tuple(dict.fromkeys(m for f in FAMILIES for m in f.MODES))

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "adamw-8bit")
# The names estimate() and calibrate() took before they took TrainConfig's; still accepted, with a warning.
RENAMED = {"lora_rank": "lora_r", "grad_checkpointing": "gradient_checkpointing"}
# estimate() and calibrate() called from Python keep the defaults they had before: a full fine-tune, LoRA r=16 on
# q_proj/v_proj with the encoder (what benchmarks/estimate_accuracy.py was measured with). The CLI and
# format_summary(train_config) build their Setup with setup_from_config instead: speechtune train's defaults.
API_DEFAULTS = {"mode": "full", "lora_r": 16, "lora_targets": ("q_proj", "v_proj"), "lora_encoder": True}
# A TTS run where neither flags nor --data say: `prepare --task tts` keeps clips up to 15 s (its default
# --max-duration), the decoder's length; joe's phonemes run at roughly 25-30 ids a second of speech (2 ids a
# phoneme + 3 a sentence), the encoder's length, so the widest batch has about 30 ids/s x 15 s.
TTS_AUDIO_SECONDS = 15.0
TTS_IDS_PER_SECOND = 30
_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "tuple": tuple}


@dataclass(frozen=True)
class Setup:
    mode: str = whisper.MODES[0]  # train's default for Whisper (its --mode default is the family's first)
    batch_size: int = train_default("batch_size")
    grad_accum: int = train_default("grad_accum")
    # Concrete, unlike TrainConfig's "auto"/"no": bf16 is what "auto" is on a GPU with bf16 (setup_from_config
    # resolves "auto" for the device at hand).
    precision: str = "bf16"
    optimizer: str = "adamw"      # what speechtune train uses; "adamw-8bit" estimates bitsandbytes' 8-bit AdamW
    gradient_checkpointing: bool = train_default("gradient_checkpointing")
    lora_r: int = train_default("lora_r")
    lora_targets: tuple = whisper.LORA_TARGETS  # train's default for Whisper
    lora_encoder: bool = train_default("lora_encoder")  # Whisper: adapters in the encoder too (False: decoder only)
    lora_dropout: float = train_default("lora_dropout")
    audio_seconds: float = 30.0   # encoder input length (Whisper pads every clip to 30 s)
    label_tokens: int = 448       # decoder/label length of the longest batch (448: Whisper's maximum)
    device: str = "cuda"          # "cuda" or "cpu": CUDA context, dropout-mask width

    def __post_init__(self):
        # One type per field (a YAML list of targets, a float batch size): Setups compare and hash as values.
        for f in fields(self):
            kind = _TYPES.get(str(f.type))
            value = getattr(self, f.name)
            if kind is not None and not isinstance(value, kind) or kind is int and isinstance(value, bool):
                object.__setattr__(self, f.name, kind(value))

    def check(self) -> None:
        for name, value, ok in (("mode", self.mode, MODES), ("precision", self.precision, PRECISIONS),
                                ("optimizer", self.optimizer, OPTIMIZERS)):
            if value not in ok:
                raise SpeechtuneError(f"--{name} {value!r} is not one of {', '.join(ok)}")
        for name in ("batch_size", "grad_accum", "lora_r", "label_tokens"):
            if getattr(self, name) < 1:
                raise SpeechtuneError(f"--{name.replace('_', '-')} must be at least 1")
        if self.audio_seconds <= 0:
            raise SpeechtuneError("--audio-seconds must be positive")


SETUP_FIELDS = frozenset(f.name for f in fields(Setup))


def family_defaults(family: str) -> dict:
    """The Setup fields whose default differs for `family` ("whisper", "ctc", "tts"): a voice trains in its
    one mode, full, and its lengths are the longest clip prepare keeps and that clip's phoneme ids."""
    if family != "tts":
        return {}
    return {"mode": "full", "audio_seconds": TTS_AUDIO_SECONDS,
            "label_tokens": round(TTS_IDS_PER_SECOND * TTS_AUDIO_SECONDS)}


def check_family(s: Setup, family: str) -> None:
    """A one-line error where the run's mode is not one `family` trains (a voice trains `full` only)."""
    modes = next((f.MODES for f in FAMILIES if f.NAME == family), MODES)
    if family == "tts" and s.mode not in modes:
        raise SpeechtuneError(f"--mode {s.mode}: the {family} family trains {', '.join(modes)}",
                              f"pass --mode {modes[0]} (or leave --mode out)")


def renamed_options(options: dict, stacklevel: int = 3) -> dict:
    """`options` with the old names (lora_rank=, grad_checkpointing=) turned into Setup's, with a
    DeprecationWarning."""
    out = dict(options)
    for old, new in RENAMED.items():
        if old in out:
            warnings.warn(f"{old}= is deprecated: pass {new}= (speechtune train's name)", DeprecationWarning,
                          stacklevel=stacklevel)
            out[new] = out.pop(old)
    return out


def split_options(options: dict) -> tuple[dict, dict]:
    """(the Setup options among `options`, old names included; the rest)."""
    setup = {k: v for k, v in options.items() if k in SETUP_FIELDS or k in RENAMED}
    return setup, {k: v for k, v in options.items() if k not in setup}


def setup_from_options(family: str | None = None, **options) -> Setup:
    """The Setup of estimate()/calibrate() keyword options (Setup fields, or their old names), on API_DEFAULTS
    and `family`'s defaults (family_defaults)."""
    return Setup(**{**API_DEFAULTS, **family_defaults(family or ""), **renamed_options(options, stacklevel=4)})


def resolve_precision(precision: str | None, device: str) -> str:
    """TrainConfig's precision for a "cuda" or "cpu" run -> fp32/bf16/fp16, as the trainer resolves "auto"."""
    if precision in (None, "auto"):
        if device != "cuda":
            return "fp32"
        import torch
        return "fp16" if torch.cuda.is_available() and not torch.cuda.is_bf16_supported() else "bf16"
    return {"no": "fp32"}.get(precision, precision)


def setup_from_config(cfg, family: str | None = None, **overrides) -> Setup:
    """The Setup of the run that `cfg` describes: a TrainConfig, or anything with (some of) its field names
    (EstimateConfig, a test's stand-in); what it lacks takes `family`'s defaults (family_defaults), else
    Setup's, which are TrainConfig's.

    `overrides` (Setup fields, or their old names) win over `cfg`. A device that is None ("what accelerate
    picks") is this machine's: CUDA where there is one. Precision "auto"/"no" resolves as the trainer does.
    """
    # None (train's "the family's default") takes the family's, else Setup's, which are Whisper's
    values = dict(family_defaults(family or ""))
    values.update({name: getattr(cfg, name) for name in SETUP_FIELDS if getattr(cfg, name, None) is not None})
    values.update(renamed_options(overrides))
    device = values.get("device")
    if device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    values["device"] = "cuda" if str(device).startswith("cuda") else "cpu"
    values["precision"] = resolve_precision(values.get("precision"), values["device"])
    return Setup(**values)
