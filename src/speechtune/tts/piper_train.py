"""Fine-tune a piper VITS voice with piper-tts's own trainer, in a process of its own.

piper-tts is GPL-3.0 and speechtune is MIT, so this is the one speechtune module that imports piper, and it
only ever runs as a separate program: families/piper.py starts

  python -m speechtune.tts.piper_train init   --out init.ckpt [--voice V.onnx] [--size medium|tiny]
  python -m speechtune.tts.piper_train fit    --init init.ckpt --csv train.csv --run RUN --log L --steps N ...
  python -m speechtune.tts.piper_train export --ckpt C.ckpt --config base.onnx.json --out voice.onnx

and reads back only the files they write (checkpoints, a JSON-lines log, ONNX voices). Nothing in speechtune
imports it. It needs `pip install 'speechtune[piper]'` (piper-tts[train]).

`init` copies a piper ONNX voice's weights into piper's torch generator: 318 of the bundled joe voice's
initializers carry piper's parameter names (weight-normed convolutions as their fused weight), the 32
anonymous ones are the flow's weight-normed convolutions, which line up with the generator's convolutions in
the order inference calls them. Parts only training uses (posterior encoder, the duration predictor's
posterior flows, the discriminator) are not in an ONNX voice and start fresh. It reports the largest
difference between the ONNX voice and the copy, decoded without noise.

Three things piper 1.8 needs here, fixed in this module rather than in piper: its wheel lacks the compiled
monotonic alignment (`monotonic_align.core`; a numba version of the same loop is registered in its place),
its validation scores audio with a MOS model it downloads (turned off: speechtune judges voices itself, on its
valid split) and its ONNX export needs `dynamo=False` on torch 2.13.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

# piper's medium quality (its VitsModel defaults; the bundled joe voice), and a tiny one for tests
SIZES = {
    "medium": {},
    "tiny": {"inter_channels": 16, "hidden_channels": 16, "filter_channels": 32, "n_layers": 1, "n_layers_q": 1,
             "resblock_kernel_sizes": (3,), "resblock_dilation_sizes": ((1, 2),), "upsample_initial_channel": 32},
}
OPSET = 15                  # piper's export_onnx
# the largest sample difference between a voice and its copy allowed (joe: 6.8e-6, audio in [-1, 1])
MAX_COPY_DIFF = 1e-3
NO_NOISE = (0.0, 1.0, 0.0)  # noise, length, noise_w: deterministic decoding, for the weight-copy check
REQUIRED = ("piper", "lightning", "onnx", "onnxruntime")   # piper-tts[train] and what export and init read
MISSING_EXIT = 3   # the exit status when they are not installed (families/piper.py says so in one line)


def _maximum_path_each(path, value, t_y, t_x):
    """VITS' monotonic alignment search for one utterance (piper's monotonic_align/core.pyx, line by line)."""
    neg = -1e9
    for y in range(t_y):
        for x in range(max(0, t_x + y - t_y), min(t_x, y + 1)):
            cur = neg if x == y else value[y - 1, x]
            if x == 0:
                prev = 0.0 if y == 0 else neg
            else:
                prev = value[y - 1, x - 1]
            value[y, x] += max(prev, cur)
    index = t_x - 1
    for y in range(t_y - 1, -1, -1):
        path[y, index] = 1
        if index != 0 and (index == y or value[y - 1, index] < value[y - 1, index - 1]):
            index -= 1


def _install_monotonic_align() -> None:
    """Register `piper.train.vits.monotonic_align.core.maximum_path_c` (missing from the 1.8 wheel)."""
    try:
        import numba
        each = numba.njit(cache=False)(_maximum_path_each)
    except ModuleNotFoundError:   # librosa, a piper[train] dependency, brings numba; without it: slow but right
        each = _maximum_path_each

    def maximum_path_c(paths, values, t_ys, t_xs):
        for i in range(paths.shape[0]):
            each(paths[i], values[i], int(t_ys[i]), int(t_xs[i]))

    # where the compiled loop would be: the package's __init__ imports `.monotonic_align.core`
    package = "piper.train.vits.monotonic_align.monotonic_align"
    if package + ".core" not in sys.modules:
        sys.modules[package] = types.ModuleType(package)
        core = types.ModuleType(package + ".core")
        core.maximum_path_c = maximum_path_c
        sys.modules[package + ".core"] = core


def _vits(hparams: dict):
    _install_monotonic_align()
    from piper.train.vits.lightning import VitsModel
    return VitsModel(**{**hparams, "mos_metric": "none"})


def _infer(model_g, ids, scales=NO_NOISE):
    import torch
    x = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        audio = model_g.infer(x, torch.tensor([len(ids)]), noise_scale=scales[0], length_scale=scales[1],
                              noise_scale_w=scales[2])[0]
    return audio.squeeze().numpy()


def _conv_call_order(model_g, ids) -> list[str]:
    """The generator's Conv1d / ConvTranspose1d modules in the order inference calls them."""
    import torch
    names = {id(m): n for n, m in model_g.named_modules()}
    order, hooks = [], []
    for m in model_g.modules():
        if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            hooks.append(m.register_forward_hook(lambda mod, i, o: order.append(names[id(mod)])))
    try:
        _infer(model_g, ids)
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(order))


