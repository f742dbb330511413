"""A piper voice (VITS exported to ONNX: `voice.onnx` + `voice.onnx.json`) run through onnxruntime.

Only the voice *files* are used: nothing from piper-tts (GPL-3.0) is imported or needed. The graph takes
`input` [1, n] int64 phoneme ids, `input_lengths` [1], `scales` [noise_scale, length_scale, noise_w] float32
(from the config's `inference` section) and, for multi-speaker voices, `sid` [1]; it returns float audio at
the config's `audio.sample_rate`.

Deterministic output: the exported graph draws its two noises (the duration predictor's and the flow's)
with RandomNormalLike, whose generator is seeded once per session and then advances, so the same text gave
different audio on every call. When a voice loads, each RandomNormalLike is replaced by a slice of a noise
tensor fed as an input (tiled when a sentence is longer than the tensor), drawn from
`numpy.random.default_rng(seed)` (seed 0 unless asked): same text, speed and seed -> the same samples, on any
thread, whatever was synthesized before. Different seeds give slightly different renditions.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from ..errors import SpeechtuneError
from . import phonemize as ph
from .text import normalize

MAX_CHARS = 4096          # longest text one synthesize call takes (OpenAI's limit for /v1/audio/speech)
SPEEDS = (0.25, 4.0)      # OpenAI's speed range; length_scale = the voice's length_scale / speed
NOISE_SHAPE = (1, 256, 2048)  # channels x frames of each fed noise; 2048 frames ~ 24 s of audio at 22 kHz
MAX_SENTENCE_PHONEMES = 600   # a longer sentence (no punctuation for ~40 s) is cut at a word boundary
PEAK = 0.95               # each sentence is scaled to this peak (piper normalises to full scale)
# piper's VITS graph computes each phoneme's length in frames as ceil(exp(logw) * length_scale) in its one
# Ceil node; exposing that tensor gives the durations a rendition used (tts/align.py reads them)
DURATIONS_NODE = "/Ceil_output_0"
DURATIONS_OUTPUT = "speechtune_durations"


def _expose_durations(model) -> bool:
    """Add the phoneme durations (frames, [1, 1, n]) as a second graph output when the graph has them."""
    from onnx import TensorProto, helper
    g = model.graph
    if not any(DURATIONS_NODE in n.output for n in g.node):
        return False
    g.node.append(helper.make_node("Identity", [DURATIONS_NODE], [DURATIONS_OUTPUT]))
    g.output.append(helper.make_tensor_value_info(DURATIONS_OUTPUT, TensorProto.FLOAT, None))
    return True


def _patch_noise(model) -> list[str]:
    """Replace each RandomNormalLike(x) by Slice(Tile(noise_k), 0, shape(x)); return the new input names."""
    from onnx import TensorProto, helper, numpy_helper
    g = model.graph
    names = []
    for node in [n for n in g.node if n.op_type == "RandomNormalLike"]:
        k = len(names)
        noise, x, y = f"speechtune_noise_{k}", node.input[0], node.output[0]
        p = f"speechtune_noise_{k}/"
        g.input.append(helper.make_tensor_value_info(noise, TensorProto.FLOAT, list(NOISE_SHAPE)))
        g.initializer.extend([numpy_helper.from_array(np.ones(3, np.int64), p + "one"),
                              numpy_helper.from_array(np.zeros(3, np.int64), p + "zero")])
        at = list(g.node).index(node)
        g.node.remove(node)
        new = [helper.make_node("Shape", [x], [p + "want"]),
               helper.make_node("Shape", [noise], [p + "have"]),
               helper.make_node("Add", [p + "want", p + "have"], [p + "sum"]),
               helper.make_node("Sub", [p + "sum", p + "one"], [p + "sum1"]),
               helper.make_node("Div", [p + "sum1", p + "have"], [p + "reps"]),  # ceil(want / have)
               helper.make_node("Tile", [noise, p + "reps"], [p + "tiled"]),
               helper.make_node("Slice", [p + "tiled", p + "zero", p + "want"], [y])]
        for i, n in enumerate(new):
            g.node.insert(at + i, n)
        names.append(noise)
    return names


class PiperText:
    """A piper voice config's reading of text: normalised text -> phonemes per sentence -> phoneme ids (the
    config's espeak voice, phoneme_map, vowel_clusters and phoneme_id_map). A FastSpeech2 voice trained on
    a piper voice's phonemes keeps that config and reads text with this too."""

    def __init__(self, cfg: dict, max_chars: int = MAX_CHARS):
        self.id_map = {k: list(v) for k, v in cfg["phoneme_id_map"].items()}
        self.espeak_voice = cfg.get("espeak", {}).get("voice", "en-us")
        self.language = (cfg.get("language", {}) or {}).get("code") or self.espeak_voice
        self.clusters = {tuple(c) for c in cfg.get("vowel_clusters") or []}
        self.phoneme_map = {k: list(v) for k, v in (cfg.get("phoneme_map") or {}).items()}
        self.max_chars = max_chars

    def check_text(self, text: str) -> str:
        if not isinstance(text, str) or not text.strip():
            raise SpeechtuneError("no text to speak", "pass a sentence")
        if len(text) > self.max_chars:
            raise SpeechtuneError(f"text is {len(text)} characters; at most {self.max_chars} are spoken at once",
                                  "split it into shorter pieces")
        return text

    def phonemize(self, text: str) -> list[list[str]]:
        """Normalised text -> phonemes per sentence (see phonemize.py); long sentences cut at a space."""
        sentences = ph.phonemize(normalize(self.check_text(text), self.language), self.espeak_voice)
        out = []
        for s in sentences:
            if self.phoneme_map:
                s = [q for p in s for q in self.phoneme_map.get(p, [p])]
            s = ph.merge_clusters(s, self.clusters)
            while len(s) > MAX_SENTENCE_PHONEMES:
                spaces = [i for i, p in enumerate(s[:MAX_SENTENCE_PHONEMES]) if p == " "]
                cut = spaces[-1] if spaces and spaces[-1] > 0 else MAX_SENTENCE_PHONEMES
                out.append(s[:cut])
                s = s[cut:]
                while s and s[0] == " ":
                    s = s[1:]
            if s:
                out.append(s)
        if not out:
            raise SpeechtuneError(f"nothing to speak in {text[:40]!r}", "pass words, not only punctuation")
        return out

    def phoneme_ids(self, phonemes: list[str]) -> list[int]:
        return ph.phoneme_ids(phonemes, self.id_map)


