"""Clips -> model inputs: log-mel features (or cached encoder outputs), labels with Whisper's prefix, batches.

A label row is the sequence after <|startoftranscript|>: the prefix without <|sot|>, then the text tokens, then
<|endoftext|>. `Clips.teacher` makes a batch's decoder inputs (<|sot|> and the row shifted right, as
`WhisperForConditionalGeneration` would from labels alone) and its targets, which differ from the rows in
one place: the token after <|sot|> (see Clips.teacher). Padding is -100 (ignored by the loss).

Audio is read from the prepared folder when a batch needs it and never kept, so a run's memory does not grow
with the number of clips (100 h of 16 kHz float32 audio is 23 GB). The training loop tells `Clips` which
micro-batches come next (`read_ahead`), and DataLoader worker processes decode and compute their log-mel
features while the model computes; `features()` then returns them, equal to what it would compute itself.
"""
from __future__ import annotations

import hashlib
import math
import random
import warnings
from pathlib import Path

import numpy as np

from ..audio import AudioError, SAMPLE_RATE, WINDOW_S, header_seconds, load_audio, resample
from ..errors import SpeechtuneError
from ..manifest import read_manifest
from ..runtimes.safeguards import no_speech_token

MAX_CLIP_S = WINDOW_S  # Whisper's encoder sees one window; a longer clip would be cut
# Micro-batches each worker computes ahead (DataLoader's prefetch_factor, at its default): one to hand over
# and one in the making is enough to hide decoding and log-mel (~40 ms a clip on one core) behind a step.
READ_AHEAD_PER_WORKER = 2


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


def clip_seconds(row: dict) -> float:
    """A clip's length: the manifest's, else what the file's header says (nothing is decoded)."""
    return row.get("duration") or header_seconds(row["audio"]) or 0.0


def label_prefix(generation_config, language: str | None) -> list[int]:
    """The prefix tokens a label row starts with: Whisper's decoder prompt without <|sot|>."""
    from ..models.whisper import prefix_ids

    multilingual = getattr(generation_config, "is_multilingual", False)
    return prefix_ids(generation_config, language if multilingual else None)[1:]


def text_ids(tokenizer, text: str) -> list[int]:
    """The text's tokens; none for an empty text (a non-speech clip), whose label is then the prefix and
    <|endoftext|>: what the model should write after the prefix every runtime forces is nothing."""
    if not text.strip():
        return []  # " " alone would be a token (220): the model would learn to write a space
    # A leading space matches how Whisper emits the first word after the prefix.
    return tokenizer.encode(" " + text.strip(), add_special_tokens=False)


def label_ids(tokenizer, generation_config, text: str, language: str | None, max_len: int) -> list[int]:
    ids = label_prefix(generation_config, language) + text_ids(tokenizer, text) + [generation_config.eos_token_id]
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


def augment_rng(seed: int, step: int, idx: list[int]) -> np.random.Generator:
    """The generator of one micro-batch's augmentation draws, from its position only (run seed, optimizer
    steps done, first clip), so a resumed run draws what an uninterrupted one did. It must be the one
    families/whisper.py `loss` makes: features read ahead with another are not used (only time is lost)."""
    return np.random.default_rng([seed, step, idx[0]])


