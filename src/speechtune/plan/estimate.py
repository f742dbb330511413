"""GPU memory, time and cost of fine-tuning, per GPU in the catalog, and the summary `speechtune train` prints.

Memory and FLOPs of one step come from the model's real module tree and layer shapes (plan.memory). Time is
FLOPs / (peak FLOP/s x utilisation); the utilisation is an assumption by model width until `calibrate()`
(plan.calibrate) runs real steps and replaces it with the measured one.

    plan.info       ModelInfo: a model's config and module tree, from a name, folder, config or loaded model
    plan.setup      Setup: the run's options under speechtune train's names; setup_from_config(TrainConfig)
    plan.memory     bytes and FLOPs of one training step, block by block
    plan.estimate   this module: Estimate, estimate(), max_batch(), the recommendation, format_summary()
    plan.calibrate  real training steps here: measured time, FLOP/s and peak memory
    plan.data       a prepared folder's clips, hours and label lengths (--data)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from ..errors import SpeechtuneError
from . import catalog
from .calibrate import calibrate
from .info import ModelInfo, gpu_catalog_name, model_info
from .memory import GiB, flops, memory, tts_shape
from .setup import Setup, check_family, setup_from_config, setup_from_options, split_options

# calibrate and GiB lived here before the split: still importable from here
__all__ = ["Estimate", "GiB", "GpuRow", "calibrate", "estimate", "estimate_for_training", "estimate_setup",
           "format_summary", "max_batch"]

# Fraction of the tensor-core peak that eager PyTorch + SDPA fine-tuning sustains, data loading included.
# Wide layers keep the tensor cores busy (large models: about a third of peak); narrow ones (tiny/base,
# d_model <= 512) are bound by kernel launches and memory traffic. These are assumptions, not measurements:
# `--calibrate` on the target GPU replaces them.
UTILISATION_BY_WIDTH = ((512, 0.15), (1024, 0.25), (10**9, 0.35))
FIT_FRACTION = 0.92               # leave ~8% for the caching allocator's fragmentation
# What a CPU training process holds besides the tensors plan.memory counts (on a GPU those are host memory, not
# in the figure): the interpreter, torch, transformers, accelerate, peft, the tokenizer, and what the base
# model's evaluation leaves in the heap. Measured: `speechtune train` on tiny.en just before its first step,
# resident set minus weights, 479 (freeze-encoder), 525 (full), 566 MB (LoRA); benchmarks/train_memory.py.
CPU_PROCESS = 525 * 2**20
WHISPER_MAX_LABELS = 448          # Whisper's decoder length: the label-token default without --data, a worst case


@dataclass
class GpuRow:
    gpu: str
    memory_gib: float
    status: str                  # "fits", "tight", "no", "no bf16"
    headroom_gib: float
    max_batch: int
    step_seconds: float | None
    epoch_hours: float | None
    total_hours: float | None
    cost_usd: float | None
    usd_per_hour: float


@dataclass
class Estimate:
    # The record `speechtune estimate --json` prints: its field names stay as they were (lora_rank is Setup's
    # lora_r, grad_checkpointing its gradient_checkpointing).
    model: str
    family: str
    mode: str
    precision: str
    optimizer: str
    batch_size: int
    grad_accum: int
    grad_checkpointing: bool
    lora_rank: int | None
    audio_seconds: float
    label_tokens: int
    params_total: int
    params_trainable: int
    memory: dict                 # bytes at the peak: weights, gradients, optimizer, activations, overhead, total
    flops_per_step: float
    utilisation: float
    gpus: list = field(default_factory=list)
    recommendation: str = ""
    notes: list = field(default_factory=list)
    calibration: dict | None = None
    clips_per_epoch: int | None = None
    epochs: float | None = None
    data: dict | None = None     # plan.data.DataFigures of --data, and `from_data`: the figures taken from it

    def fits(self, device_bytes: int) -> bool:
        return self.memory["total"] <= device_bytes * FIT_FRACTION

    def to_dict(self) -> dict:
        return asdict(self)


def default_utilisation(info: ModelInfo) -> float:
    width = getattr(info.config, "d_model", None) or getattr(info.config, "hidden_size", 1024)
    return next(u for w, u in UTILISATION_BY_WIDTH if width <= w)


def encoder_frozen(s: Setup) -> bool:
    return s.mode == "freeze-encoder" or (s.mode == "lora" and not s.lora_encoder)


def _times(s: Setup, rate: float, fl: dict, n_clips, epochs, encoder_cache) -> tuple:
    """(seconds per step, hours per epoch, hours in total) at `rate` FLOP/s."""
    step = fl["step"] / rate
    if n_clips is None:
        return step, None, None
    steps = math.ceil(n_clips / (s.batch_size * s.grad_accum))
    epoch = steps * step / 3600
    total = epoch * epochs
    if encoder_cache and encoder_frozen(s) and epochs > 1 and fl["encoder_forward"]:
        # later epochs reuse the cached encoder outputs: no encoder forward
        total -= steps * s.grad_accum * fl["encoder_forward"] / rate / 3600 * (epochs - 1)
    return step, epoch, total


def max_batch(info: ModelInfo, s: Setup, budget_bytes: float, cap: int = 4096) -> int:
    fits = lambda b: memory(info, replace(s, batch_size=b))["total"] <= budget_bytes  # noqa: E731
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= cap and fits(hi):
        lo, hi = hi, hi * 2
    if hi > cap:
        return cap
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# ------------------------------------------------------------------------------------------- the estimate

def estimate(model, mode: str = "full", batch_size: int = 8, **options) -> Estimate:
    """Memory, time and cost of fine-tuning `model` (catalog name, spec, config or loaded model).

    `options`: the run's, Setup's fields under speechtune train's names (grad_accum, precision, optimizer,
    gradient_checkpointing, lora_r, lora_targets, lora_dropout, lora_encoder, audio_seconds, label_tokens,
    device) with estimate()'s own defaults (plan.setup.API_DEFAULTS: a full fine-tune, LoRA r=16 on
    q_proj/v_proj with the encoder); `lora_rank=` and `grad_checkpointing=`, the names before, still work
    (DeprecationWarning). And estimate_setup()'s: dataset_hours, epochs, clip_seconds, clips, gpus,
    utilisation, prices, encoder_cache, calibration, recommend.
    """
    setup, run = split_options(options)
    info = model_info(model)
    s = setup_from_options(info.family, mode=mode, batch_size=batch_size, **setup)
    return estimate_setup(info, s, **run)


def estimate_setup(model, s: Setup, *, dataset_hours: float | None = None, epochs: float = 1.0,
                   clip_seconds: float = 5.0, clips: int | None = None, gpus=None, utilisation: float | None = None,
                   prices: dict | None = None, encoder_cache: bool = True, calibration: dict | None = None,
                   recommend: bool = True, data=None) -> Estimate:
    """The estimate of the run `s` describes, for `model`, on the catalog's GPUs (`gpus`: names; None = all).
    `data`: the plan.data.DataFigures the caller took figures from (`s`, `clips`), recorded and noted."""
    info = model_info(model)
    s.check()
    check_family(s, info.family)
    mem = memory(info, s)
    if s.device == "cpu":  # the whole process's memory is the run's
        mem = dict(mem, overhead=mem["overhead"] + CPU_PROCESS, total=mem["total"] + CPU_PROCESS)
    mem_gpu = mem if s.device == "cuda" else memory(info, replace(s, device="cuda"))
    fl = flops(info, s)
    util = utilisation or default_utilisation(info)
    if calibration and calibration.get("utilisation"):
        util = calibration["utilisation"]
    n_clips = clips
    if dataset_hours and not clips:
        n_clips = max(1, round(dataset_hours * 3600 / clip_seconds))
    prices = prices or {}
    rows = _gpu_rows(info, s, mem_gpu, fl, util, gpus, prices, calibration,
                     dict(n_clips=n_clips, epochs=epochs, encoder_cache=encoder_cache))
    est = Estimate(model=info.name, family=info.family, mode=s.mode, precision=s.precision, optimizer=s.optimizer,
                   batch_size=s.batch_size, grad_accum=s.grad_accum, grad_checkpointing=s.gradient_checkpointing,
                   lora_rank=s.lora_r if s.mode == "lora" else None, audio_seconds=s.audio_seconds,
                   label_tokens=s.label_tokens, params_total=info.total, params_trainable=mem["trainable_params"],
                   memory=mem, flops_per_step=fl["step"], utilisation=util, gpus=rows,
                   notes=_notes(info, s, util, calibration, n_clips, clips, clip_seconds, epochs, encoder_cache),
                   calibration=calibration, clips_per_epoch=n_clips, epochs=epochs if n_clips else None)
    if data is not None:
        est.data = dict(data.to_dict(), from_data=_from_data(info, s, data, n_clips, dataset_hours))
        est.notes.insert(0, data.describe())
    if recommend:
        est.recommendation = _recommend(est, info, s, dict(dataset_hours=dataset_hours, clips=clips, epochs=epochs,
                                                           clip_seconds=clip_seconds, gpus=gpus,
                                                           utilisation=util, prices=prices,
                                                           encoder_cache=encoder_cache))
    return est


def _notes(info: ModelInfo, s: Setup, util, calibration, n_clips, clips, clip_seconds, epochs,
           encoder_cache) -> list:
    notes = []
    if calibration and calibration.get("utilisation"):
        notes.append(f"utilisation {util:.0%} measured by --calibrate on {calibration['device']}")
    else:
        notes.append(f"utilisation {util:.0%} of peak FLOP/s assumed (--calibrate measures it)")
    if info.family == "tts":
        notes += _tts_notes(info, s)
    elif n_clips:
        if info.family == "whisper":
            avg = "" if clips else f" of {clip_seconds:g} s on average"
            notes.append(f"{n_clips} clips{avg}, each padded to "
                         f"{s.audio_seconds:g} s by Whisper's feature extractor: compute is per clip, not per second")
        else:
            notes.append(f"{n_clips} clips of {clip_seconds:g} s, estimated as padded to --audio-seconds "
                         f"{s.audio_seconds:g} (CTC batches pad to the longest clip)")
    if info.family == "whisper" and s.label_tokens >= WHISPER_MAX_LABELS:
        typical = memory(info, replace(s, label_tokens=64, device="cuda"))["total"]
        notes.append(f"label tokens 448 = Whisper's maximum, the worst case; with 64 (a 5-10 s sentence) the "
                     f"peak is {typical / GiB:.1f} GiB: pass --data PREPARED_DIR (or --label-tokens) for your data")
    if encoder_frozen(s) and encoder_cache and epochs > 1 and info.family == "whisper":
        notes.append("epochs after the first reuse cached encoder outputs (speechtune train does this "
                     "when no audio augmentation is on)")
    if info.family == "ctc" and s.mode != "full":
        notes.append("wav2vec2/HuBERT: freeze-encoder (and LoRA) freeze the convolutional feature encoder "
                     "(freeze_feature_encoder()); the transformer trains")
    return notes


def _tts_notes(info: ModelInfo, s: Setup) -> list:
    ids, frames = tts_shape(info, s)
    notes = [f"a voice's batches pad to their longest clip: estimated at {s.audio_seconds:g} s ({frames} mel frames, "
             f"the decoder's length) and {ids} phoneme ids (the encoder's) for every clip, an upper bound on time; "
             "attention keeps frames x frames scores per head, so memory grows faster than the clip length",
             "a voice this narrow launches many small kernels (and the length regulator loops over the batch): "
             "on a GPU the assumed utilisation is optimistic; --calibrate on the GPU measures it"]
    if s.gradient_checkpointing:
        notes.append("gradient checkpointing: transformers' FastSpeech2Conformer has none (speechtune train "
                     "accepts the flag for a voice and changes nothing), so every activation is counted")
    return notes


def _from_data(info: ModelInfo, s: Setup, data, n_clips, dataset_hours) -> list:
    """Which figures of the estimate are the data's (the others were given, or are defaults)."""
    from .data import setup_options
    taken = setup_options(data, info.family)
    used = []
    if n_clips == data.clips and not dataset_hours:
        used.append(f"{data.clips} clips ({data.hours:.2f} h)")
    if s.label_tokens == taken["label_tokens"]:
        unit = "phoneme ids" if info.family == "tts" else "label tokens"
        used.append(f"{unit} {s.label_tokens} (the longest label)")
    if "audio_seconds" in taken and s.audio_seconds == taken["audio_seconds"]:
        used.append(f"audio {s.audio_seconds:g} s (the longest clip)")
    return used or ["nothing (every figure was given)"]


