"""With the encoder frozen and no audio augmentation, a clip's encoder output never changes: compute it once.

The encoder is most of a step's cost (every clip is a 30 s window), so caching turns later epochs into
decoder-only work. Outputs are kept as fp16 in memory up to `max_memory_mb`, and past that spilled to .npy files
in `folder` (tiny.en: 1500 x 384 values, 1.1 MB per clip in fp16).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class EncoderCache:
    def __init__(self, folder: Path, max_memory_mb: float):
        self.folder = Path(folder)
        self.budget = max_memory_mb * 2 ** 20
        self.used = 0
        self.memory: dict[int, np.ndarray] = {}
        self.on_disk: set[int] = set()

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

    def batch(self, idx: list[int], clips, encoder, device, dtype, batch_size: int = 8):
        """(B, T, D) encoder outputs for clips `idx`, computing and storing the missing ones."""
        import torch

        missing = [i for i in idx if i not in self]
        for k in range(0, len(missing), batch_size):
            part = missing[k:k + batch_size]
            with torch.inference_mode():
                hidden = encoder(clips.features(part).to(device, dtype)).last_hidden_state
            for i, h in zip(part, hidden.float().cpu().numpy()):
                self.put(i, h)
        return torch.from_numpy(np.stack([self.get(i) for i in idx])).to(device, dtype)

    def clear(self) -> None:
        for i in self.on_disk:
            (self.folder / f"{i}.npy").unlink(missing_ok=True)
        self.memory.clear()
        self.on_disk.clear()
        self.used = 0
