"""The training loop, top to bottom: optimizer, schedule, resume, steps, evaluation, checkpoints, stop.

One optimizer step = `grad_accum` micro-batches. Batches for each epoch come from (seed, epoch), so a run's
position is just (epoch, step-in-epoch) and a resumed run replays exactly what an uninterrupted one would.
Under `accelerate launch` each process takes every world_size-th group of batches; DDP averages gradients.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from pathlib import Path

from ..errors import SpeechtuneError
from . import checkpoint
from .data import batch_order


NO_SPEECH_LOGGED_CHARS = 80  # of each text written on a non-speech clip, kept in train_log.jsonl


class TrainingDiverged(SpeechtuneError):
    pass


def decode(whisper, eval_set: dict, batch_size: int, safeguards: bool = True) -> list[str]:
    """The texts of one set's clips through the same runtime and options as `evaluate` (clips grouped by
    language for the prompt), the model in eval mode meanwhile."""
    from ..runtimes import DecodingOptions, runtime_for, transcribe_many

    was_training = whisper.model.training
    whisper.model.eval()
    options = DecodingOptions(batch_size=batch_size, safeguards=safeguards)
    try:
        return transcribe_many(runtime_for(whisper), eval_set["wavs"], options, eval_set["languages"])
    finally:
        whisper.model.train(was_training)


def evaluate(whisper, eval_set: dict, batch_size: int, safeguards: bool = True) -> dict:
    """Error rate of real decoding (generate, through the same runtime and options as `evaluate`) on one set."""
    from ..metrics.score import score_corpus

    hyps = decode(whisper, eval_set, batch_size, safeguards)
    s = score_corpus(eval_set["refs"], hyps, language=[l or "en" for l in eval_set["languages"]])
    return {"error_rate": s["error_rate"], "metric": s["metric"], "examples": list(zip(eval_set["refs"], hyps))[:3]}


def evaluate_no_speech(whisper, eval_set: dict, batch_size: int, safeguards: bool = True) -> dict:
    """What the model writes on the no-speech set (`eval_set["names"]` names its clips), decoded with the
    other sets' options and batch size, as compare decodes it: `no_speech_words`
    (metrics.hallucination.written_words, summed), `no_speech_clips_with_text`, and `no_speech_written`,
    each clip's text that holds a word (for the log)."""
    from ..metrics.hallucination import no_speech_summary, written_words

    hyps = decode(whisper, eval_set, batch_size, safeguards)
    s = no_speech_summary(hyps)
    return {"no_speech_words": s["words"], "no_speech_clips_with_text": s["clips_with_text"],
            "no_speech_written": {n: h[:NO_SPEECH_LOGGED_CHARS] for n, h in zip(eval_set["names"], hyps)
                                  if written_words(h)}}


def run_evals(whisper, step, evals, cfg, state, log, train_s: float = 0.0, score=None) -> dict:
    """Score every set of `evals` (a set with `no_speech` set is the no-speech set), judge the guard against
    the base model's eval (the first, or this one), log the record and return it. `guard_ok`: the guard's
    error rate within --guard-threshold of the base's and, under --guard, text on no more non-speech clips
    than the base wrote on (`guard_speech_ok` and `no_speech_ok` say which held). `score(bundle, set, cfg)`,
    the family's, replaces transcribing the set's audio (a voice is judged by what it says)."""
    t = time.time()
    rec = {"step": step, "train_s": round(train_s, 2)}
    written = {}
    for name, es in evals.items():
        if es.get("no_speech"):
            r = evaluate_no_speech(whisper, es, cfg.eval_batch_size, cfg.eval_safeguards)
            written = r.pop("no_speech_written")
            rec.update(r)
            continue
        r = (score(whisper, es, cfg) if score else
             evaluate(whisper, es, cfg.eval_batch_size, cfg.eval_safeguards))
        rec[name], rec["metric" if name == "valid" else f"{name}_metric"] = r["error_rate"], r["metric"]
    base = state["evals"][0] if state["evals"] else rec
    rec["guard_speech_ok"] = rec.get("guard") is None or rec["guard"] <= base["guard"] + cfg.guard_threshold / 100
    rec["no_speech_ok"] = (rec.get("no_speech_clips_with_text") is None
                           or base.get("no_speech_clips_with_text") is None
                           or rec["no_speech_clips_with_text"] <= base["no_speech_clips_with_text"])
    rec["guard_ok"] = rec["guard_speech_ok"] and (rec["no_speech_ok"] or not cfg.guard)
    rec["eval_s"] = round(time.time() - t, 2)
    state["evals"].append(rec)
    log(dict(rec, event="eval", **({"no_speech_written": written} if written else {})))
    return rec