def _gpu_rows(info: ModelInfo, s: Setup, mem_gpu: dict, fl: dict, util: float, gpus, prices: dict, calibration,
              data: dict) -> list:
    """One row per GPU; `data`: n_clips, epochs, encoder_cache (for the epoch time)."""
    rows = []
    chosen = [catalog.GPUS[n] for n in catalog.GPUS] if not gpus else [_gpu_or_error(g) for g in gpus]
    for g in chosen:
        budget = g.memory_gib * GiB
        price = prices.get(g.name, g.usd_per_hour)
        if not g.peak_flops(s.precision):
            rows.append(GpuRow(g.name, g.memory_gib, f"no {s.precision}", 0.0, 0, None, None, None, None, price))
            continue
        total = mem_gpu["total"]
        status = "fits" if total <= budget * FIT_FRACTION else ("tight" if total <= budget else "no")
        rate = g.peak_flops(s.precision) * util
        if calibration and calibration.get("gpu") == g.name and calibration.get("achieved_flops"):
            rate = calibration["achieved_flops"]      # measured on this very GPU
        step, epoch, tot = _times(s, rate, fl, data["n_clips"], data["epochs"], data["encoder_cache"])
        cost = tot * price if tot is not None else None
        rows.append(GpuRow(g.name, g.memory_gib, status, (budget - total) / GiB,
                           max_batch(info, replace(s, device="cuda"), budget * FIT_FRACTION),
                           step, epoch, tot, cost, price))
    if calibration and calibration.get("device") == "cpu" and calibration.get("achieved_flops"):
        step, epoch, tot = _times(s, calibration["achieved_flops"], fl, data["n_clips"], data["epochs"],
                                  data["encoder_cache"])
        rows.append(GpuRow("this CPU", 0.0, "measured", 0.0, 0, step, epoch, tot, None, 0.0))
    return rows


