"""Does the CTC training loop learn? A small randomly initialised CTC model trained from scratch with
`speechtune train` on a synthesized corpus (no CTC weights can be downloaded here), loss and greedy CER on
held-out sentences recorded at every evaluation.

The corpus is train_speed.py's drug-name corpus with held-out *sentences* (every held-out word was heard in
training, in other sentences), synthesized with espeak-ng. The model has no tokenizer, so train builds a
character vocabulary from the transcripts and a fresh head, as for a pretrained encoder without one.

  python benchmarks/ctc_learn.py --out /tmp/ctc_learn [--type parakeet_ctc|wav2vec2] [--steps 600]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import build_corpus  # noqa: E402


def small_config(model_type: str):
    """A few million parameters: small enough for minutes on 2 CPU cores."""
    import transformers as tf
    if model_type == "parakeet_ctc":
        return tf.ParakeetCTCConfig(vocab_size=32, pad_token_id=0, encoder_config=dict(
            hidden_size=144, num_hidden_layers=4, num_attention_heads=4, intermediate_size=576, num_mel_bins=80,
            subsampling_conv_channels=64, subsampling_factor=4, conv_kernel_size=15, dropout=0.1,
            layerdrop=0.0))
    return tf.Wav2Vec2Config(vocab_size=32, pad_token_id=0, hidden_size=144, num_hidden_layers=4,
                             num_attention_heads=4, intermediate_size=576, conv_dim=(128,) * 5,
                             conv_stride=(5, 4, 2, 2, 2), conv_kernel=(10, 6, 4, 4, 4), num_conv_pos_embeddings=32,
                             num_conv_pos_embedding_groups=4, layerdrop=0.0, feat_extract_norm="layer",
                             do_stable_layer_norm=True, mask_time_prob=0.05)


def build_model(folder: Path, model_type: str) -> Path:
    import torch
    import transformers as tf
    torch.manual_seed(0)
    tf.AutoModelForCTC.from_config(small_config(model_type)).save_pretrained(folder)
    fe = tf.ParakeetFeatureExtractor() if model_type == "parakeet_ctc" else tf.Wav2Vec2FeatureExtractor(
        return_attention_mask=True)
    fe.save_pretrained(folder)
    return folder


def _params(folder: Path) -> int:
    from safetensors.numpy import load_file
    return sum(v.size for v in load_file(str(folder / "model.safetensors")).values())


def _held_out(model: Path, manifest: Path) -> dict:
    """WER and CER of the trained model (the chosen checkpoint) on every held-out clip, greedy."""
    from speechtune.evaluation import load_rows, score_rows, transcribe_rows
    from speechtune.runtimes import DecodingOptions, load_runtime
    rows, _ = load_rows(manifest)
    run = transcribe_rows(load_runtime(model), rows, DecodingOptions(), progress=False)
    s = score_rows(rows, run["hyps"], ["en"] * len(rows))
    return {"clips": len(rows), "wer": s["wer"], "cer": s["cer"],
            "examples": [(r["text"], h) for r, h in zip(rows[:3], run["hyps"][:3])]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--type", default="parakeet_ctc", choices=["parakeet_ctc", "wav2vec2"])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    from speechtune.train.config import TrainConfig
    from speechtune.train.recipe import train

    data = build_corpus(args.out / "corpus", held_out="sentences")
    model = build_model(args.out / f"init-{args.type}", args.type)
    t0 = time.time()
    out = train(TrainConfig(model=str(model), data=str(data), out=str(args.out / f"run-{args.type}"), mode="full",
                            max_steps=args.steps, eval_every=args.eval_every, batch_size=8, lr=args.lr,
                            warmup_ratio=0.1, eval_max_clips=30, tensorboard=False, overwrite=True))
    s = json.loads((out / "training_summary.json").read_text())
    log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in log if r["event"] == "train"}
    rows = [{"step": e["step"], "train_s": e["train_s"], f"valid_{s['metric']}": e["valid"],
             "loss": losses.get(e["step"])} for e in s["evals"]]
    result = {"type": args.type, "params_m": round(_params(out) / 1e6, 2), "steps": s["steps"],
              "wall_s": round(time.time() - t0), "metric": s["metric"], "evals": rows,
              "best_step": s["best_step"], "held_out": _held_out(out, data / "valid.jsonl")}
    print(json.dumps(result, indent=1))
    (args.out / f"ctc_learn-{args.type}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
