"""CTC training step time: `speechtune train` against transformers' own recipe, side by side, same data,
same model, same settings.

The anchor is `examples/pytorch/speech-recognition/run_speech_recognition_ctc.py` as transformers ships it,
reduced to its training path: every clip's `input_values` computed once up front (its `datasets.map`),
`DataCollatorCTCWithPadding`, `Trainer` with `--freeze_feature_encoder`, its config defaults (dropouts 0,
layerdrop 0, mask_time_prob 0.05, ctc_loss_reduction "mean"), no evaluation. speechtune runs
`--mode freeze-feature-encoder --spec-augment --mask-time-prob 0.05`, the same batch size, lr and steps.
Both train a randomly initialised wav2vec2-base geometry (95M parameters; no weights download here) with
a fresh character vocabulary on the synthesized drug-name corpus of train_speed.py, fp32 on the CPU.
Each side runs in its own process; step time excludes start-up (the first 2 steps are not timed).

  python benchmarks/ctc_speed.py --out /tmp/ctc_speed [--steps 14] [--clips 32] [--batch-size 8] [--group-by-length]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import build_corpus  # noqa: E402

WARMUP_STEPS = 2  # not timed: allocator warm-up, first-call setup


def build_model(folder: Path) -> Path:
    """wav2vec2-base's geometry (facebook/wav2vec2-base's config), random weights, dropouts as the HF recipe
    sets them (0), no tokenizer: both sides build the same character vocabulary from the transcripts."""
    import torch
    import transformers as tf
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    config = tf.Wav2Vec2Config(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                               feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.05)
    tf.Wav2Vec2ForPreTraining(config).save_pretrained(folder)
    tf.Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(folder)
    return folder


class StepTimer:
    """A transformers TrainerCallback recording when each optimizer step ends."""

    def __init__(self):
        self.ends = []

    def hook(self):
        from transformers import TrainerCallback
        timer = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                timer.ends.append(time.perf_counter())
        return Callback()


def run_hf(model_dir: Path, data: Path, out: Path, steps: int, batch_size: int, lr: float, group: bool) -> dict:
    """transformers' recipe: precomputed input_values, its padding collator, Trainer."""
    import datasets
    import torch
    import transformers as tf

    from speechtune.audio import load_audio
    from speechtune.manifest import read_manifest
    from speechtune.models.ctc import build_vocab, ctc_text, vocab_tokenizer
    rows = read_manifest(data / "train.jsonl")
    tokenizer = vocab_tokenizer(build_vocab(r["text"] for r in rows), out / "tok")
    fe = tf.Wav2Vec2FeatureExtractor.from_pretrained(model_dir)
    config = tf.AutoConfig.from_pretrained(model_dir)
    config.update({"ctc_loss_reduction": "mean", "pad_token_id": tokenizer.pad_token_id,
                   "vocab_size": len(tokenizer)})
    model = tf.AutoModelForCTC.from_pretrained(model_dir, config=config)
    model.freeze_feature_encoder()
    ds = datasets.Dataset.from_list([{"input_values": fe(load_audio(r["audio"]), sampling_rate=16000).input_values[0],
                                      "labels": tokenizer(ctc_text(r["text"])).input_ids} for r in rows])
    ds = ds.map(lambda b: {"input_length": len(b["input_values"])})

    def collate(features):  # the recipe's DataCollatorCTCWithPadding
        batch = fe.pad([{"input_values": f["input_values"]} for f in features], padding=True, return_tensors="pt")
        labels = tokenizer.pad([{"input_ids": f["labels"]} for f in features], padding=True, return_tensors="pt")
        batch["labels"] = labels["input_ids"].masked_fill(labels.attention_mask.ne(1), -100)
        return batch

    args = tf.TrainingArguments(output_dir=str(out / "hf"), per_device_train_batch_size=batch_size, max_steps=steps,
                                learning_rate=lr, warmup_steps=0, length_column_name="input_length",
                                train_sampling_strategy="group_by_length" if group else "random",
                                save_strategy="no", report_to=[], logging_steps=1000, use_cpu=True,
                                dataloader_num_workers=0, seed=0, disable_tqdm=True)
    timer = StepTimer()
    trainer = tf.Trainer(model=model, args=args, train_dataset=ds, data_collator=collate, callbacks=[timer.hook()])
    torch.manual_seed(0)
    trainer.train()
    return _timing(timer.ends, batch_size)