def _scope(module: str) -> str:
    """The ONNX exporter's name scope of a module: "dp.flows.0" -> "/dp/flows.0" (list items keep their dot)."""
    parts = []
    for part in module.split("."):
        if part.isdigit() and parts:
            parts[-1] += "." + part
        else:
            parts.append(part)
    return "/" + "/".join(parts)


def copy_onnx_weights(model_g, onnx_path: Path) -> dict:
    """Load a piper ONNX voice's weights into `model_g` (piper's SynthesizerTrn, weight norm still on).
    Returns {"copied", "fresh", "fresh_parts"}; raises ValueError when the ONNX does not fit the model."""
    import onnx
    import torch
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = model_g.state_dict()
    new, used = {}, set()

    def put(key, array, source):
        if tuple(state[key].shape) != array.shape:
            raise ValueError(f"{key}: {tuple(state[key].shape)} in the model, {array.shape} in the voice")
        new[key] = torch.from_numpy(np.array(array, copy=True))
        used.add(source)

    def put_fused(base, array, source):   # weight norm: v = W and g = |W| give g * v / |v| = W exactly
        put(base + ".weight_v", array, source)
        norm = np.sqrt((array.astype(np.float64) ** 2).sum(axis=tuple(range(1, array.ndim)), keepdims=True))
        put(base + ".weight_g", norm.astype(array.dtype), source)

    for key in state:
        if key in weights:
            put(key, weights[key], key)
        elif key.endswith(".weight_v") and key[:-2] in weights:
            put_fused(key[:-len(".weight_v")], weights[key[:-2]], key[:-2])
    # ElementwiseAffine's logs: inference only uses exp(-logs), which the exporter folded into a constant
    for key in state:
        if key.endswith(".logs") and key not in new and (folded := weights.get(_scope(key[:-5]) + "/Exp_output_0")) is not None:
            put(key, -np.log(folded), _scope(key[:-5]) + "/Exp_output_0")
    # the anonymous convolution weights, by the order the graph's Conv nodes use them
    anonymous = list(dict.fromkeys(n.input[1] for n in graph.node if n.op_type == "Conv"
                                   and n.input[1] in weights and n.input[1] not in used
                                   and n.input[1].startswith("onnx::")))
    ids = [1, 8, 20, 8, 2]   # any short phoneme sequence: only the call order matters
    pending = [m for m in _conv_call_order(model_g, ids) if m + ".weight_v" in state and m + ".weight_v" not in new]
    if len(pending) != len(anonymous):
        raise ValueError(f"{len(anonymous)} unnamed convolutions in the voice, {len(pending)} left in the model")
    for module, name in zip(pending, anonymous):
        put_fused(module, weights[name], name)
    # named tensors the exporter renamed (the phoneme embedding came out as "sid"): by their unique shape
    left = {k: v for k, v in weights.items() if k not in used and not k.startswith(("onnx::", "/")) and v.ndim >= 2}
    for name, array in left.items():
        fits = [k for k in state if k not in new and tuple(state[k].shape) == array.shape
                and not k.startswith(("enc_q.", "dp.post"))]
        if len(fits) == 1:
            put(fits[0], array, name)
    model_g.load_state_dict({**state, **new})
    fresh = [k for k in state if k not in new]
    return {"copied": len(new), "fresh": len(fresh),
            "fresh_parts": sorted({".".join(k.split(".")[:2]) for k in fresh}), "fresh_keys": fresh}