class PiperTextVoice:
    """What every voice that reads piper's phonemes shares (piper's VITS, FastSpeech2 on a piper voice's
    phonemes): text -> sentences of phonemes -> ids through `self.text` (a PiperText), and `synthesize`,
    which speaks each sentence with the subclass's `synthesize_ids(ids, speed, seed, speaker)` and joins
    them without extra silence (as piper's wav writer does)."""

    text: PiperText

    def check_text(self, text: str) -> str:
        return self.text.check_text(text)

    def phonemize(self, text: str) -> list[list[str]]:
        return self.text.phonemize(text)

    def phoneme_ids(self, phonemes: list[str]) -> list[int]:
        return self.text.phoneme_ids(phonemes)

    def synthesize(self, text: str, speed: float = 1.0, seed: int = 0, speaker=None) -> np.ndarray:
        """Text -> float32 mono waveform at `sample_rate`. speed in 0.25-4.0 (OpenAI's range)."""
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not SPEEDS[0] <= speed <= SPEEDS[1]:
            raise SpeechtuneError(f"speed must be between {SPEEDS[0]} and {SPEEDS[1]}, got {speed!r}")
        chunks = [self.synthesize_ids(self.phoneme_ids(s), float(speed), seed, speaker) for s in self.phonemize(text)]
        return np.concatenate(chunks).astype(np.float32)


