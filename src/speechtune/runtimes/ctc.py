"""Greedy CTC decoding, for any back end that gives frame logits: a transformers model (`hf`) or an ONNX export
(`onnx`).

A CTC model scores every output frame at once, so there is no autoregressive loop to run away: the text is
the best label of each frame, repeats merged, blanks dropped. Frame times come for free, which gives word
and segment timestamps. Audio longer than one chunk is decoded in overlapping chunks, each chunk's frames
near its edges dropped (they lack context), as transformers' ASR pipeline does for CTC.
"""
from __future__ import annotations

import json
from itertools import groupby
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE
from .base import DecodingOptions, Result, Segment, check_options, join_segments
from .safeguards import empty_result, inaudible, skip_inaudible

CHUNK_S = 20.0   # audio per forward pass for long files: attention cost grows with its square
STRIDE_S = 3.0   # context on each side of a chunk whose frames are decoded by the neighbouring chunk
# A pause this long between words starts a new segment; a segment is closed once it spans MAX_SEGMENT_S.
SEGMENT_GAP_S = 0.8
MAX_SEGMENT_S = 10.0


class AnyLanguage:
    """A CTC model reads no language token: every code is accepted (it still decides how a clip is scored)."""

    def __contains__(self, code) -> bool:
        return True


class CTCRuntime:
    """The runtime surface of base.py over `logits(inputs) -> (B, T, V) array`, where `inputs` is what the
    feature extractor makes of a padded batch (numpy arrays by name)."""
    supports = frozenset({"timestamps"})
    autoregressive = False  # decode-time safeguards (temperature fallback) have nothing to do here
    multilingual = True
    languages = AnyLanguage()

    def __init__(self, name: str, path: Path, feature_extractor, tokenizer, blank_id: int, logits):
        self.name, self.path = name, Path(path)
        self.fe, self.tokenizer, self.blank_id, self.logits = feature_extractor, tokenizer, blank_id, logits
        self.input_names = None  # None: every array the feature extractor returns

    def check_language(self, language: str | None) -> None:
        """Any code: the model is not told the language (it decides nothing here)."""

    def frame_ids(self, wavs: list[np.ndarray]) -> list[tuple[np.ndarray, float]]:
        """Each clip's best label per frame (padding frames cut off) and the seconds one frame covers."""
        inputs = self.fe(wavs, sampling_rate=SAMPLE_RATE, padding=True, return_tensors="np",
                         return_attention_mask=bool(getattr(self.fe, "return_attention_mask", False)))
        inputs = {k: v for k, v in inputs.items() if self.input_names is None or k in self.input_names}
        logits = self.logits(inputs)
        longest = max(len(w) for w in wavs)
        out = []
        for w, row in zip(wavs, logits):
            # frames scale with samples; a padded clip's own frames are the first len/longest of them
            n = max(1, min(len(row), round(len(row) * len(w) / longest)))
            out.append((row[:n].argmax(-1), len(w) / SAMPLE_RATE / n))
        return out

    def transcribe_batch(self, wavs, options: DecodingOptions, languages=None, prompts=None) -> list[Result]:
        """Texts of the clips. Inaudible ones get no text and no forward pass, by the Whisper runtimes' rule
        (safeguards.skip_inaudible; off with --no-safeguards)."""
        return skip_inaudible(self._transcribe_audible, list(wavs), options, languages, prompts, True)

    def _transcribe_audible(self, wavs, options: DecodingOptions, languages, prompts) -> list[Result]:
        results = []
        for w, (ids, frame_s) in zip(wavs, self.frame_ids(list(wavs))):
            results.append(self._result(ids, np.arange(len(ids)) * frame_s, frame_s, len(w) / SAMPLE_RATE,
                                        options))
        return results

    def transcribe(self, wav: np.ndarray, options: DecodingOptions) -> Result:
        """Any length: chunks of CHUNK_S with STRIDE_S of context on each side; each frame is taken from the
        chunk where it lies in the middle part."""
        check_options(self, options)
        if inaudible(wav, options):
            return empty_result(wav, options.language)
        chunk, stride = int(CHUNK_S * SAMPLE_RATE), int(STRIDE_S * SAMPLE_RATE)
        if len(wav) <= chunk:
            return self.transcribe_batch([wav], options)[0]
        step = chunk - 2 * stride
        ids, times, frame_s = [], [], 0.0
        for start in range(0, len(wav), step):
            lo = max(0, start - stride)
            piece = wav[lo:start + step + stride]
            (piece_ids, frame_s), = self.frame_ids([piece])
            t = lo / SAMPLE_RATE + np.arange(len(piece_ids)) * frame_s
            keep = (t >= start / SAMPLE_RATE) & (t < (start + step) / SAMPLE_RATE)
            ids.append(piece_ids[keep])
            times.append(t[keep])
        return self._result(np.concatenate(ids), np.concatenate(times), frame_s, len(wav) / SAMPLE_RATE, options)

    def _result(self, ids: np.ndarray, times: np.ndarray, frame_s: float, duration: float,
                options: DecodingOptions) -> Result:
        tokens = _emissions(ids, times, frame_s, self.blank_id)
        if not options.timestamps:
            return Result(self._text([t for t, _, _ in tokens]), options.language, duration)
        segments = [Segment(start=round(s, 3), end=round(min(e, duration), 3), text=self._text(ids_),
                            tokens=ids_) for s, e, ids_ in self._segments(tokens)]
        return Result(join_segments([s.text for s in segments]), options.language, duration, segments)

    def _text(self, token_ids: list[int]) -> str:
        # repeats are merged already (_emissions): grouping again would merge a word's double letters
        return self.tokenizer.decode(token_ids, group_tokens=False, skip_special_tokens=True).strip()

    def _segments(self, tokens):
        """(start, end, token ids) per segment: words split at the word delimiter, a subword's word-start
        mark or between Han characters; a new segment after a pause or once one runs long."""
        pieces = self.tokenizer.convert_ids_to_tokens([t for t, _, _ in tokens])
        segments, current = [], []
        for (tid, start, end), piece in zip(tokens, pieces):
            boundary = piece in ("|", " ") or piece.startswith("▁") or _is_han(piece)
            if current and boundary and (start - current[-1][2] > SEGMENT_GAP_S or
                                         end - current[0][1] > MAX_SEGMENT_S):
                segments.append(current)
                current = []
            current.append((tid, start, end))
        if current:
            segments.append(current)
        return [(seg[0][1], seg[-1][2], [t for t, _, _ in seg]) for seg in segments]


