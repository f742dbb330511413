"""What a prepared folder says about a training run, for the estimate: how many clips, how many hours, how
long the clips are, and how long the labels are that the model's tokenizer makes of the transcripts.

Label length is what `speechtune train` feeds the decoder: for Whisper the prefix without <|sot|>, the text
tokens and <|endoftext|> (train.data.label_ids); for CTC models the characters of the transcript as a
character vocabulary spells it (models.ctc.ctc_text); for a voice (tts family) the phoneme ids its base piper
voice reads the transcript as, every sentence's concatenated (tts.align.phoneme_sequence: the encoder's input),
while the clip's length sets the decoder's (mel frames). A batch is padded to its longest label (and, for CTC
models and voices, its longest clip), so the longest one sets the peak.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import SpeechtuneError
from .info import model_info

# The .en Whisper models' vocabulary (plan/catalog.py: one token fewer than the multilingual ones): which
# bundled tokenizer counts the labels of a catalog model that is not on this machine.
ENGLISH_ONLY_VOCAB = 51864


@dataclass(frozen=True)
class DataFigures:
    manifest: str
    clips: int
    hours: float
    clip_seconds: dict        # mean, median, p90, max
    label_lengths: dict       # mean, median, p90, max
    label_unit: str           # "tokens (<tokenizer>'s tokenizer)" or "characters"

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line naming the figures taken from the data."""
        c, lab = self.clip_seconds, self.label_lengths
        return (f"from {self.manifest}: {self.clips} clips, {self.hours:.2f} h (clips {c['median']:.1f} s median, "
                f"{c['p90']:.1f} s p90, {c['max']:.1f} s longest); labels {lab['median']:.0f} median, "
                f"{lab['max']:.0f} longest, in {self.label_unit}")


def manifest_of(data) -> Path:
    """train.jsonl of a prepared folder, or the manifest file itself."""
    p = Path(data).expanduser()
    path = p / "train.jsonl" if p.is_dir() else p
    if not path.is_file():
        raise SpeechtuneError(f"--data {data}: no train.jsonl there",
                              "pass the folder written by `speechtune prepare` (or a manifest .jsonl)")
    return path


def _spread(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "max": float(a.max())}


def whisper_labeler(model, info=None):
    """(tokenizer, generation config, name) that `speechtune train` would build labels with for `model`:
    its own folder's when it is on this machine; for a catalog name that is not, the bundled model with the
    same vocabulary (tiny.en English-only, base multilingual): Whisper's sizes share their tokenizers, and
    every language's prefix is as long."""
    from transformers import AutoTokenizer, GenerationConfig

    from ..models import resolve_model
    from ..models.registry import BUNDLED

    info = info or model_info(model)
    spec = str(model)
    if info.path:
        folder = Path(info.path)
    elif spec in BUNDLED:
        folder = resolve_model(spec)
    else:
        spec = "tiny.en" if info.config.vocab_size == ENGLISH_ONLY_VOCAB else "base"
        folder = resolve_model(spec)
    return (AutoTokenizer.from_pretrained(str(folder)), GenerationConfig.from_pretrained(str(folder)),
            Path(spec).name or spec)


def label_lengths(rows: list[dict], model, info=None) -> tuple[list[int], str]:
    """Each row's label length as train builds it, and its unit."""
    info = info or model_info(model)
    if info.family == "tts":
        return voice_id_lengths(rows, info)
    if info.family != "whisper":
        from ..models.ctc import ctc_text
        return [len(ctc_text(r["text"])) for r in rows], "characters"
    from ..train.data import label_prefix, text_ids

    tokenizer, generation, name = whisper_labeler(model, info)
    prefix = {}
    lengths = []
    for r in rows:
        lang = r.get("language") or "en"  # every language token is one token: the length is the same
        if lang not in prefix:
            prefix[lang] = len(label_prefix(generation, lang if lang in _languages(generation) else "en"))
        lengths.append(prefix[lang] + len(text_ids(tokenizer, r["text"])) + 1)  # + <|endoftext|>
    return lengths, f"tokens ({name}'s tokenizer)"


def voice_id_lengths(rows: list[dict], info) -> tuple[list[int], str]:
    """Each row's phoneme ids as the tts family's training split makes them: the base voice's phonemes (a voice
    folder's phonemes.json, else the bundled joe's config) read by PiperText, every sentence's ids concatenated.
    Reads the voice's config only: no ONNX session is built."""
    import json

    from ..tts import resolve_voice
    from ..tts.fastspeech import PHONEMES_FILE
    from ..tts.piper import PiperText

    if info.path and (Path(info.path) / PHONEMES_FILE).is_file():
        config_path, name = Path(info.path) / PHONEMES_FILE, Path(info.path).name
    else:
        _, config_path, name, _ = resolve_voice("joe")
    text = PiperText(json.loads(config_path.read_text(encoding="utf-8")))
    lengths = [sum(len(text.phoneme_ids(s)) for s in text.phonemize(r["text"])) for r in rows]
    return lengths, f"phoneme ids ({name}'s phonemes)"


def _languages(generation) -> set:
    return {k.strip("<|>") for k in (getattr(generation, "lang_to_id", None) or {})}


def data_figures(data, model, extra_manifests=()) -> DataFigures:
    """Clip count, hours, clip lengths and label lengths of `data` (a prepared folder's train.jsonl, or a
    manifest) for `model`; rows of `extra_manifests` (train's --mix) count towards the lengths too."""
    from ..manifest import read_manifest
    from ..train.data import clip_seconds

    path = manifest_of(data)
    rows = read_manifest(path)
    extra = [r for m in extra_manifests if m for r in read_manifest(m)]
    seconds = [clip_seconds(r) for r in rows]
    lengths, unit = label_lengths(rows + extra, model)
    longest_extra = _spread([clip_seconds(r) for r in extra])["max"] if extra else 0.0
    spread = _spread(seconds)
    spread["max"] = max(spread["max"], longest_extra)
    return DataFigures(manifest=str(path), clips=len(rows), hours=sum(seconds) / 3600, clip_seconds=spread,
                       label_lengths=_spread(lengths), label_unit=unit)


def setup_options(figures: DataFigures, family: str) -> dict:
    """The Setup fields the data decides: the longest label (the widest batch's decoder length; a voice's
    encoder length) and, for CTC models and voices, whose batches pad to their longest clip, the longest clip
    (Whisper pads every clip to 30 s)."""
    import math

    options = {"label_tokens": max(1, math.ceil(figures.label_lengths["max"]))}
    if family != "whisper":
        options["audio_seconds"] = max(figures.clip_seconds["max"], 0.1)
    return options