def run_speechtune(model_dir: Path, data: Path, out: Path, steps: int, batch_size: int, lr: float) -> dict:
    from speechtune.train import loop
    from speechtune.train.config import TrainConfig
    from speechtune.train.recipe import train
    ends = []
    original = loop.after_step

    def record(step, state):
        ends.append(time.perf_counter())
        original(step, state)
    loop.after_step = record
    train(TrainConfig(model=str(model_dir), data=str(data), out=str(out / "speechtune"), mode="freeze-feature-encoder",
                      spec_augment=True, mask_time_prob=0.05, batch_size=batch_size, max_steps=steps, lr=lr,
                      warmup_ratio=0.0, eval_every=10 ** 6, eval_max_clips=1, tensorboard=False, overwrite=True,
                      save_every=0), progress=False)
    return _timing(ends[:-1], batch_size)  # the last step also ran the final evaluation and checkpoint


def _timing(ends: list[float], batch_size: int) -> dict:
    timed = ends[WARMUP_STEPS:]
    per_step = (timed[-1] - timed[0]) / (len(timed) - 1)
    return {"steps_timed": len(timed) - 1, "s_per_step": round(per_step, 3),
            "clips_per_s": round(batch_size / per_step, 2)}


def _subset(data: Path, n: int, out: Path) -> Path:
    """A prepared folder holding the first `n` training clips (absolute audio paths)."""
    from speechtune.files import write_jsonl
    from speechtune.manifest import read_manifest
    if not (out / "train.jsonl").is_file():
        rows = [{k: r[k] for k in ("audio", "text", "duration", "speaker", "language", "source")}
                for r in read_manifest(data / "train.jsonl")[:n]]
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "train.jsonl", rows)
        write_jsonl(out / "valid.jsonl", rows[:1])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    # 32 clips / 8 = 4 steps an epoch: 14 steps are 3.5 epochs, most of them reusing the frozen stem's
    # cached outputs, as multi-epoch runs do (the recipe's examples train 30+ epochs)
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--clips", type=int, default=32, help="training clips used (of the corpus' 150)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--group-by-length", action="store_true", help="the recipe's --group_by_length (transformers 5: train_sampling_strategy; off by default)")
    ap.add_argument("--side", choices=["hf", "speechtune"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = _subset(build_corpus(args.out / "corpus", held_out="sentences"), args.clips, args.out / f"data-{args.clips}")
    model = build_model(args.out / "wav2vec2-base-random")
    if args.side:  # one side, in this process
        run = run_hf if args.side == "hf" else run_speechtune
        extra = (args.group_by_length,) if args.side == "hf" else ()
        print(json.dumps(run(model, data, args.out, args.steps, args.batch_size, args.lr, *extra)))
        return 0
    results = {}
    for side in ("hf", "speechtune"):
        cmd = [sys.executable, __file__, "--out", str(args.out), "--steps", str(args.steps), "--clips", str(args.clips),
               "--batch-size",
               str(args.batch_size), "--lr", str(args.lr), "--side", side] + (["--group-by-length"] * args.group_by_length)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[side] = json.loads(out.strip().splitlines()[-1])
    results["speedup"] = round(results["hf"]["s_per_step"] / results["speechtune"]["s_per_step"], 2)
    results["settings"] = vars(args) | {"out": str(args.out), "side": None}
    print(json.dumps(results, indent=1))
    (args.out / "ctc_speed.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