def new_accelerator(precision: str, cpu: bool):
    """An Accelerator for one training run: mixed precision "no", "bf16" or "fp16" (autocast, and GradScaler
    for fp16), on the CPU or the GPU accelerate picks."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps the first Accelerator's mixed precision process-wide and refuses another one, yet a
    # process may train several times (notebooks, benchmarks, estimate --calibrate). Drop that state, as
    # transformers' Trainer does; the process group (PartialState) is kept.
    AcceleratorState._reset_state()
    return Accelerator(mixed_precision=precision, cpu=cpu)


def adamw(model, lr: float, weight_decay: float):
    """AdamW over what trains; biases and norms get no weight decay, as in every transformer recipe."""
    import torch

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)


def train_step(model, group, loss_of, optimizer, scheduler, accelerator, max_grad_norm: float) -> float:
    """One optimizer step over `group`, a list of micro-batches (lists of clip indices): `loss_of(idx)` is each
    one's mean loss, backpropagated weighted by its share of the clips; then gradient clipping (0 = off), the
    optimizer and the schedule (None = none) step. Returns the step's mean loss."""
    n = sum(len(b) for b in group)
    total_loss = 0.0
    for k, idx in enumerate(group):
        # Only the last micro-batch of a step needs DDP's gradient all-reduce.
        ctx = accelerator.no_sync(model) if k < len(group) - 1 else _nullcontext()
        with ctx:
            loss = loss_of(idx)
            accelerator.backward(loss * len(idx) / n)
        total_loss += loss.item() * len(idx) / n
    if max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total_loss


def reporters(cfg) -> list[str]:
    """The reporters `cfg` asks for: --report-to (several values, or comma-separated; "none" for none), less
    tensorboard under --no-tensorboard. An unknown name or a package not installed is a one-line error, raised
    before anything is written."""
    import importlib

    names = [n.strip().lower() for item in (cfg.report_to or []) for n in str(item).split(",") if n.strip()]
    names = [n for n in dict.fromkeys(names) if n != "none" and (n != "tensorboard" or cfg.tensorboard)]
    for n in names:
        if n not in REPORTERS:
            raise SpeechtuneError(f"--report-to {n}: not a reporter speechtune knows",
                                  f"choose from {', '.join(REPORTERS)} (or none)")
        package = REPORTERS[n].package
        if package:
            try:
                importlib.import_module(package)
            except ImportError:
                raise SpeechtuneError(f"--report-to {n}: the {package} package is not installed",
                                      f"pip install {package}") from None
    return names