def _onnx_audio(onnx_path: Path, ids, scales=NO_NOISE) -> np.ndarray:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {"input": np.array([ids], np.int64), "input_lengths": np.array([len(ids)], np.int64),
             "scales": np.array(scales, np.float32)}
    return sess.run(["output"], feeds)[0].squeeze()


def _save(obj, path: Path) -> None:
    import torch
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def cmd_init(args) -> dict:
    """A checkpoint to start from: the ONNX voice's weights (or random ones) in piper's model, of --size or of
    the first size in SIZES the voice's weights fit. Exits non-zero when the copy does not decode as the voice
    does (more than MAX_COPY_DIFF apart without noise)."""
    import torch
    config = json.loads(Path(args.config).read_text(encoding="utf-8")) if args.config else {}
    common = {"num_symbols": int(config.get("num_symbols", 256)),
              "sample_rate": int(config.get("audio", {}).get("sample_rate", 22050))}
    errors = []
    for size in [args.size] if args.size else list(SIZES):
        torch.manual_seed(args.seed)
        hparams = {**SIZES[size], **common}
        model = _vits(hparams)
        report = {"size": size, "hparams": hparams}
        if not args.voice:
            break
        try:
            report.update(copy_onnx_weights(model.model_g, Path(args.voice)))
            break
        except ValueError as e:
            errors.append(f"{size}: {e}")
    else:
        raise SystemExit(f"{args.voice}: its weights fit none of piper's sizes speechtune trains ({'; '.join(errors)})")
    if args.voice:
        model.model_g.eval()
        ids = [1, 0] + [x for p in (20, 8, 27, 14, 31, 8, 17) for x in (p, 0)] + [2]
        ours, theirs = _infer(model.model_g, ids), _onnx_audio(Path(args.voice), ids)
        n = min(len(ours), len(theirs))
        report["max_abs_diff"] = float(np.abs(ours[:n] - theirs[:n]).max()) if n else None
        report["length_diff"] = int(len(ours) - len(theirs))
        if report["length_diff"] or report["max_abs_diff"] is None or report["max_abs_diff"] > MAX_COPY_DIFF:
            raise SystemExit(f"{args.voice}: the copied weights do not decode as the voice does "
                             f"(difference {report['max_abs_diff']}, {report['length_diff']} samples longer)")
    fresh = report.pop("fresh_keys", None)   # None: nothing was copied, everything is fresh
    _save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "fresh": fresh}, Path(args.out))
    return report


def _progress(run: Path, log: Path, save_every: int, steps: int, warmup: int, fresh: set | None):
    """A Lightning callback: one JSON line per step (losses) and a checkpoint every `save_every` steps and at
    the last, written to a temporary name and moved into place, so a killed run leaves whole checkpoints only.
    A step is one batch (both optimizers step once on it). In the first `warmup` steps only the generator's
    `fresh` parameters (and the discriminator) train (see cmd_fit)."""
    import lightning as L

    class Progress(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            step = trainer.fit_loop.epoch_loop._batches_that_stepped + 1
            for name, param in pl_module.model_g.named_parameters():
                param.requires_grad_(step > warmup or fresh is None or name in fresh)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step = trainer.fit_loop.epoch_loop._batches_that_stepped + 1   # counted after this hook
            m = {k: round(float(v), 5) for k, v in trainer.callback_metrics.items()
                 if k in ("loss_g", "loss_d") or k.startswith("train_")}
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "epoch": trainer.current_epoch, **m}) + "\n")
            if step % save_every == 0 or step >= steps:
                folder = run / "checkpoints"
                folder.mkdir(parents=True, exist_ok=True)
                for name in (f"step-{step:06d}.ckpt", "last.ckpt"):
                    tmp = folder / (name + ".tmp")
                    trainer.save_checkpoint(tmp)
                    os.replace(tmp, folder / name)
            if step >= steps:
                trainer.should_stop = True

    return Progress()