def log_mel(fe, wavs: list[np.ndarray]):
    """(B, 80, 3000) log-mel, every clip padded to Whisper's 30 s window. Each clip goes through the feature
    extractor on its own, so its features do not depend on the batch (or the process) that computed them."""
    import torch

    return torch.cat([fe([w], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features for w in wavs])


def batch_features(rows: list[dict], fe, idx: list[int], rng: np.random.Generator | None = None, speed=(),
                   noise_snr=None):
    """Features of clips `idx`, read from disk (augmented with draws from `rng` when speed or noise is set)."""
    wavs = [read_wav(rows[i]) for i in idx]
    if rng is not None and (speed or noise_snr is not None):
        wavs = [augment(w, rng, list(speed), noise_snr) for w in wavs]
    return log_mel(fe, wavs)


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
    """Label rows padded with -100 to the longest; at least one column, so a CTC batch of non-speech clips
    (empty targets) is a (B, 1) tensor of padding, which transformers' CTC models take (an empty one they
    refuse: they read its max)."""
    import torch

    width = max(1, max(len(r) for r in label_rows))
    labels = torch.full((len(label_rows), width), -100, dtype=torch.long)
    for i, r in enumerate(label_rows):
        labels[i, : len(r)] = torch.tensor(r)
    return labels


class PlannedBatches:
    """A map-style dataset (torch's protocol) over planned micro-batches: item k is the features of
    `plan[k] = (step, clip indices)`, augmented with `augment_rng(seed, step, idx)` when speed or noise is set,
    with that generator's state before and after the draws. A user error comes back as a value (the loader
    would turn it into a traceback), to be raised when that batch is asked for."""

    def __init__(self, rows: list[dict], fe, plan: list[tuple[int, list[int]]], seed: int, speed=(),
                 noise_snr=None):
        self.rows, self.fe, self.plan, self.seed = rows, fe, plan, seed
        self.speed, self.noise_snr = tuple(speed or ()), noise_snr
        self.augmenting = bool(self.speed) or noise_snr is not None

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> dict:
        step, idx = self.plan[k]
        rng = augment_rng(self.seed, step, idx) if self.augmenting else None
        before = rng.bit_generator.state if rng is not None else None
        try:
            features = batch_features(self.rows, self.fe, idx, rng, self.speed, self.noise_snr)
        except SpeechtuneError as e:
            return {"k": k, "error": (e.message, e.hint)}
        return {"k": k, "features": features, "rng_before": before,
                "rng_after": rng.bit_generator.state if rng is not None else None}


def _as_is(item):
    return item


class ReadAhead:
    """Features of planned micro-batches computed by `workers` DataLoader processes, in plan order, at most
    `workers * READ_AHEAD_PER_WORKER` ahead of the batch last asked for. The loader starts at the first
    request that matches the plan (a run whose encoder outputs are all cached asks for none and starts none).

    `take()` answers a request only when it is what the plan computed: the same clips (for augmented
    batches the whole micro-batch, with a generator in the planned state, which it then advances as the
    draws did); anything else is left to the caller to compute, so a wrong plan costs time, never results.
    """

    def __init__(self, dataset: PlannedBatches, workers: int):
        self.dataset, self.workers = dataset, workers
        self.window = workers * READ_AHEAD_PER_WORKER + 1
        self.pos = 0            # the first plan entry that may still be asked for
        self.next = 0           # the plan entry the loader yields next
        self.batches = None     # the loader's iterator, once started
        self.ready: dict[int, dict] = {}
        self.hits = 0

    def take(self, idx: list[int], rng, speed, noise_snr):
        """The read-ahead features of clips `idx` (B, 80, 3000), or None when the plan does not hold them."""
        ds = self.dataset
        augmenting = rng is not None and (bool(speed) or noise_snr is not None)
        if augmenting != ds.augmenting or augmenting and (tuple(speed), noise_snr) != (ds.speed, ds.noise_snr):
            return None
        k = self._find(list(idx), augmenting)
        if k is None:
            return None
        item = self._item(k)
        if "error" in item:
            raise SpeechtuneError(*item["error"])
        if augmenting:
            if item["rng_before"] != rng.bit_generator.state:
                return None
            rng.bit_generator.state = item["rng_after"]
            self.pos = k + 1
        self.hits += 1
        planned = ds.plan[k][1]
        if list(idx) == planned:
            return item["features"]
        return item["features"][[planned.index(i) for i in idx]]

    def _find(self, idx: list[int], whole: bool) -> int | None:
        for k in range(self.pos, min(self.pos + self.window, len(self.dataset))):
            planned = self.dataset.plan[k][1]
            if (idx == planned) if whole else set(idx) <= set(planned):
                return k
        return None

    def _item(self, k: int) -> dict:
        """Plan entry k's result, pulling the loader up to it; results before k are dropped."""
        if self.batches is None:
            self.next = k
            self.batches = iter(self._loader(k))
        while self.next <= k:
            item = next(self.batches)
            self.ready[item["k"]] = item
            self.next += 1
        for old in [j for j in self.ready if j < k]:
            del self.ready[old]
        self.pos = max(self.pos, k)
        return self.ready[k]

    def _loader(self, start: int):
        import torch
        from torch.utils.data import DataLoader

        # its own generator: a loader seeds its workers from the global torch RNG otherwise, which would move
        # the dropout masks of the run (and break exact resumption)
        return DataLoader(self.dataset, batch_size=None, sampler=range(start, len(self.dataset)),
                          num_workers=self.workers, prefetch_factor=READ_AHEAD_PER_WORKER, collate_fn=_as_is,
                          generator=torch.Generator())

    def close(self) -> None:
        """Stop the workers (dropping the loader's iterator shuts them down) and drop what is ready."""
        self.batches = None
        self.ready.clear()


class Clips:
    """A training split: label ids, per-clip language and durations (the manifest's) in memory; audio read from
    disk when a batch needs it, never kept. Once told the coming micro-batches (`read_ahead`), their features
    are computed ahead in DataLoader worker processes."""

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
        self.durations = [clip_seconds(r) for r in rows]
        self.speech = [bool(r["text"].strip()) for r in rows]
        self.sot = generation_config.decoder_start_token_id
        self.pad = generation_config.pad_token_id if generation_config.pad_token_id is not None \
            else generation_config.eos_token_id
        self.no_speech = no_speech_token(generation_config)
        self.ahead: ReadAhead | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def teacher(self, idx: list[int]):
        """(decoder_input_ids, labels) for clips `idx`, (B, T) each: inputs <|sot|> + the label row but its last
        token (padded with the pad token), targets the label row with the token after <|sot|> ignored for
        speech and <|nospeech|> for a non-speech clip, padded with -100.

        That position is where Whisper predicts <|nospeech|> or not: the no-speech probability every runtime's
        no-speech gate reads. With the forced prefix as its target there, the demo's 50 steps took tiny.en's
        P(<|nospeech|>) on noise and hum from 0.82-0.95 to 0.13-0.22 (0.02-0.04 with --no-speech-ratio 0.2),
        and the tuned model wrote "you" on 12 of the 14 no-speech clips (base 4). So speech skips it (the
        runtimes force the prefix anyway) and a non-speech clip is taught <|nospeech|> there, as Whisper was
        trained (its paper's figure 1), then <|endoftext|> right after the forced prefix."""
        import torch
        rows = [self.labels[i] for i in idx]
        inputs = torch.full((len(rows), max(len(r) for r in rows)), self.pad, dtype=torch.long)
        labels = collate_labels(rows)
        for b, (i, r) in enumerate(zip(idx, rows)):
            inputs[b, : len(r)] = torch.tensor([self.sot, *r[:-1]])
            labels[b, 0] = -100 if self.speech[i] else self.no_speech
        return inputs, labels

    def wav(self, i: int) -> np.ndarray:
        """Clip i's waveform, read from disk (each call reads it again)."""
        return read_wav(self.rows[i])

    def read_ahead(self, plan: list[tuple[int, list[int]]], workers: int, seed: int = 0, speed=(),
                   noise_snr=None) -> None:
        """The micro-batches the loop runs next, in order, as (optimizer steps done, clip indices): `workers`
        processes compute their features ahead (0: none; an empty plan stops them). Replaces any plan before."""
        if self.ahead is not None:
            self.ahead.close()
        self.ahead = None
        if workers > 0 and plan:
            self.ahead = ReadAhead(PlannedBatches(self.rows, self.fe, plan, seed, speed, noise_snr), workers)

    def features(self, idx: list[int], rng: np.random.Generator | None = None, speed=(), noise_snr=None):
        """(B, 80, 3000) log-mel: Whisper's encoder only accepts 30 s windows, so every clip is padded. Read
        ahead when the plan holds these clips, else computed here; the same values either way."""
        if self.ahead is not None:
            ready = self.ahead.take(idx, rng, speed, noise_snr)
            if ready is not None:
                return ready
        return batch_features(self.rows, self.fe, idx, rng, speed, noise_snr)


def eval_rows(valid: list[dict], train: list[dict], max_clips: int) -> tuple[list[dict], str]:
    """The clips scored at each evaluation; without a valid split, a fixed slice of train (with a warning)."""
    if valid:
        return valid[:max_clips], "valid"
    warnings.warn("valid.jsonl is empty: evaluating on a slice of train, so the score measures memorisation, "
                  "not generalisation", stacklevel=2)
    step = max(1, math.ceil(len(train) / max_clips))
    return train[::step][:max_clips], "train-slice"
