"""Checkpoints a kill -9 cannot break: each is written into a temporary folder, then renamed into place.

A checkpoint is `checkpoints/step-000120/` holding `weights.safetensors` (the trainable tensors only, and the
buffers of the modules that own them: the whole model in `full` mode, the decoder when the encoder is frozen,
the adapter in `lora` mode; the rest comes from the base model) and `trainer.pt` (optimizer, scheduler, step, data position, RNG states, eval history).
Folders whose name is not `step-N` (an interrupted save) are ignored and swept away.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np

STEP_RE = re.compile(r"^step-(\d+)$")


def rng_state() -> dict:
    import torch
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict:
    """The trainable parameters, and the buffers of the modules that own them: a trained BatchNorm's running
    statistics change with its weights (FastSpeech2's postnet), and without them a resumed run or the chosen
    checkpoint would not be the model that was evaluated."""
    # named_parameters lists a tied weight once (proj_out shares the token embedding).
    out = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}
    state = set(model.state_dict(keep_vars=True))  # a non-persistent buffer is not part of the model's state
    for prefix, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            for name, b in module.named_buffers(prefix=prefix, recurse=False):
                if name in state:
                    out[name] = b.detach().to("cpu").contiguous()
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(root: Path, step: int, weights: dict, trainer: dict) -> Path:
    """Write checkpoint `step` atomically and return its folder."""
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(weights, str(tmp / "weights.safetensors"))
        torch.save(trainer, tmp / "trainer.pt")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # the same step saved twice (eval and end of run): replace it
            old = root / f".step-{step:06d}.old{os.getpid()}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def steps(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := STEP_RE.match(p.name)))


def latest(root: Path) -> Path | None:
    s = steps(root)
    return root / f"step-{s[-1]:06d}" if s else None


def load(path: Path) -> tuple[dict, dict]:
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(path / "weights.safetensors"))
    # Our own file: RNG states hold numpy arrays and tuples, which weights_only loading refuses.
    trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
    return weights, trainer


def load_weights(model, weights: dict) -> None:
    missing = set(weights) - set(model.state_dict(keep_vars=True))
    if missing:
        raise RuntimeError(f"checkpoint tensors not in the model: {sorted(missing)[:5]}")
    model.load_state_dict(weights, strict=False)


def sweep(root: Path) -> None:
    """Remove leftovers of saves that were interrupted."""
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith(".step-"):
                shutil.rmtree(p, ignore_errors=True)


def prune(root: Path, keep: int, protect: set[int]) -> None:
    """Keep the newest `keep` checkpoints plus the protected ones (the best so far)."""
    s = steps(root)
    for step in s[:-keep] if keep > 0 else s:
        if step not in protect:
            shutil.rmtree(root / f"step-{step:06d}", ignore_errors=True)