def _gpu_or_error(name: str):
    g = catalog.find_gpu(name)
    if g is None:
        raise SpeechtuneError(f"unknown GPU {name!r}", f"known: {', '.join(catalog.GPUS)} (or 'all')")
    return g


# --------------------------------------------------------------------------------------- recommendation

def _describe(est: Estimate) -> str:
    extras = [est.precision]
    if est.grad_checkpointing:
        extras.append("gradient checkpointing")
    if est.optimizer != "adamw":
        extras.append(est.optimizer)
    mode = {"full": "full fine-tune", "freeze-encoder": "frozen-encoder fine-tune",
            "freeze-feature-encoder": "frozen-feature-encoder fine-tune", "head": "CTC-head fine-tune",
            "adapter": "adapter fine-tune", "lora": f"LoRA r={est.lora_rank}"}.get(est.mode, est.mode)
    accum = f" (x{est.grad_accum} accumulation)" if est.grad_accum > 1 else ""
    return f"{mode} fits at batch {est.batch_size}{accum} with {' + '.join(extras)}"


def _cheapest(est: Estimate):
    ok = [r for r in est.gpus if r.status == "fits" and r.step_seconds]
    if est.clips_per_epoch:
        key = lambda r: (r.cost_usd, r.total_hours)  # noqa: E731
    else:
        key = lambda r: r.step_seconds * r.usd_per_hour  # noqa: E731
    return min(ok, key=key) if ok else None


