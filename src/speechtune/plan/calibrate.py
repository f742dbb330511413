"""`speechtune estimate --calibrate`: real training steps of the architecture on this machine, timed and
measured, beside what plan.memory predicts for the same run.

The step is speechtune train's: train.loop's AdamW and train_step (`grad_accum` micro-batches, loss weighting,
gradient clipping, optimizer step) under an Accelerator's autocast and GradScaler, so a step is what the
estimate's FLOPs per step count. What differs, because this
measures rather than trains: the weights are random (unless asked for) and one random batch of the planned
shape is repeated, there is no learning-rate schedule, and the model is set up here for any family the
planner knows (wav2vec2/HuBERT too), not by the Whisper family's setup_training. A voice (tts family) runs the
family's own loss (families.tts.loss) on a random batch of the planned shape: phoneme ids, durations that sum
to the frames, mel labels, pitch and energy.
"""
from __future__ import annotations

import time
from dataclasses import replace

from ..audio import SAMPLE_RATE, WINDOW_S
from ..errors import SpeechtuneError
from . import catalog
from .info import ModelInfo, gpu_catalog_name, model_info
from .memory import GiB, conv_lengths, flops, lora_sites, memory, tts_shape
from .setup import Setup, check_family, setup_from_options, split_options


def _proc_bytes(key: str, path: str = "/proc/self/status") -> int | None:
    """A "Key:  123 kB" line of a /proc file, in bytes (None where there is no /proc)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _fix_malloc_threshold() -> None:
    # glibc raises its mmap threshold after big frees, so freed tensors stay in the heap and RSS overstates
    # what torch holds. A fixed threshold sends every tensor >= 128 KiB to mmap and back to the OS on free.
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)     # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _cpu_flops_probe() -> float:
    import torch
    x = torch.randn(512, 512)
    torch.mm(x, x)
    t = time.perf_counter()
    for _ in range(8):
        torch.mm(x, x)
    return 8 * 2 * 512**3 / max(time.perf_counter() - t, 1e-9)



def _training_config(info: ModelInfo, s: Setup):
    """The model's config for the planned run, and its transformers class."""
    import copy
    import transformers

    config = copy.deepcopy(info.config)
    if info.family == "whisper":
        config.max_source_positions = max(1, round(config.max_source_positions * s.audio_seconds / WINDOW_S))
        return config, transformers.WhisperForConditionalGeneration
    if info.family == "tts":
        return config, transformers.FastSpeech2ConformerModel
    config.layerdrop = 0.0                   # every layer runs, as the estimate assumes
    config.mask_time_prob = 0.0
    return config, {"wav2vec2": transformers.Wav2Vec2ForCTC, "hubert": transformers.HubertForCTC}[config.model_type]


def _build_model(info: ModelInfo, s: Setup, config, cls, device: str, load_weights: bool):
    """Random weights unless `load_weights` and the model came from a folder; set up for the mode."""
    import torch

    from ..models.registry import add_lora, set_checkpointing
    torch.manual_seed(0)
    if load_weights and info.path and config.to_dict() == info.config.to_dict():
        model = cls.from_pretrained(info.path, config=config).to(device)
        for p in model.parameters():
            # safetensors may map the file lazily; own the memory now so it is not counted as step memory
            p.data = p.data.clone()
    else:
        model = cls(config).to(device)
    model.train()
    if s.mode == "freeze-encoder" and info.family == "whisper":
        model.model.encoder.requires_grad_(False)
    elif s.mode != "full" and info.family == "ctc":
        # also for LoRA: otherwise wav2vec2 marks the CNN input as requiring grad and records it all
        model.freeze_feature_encoder()
    if s.gradient_checkpointing and info.family != "tts":   # FastSpeech2Conformer has none (see plan.memory)
        set_checkpointing(model, True)
    if s.mode == "lora":
        import peft
        targets = sorted({n for n, _, _ in lora_sites(info, s)})
        model = add_lora(model, peft.LoraConfig(r=s.lora_r, lora_alpha=2 * s.lora_r,
                                                lora_dropout=s.lora_dropout, target_modules=targets))
    return model