def _emissions(ids: np.ndarray, times: np.ndarray, frame_s: float, blank: int) -> list[tuple[int, float, float]]:
    """(token id, start s, end s) for each run of one non-blank label."""
    out, k = [], 0
    for tid, run in groupby(ids.tolist()):
        n = len(list(run))
        if tid != blank:
            out.append((tid, float(times[k]), float(times[k + n - 1]) + frame_s))
        k += n
    return out


def _is_han(piece: str) -> bool:
    return len(piece) == 1 and "\u3400" <= piece <= "\u9fff"


def hf_ctc_runtime(bundle) -> CTCRuntime:
    """A CTCRuntime over a loaded `models.CTCModel` (transformers forward, no gradients)."""
    import torch

    model = bundle.model

    def logits(inputs: dict) -> np.ndarray:
        dtype = next(model.parameters()).dtype
        tensors = {k: torch.from_numpy(v).to(model.device, dtype if v.dtype.kind == "f" else None)
                   for k, v in inputs.items()}
        with torch.inference_mode():
            return model(**tensors).logits.float().cpu().numpy()

    return CTCRuntime("hf", bundle.path, bundle.feature_extractor, bundle.tokenizer, bundle.blank_id, logits)


_ONNX_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
               "tensor(bool)": np.bool_}


def onnx_ctc_runtime(folder: Path, threads: int = 0) -> CTCRuntime:
    """A CTCRuntime over `model.onnx` of a CTC export (its feature extractor and tokenizer beside it)."""
    import onnxruntime as ort
    from transformers import AutoFeatureExtractor, AutoTokenizer

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    tokenizer = AutoTokenizer.from_pretrained(folder)

    kinds = {i.name: _ONNX_TYPES.get(i.type, np.float32) for i in session.get_inputs()}

    def logits(inputs: dict) -> np.ndarray:
        return session.run(["logits"], {k: v.astype(kinds[k]) for k, v in inputs.items()})[0]

    blank = json.loads((folder / "config.json").read_text())["pad_token_id"]
    runtime = CTCRuntime("onnx", folder, AutoFeatureExtractor.from_pretrained(folder), tokenizer, blank, logits)
    runtime.input_names = set(kinds)
    return runtime