def _line(est: Estimate, row) -> str:
    gb = f"{row.memory_gib:.0f} GiB"
    if row.total_hours is not None:
        t = f"{row.total_hours:.1f} h" if row.total_hours >= 1 else f"{max(row.total_hours * 60, 1):.0f} min"
        return f"{row.gpu} {gb}: {_describe(est)}; {t}, ${max(row.cost_usd, 0.01):.2f}"
    return f"{row.gpu} {gb}: {_describe(est)}; {row.step_seconds:.2f} s/step (~${row.usd_per_hour:.2f}/h)"


def _recommend(est: Estimate, info: ModelInfo, s: Setup, kw: dict) -> str:
    row = _cheapest(est)
    if row is not None:
        return _line(est, row)
    # Nothing fits as asked: try the usual memory savers, least intrusive first.
    for v in _variants(s, info.family):
        # the variants are GPU runs, estimated at the assumed (or calibrated) utilisation
        alt = estimate_setup(info, replace(s, device="cuda", **v), **kw, recommend=False)
        row = _cheapest(alt)
        if row is not None:
            return f"nothing in the list fits as asked; {_line(alt, row)}"
    if info.family == "tts":
        return "nothing in the GPU list fits even at batch 1: use shorter clips (prepare --max-duration)"
    return "nothing in the GPU list fits even with checkpointing, LoRA and batch 1: use several GPUs (FSDP/DeepSpeed)"


