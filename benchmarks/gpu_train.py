"""`speechtune train` on a GPU: samples/s and peak memory of whisper-small-sized random weights in bf16, each
beside what `speechtune estimate` predicts for the same run.

For a session that is lent a GPU, from the repository root (about 5 minutes on one GPU):

    python benchmarks/gpu_train.py --out /tmp/gpu_train
    python benchmarks/gpu_train.py --size tiny --device cpu --precision no --steps 3 --batch-size 2 --modes lora

(the second is a smoke run that works on a CPU). The model has the architecture of `--size`
(speechtune.plan.catalog), random weights (seeded) and the bundled multilingual base's tokenizer. The data is
--clips synthesized English sentences. Each mode runs --steps optimizer steps through `speechtune.train.train`,
the real loop: autocast, encoder cache, atomic checkpoints, one evaluation of 2 clips before and after.
- samples/s (steady): from train_log.jsonl, the steps after the first epoch, so the encoder cache's fill and
  CUDA warm-up are left out; the training summary's all-steps figure is shown beside it.
- peak memory: the training summary's `torch.cuda.max_memory_allocated` (resident-set high-water mark on a CPU).
- predicted: `speechtune.plan.estimate` for the same mode, batch, precision, LoRA settings and the longest
  label in the data.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SENTENCES = ["the patient takes {} every morning", "please renew the {} prescription", "we stopped {} last week",
             "start {} at a low dose"]
WORDS = ["metoprolol", "lisinopril", "atorvastatin", "amlodipine", "omeprazole", "gabapentin", "furosemide",
         "tamsulosin", "warfarin", "sertraline", "metformin", "insulin", "aspirin", "ibuprofen", "codeine", "heparin"]


def random_model(size: str, out: Path, seed: int = 0) -> Path:
    """An HF Whisper folder with `size`'s architecture, random weights and the real multilingual tokenizer."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from speechtune.models import whisper
    from speechtune.models.registry import bundled_ct2
    from speechtune.plan.catalog import ARCHITECTURES

    if (out / "config.json").is_file():
        return out
    ref = bundled_ct2("base")
    dims = dict(ARCHITECTURES[size].config, num_mel_bins=80, max_source_positions=1500, max_target_positions=448)
    dims["vocab_size"] = 51865  # the tokenizer is base's multilingual one, whatever the size
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**dims))
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    suppress = json.loads((ref / "config.json").read_text())["suppress_ids"]
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    whisper.write_hf_folder(tmp, sd, dims, ref / "tokenizer.json", suppress, None)
    tmp.replace(out)
    return out


def corpus(d: Path, clips: int) -> Path:
    from speechtune.files import write_jsonl
    from train_speed import synth_split  # benchmarks/ is on sys.path when this script runs

    if (d / "valid.jsonl").is_file():
        return d
    sents = [SENTENCES[i % len(SENTENCES)].format(WORDS[i // len(SENTENCES) % len(WORDS)]) for i in range(clips)]
    rows = synth_split(sents, d, "train", seed=0)
    write_jsonl(d / "valid.jsonl", rows[:2])
    return d


def steady_rate(log: Path, batch: int, from_step: int) -> float | None:
    """Samples per second between `from_step` and the last step, from the loop's per-step log lines."""
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    rows = [r for r in rows if r.get("event") == "train" and r["step"] >= from_step]
    if len(rows) < 2:
        return None
    return (rows[-1]["step"] - rows[0]["step"]) * batch / (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"])


def run(mode: str, model: Path, data: Path, out: Path, args) -> dict:
    from speechtune.plan.estimate import estimate_setup
    from speechtune.plan.setup import setup_from_config
    from speechtune.train.data import load_split
    from speechtune.train.recipe import TrainConfig, train

    cfg = TrainConfig(model=str(model), data=str(data), out=str(out / mode), mode=mode, max_steps=args.steps,
                      batch_size=args.batch_size, precision=args.precision, device=args.device, eval_every=args.steps,
                      eval_max_clips=2, eval_batch_size=2, log_every=1, tensorboard=False, overwrite=True,
                      gradient_checkpointing=args.gradient_checkpointing, language="en")
    t = time.time()
    train(cfg, progress=False)
    s = json.loads((out / mode / "training_summary.json").read_text())
    steps_per_epoch = -(-len(load_split(data / "train.jsonl")) // args.batch_size)
    # the run train just did: its config, with the precision and device it resolved and the longest label
    setup = setup_from_config(cfg, precision=s["precision"], device=s["device"], label_tokens=args.label_tokens)
    est = estimate_setup(str(model), setup, recommend=False)
    return {"mode": mode, "device": s["device"], "precision": s["precision"], "steps": s["steps"],
            "samples_per_s_all": s["samples_per_s"],
            "samples_per_s_steady": steady_rate(out / mode / "train_log.jsonl", args.batch_size, steps_per_epoch + 1),
            "peak_memory_bytes": s["peak_memory_bytes"], "predicted_peak_bytes": est.memory["total"],
            "wall_s": round(time.time() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/gpu_train")
    ap.add_argument("--size", default="small", help="architecture from speechtune.plan.catalog (tiny, base, small, ...)")
    ap.add_argument("--modes", nargs="+", default=["full", "freeze-encoder", "lora"])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--precision", default="bf16", choices=["auto", "no", "bf16", "fp16"])
    ap.add_argument("--device", default=None, help="cuda (default when there is one) or cpu")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = random_model(args.size, out / f"whisper-{args.size}-random")
    data = corpus(out / "data", args.clips)
    from speechtune.models import load_model
    from speechtune.train.data import Clips, load_split
    w = load_model(model, device="cpu")
    clips = Clips(load_split(data / "train.jsonl"), w.processor, w.model.generation_config, "en", 448)
    args.label_tokens = max(len(lab) for lab in clips.labels)
    del w, clips
    results = [run(mode, model, data, out, args) for mode in args.modes]
    (out / "results.json").write_text(json.dumps({"size": args.size, "batch_size": args.batch_size,
                                                  "label_tokens": args.label_tokens, "runs": results}, indent=2))
    print(f"\nwhisper-{args.size} architecture, random weights, batch {args.batch_size}, {args.steps} steps, "
          f"labels <= {args.label_tokens} tokens")
    print("| mode | device | precision | samples/s (steady) | samples/s (all steps) | peak memory GiB | "
          "predicted GiB | error |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        peak, pred = r["peak_memory_bytes"] / 2 ** 30, r["predicted_peak_bytes"] / 2 ** 30
        steady = f"{r['samples_per_s_steady']:.1f}" if r["samples_per_s_steady"] else "-"
        # on a CPU the peak is the process's whole resident-set high-water mark, not comparable
        err = f"{100 * (pred - peak) / peak:+.1f}%" if r["device"].startswith("cuda") else "-"
        print(f"| {r['mode']} | {r['device']} | {r['precision']} | {steady} | {r['samples_per_s_all']:.1f} | "
              f"{peak:.2f} | {pred:.2f} | {err} |")


if __name__ == "__main__":
    main()