def _random_batch(info: ModelInfo, config, s: Setup, device: str) -> dict:
    """One micro-batch of the planned shape: batch size x (audio seconds, label tokens), seeded."""
    import torch
    B = s.batch_size
    g = torch.Generator().manual_seed(0)
    if info.family == "tts":
        return {k: v.to(device) for k, v in voice_batch(info, config, s, g).items()}
    if info.family == "whisper":
        L = min(s.label_tokens, config.max_target_positions)
        batch = {"input_features": torch.randn(B, config.num_mel_bins, 2 * config.max_source_positions,
                                               generator=g),
                 "labels": torch.randint(0, config.vocab_size - 1, (B, L), generator=g), "use_cache": False}
    else:
        samples = int(round(s.audio_seconds * SAMPLE_RATE))
        T = conv_lengths(config, samples)[-1]
        S = max(1, min(s.label_tokens, T // 2))
        batch = {"input_values": torch.randn(B, samples, generator=g),
                 "labels": torch.randint(1, config.vocab_size, (B, S), generator=g)}
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def voice_batch(info: ModelInfo, config, s: Setup, generator) -> dict:
    """A voice's micro-batch as tts.dataset.VoiceClips.batch makes it, at the planned shape: every clip
    `label_tokens` ids long, their durations spread evenly over the clip's frames (they sum to the frames, as
    the aligner's do), random log-mel labels, standardised pitch and energy."""
    import torch
    B, (n, T) = s.batch_size, tts_shape(info, s)
    durations = torch.full((B, n), T // n, dtype=torch.long)
    durations[:, : T - (T // n) * n] += 1
    return {"input_ids": torch.randint(1, config.vocab_size, (B, n), generator=generator),
            "attention_mask": torch.ones(B, n, dtype=torch.long),
            "spectrogram_labels": torch.randn(B, T, config.num_mel_bins, generator=generator),
            "duration_labels": durations, "pitch_labels": torch.randn(B, n, 1, generator=generator),
            "energy_labels": torch.randn(B, n, 1, generator=generator)}


class _FixedClips:
    """The training split the tts family's loss reads, holding one prepared batch: clips.batch(idx) -> it."""

    def __init__(self, batch: dict):
        self._batch = batch

    def batch(self, idx) -> dict:
        return self._batch


def _loss_of(info: ModelInfo, model, batch: dict):
    """The micro-batch loss the step backpropagates: the tts family's own (families.tts.loss), else the
    model output's loss, as the Whisper and CTC families' losses are."""
    if info.family == "tts":
        from ..families import tts
        clips = _FixedClips(batch)
        return lambda idx: tts.loss(model, clips, idx, None, None, 0)
    return lambda idx: model(**batch).loss


def build_training(info: ModelInfo, s: Setup, device: str, load_weights: bool = False):
    """The model set up for the mode, its optimizer, and a function that runs one training step of
    speechtune train's (train.loop.train_step: `grad_accum` micro-batches, clipping, AdamW) on a random batch."""
    from ..families import FAMILIES
    from ..train.config import train_default
    from ..train.loop import adamw, new_accelerator, train_step

    config, cls = _training_config(info, s)
    model = _build_model(info, s, config, cls, device, load_weights)
    batch = _random_batch(info, config, s, device)
    accelerator = new_accelerator({"fp32": "no"}.get(s.precision, s.precision),
                                  cpu=not str(device).startswith("cuda"))
    family = next(f for f in FAMILIES if f.NAME == info.family)
    optimizer = adamw(model, family.DEFAULT_LR.get(s.mode, min(family.DEFAULT_LR.values())),
                      train_default("weight_decay"))
    # the model stays on `device` (accelerate would pick its own GPU)
    model, optimizer = accelerator.prepare(model, optimizer, device_placement=[False, False])
    group = [list(range(s.batch_size))] * s.grad_accum      # the same random batch for every micro-batch
    max_grad_norm = train_default("max_grad_norm")

    loss_of = _loss_of(info, model, batch)

    def step():
        # As in the families' losses, only the loss outlives the forward. Unlike train: no schedule (None), and
        # the batch is random, built once, for measuring time and peak memory rather than for learning.
        train_step(model, group, loss_of, optimizer, None, accelerator, max_grad_norm)

    return model, optimizer, step


def calibrate(model, mode: str = "full", batch_size: int = 2, *, steps: int = 3, device: str | None = None,
              max_step_seconds: float = 90.0, progress: bool = True, load_weights: bool = False,
              setup: Setup | None = None, **options) -> dict:
    """Run `steps` real training steps (after one warm-up) of the architecture with random weights.

    The run is `setup`, or mode / batch_size / `options` as estimate() takes them (Setup fields on estimate()'s
    defaults; `lora_rank=`/`grad_checkpointing=` still work, with a DeprecationWarning; other keys are
    ignored). Returns step time, measured peak memory (CUDA: allocator peak; CPU: resident-set high-water mark
    above the loaded model), the predicted figures for the same run and the utilisation / FLOP/s this implies.
    """
    import torch
    info = model_info(model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    if setup is None:
        opts = {k: v for k, v in split_options(options)[0].items() if k != "device"}
        setup = setup_from_options(info.family, mode=mode, batch_size=batch_size, **opts)
    s = replace(setup, device=dev_type)
    s.check()
    check_family(s, info.family)
    if dev_type == "cpu" and s.precision == "fp16":
        raise SpeechtuneError("--precision fp16 needs a CUDA GPU to calibrate", "use fp32 or bf16 on a CPU")
    fl = flops(info, s)
    predicted = memory(info, s)
    if dev_type == "cpu":
        _check_cpu_run(info, s, fl, predicted, steps, max_step_seconds)
    net, opt, step = build_training(info, s, device, load_weights)
    measured = _measure(step, dev_type, steps, progress)
    del net, opt, step
    return _result(measured, s, fl, predicted, device, dev_type)


def _check_cpu_run(info: ModelInfo, s: Setup, fl: dict, predicted: dict, steps: int, max_step_seconds: float):
    guess = fl["step"] / (0.5 * _cpu_flops_probe())
    if guess > max_step_seconds:
        raise SpeechtuneError(
            f"calibrating {info.name} at batch {s.batch_size} on this CPU would take about {guess:.0f} s per "
            f"step ({steps + 1} steps)", "calibrate on a GPU, or with a smaller --batch-size or model")
    avail = _proc_bytes("MemAvailable", "/proc/meminfo")
    if avail and predicted["total"] > 0.8 * avail:
        raise SpeechtuneError(f"calibrating needs about {predicted['total'] / GiB:.1f} GiB, this machine has "
                              f"{avail / GiB:.1f} GiB free", "use a smaller --batch-size or model")
    _fix_malloc_threshold()


def _measure(step, dev_type: str, steps: int, progress: bool) -> dict:
    """Wall and CPU time of each step after the first, and the peak memory above what was held before."""
    import gc

    import torch
    from tqdm import tqdm
    gc.collect()
    if dev_type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        have_hwm = _reset_peak_rss()
        base = _proc_bytes("VmRSS") or 0
    times, cpu_times = [], []
    for i in tqdm(range(steps + 1), desc="calibrating", disable=not progress, leave=False):
        t, c = time.perf_counter(), time.process_time()
        step()
        if dev_type == "cuda":
            torch.cuda.synchronize()
        if i:     # the first step allocates optimizer states and warms kernels: not timed
            times.append(time.perf_counter() - t)
            cpu_times.append(time.process_time() - c)
    if dev_type == "cuda":
        return {"times": times, "cpu_times": cpu_times, "peak": torch.cuda.max_memory_allocated() - base,
                "weights": base}
    hwm = _proc_bytes("VmHWM") if have_hwm else None
    return {"times": times, "cpu_times": cpu_times, "peak": (hwm - base) if hwm else None, "weights": None}


def _result(measured: dict, s: Setup, fl: dict, predicted: dict, device: str, dev_type: str) -> dict:
    import torch
    times, cpu_times = measured["times"], measured["cpu_times"]
    step_s = sorted(times)[len(times) // 2]
    achieved = fl["step"] / step_s
    result = {"device": device if dev_type == "cpu" else f"cuda ({torch.cuda.get_device_name()})",
              "step_seconds": step_s, "step_times": times, "cpu_seconds": sorted(cpu_times)[len(cpu_times) // 2],
              "flops_per_step": fl["step"], "achieved_flops": achieved,
              "measured_peak_bytes": measured["peak"], "weights_bytes_measured": measured["weights"],
              # what the measurement covers: everything above the loaded model (weights) and, on CUDA, context
              "predicted_peak_bytes": predicted["total"] - predicted["weights"] - predicted["overhead"],
              "predicted_at": predicted["peak_at"], "utilisation": None, "gpu": None}
    if dev_type == "cuda":
        g = catalog.find_gpu(gpu_catalog_name(torch.cuda.get_device_name()))
        peak_flops = g.peak_flops(s.precision) if g else None
        if g and peak_flops:
            result.update(gpu=g.name, utilisation=achieved / peak_flops)
    return result