def _variants(s: Setup, family: str) -> list:
    """The memory savers to try, least intrusive first; a voice has no checkpointing, LoRA or 8-bit AdamW
    in speechtune train, so only bf16 and a smaller batch with accumulation."""
    voice = family == "tts"
    ckpt = {} if voice else dict(gradient_checkpointing=True)
    variants = []
    if not s.gradient_checkpointing and not voice:
        variants.append(dict(gradient_checkpointing=True))
    if s.precision == "fp32":
        variants.append(dict(precision="bf16", **ckpt))
    if s.optimizer == "adamw" and s.mode != "lora" and not voice:
        variants.append(dict(gradient_checkpointing=True, optimizer="adamw-8bit"))
    if s.mode != "lora" and not voice:
        variants.append(dict(mode="lora", gradient_checkpointing=True))
    for half in (2, 4, 8, 16):
        if s.batch_size // half >= 1:
            variants.append(dict(batch_size=s.batch_size // half, grad_accum=s.grad_accum * half, **ckpt))
    return variants


# -------------------------------------------------------------------------------------------- summary

def _gib(x: float) -> str:
    return f"{x / GiB:.1f}"


def format_summary(est, n_clips: int | None = None, device_bytes: int | None = None, **options) -> str:
    """A few lines for `speechtune train` to print before it starts; warns when the run will not fit.

    `est` is an Estimate, or a training config (speechtune.train.config.TrainConfig or anything with the same
    field names) that is turned into one for the device this process will train on; `options` override
    Setup fields or estimate_setup() arguments (e.g. label_tokens=<longest label in the data>).
    """
    if not isinstance(est, Estimate):
        est, device_bytes = estimate_for_training(est, n_clips, device_bytes, **options)
    m = est.memory
    unit = "phoneme ids" if est.family == "tts" else "label tokens"
    labels = f"{est.label_tokens} {unit}" + (" (the longest label in the data)" if est.data and any(
        f.startswith(unit) for f in est.data["from_data"]) else "")
    lines = [f"estimate: {est.model} {est.mode}, {est.precision}, batch {est.batch_size}"
             f"{' x' + str(est.grad_accum) if est.grad_accum > 1 else ''}, {labels}: peak {_gib(m['total'])} GiB "
             f"(weights {_gib(m['weights'])}, gradients {_gib(m['gradients'])}, optimizer {_gib(m['optimizer'])}, "
             f"activations {_gib(m['activations'])}, overhead {_gib(m['overhead'])}); "
             f"{est.params_trainable / 1e6:.1f}M of {est.params_total / 1e6:.1f}M parameters train"]
    timed = [r for r in est.gpus if r.step_seconds and r.status != "no"]
    if len(est.gpus) == 1 and timed:
        r = timed[0]
        when = f", {_hours_text(r.total_hours)} for {est.epochs:g} epoch(s)" if r.total_hours else ""
        lines.append(f"on {r.gpu}: about {r.step_seconds:.2g} s per step{when} "
                     f"(at {est.utilisation:.0%} of peak FLOP/s, an assumption)")
    if device_bytes and not est.fits(device_bytes):
        lines.append(f"warning: this needs about {_gib(m['total'])} GiB but the device has "
                     f"{_gib(device_bytes)} GiB; lower --batch-size (with --grad-accum), turn on gradient "
                     "checkpointing, or use --mode lora")
    if est.recommendation:
        lines.append(f"cheapest GPU that fits: {est.recommendation}")
    return "\n".join(lines)


def _hours_text(h: float) -> str:
    return f"{h:.1f} h" if h >= 1 else f"{max(h * 60, 1):.0f} min"


def estimate_for_training(cfg, n_clips: int | None = None, device_bytes: int | None = None, **options) -> tuple:
    """(Estimate, device memory in bytes or None) of the run `cfg` (a TrainConfig) would do on this machine's
    device: its GPU's catalog row (A10's where the GPU is not in the catalog), no GPU rows on a CPU. With
    `cfg.data` (a prepared folder), the label length (and a CTC model's clip length) is its longest, as the
    model's tokenizer counts it (plan.data), and the clip count its train.jsonl's, unless `options` say."""
    import torch
    device = str(getattr(cfg, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu"))
    setup_options, options = split_options(options)
    figures = None
    if getattr(cfg, "data", None):
        from .data import data_figures
        from .data import setup_options as data_options
        figures = data_figures(cfg.data, cfg.model, [getattr(cfg, "mix", None)])
        setup_options = {**data_options(figures, model_info(cfg.model).family), **setup_options}
        n_clips = figures.clips if n_clips is None else n_clips
        options.setdefault("data", figures)
    s = setup_from_config(cfg, model_info(cfg.model).family, **{"device": device, **setup_options})
    gpus = None
    if s.device == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        device_bytes = device_bytes or props.total_memory
        g = catalog.find_gpu(gpu_catalog_name(props.name))
        gpus = [g.name] if g else None
    run = dict(epochs=getattr(cfg, "epochs", 1.0) or 1.0, clips=n_clips, gpus=gpus or ["A10"], recommend=False)
    run.update(options)
    est = estimate_setup(getattr(cfg, "model", None), s, **run)
    if s.device != "cuda":
        est.gpus = []           # no GPU here: the memory figure is the CPU run's; no GPU timing to show
    return est, device_bytes
