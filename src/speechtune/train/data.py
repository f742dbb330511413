"""Clips -> model inputs: log-mel features (or cached encoder outputs), labels with Whisper's prefix, batches.

Labels follow what `WhisperForConditionalGeneration` expects when only `labels` are given: it builds the decoder
input by prepending `decoder_start_token_id` (<|startoftranscript|>) and shifting right, so a label row is the
prefix without <|sot|>, then the text tokens, then <|endoftext|>; padding is -100 (ignored by the loss).
"""
from __future__ import annotations

import hashlib
import math
import random
import warnings
from pathlib import Path

import numpy as np

from ..audio import AudioError, SAMPLE_RATE, WINDOW_S, load_audio, resample
from ..errors import SpeechtuneError
from ..manifest import read_manifest

MAX_CLIP_S = WINDOW_S  # Whisper's encoder sees one window; a longer clip would be cut


def load_split(path: Path, required: bool = True) -> list[dict]:
    """Rows of a prepared manifest; None-free `duration`. Missing/empty optional splits give []."""
    if not path.is_file() or path.stat().st_size == 0:
        if required:
            raise SpeechtuneError(f"{path}: missing or empty", "run `speechtune prepare` first; train needs clips")
        return []
    rows = read_manifest(path)
    for r in rows:
        if r["duration"] is None:
            r["duration"] = 0.0
        if r["duration"] > MAX_CLIP_S:
            raise SpeechtuneError(f"{path}:{r['line']}: clip is {r['duration']:.1f} s, Whisper trains on <= 30 s",
                                  "split long audio with `speechtune prepare` (it rejects clips over 30 s)")
    return rows


def data_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p and p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def read_wav(row: dict) -> np.ndarray:
    try:
        return load_audio(row["audio"])
    except AudioError as e:
        raise SpeechtuneError(f"{row['source']}: {e.reason} ({e.detail})", "re-run `speechtune prepare`") from None


def label_ids(tokenizer, generation_config, text: str, language: str | None, max_len: int) -> list[int]:
    from ..models.whisper import prefix_ids

    prefix = prefix_ids(generation_config, language if getattr(generation_config, "is_multilingual", False) else None)
    # A leading space matches how Whisper emits the first word after the prefix.
    text_ids = tokenizer.encode(" " + text.strip(), add_special_tokens=False)
    ids = prefix[1:] + text_ids + [generation_config.eos_token_id]
    if len(ids) > max_len:
        raise SpeechtuneError(f"transcript too long for the decoder ({len(ids)} tokens > {max_len}): {text[:60]!r}")
    return ids


def augment(wav: np.ndarray, rng: np.random.Generator, speed: list[float], noise_snr: float | None) -> np.ndarray:
    """Speed perturbation (resampling, so pitch moves too, as in Kaldi) and pink noise at an SNR."""
    if speed:
        factor = float(rng.choice(speed))
        if factor != 1.0:
            wav = resample(wav, int(round(SAMPLE_RATE * factor)), SAMPLE_RATE)
    if noise_snr is not None:
        from ..synth import add_noise
        wav = add_noise(wav, noise_snr, rng)
    return wav[: int(MAX_CLIP_S * SAMPLE_RATE)]


def batch_order(durations: list[float], batch_size: int, seed: int, epoch: int, group: int = 50) -> list[list[int]]:
    """Shuffled batches of clips of similar length (fewer padded label tokens), the same for the same
    seed and epoch: this is what lets a resumed run see exactly the batches an uninterrupted run would."""
    rng = random.Random(seed * 100_003 + epoch)
    idx = list(range(len(durations)))
    rng.shuffle(idx)
    chunk = batch_size * group
    batches = []
    for i in range(0, len(idx), chunk):
        part = sorted(idx[i:i + chunk], key=lambda j: durations[j])
        batches += [part[k:k + batch_size] for k in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def collate_labels(label_rows: list[list[int]]):
    import torch

    width = max(len(r) for r in label_rows)
    labels = torch.full((len(label_rows), width), -100, dtype=torch.long)
    for i, r in enumerate(label_rows):
        labels[i, : len(r)] = torch.tensor(r)
    return labels


class Clips:
    """A split held in memory: waveforms (decoded once), label ids, per-clip language."""

    def __init__(self, rows: list[dict], processor, generation_config, language: str | None, max_label_len: int):
        self.rows = rows
        self.fe = processor.feature_extractor
        multilingual = bool(getattr(generation_config, "is_multilingual", False))
        self.languages = [(r.get("language") or language) if multilingual else None for r in rows]
        if multilingual and any(lang is None for lang in self.languages):
            first = next(r for r, lang in zip(rows, self.languages) if lang is None)
            raise SpeechtuneError(f"{first['source']}: no language for a multilingual model",
                                  "set \"language\" in the manifest or pass --language")
        self.labels = [label_ids(processor.tokenizer, generation_config, r["text"], lang, max_label_len)
                       for r, lang in zip(rows, self.languages)]
        self._wavs: dict[int, np.ndarray] = {}
        self.durations = [r["duration"] or 0.0 for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def wav(self, i: int) -> np.ndarray:
        if i not in self._wavs:
            self._wavs[i] = read_wav(self.rows[i])
            self.durations[i] = len(self._wavs[i]) / SAMPLE_RATE
        return self._wavs[i]

    def features(self, idx: list[int], rng: np.random.Generator | None = None, speed=(), noise_snr=None):
        """(B, 80, 3000) log-mel: Whisper's encoder only accepts 30 s windows, so every clip is padded."""
        wavs = [self.wav(i) for i in idx]
        if rng is not None and (speed or noise_snr is not None):
            wavs = [augment(w, rng, list(speed), noise_snr) for w in wavs]
        return self.fe(wavs, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features


def eval_rows(valid: list[dict], train: list[dict], max_clips: int) -> tuple[list[dict], str]:
    """The clips scored at each evaluation; without a valid split, a fixed slice of train (with a warning)."""
    if valid:
        return valid[:max_clips], "valid"
    warnings.warn("valid.jsonl is empty: evaluating on a slice of train, so the score measures memorisation, "
                  "not generalisation", stacklevel=2)
    step = max(1, math.ceil(len(train) / max_clips))
    return train[::step][:max_clips], "train-slice"
