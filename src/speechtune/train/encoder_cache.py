"""With the bottom of the encoder frozen and no audio augmentation, a clip's hidden states at the top of the frozen
part never change: compute them once.

The encoder is most of a step's cost (every clip is a 30 s window), so caching turns later epochs into
decoder-only work (freeze-encoder, decoder-only LoRA), or into work on the few encoder layers that still train
(`--freeze-encoder-layers N` in full or LoRA mode). Hidden states are kept as fp16 in memory up to
`max_memory_mb`, and past that spilled to .npy files in `folder` (tiny.en: 1500 x 384 values, 1.1 MB per clip).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np


def frozen_depth(encoder) -> int | None:
    """How many encoder layers, from the bottom, have nothing to train (None: the conv stem trains, so nothing
    can be cached). Equal to the number of layers when the whole encoder, final norm included, is frozen."""
    def trains(*modules):
        return any(p.requires_grad for m in modules for p in m.parameters())

    if trains(encoder.conv1, encoder.conv2, encoder.embed_positions):
        return None
    depth = 0
    for layer in encoder.layers:
        if trains(layer):
            break
        depth += 1
    if depth == len(encoder.layers) and trains(encoder.layer_norm):
        depth -= 1  # keep the last layer out of the cache so the trainable norm sees pre-norm states
    return depth


def encode_bottom(encoder, features, depth: int):
    """Hidden states after the conv stem and `depth` layers; the whole encoder's output when depth is all of it.
    Tests compare against the HF encoder's hidden_states."""
    from ..models.whisper import encoder_stem

    if depth == len(encoder.layers):
        return encoder(features).last_hidden_state
    hidden = encoder_stem(encoder, features)
    for layer in encoder.layers[:depth]:
        hidden = layer(hidden, None)
    return hidden


def encode_top(encoder, hidden, depth: int):
    """The rest of the encoder, on states from `encode_bottom`: the layers that train, then the final norm."""
    if depth == len(encoder.layers):
        return hidden
    for layer in encoder.layers[depth:]:
        hidden = layer(hidden, None)
    return encoder.layer_norm(hidden)


class EncoderCache:
    def __init__(self, folder: Path, max_memory_mb: float, depth: int, autocast=contextlib.nullcontext):
        self.folder = Path(folder)
        # the encoder runs outside the model's forward, so the run's mixed precision must be applied here too
        self.autocast = autocast
        self.budget = max_memory_mb * 2 ** 20
        self.depth = depth
        self.used = 0
        self.memory: dict[int, np.ndarray] = {}
        self.on_disk: set[int] = set()
        self.note = ""  # what is cached, in words (the family sets it for the plan line)

    def __contains__(self, i: int) -> bool:
        return i in self.memory or i in self.on_disk

    def put(self, i: int, hidden: np.ndarray) -> None:
        hidden = hidden.astype(np.float16)
        if self.used + hidden.nbytes <= self.budget:
            self.memory[i] = hidden
            self.used += hidden.nbytes
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            np.save(self.folder / f"{i}.npy", hidden)
            self.on_disk.add(i)

    def get(self, i: int) -> np.ndarray:
        if i in self.memory:
            return self.memory[i]
        return np.load(self.folder / f"{i}.npy")

    def batch(self, idx: list[int], clips, encoder, device, dtype, batch_size: int | None = None):
        """(B, T, D) encoder outputs for clips `idx`: cached bottom states (computing the missing ones) through the
        encoder layers that train."""
        import torch

        # on a CPU the cache fills fastest one clip at a time: tiny.en's encoder took 226-234 ms a clip alone,
        # 277-282 ms in batches of 8 (the attention's working set outgrows the CPU caches)
        batch_size = batch_size or (1 if torch.device(device).type == "cpu" else 8)
        missing = [i for i in idx if i not in self]
        training = encoder.training
        encoder.eval()  # frozen means no dropout either: a cached state must be the same every epoch
        for k in range(0, len(missing), batch_size):
            part = missing[k:k + batch_size]
            features = clips.features(part).to(device, dtype)
            with torch.inference_mode(), self.autocast():
                hidden = encode_bottom(encoder, features, self.depth)
            for i, h in zip(part, hidden.float().cpu().numpy()):
                self.put(i, h)
        encoder.train(training)
        hidden = torch.from_numpy(np.stack([self.get(i) for i in idx])).to(device, dtype)
        with self.autocast():
            return encode_top(encoder, hidden, self.depth)

    def clear(self) -> None:
        for i in self.on_disk:
            (self.folder / f"{i}.npy").unlink(missing_ok=True)
        self.memory.clear()
        self.on_disk.clear()
        self.used = 0
