"""A FastSpeech2 voice exported to ONNX (`speechtune export VOICE --format onnx`), run by onnxruntime: the
same surface as FastSpeechVoice (tts/__init__.py), the same Griffin-Lim after the mel frames, no torch.

An exported voice folder holds:

    model.onnx               input_ids int64 [1, ids], length_scale float32 [1] (1 / speed) ->
                             mel float32 [1, frames, N_MELS], durations int64 [1, ids] (frames per id)
    phonemes.json, speechtune_voice.json    as in the trained folder (tts/fastspeech.py)
    speechtune_export.json   what export wrote (format, quantization, source); export_summary.json (parity)

The graph is written by speechtune.export.onnx_tts.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SpeechtuneError
from .fastspeech import MAX_FRAMES_PER_ID, FastSpeechVoice, denormalize_mel, is_voice_folder, read_folder
from .piper import MAX_CHARS

GRAPH = "model.onnx"
INPUTS = ("input_ids", "length_scale")
OUTPUTS = ("mel", "durations")


def is_onnx_voice_folder(path) -> bool:
    """Whether `path` is an exported FastSpeech2 voice (its graph beside the two voice files)."""
    return is_voice_folder(path) and (Path(path) / GRAPH).is_file()


class OnnxFastSpeechVoice(FastSpeechVoice):
    """FastSpeechVoice with the model's forward pass in onnxruntime. Deterministic as FastSpeechVoice is; one
    session is safe to call from several threads (onnxruntime's `run` is)."""

    def __init__(self, session, phonemes: dict, meta: dict, path: Path | None = None, max_chars: int = MAX_CHARS,
                 aliases=()):
        super().__init__(None, phonemes, meta, path=path, max_chars=max_chars, aliases=aliases)
        self.session = session

    @classmethod
    def load(cls, folder: Path, threads: int = 0, max_chars: int = MAX_CHARS, aliases=()) -> "OnnxFastSpeechVoice":
        import onnxruntime as ort
        folder = Path(folder)
        meta, phonemes = read_folder(folder)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(folder / GRAPH), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise SpeechtuneError(f"{folder / GRAPH}: onnxruntime cannot load it ({e.__class__.__name__})",
                                  "re-run `speechtune export`, which writes a complete folder") from None
        names = tuple(i.name for i in session.get_inputs())
        if names != INPUTS:
            raise SpeechtuneError(f"{folder / GRAPH}: inputs {', '.join(names)}, not a speechtune FastSpeech2 graph",
                                  "re-run `speechtune export` on the trained voice folder")
        return cls(session, phonemes, meta, path=folder, max_chars=max_chars, aliases=aliases)

    def __repr__(self) -> str:
        return f"OnnxFastSpeechVoice({self.name!r}, {self.sample_rate} Hz, {self.path})"

    def run_ids(self, ids: list[int], speed: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(mel [frames, N_MELS], durations [ids]) of one sentence, as the graph gives them (not clipped)."""
        # float32(1 / speed): the torch model multiplies its float32 durations by the Python float, in float32
        feeds = {"input_ids": np.asarray([ids], np.int64), "length_scale": np.asarray([1.0 / speed], np.float32)}
        mel, durations = self.session.run(list(OUTPUTS), feeds)
        return mel[0], durations[0]

    def mel_ids(self, ids: list[int], speed: float = 1.0) -> np.ndarray:
        """One sentence's ids -> its predicted log-mel frames [n_frames, N_MELS] (FastSpeechVoice.mel_ids)."""
        return denormalize_mel(self.run_ids(ids, speed)[0], self.meta)[: MAX_FRAMES_PER_ID * len(ids)]