def _scale_fresh_lr(model, fresh: set, scale: float) -> None:
    """piper's optimizers, with the generator's fresh parameters in a group of their own at `scale` x its lr."""
    configure = model.configure_optimizers

    def configure_optimizers():
        (opt_g, opt_d), schedulers = configure()
        group = opt_g.param_groups[0]
        ours = [p for n, p in model.model_g.named_parameters() if n in fresh]
        ids = {id(p) for p in ours}
        group["params"] = [p for p in group["params"] if id(p) not in ids]
        opt_g.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": ours,
                               "lr": group["lr"] * scale, "initial_lr": group["lr"] * scale})
        return [opt_g, opt_d], schedulers

    model.configure_optimizers = configure_optimizers


def cmd_fit(args) -> dict:
    """Train from --init on --csv (utt|text|phoneme ids) for --steps batches; resumes from RUN/checkpoints/
    last.ckpt when it exists.

    Why a warm-up: an ONNX voice lacks what only training uses (the posterior encoder, the duration
    predictor's posterior flows), so those start random, and in VITS every other part learns through them:
    the prior and flow are pulled towards the random posterior by the KL term, the decoder decodes its
    latents. Training everything from step 1 took joe from 2% to 91% valid CER in 25 steps, with the vocoder
    frozen too (benchmarks/piper_learn.py). For --warmup-steps only the fresh parts (init's list) and the
    discriminator train, against the voice's own prior, flow and decoder; then everything does."""
    import lightning as L
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger
    torch.manual_seed(args.seed)
    init = torch.load(args.init, map_location="cpu", weights_only=False)
    hparams = {**init["hyper_parameters"], "learning_rate": args.lr, "batch_size": args.batch_size}
    model = _vits(hparams)
    fresh = None if init.get("fresh") is None else set(init["fresh"])
    if fresh and args.fresh_lr_scale != 1:
        _scale_fresh_lr(model, fresh, args.fresh_lr_scale)
    run = Path(args.run)
    last = run / "checkpoints" / "last.ckpt"
    done = max((int(c.stem.split("-")[1]) for c in (run / "checkpoints").glob("step-*.ckpt")), default=0)
    if done >= args.steps:   # a finished run started again: nothing left to train
        return {"steps": done, "steps_run": 0}
    if not last.is_file():
        model.load_state_dict(init["state_dict"])
    from piper.train.vits.dataset import VitsDataModule
    data = VitsDataModule(csv_path=args.csv, cache_dir=run / "cache", espeak_voice=args.espeak_voice,
                          config_path=run / "config.json", voice_name=args.name, sample_rate=hparams["sample_rate"],
                          audio_dir="/", num_symbols=hparams["num_symbols"], batch_size=args.batch_size,
                          validation_split=0.0, num_test_examples=0, num_workers=0, trim_silence=False,
                          dataset_type="phoneme_ids", phonemes_path=args.phonemes,
                          segment_size=model.hparams.segment_size)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    trainer = L.Trainer(accelerator=args.accelerator, devices=1, max_epochs=-1, limit_val_batches=0,
                        num_sanity_val_steps=0, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=args.progress, log_every_n_steps=1, default_root_dir=run,
                        logger=TensorBoardLogger(run, name="tensorboard", version=""),
                        callbacks=[_progress(run, Path(args.log), args.save_every, args.steps,
                                             args.warmup_steps, fresh)])
    import resource
    t0 = time.time()
    trainer.fit(model, datamodule=data, ckpt_path=str(last) if last.is_file() else None)
    steps = trainer.fit_loop.epoch_loop._batches_that_stepped
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"steps": steps, "fit_s": round(time.time() - t0, 1), "steps_run": steps - done,
            "peak_memory_bytes": int(peak), "device": "cuda" if torch.cuda.is_available() else "cpu",
            "parameters": {"generator": sum(p.numel() for p in model.model_g.parameters()),
                           "discriminator": sum(p.numel() for p in model.model_d.parameters())}}


