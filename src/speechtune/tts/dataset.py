"""The training split of a FastSpeech2 voice: per clip, the base voice's phoneme ids, each id's duration in
frames (tts/align.py), the recording's log-mel frames, and token-averaged pitch and energy.

FastSpeech2Conformer in train mode needs all four labels. Pitch is log f0 averaged over each token's voiced
frames, energy the mean frame energy; both are standardised with the split's own token statistics, and
unvoiced tokens' pitch is 0, as ESPnet's FastSpeech2 recipe does. The log-mel frames are standardised per
band too (ESPnet's global MVN): the model learns unit-variance targets, and a voice turns its output back
with `fastspeech.denormalize_mel`. All statistics are kept in `stats` and saved with the voice.

Features are computed once, when the split is built (about 0.1 s a clip, most of it the base voice's
reading for the alignment), and held in memory: a voice's recordings are minutes, not hours.
"""
from __future__ import annotations

import sys

import numpy as np

from ..audio import AudioError, load_audio
from ..errors import SpeechtuneError
from . import align, features


def _clip_features(row: dict, voice) -> dict:
    try:
        wav = load_audio(row["audio"], sr=voice.sample_rate)
    except AudioError as e:
        raise SpeechtuneError(f"{row.get('source', row['audio'])}: {e.reason} ({e.detail})",
                              "re-run `speechtune prepare --task tts`") from None
    try:
        ids, durations = align.align(voice, row["text"], wav, voice.sample_rate)
    except SpeechtuneError as e:
        raise SpeechtuneError(f"{row.get('source', row['audio'])}:{row.get('line', '?')}: {e.message}", e.hint) from None
    f0, energy = features.pitch(wav, voice.sample_rate), features.energy(wav)
    log_f0 = np.where(f0 > 0, np.log(np.maximum(f0, 1.0)), 0.0)
    return {"ids": ids, "durations": durations, "mel": features.log_mel(wav, voice.sample_rate),
            "pitch": features.token_average(log_f0, durations, voiced_only=True),
            "energy": features.token_average(energy, durations), "seconds": len(wav) / voice.sample_rate}


def _stats(values: list[np.ndarray], skip_zeros: bool) -> list[float]:
    x = np.concatenate(values) if values else np.zeros(1)
    if skip_zeros:
        x = x[x != 0]
    return [float(x.mean()) if x.size else 0.0, float(x.std()) if x.size > 1 and x.std() > 0 else 1.0]


def _band_stats(mels: list[np.ndarray]) -> list[list[float]]:
    x = np.concatenate(mels)
    return [x.mean(axis=0).tolist(), np.maximum(x.std(axis=0), 1e-3).tolist()]


class VoiceClips:
    """clips.durations: seconds per clip (for batching); clips.batch(idx) -> the model's keyword arguments
    (input_ids, attention_mask and the four labels, padded: mel frames with -100 as the model masks them)."""

    def __init__(self, rows: list[dict], voice, stats: dict | None = None, progress: bool = True):
        self.items = []
        for i, row in enumerate(rows):
            self.items.append(_clip_features(row, voice))
            if progress and (i + 1) % 50 == 0:
                print(f"voice features: {i + 1}/{len(rows)} clips", file=sys.stderr)
        self.stats = stats or {"pitch": _stats([c["pitch"] for c in self.items], skip_zeros=True),
                               "energy": _stats([c["energy"] for c in self.items], skip_zeros=False),
                               "mel": _band_stats([c["mel"] for c in self.items])}
        self._mel_mean, self._mel_std = (np.asarray(x, np.float32) for x in self.stats["mel"])
        self.durations = [c["seconds"] for c in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def _norm(self, c: dict, name: str) -> np.ndarray:
        mean, std = self.stats[name]
        x = (c[name] - mean) / std
        return np.where(c[name] != 0, x, 0.0) if name == "pitch" else x

    def batch(self, idx: list[int]) -> dict:
        import torch
        items = [self.items[i] for i in idx]
        n = max(len(c["ids"]) for c in items)
        t = max(len(c["mel"]) for c in items)
        ids = torch.zeros(len(items), n, dtype=torch.long)
        mask = torch.zeros(len(items), n, dtype=torch.long)
        dur = torch.zeros(len(items), n, dtype=torch.long)
        pitch, energy = torch.zeros(len(items), n, 1), torch.zeros(len(items), n, 1)
        mel = torch.full((len(items), t, features.N_MELS), -100.0)
        for b, c in enumerate(items):
            k, f = len(c["ids"]), len(c["mel"])
            ids[b, :k], mask[b, :k], dur[b, :k] = torch.from_numpy(c["ids"]), 1, torch.from_numpy(c["durations"])
            pitch[b, :k, 0] = torch.from_numpy(self._norm(c, "pitch").astype(np.float32))
            energy[b, :k, 0] = torch.from_numpy(self._norm(c, "energy").astype(np.float32))
            mel[b, :f] = torch.from_numpy((c["mel"] - self._mel_mean) / self._mel_std)
        return {"input_ids": ids, "attention_mask": mask, "spectrogram_labels": mel, "duration_labels": dur,
                "pitch_labels": pitch, "energy_labels": energy}