class PiperVoice(PiperTextVoice):
    """voice.synthesize(text, speed=1.0) -> float32 mono at voice.sample_rate. See tts/__init__.py."""

    def __init__(self, onnx_path: Path, config_path: Path, name: str | None = None, aliases=(),
                 threads: int = 0, max_chars: int = MAX_CHARS):
        import onnx
        import onnxruntime as ort
        try:
            self.config = cfg = json.loads(Path(config_path).read_text(encoding="utf-8"))
            self.sample_rate = int(cfg["audio"]["sample_rate"])
            self.text = PiperText(cfg, max_chars)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SpeechtuneError(f"{config_path}: not a piper voice config ({e.__class__.__name__}: {e})",
                                  "a piper voice is X.onnx with its X.onnx.json beside it") from None
        if cfg.get("phoneme_type", "espeak") != "espeak":
            raise SpeechtuneError(f"{config_path}: phoneme_type {cfg.get('phoneme_type')!r} is not supported",
                                  "speechtune runs piper voices that read espeak-ng phonemes")
        self.path = Path(onnx_path)
        self.name = name or self.path.name.removesuffix(".onnx")
        self.aliases = tuple(dict.fromkeys([self.name, *aliases]))
        self.id_map, self.language, self.max_chars = self.text.id_map, self.text.language, max_chars
        inference = cfg.get("inference", {})
        self.noise_scale = float(inference.get("noise_scale", 0.667))
        self.length_scale = float(inference.get("length_scale", 1.0))
        self.noise_w = float(inference.get("noise_w", 0.8))
        self.speakers = dict(cfg.get("speaker_id_map") or {})
        self.num_speakers = int(cfg.get("num_speakers", 1))
        try:
            model = onnx.load(str(self.path))
        except Exception as e:
            raise SpeechtuneError(f"{self.path}: not a readable ONNX model ({e.__class__.__name__}: {e})") from None
        self._noise_inputs = _patch_noise(model)
        self.has_durations = _expose_durations(model)
        self.hop_length = int(cfg["audio"].get("hop_length", 256))  # samples per frame (piper's medium voices)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._noise: dict[int, dict] = {}
        self._noise_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PiperVoice({self.name!r}, {self.sample_rate} Hz, {self.path})"

    # -- ids -> audio -------------------------------------------------------------------------------------
    def _noise_feeds(self, seed: int) -> dict:
        with self._noise_lock:
            if seed not in self._noise:
                rng = np.random.default_rng(seed)
                if len(self._noise) > 4:
                    self._noise.pop(next(iter(self._noise)))
                self._noise[seed] = {n: rng.standard_normal(NOISE_SHAPE, dtype=np.float32)
                                     for n in self._noise_inputs}
            return self._noise[seed]

    def speaker_id(self, speaker) -> int | None:
        if self.num_speakers <= 1:
            return None
        if speaker is None:
            return 0
        if isinstance(speaker, str) and speaker in self.speakers:
            return int(self.speakers[speaker])
        if isinstance(speaker, int) and 0 <= speaker < self.num_speakers:
            return speaker
        raise SpeechtuneError(f"voice {self.name} has no speaker {speaker!r}",
                              f"choose from: {', '.join(self.speakers) or f'0-{self.num_speakers - 1}'}")

    def synthesize_ids(self, ids: list[int], speed: float = 1.0, seed: int = 0, speaker=None) -> np.ndarray:
        return self.render_ids(ids, speed, seed, speaker)[0]

    def render_ids(self, ids: list[int], speed: float = 1.0, seed: int = 0,
                   speaker=None) -> tuple[np.ndarray, np.ndarray | None]:
        """(audio, frames per id) for one sentence's ids; the durations are None for a graph without them.
        The audio is sum(durations) x hop_length samples long."""
        feeds = {"input": np.array([ids], dtype=np.int64), "input_lengths": np.array([len(ids)], dtype=np.int64),
                 "scales": np.array([self.noise_scale, self.length_scale / speed, self.noise_w], dtype=np.float32),
                 **self._noise_feeds(seed)}
        sid = self.speaker_id(speaker)
        if "sid" in self._inputs:
            feeds["sid"] = np.array([sid or 0], dtype=np.int64)
        outputs = self.session.run(None, feeds)
        audio = outputs[0].reshape(-1).astype(np.float32)
        durations = outputs[1].reshape(-1).astype(np.int64) if self.has_durations else None
        peak = float(np.abs(audio).max()) if audio.size else 0.0
        return (audio * (PEAK / peak) if peak > 1e-6 else np.zeros_like(audio)), durations
