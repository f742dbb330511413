"""`speechtune estimate` for a piper voice (families/piper.py): memory and time of a fine-tune, from piper's
medium architecture and what benchmarks/piper_learn.py measured, not from a layer-by-layer model.

piper's model cannot be built here (piper-tts is GPL-3.0 and runs only in its own process), so its sizes are
constants, counted once from piper-tts 1.8's VitsModel; the step time and peak memory are the benchmark's.
A GPU's time is not claimed: none was measured (docs/benchmarks.md says which runs exist).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

GENERATOR_PARAMS = 23_663_792       # SynthesizerTrn, medium (joe): what inference uses plus the posterior encoder
DISCRIMINATOR_PARAMS = 46_747_132   # MultiPeriodDiscriminator: trains alongside, discarded by export
BYTES_PER_TRAINED_PARAM = 16        # fp32 weight + gradient + AdamW's two moments (piper trains in fp32)
# benchmarks/piper_learn.py, 2-core CPU, batch 4, LJSpeech clips of 1.5-9.7 s (docs/benchmarks.md, "Voices"):
# seconds per step after the warm-up (all parts training) and during it (the fresh parts and the
# discriminator), and the worker's peak RSS (GiB) in a 12-step fit of the same data
CPU_MEASURED = {"batch_size": 4, "s_per_step": 4.2, "s_per_warmup_step": 4.0, "peak_rss_gb": 5.3}


@dataclass(frozen=True)
class PiperEstimate:
    model: str
    params: dict
    static_gb: float          # weights, gradients and optimizer states of generator and discriminator
    steps: int | None
    cpu_hours: float | None   # at the measured CPU rate, scaled linearly with the batch size
    measured: dict

    def to_dict(self) -> dict:
        return asdict(self)


def estimate(model: str, batch_size: int, steps: int | None = None, clips: int | None = None,
             epochs: float | None = None) -> PiperEstimate:
    """The estimate of `steps` (or `epochs` passes over `clips`) at `batch_size`."""
    from ..families.piper import WARMUP_FRACTION
    if steps is None and clips:
        steps = max(1, math.ceil((epochs or 1) * math.ceil(clips / batch_size)))
    static = (GENERATOR_PARAMS + DISCRIMINATOR_PARAMS) * BYTES_PER_TRAINED_PARAM / 2**30
    hours = None
    if steps:
        scale = batch_size / CPU_MEASURED["batch_size"]
        warm = round(WARMUP_FRACTION * steps)
        hours = scale * (warm * CPU_MEASURED["s_per_warmup_step"] + (steps - warm) * CPU_MEASURED["s_per_step"]) / 3600
    return PiperEstimate(model, {"generator": GENERATOR_PARAMS, "discriminator": DISCRIMINATOR_PARAMS},
                         round(static, 2), steps, None if hours is None else round(hours, 2), dict(CPU_MEASURED))


def render(est: PiperEstimate) -> str:
    p = est.params
    lines = [f"{est.model} (piper VITS medium: {p['generator'] / 1e6:.1f}M generator + "
             f"{p['discriminator'] / 1e6:.1f}M discriminator parameters, trained in fp32)",
             f"weights, gradients and AdamW states: {est.static_gb:.2f} GB; measured peak memory on a 2-core CPU at "
             f"batch {est.measured['batch_size']}: {est.measured['peak_rss_gb']:.1f} GB"]
    if est.steps:
        lines.append(f"{est.steps} steps: about {est.cpu_hours:.1f} h on a 2-core CPU (measured "
                     f"{est.measured['s_per_step']} s a step at batch {est.measured['batch_size']}, scaled by batch)")
    lines.append("GPU memory and time: not measured for piper yet (docs/benchmarks.md)")
    return "\n".join(lines)