class TensorBoardReport:
    """Scalars as TensorBoard events in MODEL_DIR/tensorboard; the config as a text summary."""
    package = None  # tensorboard is one of speechtune's dependencies

    def __init__(self, out: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(out / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v!r}" for k, v in config.items()))

    def scalars(self, values: dict, step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class WandbReport:
    """A W&B run under MODEL_DIR/wandb: offline (`wandb sync` uploads it later) unless WANDB_MODE says
    otherwise; the config as the run's config. Each start or resumption of a training run is one W&B run."""
    package = "wandb"

    def __init__(self, out: Path, config: dict):
        import wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "speechtune"), name=out.name, dir=str(out),
                              config=config, mode=os.environ.get("WANDB_MODE", "offline"),
                              settings=wandb.Settings(console="off", silent=True))

    def scalars(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowReport:
    """An MLflow run in experiment "speechtune" of a file store, MODEL_DIR/mlruns, unless MLFLOW_TRACKING_URI
    names another; the config as its parameters. MLflow 3 keeps its file store only where
    MLFLOW_ALLOW_FILE_STORE=true, which is set here unless the environment says otherwise (`mlflow ui` needs it
    too, or `mlflow migrate-filestore` to a database)."""
    package = "mlflow"

    def __init__(self, out: Path, config: dict):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        self.client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or (out / "mlruns").resolve().as_uri())
        exp = self.client.get_experiment_by_name("speechtune")
        exp_id = exp.experiment_id if exp else self.client.create_experiment("speechtune")
        self.run_id = self.client.create_run(exp_id, run_name=out.name).info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in config.items()])

    def scalars(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


# `--report-to` names; each class names the package it needs beyond speechtune's own (`package`)
REPORTERS = {"tensorboard": TensorBoardReport, "wandb": WandbReport, "mlflow": MlflowReport}


class RunLog:
    """train_log.jsonl, and its numeric fields as scalars `EVENT/KEY` at each record's step (with the config,
    once) to every reporter `cfg` asks for (`reporters`), on the main process; nothing on the others."""

    def __init__(self, out: Path, accelerator, cfg):
        main = accelerator.is_main_process
        names = reporters(cfg) if main else []
        config = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(vars(cfg))
        self.file = open(out / "train_log.jsonl", "a", encoding="utf-8") if main else None
        self.reports = []
        try:
            for n in names:
                self.reports.append(REPORTERS[n](out, config))
        except BaseException:
            self.close()
            raise

    def __call__(self, rec: dict) -> None:
        if self.file:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()
        values = {f"{rec.get('event', 'train')}/{k}": v for k, v in rec.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        for r in self.reports:
            r.scalars(values, rec["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None
        for r in self.reports:
            r.close()
        self.reports = []


def epoch_groups(durations: list[float], cfg, epoch: int, world: int, rank: int) -> list[list[list[int]]]:
    """This process's optimizer steps for one epoch: groups of `grad_accum` micro-batches, every world-th
    group. Every rank gets the same number of groups (DDP needs every rank in every step: a rank left with
    none spun through empty epochs while the other waited in its all-reduce): the list is padded to a
    multiple of `world` with groups from its start, as DistributedSampler pads, so an epoch is one pass over
    every clip and `steps_per_epoch` = ceil(groups / world) holds."""
    batches = batch_order(durations, cfg.batch_size, cfg.seed, epoch)
    groups = [batches[i:i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
    short = -len(groups) % world
    groups += [groups[i % len(groups)] for i in range(short)]
    return groups[rank::world]


def upcoming(groups: list, state: dict, total_steps: int) -> list[tuple[int, list[int]]]:
    """The micro-batches the loop runs next in this epoch, in order, as (optimizer steps done before it, clip
    indices), the step being what the family's loss is given: from the loop's position up to `total_steps`."""
    plan = []
    for k, group in enumerate(groups[state["group"]:]):
        if state["step"] + k >= total_steps:
            break
        plan += [(state["step"] + k, idx) for idx in group]
    return plan


def _save(ckdir: Path, hf_model, optimizer, scheduler, state: dict, cfg, accelerator, step: int) -> None:
    """A checkpoint of `step` (trainable weights, optimizer, schedule, loop state, RNG), written by the main
    process while the others wait; old ones pruned, the chosen ones kept."""
    if accelerator.is_main_process:
        trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "state": state,
                   "rng": checkpoint.rng_state()}
        checkpoint.save(ckdir, step, checkpoint.trainable_state(hf_model), trainer)
        keep = {s for s in (state["best"], state["best_any"]) if s is not None}
        checkpoint.prune(ckdir, cfg.keep_checkpoints, keep)
    accelerator.wait_for_everyone()


def _optimizer(cfg, hf_model, accelerator, total_steps: int):
    """AdamW and the warmup-then-decay schedule, the model and optimizer wrapped for the launcher (DDP)."""
    from transformers import get_scheduler
    optimizer = adamw(hf_model, cfg.lr, cfg.weight_decay)
    scheduler = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(hf_model, optimizer)
    return model, optimizer, scheduler


def _resume(ckdir: Path, hf_model, optimizer, scheduler, accelerator, total_steps: int) -> dict:
    """The loop's state: from the latest checkpoint (weights, optimizer, schedule, RNG), else fresh."""
    state = {"step": 0, "epoch": 0, "group": 0, "evals": [], "best": None, "best_any": None, "bad_evals": 0,
             "samples": 0, "train_s": 0.0, "stopped": None}
    last = checkpoint.latest(ckdir)
    if last is not None:
        weights, trainer = checkpoint.load(last)
        checkpoint.load_weights(hf_model, weights)
        optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
        state = trainer["state"]
        checkpoint.set_rng_state(trainer["rng"])
        accelerator.print(f"resuming from {last} (step {state['step']} of {total_steps})")
    return state


def _judge(rec: dict, state: dict, cfg) -> None:
    """After an eval: choose the checkpoint, and stop at --stop-at or after --patience bad evals."""
    select_checkpoint(state, rec, cfg)
    if cfg.stop_at and rec["valid"] <= cfg.stop_at and rec["guard_ok"]:
        state["stopped"] = f"reached valid {rec['metric'].upper()} {rec['valid']:.2%} <= {cfg.stop_at:.2%}"
    if cfg.patience and state["bad_evals"] >= cfg.patience:
        state["stopped"] = f"early stop: no better {rec['metric'].upper()} in {cfg.patience} evals"


def train_loop(cfg, whisper, hf_model, clips, evals: dict, cache, out: Path, accelerator, total_steps: int,
               progress: bool = True, loss=None, score=None) -> dict:
    """Train to `total_steps` (or a stop), evaluating, checkpointing and logging on the way; returns the loop's
    state (evals, chosen steps). `loss(model, clips, idx, cache, cfg, step)` is the family's batch loss,
    `score` its evaluation when it has one (see run_evals)."""
    import torch

    ckdir = out / "checkpoints"
    log = RunLog(out, accelerator, cfg)  # first: a reporter that is not installed stops the run here
    checkpoint.sweep(ckdir)
    world, rank = accelerator.num_processes, accelerator.process_index
    model, optimizer, scheduler = _optimizer(cfg, hf_model, accelerator, total_steps)
    state = _resume(ckdir, hf_model, optimizer, scheduler, accelerator, total_steps)
    read_ahead = getattr(clips, "read_ahead", None)  # clips that compute features ahead (train.data.Clips)

    save = functools.partial(_save, ckdir, hf_model, optimizer, scheduler, state, cfg, accelerator)

    def loss_of(idx):  # a non-finite loss stops the run before the optimizer steps on it
        value = loss(model, clips, idx, cache, cfg, state["step"])
        if not torch.isfinite(value):
            raise _diverged(value, state, ckdir, scheduler)
        return value

    if not state["evals"] and evals:  # the base model's scores: what every later eval is compared with
        accelerator.print(f"base model: {format_eval(run_evals(whisper, 0, evals, cfg, state, log, score=score))}")
    bar = _bar(cfg, state, total_steps) if progress and accelerator.is_main_process else None
    model.train()
    clock = {"t0": time.time(), "samples0": state["samples"]}
    eval_every = cfg.eval_every or max(1, math.ceil(len(clips) / (cfg.batch_size * cfg.grad_accum * world)))
    try:
        while state["step"] < total_steps and not state["stopped"]:
            groups = epoch_groups(clips.durations, cfg, state["epoch"], world, rank)
            if read_ahead:
                read_ahead(upcoming(groups, state, total_steps), cfg.data_workers, cfg.seed,
                           cfg.speed_perturb or (), cfg.noise_snr)
            while state["group"] < len(groups) and state["step"] < total_steps:
                total_loss = train_step(model, groups[state["group"]], loss_of, optimizer, scheduler, accelerator,
                                        cfg.max_grad_norm)
                state["samples"] += sum(len(b) for b in groups[state["group"]]) * world
                state["group"] += 1
                state["step"] += 1
                elapsed = _elapsed(state, clock)
                _report(state, clock, total_loss, scheduler, bar, log, cfg, elapsed)
                at_eval = evals and (state["step"] % eval_every == 0 or state["step"] == total_steps)
                if at_eval:
                    rec = run_evals(whisper, state["step"], evals, cfg, state, log, train_s=elapsed, score=score)
                    _judge(rec, state, cfg)
                    if bar:
                        bar.write(f"step {state['step']}: {format_eval(rec)}")
                if at_eval or (cfg.save_every and state["step"] % cfg.save_every == 0):
                    _restart_clock(state, clock, elapsed)
                    save(state["step"])
                after_step(state["step"], state)
                if state["stopped"]:
                    break
            else:
                state["epoch"] += 1
                state["group"] = 0
        state["train_s"] += time.time() - clock["t0"]
        if state["step"] and checkpoint.steps(ckdir)[-1:] != [state["step"]]:  # the last step is always kept
            save(state["step"])
    finally:
        if read_ahead:
            read_ahead([], 0)  # stops the workers
        if bar:
            bar.close()
        log.close()
    return state


def _bar(cfg, state: dict, total_steps: int):
    from tqdm import tqdm
    return tqdm(total=total_steps, initial=state["step"], desc=f"train ({cfg.mode})", unit="step")


def _elapsed(state: dict, clock: dict) -> float:
    return state["train_s"] + time.time() - clock["t0"]


def _restart_clock(state: dict, clock: dict, elapsed: float) -> None:
    """Evaluation and checkpoint time is not training time: the clock restarts after them, at `elapsed`
    (the training seconds counted before they began)."""
    state["train_s"] = elapsed
    clock["t0"], clock["samples0"] = time.time(), state["samples"]


def _report(state: dict, clock: dict, total_loss: float, scheduler, bar, log, cfg, elapsed: float) -> None:
    """The progress bar's postfix and, every --log-every steps, a train line in the log."""
    step = state["step"]
    sps = (state["samples"] - clock["samples0"]) / max(time.time() - clock["t0"], 1e-9)
    lr = scheduler.get_last_lr()[0]
    if bar:
        bar.update(1)
        bar.set_postfix(loss=f"{total_loss:.3f}", lr=f"{lr:.2e}", sps=f"{sps:.1f}")
    if step % cfg.log_every == 0 or step == 1:
        log({"event": "train", "step": step, "epoch": state["epoch"], "loss": total_loss, "lr": lr,
             "samples_per_s": sps, "elapsed_s": elapsed})


def after_step(step: int, state: dict) -> None:
    """Hook called after every optimizer step: tests interrupt a run here, benchmarks stop it on a time budget
    (by setting state["stopped"])."""


def select_checkpoint(state: dict, rec: dict, cfg) -> None:
    """Best = lowest valid error among evals that beat the base model's valid error and whose guard stayed
    within the threshold of the base model's. A checkpoint worse than the base on the domain is no candidate
    however well it keeps the guard: early on, one looping clip can put valid far above the base while the
    guard is still untouched (multilingual base on Mandarin: CER 68% -> 400% at step 10, guard 14.6% -> 12.3%)."""
    by_step = {e["step"]: e for e in state["evals"]}
    if state["best_any"] is None or rec["valid"] < by_step[state["best_any"]]["valid"]:
        state["best_any"] = rec["step"]
    beats_best = state["best"] is None or rec["valid"] < by_step[state["best"]]["valid"]
    if rec["guard_ok"] and rec["valid"] < state["evals"][0]["valid"] and beats_best:
        state["best"] = rec["step"]
    # --patience counts evals without a new low among the guard-keeping ones, whether or not they beat the base
    earlier = [e["valid"] for e in state["evals"][1:] if e is not rec and e["guard_ok"]]
    state["bad_evals"] = 0 if rec["guard_ok"] and all(rec["valid"] < v for v in earlier) else state["bad_evals"] + 1


def format_eval(rec: dict) -> str:
    """One evaluation as the eval line prints it: valid, guard and the no-speech set's counts."""
    s = f"valid {rec['metric'].upper()} {rec['valid']:.2%}"
    if rec.get("guard") is not None:
        s += (f", guard {rec['guard_metric'].upper()} {rec['guard']:.2%}"
              + ("" if rec.get("guard_speech_ok", rec["guard_ok"]) else " (worse than base)"))
    if rec.get("no_speech_words") is not None:
        s += (f", no-speech: {rec['no_speech_words']} words on {rec['no_speech_clips_with_text']} clips"
              + ("" if rec.get("no_speech_ok", True) else " (more than base)"))
    return s


def _diverged(loss, state, ckdir: Path, scheduler) -> TrainingDiverged:
    good = checkpoint.latest(ckdir)
    kept = f"the last good checkpoint is {good}" if good else "no checkpoint had been written yet"
    return TrainingDiverged(
        f"loss became {loss.item()} at step {state['step'] + 1} (lr {scheduler.get_last_lr()[0]:.2e}); "
        f"training stopped, {kept}",
        "lower --lr, keep --max-grad-norm on, or train in fp32 (--precision no); re-running resumes from it")


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
