"""Predict GPU memory, time and cost of a fine-tuning run from the model's architecture.

Memory comes from the real module tree and layer shapes (weights, gradients of what trains, optimizer states,
activations kept for backward, CUDA overhead); time from FLOPs per step and each GPU's peak FLOP/s at an
assumed utilisation, which --calibrate replaces with one measured by running real steps here.

  speechtune estimate --model small --mode lora --batch-size 16 --dataset-hours 10 --epochs 3
  speechtune estimate --model small --mode lora --batch-size 16 --data prepared/ --epochs 3   (plan.data)
  speechtune estimate --model ./my-whisper --mode full --batch-size 8 --gpu A10 --calibrate --json
  speechtune estimate --model fastspeech2-tiny --batch-size 16 --data prepared-tts/ --epochs 200   (a voice)
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace

from ..config import add_dataclass_args, build_config
from ..errors import SpeechtuneError
from ..train.config import train_default
from .setup import MODES

DEFAULT_CLIP_SECONDS = 5.0  # average clip length assumed for --dataset-hours without --data or --clip-seconds


# Options that speechtune train has too take its names and defaults, so that an estimate describes the run
# train would do (precision excepted: train's "auto" depends on the GPU, an estimate names one).
@dataclass
class EstimateConfig:
    model: str | None = field(default=None, metadata={"help": "catalog name (tiny, small, large-v3, "
                                                      "wav2vec2-base, ...), fastspeech2-tiny (a fresh voice) or "
                                                      "a model spec/folder (a voice folder too)"})
    mode: str | None = field(default=train_default("mode"), metadata={"choices": list(MODES),
                                                                      "help": "what trains (default: train's)"})
    lora_r: int = field(default=train_default("lora_r"), metadata={"help": "LoRA rank"})
    lora_targets: list[str] | None = field(default=train_default("lora_targets"),
                                           metadata={"help": "linears that get LoRA adapters (default: train's)"})
    lora_dropout: float = field(default=train_default("lora_dropout"), metadata={"help": "LoRA dropout"})
    lora_encoder: bool = field(default=train_default("lora_encoder"),
                               metadata={"help": "Whisper: adapters in the encoder too (otherwise decoder only, "
                                                 "encoder outputs cached)"})
    batch_size: int = field(default=train_default("batch_size"), metadata={"help": "clips per micro-batch"})
    grad_accum: int = field(default=train_default("grad_accum"),
                            metadata={"help": "micro-batches per optimizer step"})
    precision: str = field(default="bf16", metadata={"choices": ["fp32", "bf16", "fp16"],
                                                     "help": "bf16/fp16 = autocast mixed precision"})
    optimizer: str = field(default="adamw", metadata={"choices": ["adamw", "adamw-8bit"]})
    gradient_checkpointing: bool = field(default=train_default("gradient_checkpointing"),
                                         metadata={"help": "recompute layer activations in backward"})
    # its name before it took speechtune train's; None = not given
    grad_checkpointing: bool | None = field(default=None, metadata={"help": "deprecated: the old name of "
                                                                    "--gradient-checkpointing"})
    data: str | None = field(default=None, metadata={"help": "prepared folder (or manifest): clips, hours, clip "
                                                     "lengths and label lengths (the model's tokenizer) from its "
                                                     "train.jsonl"})
    # None = from --data, else the default in the help
    audio_seconds: float | None = field(default=None, metadata={"help": "encoder input length (Whisper pads to "
                                                                "30; CTC: --data's longest clip, else 30; a "
                                                                "voice: its mel frames, --data's longest, else 15)"})
    label_tokens: int | None = field(default=None, metadata={"help": "decoder/label length of the longest batch "
                                                             "(default: --data's longest label, else 448; a voice: "
                                                             "its phoneme ids, --data's longest, else 450)"})
    dataset_hours: float | None = field(default=None, metadata={"help": "hours of training audio (default: "
                                                                "--data's)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the data"})
    clip_seconds: float | None = field(default=None, metadata={"help": "average clip length, for the clip count "
                                                               "from --dataset-hours (default: --data's, else 5)"})
    gpu: list[str] = field(default_factory=lambda: ["all"], metadata={"help": "GPU names from the catalog, or all"})
    utilisation: float | None = field(default=None, metadata={"help": "fraction of peak FLOP/s reached "
                                                              "(default by model width: 0.15-0.35)"})
    price: list[str] = field(default_factory=list, metadata={"help": "override $/h, e.g. A10=0.60 H100=2.10"})
    calibrate: bool = field(default=False, metadata={"help": "run a few real steps here to measure speed"})
    calibrate_steps: int = field(default=3, metadata={"help": "timed steps for --calibrate"})
    json: bool = field(default=False, metadata={"help": "print JSON instead of tables"})


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML file with any of these options")
    add_dataclass_args(parser, EstimateConfig)


def _prices(items: list[str]) -> dict:
    from .catalog import find_gpu
    out = {}
    for item in items:
        name, _, usd = item.partition("=")
        g = find_gpu(name)
        try:
            value = float(usd)
        except ValueError:
            value = None
        if g is None or value is None or value < 0:
            raise SpeechtuneError(f"--price {item!r}: expected GPU=USD_PER_HOUR with a catalog GPU",
                                  "e.g. --price A10=0.60")
        out[g.name] = value
    return out


def run(cfg: EstimateConfig):
    from .calibrate import calibrate
    from .estimate import estimate_setup
    from .setup import setup_from_config
    if not cfg.model:
        raise SpeechtuneError("--model is required", "a catalog name like small or large-v3, or a model folder")
    gpus = None if [g.lower() for g in cfg.gpu] == ["all"] else cfg.gpu
    if cfg.utilisation is not None and not 0 < cfg.utilisation <= 1:
        raise SpeechtuneError("--utilisation must be in (0, 1]")
    checkpointing = cfg.gradient_checkpointing
    if cfg.grad_checkpointing is not None:
        print("note: --grad-checkpointing is deprecated; use --gradient-checkpointing (speechtune train's name)",
              file=sys.stderr)
        checkpointing = cfg.grad_checkpointing
    from .info import model_info
    family = model_info(cfg.model).family
    figures, from_data = _data(cfg, family)
    # EstimateConfig has train's field names: the run is built from it as from a TrainConfig (for a GPU).
    s = setup_from_config(cfg, family, device="cuda", gradient_checkpointing=checkpointing, **from_data)
    cal = None
    if cfg.calibrate:
        import torch
        # On a CPU, training runs in fp32 (speechtune train autocasts on CUDA only): calibrate what would run.
        precision = cfg.precision if torch.cuda.is_available() else "fp32"
        cal = calibrate(cfg.model, setup=replace(s, precision=precision), steps=cfg.calibrate_steps)
    clips = figures.clips if figures and cfg.dataset_hours is None else None
    clip_seconds = cfg.clip_seconds or (figures.clip_seconds["mean"] if figures else DEFAULT_CLIP_SECONDS)
    return estimate_setup(cfg.model, s, dataset_hours=cfg.dataset_hours, epochs=cfg.epochs, clips=clips,
                          clip_seconds=clip_seconds, gpus=gpus, utilisation=cfg.utilisation,
                          prices=_prices(cfg.price), calibration=cal, data=figures)


def _data(cfg: EstimateConfig, family: str) -> tuple:
    """(plan.data.DataFigures of --data or None, the Setup fields taken from it: those not given as flags)."""
    if not cfg.data:
        return None, {}
    from .data import data_figures, setup_options
    figures = data_figures(cfg.data, cfg.model)
    taken = setup_options(figures, family)
    return figures, {k: v for k, v in taken.items() if getattr(cfg, k) is None}


def _hours(h):
    if h is None:
        return "-"
    if h < 1 / 60:
        return "<1 min"
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


def _money(usd):
    if usd is None:
        return "-"
    return "<0.01" if usd < 0.01 else f"{usd:.2f}"


def render(est, console) -> None:
    from rich.table import Table

    from .memory import GiB
    m = est.memory
    head = (f"[bold]{est.model}[/] ({est.family}, {est.params_total / 1e6:.1f}M parameters, "
            f"{est.params_trainable / 1e6:.2f}M train) - {est.mode}"
            f"{f' r={est.lora_rank}' if est.lora_rank else ''}, {est.precision}, {est.optimizer}, batch "
            f"{est.batch_size}{f' x{est.grad_accum} accumulation' if est.grad_accum > 1 else ''}"
            f"{', gradient checkpointing' if est.grad_checkpointing else ''}; audio {est.audio_seconds:g} s, "
            f"{est.label_tokens} {'phoneme ids' if est.family == 'tts' else 'label tokens'}")
    console.print(head)
    if est.data:
        console.print(f"  data {est.data['manifest']}: {', '.join(est.data['from_data'])}")
    mem = Table(title="GPU memory at the peak", title_justify="left")
    mem.add_column("component")
    mem.add_column("GiB", justify="right")
    for key, label in (("weights", "weights (fp32 master copy)"), ("gradients", "gradients alive at the peak"),
                       ("optimizer", f"optimizer states ({est.optimizer})"),
                       ("activations", "activations + temporaries"), ("overhead", "CUDA context + workspace")):
        mem.add_row(label, f"{m[key] / GiB:.2f}")
    mem.add_row("[bold]peak total[/]", f"[bold]{m['total'] / GiB:.2f}[/]")
    console.print(mem)
    console.print(f"  the peak comes during the {m['peak_at']}")
    t = Table(title="per GPU", title_justify="left")
    for col in ("GPU", "memory GiB", "fits", "headroom GiB", "max batch", "s/step", "epoch", "total", "cost $",
                "$/h"):
        t.add_column(col, justify="left" if col in ("GPU", "fits") else "right")
    for r in est.gpus:
        colour = {"fits": "green", "tight": "yellow", "measured": "cyan"}.get(r.status, "red")
        t.add_row(r.gpu, f"{r.memory_gib:.0f}" if r.memory_gib else "-", f"[{colour}]{r.status}[/]",
                  f"{r.headroom_gib:.1f}" if r.memory_gib and r.step_seconds else "-",
                  str(r.max_batch) if r.memory_gib and r.step_seconds else "-",
                  f"{r.step_seconds:.3g}" if r.step_seconds else "-", _hours(r.epoch_hours),
                  _hours(r.total_hours), _money(r.cost_usd),
                  f"{r.usd_per_hour:.2f}" if r.memory_gib else "-")
    console.print(t)
    if est.calibration:
        c = est.calibration
        meas = c.get("measured_peak_bytes")
        line = f"calibration on {c['device']}: {c['step_seconds']:.2f} s/step, {c['achieved_flops'] / 1e12:.3g} TFLOP/s"
        if meas:
            line += (f"; memory above the weights measured {meas / GiB:.2f} GiB vs predicted "
                     f"{c['predicted_peak_bytes'] / GiB:.2f} GiB (for that device)")
        console.print(line)
    console.print(f"[bold]recommendation:[/] {est.recommendation}")
    for note in est.notes:
        console.print(f"  note: {note}")


def _piper(cfg: EstimateConfig) -> int:
    """A piper voice's estimate (plan/piper.py): --data's train clips x --epochs at --batch-size."""
    from pathlib import Path

    from .piper import estimate, render
    clips = None
    if cfg.data:
        train = Path(cfg.data) / "train.jsonl" if Path(cfg.data).is_dir() else Path(cfg.data)
        if not train.is_file():
            raise SpeechtuneError(f"--data {cfg.data}: no train.jsonl", "pass a folder `speechtune prepare` wrote")
        clips = sum(1 for line in train.read_text(encoding="utf-8").splitlines() if line.strip())
    est = estimate(cfg.model, cfg.batch_size, clips=clips, epochs=cfg.epochs)
    if cfg.json:
        json.dump(est.to_dict(), sys.stdout, indent=2)
        print()
    else:
        print(render(est))
    return 0


def main(args) -> int:
    cfg = build_config(EstimateConfig, getattr(args, "config", None), args)
    from ..families import piper
    if cfg.model and piper.claims(cfg.model):
        return _piper(cfg)
    est = run(cfg)
    if cfg.json:
        json.dump(est.to_dict(), sys.stdout, indent=2)
        print()
        return 0
    from rich.console import Console
    render(est, Console())
    return 0
