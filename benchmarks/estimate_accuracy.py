"""Is `speechtune estimate` right? Predicted vs measured peak memory and step time, tiny.en on this machine.

    python benchmarks/estimate_accuracy.py            # about 4 minutes on a 2-core CPU
    python benchmarks/estimate_accuracy.py --device cuda

Each configuration runs in a fresh subprocess (`calibrate()`: one warm-up step + 3 timed training steps with
AdamW). Memory measured:
  - CPU: resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs after the model and
    optimizer are built) minus the resident set at that moment, with glibc's mmap threshold pinned at 128 KiB
    so every tensor is its own mapping and goes back to the OS when freed. RSS then follows the tensors torch
    holds (tracemalloc cannot see torch's allocations; the profiler's memory events miss the autograd engine's
    temporaries). What it covers: gradients + optimizer states + activations + temporaries = the estimate's
    peak minus weights.
  - CUDA: torch.cuda.max_memory_allocated() above the loaded model.
Step time: the estimate's FLOPs for each configuration divided by the FLOP/s measured in ONE reference run
(full, batch 2), against the measured median step time of that configuration. On a CPU shared with other
work, wall time measures the scheduler more than the model, so the comparison uses the process's CPU time
(all threads, OMP_WAIT_POLICY=PASSIVE so idle OpenMP threads sleep instead of spinning); wall time is shown
beside it. On CUDA the comparison uses wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CONFIGS = [  # mode, batch, label tokens, gradient checkpointing
    ("full", 2, 64, False), ("full", 8, 64, False),
    ("freeze-encoder", 2, 64, False), ("freeze-encoder", 8, 64, False),
    ("lora", 2, 64, False), ("lora", 8, 64, False),
    ("full", 2, 448, False), ("full", 8, 64, True),
]
REFERENCE = 0


def model_spec() -> tuple[str, bool]:
    """The bundled tiny.en folder when the models module can provide it, else the catalog architecture."""
    try:
        from speechtune.models import resolve_model
        return str(resolve_model("tiny.en")), True
    except Exception:      # noqa: BLE001  models module not there yet: same architecture, random weights
        return "tiny.en", False


def child(cfg: dict) -> None:
    from speechtune.plan.calibrate import calibrate
    res = calibrate(cfg["model"], cfg["mode"], cfg["batch"], steps=cfg["steps"], device=cfg["device"],
                    precision=cfg["precision"], label_tokens=cfg["labels"], gradient_checkpointing=cfg["ckpt"],
                    load_weights=cfg["load_weights"], progress=False, max_step_seconds=600)
    print("RESULT " + json.dumps(res))


def run(cfg: dict) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_WAIT_POLICY="PASSIVE")
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True,
                       env=env)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child failed for {cfg}:\n{p.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default=None, help="default fp32 on CPU, bf16 on CUDA")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    from speechtune.plan.estimate import estimate
    spec, load_weights = model_spec()
    precision = args.precision or ("fp32" if args.device == "cpu" else "bf16")
    dev = "cpu" if args.device == "cpu" else "cuda"
    print(f"model: {spec} ({'bundled weights' if load_weights else 'catalog architecture, random weights'}), "
          f"device {args.device}, {precision}", file=sys.stderr)
    results = []
    for mode, batch, labels, ckpt in CONFIGS:
        cfg = dict(model=spec, mode=mode, batch=batch, labels=labels, ckpt=ckpt, steps=args.steps,
                   device=args.device, precision=precision, load_weights=load_weights)
        res = run(cfg)
        print(f"  {mode} b{batch} L{labels}{' ckpt' if ckpt else ''}: {res['step_seconds']:.2f} s/step "
              f"({res['cpu_seconds']:.2f} CPU s), "
              f"peak {res['measured_peak_bytes'] / 1e6:.0f} MB", file=sys.stderr)
        results.append((cfg, res))
    ref = results[REFERENCE][1]
    key = "cpu_seconds" if args.device == "cpu" else "step_seconds"
    ref_flops = ref["flops_per_step"] / ref[key]
    print(f"| configuration | predicted peak MB | measured MB | error | predicted {key.replace('_', ' ')}/step "
          f"| measured (median of {args.steps}) | error | wall s/step |")
    print("|---|---|---|---|---|---|---|---|")
    for cfg, res in results:
        est = estimate(spec, cfg["mode"], cfg["batch"], precision=precision, label_tokens=cfg["labels"],
                       gradient_checkpointing=cfg["ckpt"], device=dev, gpus=["A10"], recommend=False)
        pred_mem = est.memory["total"] - est.memory["weights"] - est.memory["overhead"]
        meas_mem = res["measured_peak_bytes"]
        pred_t, meas_t = est.flops_per_step / ref_flops, res[key]
        name = f"{cfg['mode']}, batch {cfg['batch']}, {cfg['labels']} label tokens" + (
            ", grad checkpointing" if cfg["ckpt"] else "")
        ref_note = " (reference)" if cfg is results[REFERENCE][0] else ""
        print(f"| {name} | {pred_mem / 1e6:.0f} | {meas_mem / 1e6:.0f} | {pred_mem / meas_mem - 1:+.1%} | "
              f"{pred_t:.2f}{ref_note} | {meas_t:.2f} | {pred_t / meas_t - 1:+.1%} | {res['step_seconds']:.2f} |")
    print(f"\nreference: {ref_flops / 1e9:.1f} GFLOP/s per {key.replace('_', ' ')} (full, batch 2); "
          f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
