"""The text-to-speech family: FastSpeech2Conformer voices (transformers) that read a piper voice's phonemes.

A voice is trained from a spec that is either a size name (`fastspeech2-tiny`: a fresh model, for a voice
learnt from the recordings alone) or a voice folder `speechtune train` wrote (fine-tuned further). The base
piper voice (`train --voice`, default the bundled joe) gives the phoneme ids and, by reading each
transcript, the phoneme durations of each recording (tts/align.py). One mode, `full`.

Evaluations judge what users hear, not the loss: each valid sentence is synthesized (Griffin-Lim) and
transcribed by the bundled Whisper; the error rate is that transcript's CER against the text
(intelligibility), so the best checkpoint is the one Whisper understands best.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import SpeechtuneError

NAME = "tts"
TASK = "tts"            # what the family's models do: "asr" models transcribe, "tts" models speak
MODEL_TYPES = ("fastspeech2_conformer",)
NAMED_MODELS = ("fastspeech2-tiny",)   # specs that name a fresh model instead of a folder
MODES = ("full",)
# a fresh FastSpeech2 learns at FastSpeech2's usual peak (ESPnet's Noam schedule peaks near 1e-3); a trained
# voice is moved less
DEFAULT_LR = {"full": 1e-3}
FINE_TUNE_LR = 2e-4
EXPORT_FORMATS = ("onnx",)
DEFAULT_BASE_VOICE = "joe"   # the bundled piper voice a new voice learns its phonemes and durations from
# train options that mean nothing for a voice (recognition's data tricks, and checkpointing, which
# transformers' FastSpeech2 does not implement): train refuses them rather than ignore them
UNSUPPORTED_OPTIONS = ("mix", "no_speech_ratio", "speed_perturb", "noise_snr", "spec_augment",
                       "gradient_checkpointing")


# The built-in guard of an English voice (train without --guard): everyday sentences no demo trains on, which
# the voice must keep reading intelligibly (Whisper's CER, as valid is scored)
GUARD_TEXTS = ("The museum is closed on Mondays.", "She forgot her umbrella at the station.",
               "Could you turn the music down a little?", "We need two more chairs for the meeting.",
               "The bakery on the corner sells fresh bread.", "It started raining just after we left.")


@dataclasses.dataclass
class VoiceBundle:
    model: object        # transformers.FastSpeech2ConformerModel
    base_voice: object   # the piper voice whose phonemes and readings the voice learns with
    phonemes: dict       # its config (phonemes.json of the saved folder)
    meta: dict           # speechtune_voice.json
    path: Path | None
    fresh: bool
    processor: object = None
    multilingual: bool = False


def _base_voice(spec):
    """The piper voice that aligns recordings: one whose graph reports its phoneme durations."""
    from ..tts import load_voice
    voice = load_voice(spec)
    if not voice.has_durations:
        raise SpeechtuneError(f"--voice {spec}: a voice whose durations are predictions cannot align "
                              "recordings", f"pass a piper VITS voice (e.g. {DEFAULT_BASE_VOICE}), the one the "
                              "new voice learns its phonemes and durations from")
    return voice


def _voice_ref(spec) -> str:
    """How a voice folder names its base voice: a bundled name as it is, a file or folder by its absolute
    path (a site-packages path of the bundled voice would not hold on another machine)."""
    from ..tts import bundled
    return str(spec) if bundled(str(spec)) else str(Path(str(spec)).expanduser().resolve())


def load(spec, device: str | None = None, dtype=None, base_voice: str | None = None):
    """A VoiceBundle for a size name (fresh model) or a FastSpeech2 voice folder. `base_voice`: the piper
    voice to align with (default: the folder's own base voice, else joe)."""
    from ..tts.fastspeech import FastSpeechVoice, is_voice_folder, new_model
    if str(spec) in NAMED_MODELS:
        voice = _base_voice(base_voice or DEFAULT_BASE_VOICE)
        model = new_model(int(voice.config.get("num_symbols") or 1 + max(max(v) for v in voice.id_map.values())),
                          str(spec))
        meta = {"name": str(spec), "sample_rate": voice.sample_rate,
                "base_voice": _voice_ref(base_voice or DEFAULT_BASE_VOICE),
                "vocoder": "griffin-lim"}
        return VoiceBundle(model.to(device or "cpu"), voice, voice.config, meta, None, fresh=True)
    path = Path(str(spec)).expanduser()
    if not is_voice_folder(path):
        raise SpeechtuneError(f"model '{spec}': not a FastSpeech2 voice folder written by speechtune",
                              f"start from {' or '.join(NAMED_MODELS)}, or a folder `speechtune train` wrote")
    v = FastSpeechVoice.load(path)
    voice = _base_voice(base_voice or v.meta.get("base_voice") or DEFAULT_BASE_VOICE)
    phonemes = voice.config
    if {k: list(x) for k, x in phonemes["phoneme_id_map"].items()} != v.text.id_map:
        raise SpeechtuneError(f"{path}: its phonemes are not those of voice {voice.name}",
                              f"train with --voice {v.meta.get('base_voice')}, the voice it learnt from")
    return VoiceBundle(v.model.to(device or "cpu"), voice, phonemes, dict(v.meta), path, fresh=False)


def resolve(spec) -> Path:
    return Path(str(spec)).expanduser()


def load_for_training(cfg, rows: list[dict], device: str | None = None, dtype=None):
    """The voice to train, named after its output folder (what serve and compare will call it); refuses
    recordings at another rate than the base voice's (recognition data: prepare them with --task tts)."""
    bundle = load(cfg.model, device=device, base_voice=cfg.voice)
    refuse_other_rates(rows, bundle.base_voice, cfg.data, cfg.voice or DEFAULT_BASE_VOICE)
    bundle.meta["name"] = Path(cfg.out).name or bundle.meta["name"]
    return bundle


def refuse_other_rates(rows: list[dict], voice, data, voice_spec: str) -> None:
    """A one-line error naming the first row whose sample_rate is not `voice`'s (recognition data: prepare
    them with --task tts --voice VOICE_SPEC)."""
    for r in rows:
        if int(r.get("sample_rate") or 0) != voice.sample_rate:
            raise SpeechtuneError(f"{r.get('source', data)}:{r.get('line', '?')}: {r.get('sample_rate') or 'no'} "
                                  f"sample_rate; voice {voice.name} speaks at {voice.sample_rate} Hz",
                                  f"prepare the recordings with `speechtune prepare --task tts --voice {voice_spec}`")


def default_lr(cfg, bundle) -> float:
    return DEFAULT_LR[cfg.mode] if bundle.fresh else FINE_TUNE_LR


def clips(rows: list[dict], bundle, cfg):
    """The training split (tts/dataset.py); its pitch and energy statistics go into the saved voice."""
    from ..tts.dataset import VoiceClips
    stats = None if bundle.fresh else bundle.meta.get("stats")
    stats = stats if stats and {"pitch", "energy", "mel"} <= set(stats) else None
    split = VoiceClips(rows, bundle.base_voice, stats=stats)
    bundle.meta["stats"] = split.stats
    return split


def setup_training(cfg, model):
    for p in model.parameters():
        p.requires_grad = True
    return None


def encoder_cache(cfg, model, out: Path, autocast):
    return None


def loss(model, clips, idx, cache, cfg, step):
    batch = {k: v.to(model.device) for k, v in clips.batch(idx).items()}
    return model(**batch, return_dict=True).loss


def save(model, peft_model, bundle, folder: Path) -> None:
    from ..tts.fastspeech import write_folder
    write_folder(folder, model, bundle.meta, bundle.phonemes)


def voice_of(bundle):
    """The bundle's model as a voice (the surface of tts/__init__.py), sharing its weights."""
    from ..tts.fastspeech import FastSpeechVoice
    return FastSpeechVoice(bundle.model, bundle.phonemes, bundle.meta, path=bundle.path)


def default_guard(bundle, cfg) -> dict | None:
    """The guard set train scores when no --guard is given: GUARD_TEXTS (at most --eval-max-clips of them, as
    a --guard manifest is cut) for an English voice, else None."""
    from ..tts.hearing import base_language
    if base_language(bundle.base_voice.language) != "en":
        return None
    texts = list(GUARD_TEXTS[: cfg.eval_max_clips])
    return {"refs": texts, "languages": ["en"] * len(texts), "wavs": []}


def score(bundle, eval_set: dict, cfg) -> dict:
    """An evaluation of the voice being trained: intelligibility CER on the set's texts (see the module doc)."""
    from ..tts.hearing import intelligibility
    was_training = bundle.model.training
    bundle.model.eval()
    try:
        hyps, s = intelligibility(voice_of(bundle), eval_set["refs"])
    finally:
        bundle.model.train(was_training)
    return {"error_rate": s["error_rate"], "metric": s["metric"], "examples": list(zip(eval_set["refs"], hyps))[:3]}