def cmd_export(args) -> dict:
    """The checkpoint's generator as piper's ONNX voice (inputs input, input_lengths, scales; output output)
    and its .onnx.json: the base voice's config (phonemes, espeak voice, inference scales) under a new name."""
    import torch
    ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    model = _vits(ckpt["hyper_parameters"])
    model.load_state_dict(ckpt["state_dict"])
    model_g = model.model_g.eval()
    with torch.no_grad():
        model_g.dec.remove_weight_norm()

    def forward(text, text_lengths, scales, sid=None):
        return model_g.infer(text, text_lengths, noise_scale=scales[0], length_scale=scales[1],
                             noise_scale_w=scales[2], sid=sid)[0].unsqueeze(1)

    model_g.forward = forward
    ids = torch.randint(0, model_g.n_vocab, (1, 50), generator=torch.Generator().manual_seed(0))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.onnx.export(model_g, (ids, torch.LongTensor([50]), torch.FloatTensor([0.667, 1.0, 0.8]), None), str(tmp),
                      opset_version=OPSET, input_names=["input", "input_lengths", "scales", "sid"],
                      output_names=["output"], dynamo=False,
                      dynamic_axes={"input": {0: "batch_size", 1: "phonemes"}, "input_lengths": {0: "batch_size"},
                                    "output": {0: "batch_size", 2: "time"}})
    config = json.loads(Path(args.config).read_text(encoding="utf-8"))
    config["dataset"] = args.name or config.get("dataset")
    cfg_tmp = out.with_name(out.name + ".json.tmp")
    cfg_tmp.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    os.replace(cfg_tmp, out.with_name(out.name + ".json"))
    return {"onnx": str(out)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m speechtune.tts.piper_train")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("init")
    i.add_argument("--out", required=True)
    i.add_argument("--voice", help="piper .onnx voice whose weights to start from (default: random)")
    i.add_argument("--config", help="the voice's .onnx.json (symbols, sample rate)")
    i.add_argument("--size", choices=sorted(SIZES), help="default: the first of SIZES the voice fits (medium)")
    i.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("fit")
    for name in ("--init", "--csv", "--run", "--phonemes", "--log"):
        f.add_argument(name, required=True)
    f.add_argument("--name", default="voice")
    f.add_argument("--espeak-voice", default="en-us")
    f.add_argument("--steps", type=int, required=True)
    f.add_argument("--save-every", type=int, default=100)
    f.add_argument("--batch-size", type=int, default=8)
    f.add_argument("--lr", type=float, default=2e-4)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--warmup-steps", type=int, default=0)
    f.add_argument("--fresh-lr-scale", type=float, default=1.0, help="lr of the fresh parts, x --lr")
    f.add_argument("--threads", type=int, default=0)
    f.add_argument("--accelerator", default="auto")
    f.add_argument("--progress", action="store_true")
    e = sub.add_parser("export")
    for name in ("--ckpt", "--config", "--out"):
        e.add_argument(name, required=True)
    e.add_argument("--name")
    args = p.parse_args(argv)
    missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        print(f"piper_train: {', '.join(missing)} not installed (pip install 'speechtune[piper]')", file=sys.stderr)
        return MISSING_EXIT
    report = {"init": cmd_init, "fit": cmd_fit, "export": cmd_export}[args.cmd](args)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
