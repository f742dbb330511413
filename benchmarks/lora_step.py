"""Time one cached decoder-only LoRA step (what `speechtune train --mode lora` runs after epoch 1) per setting.

The adapters come from speechtune's own families.whisper.setup_training; the encoder output is random (its values do not change the
cost). Each setting gets 2 warm-up steps, then --steps timed ones; the best is reported. --profile prints
torch.profiler's top ops for the first setting.

  python benchmarks/lora_step.py --model tiny.en --dropout 0.05 0 [--targets q_proj out_proj fc1 fc2] [--profile]
"""
from __future__ import annotations

import argparse
import time


def step_time(model_spec: str, dropout: float, targets: list[str] | None, batch: int, tokens: int, steps: int,
              profile: bool) -> float:
    import torch
    from transformers import WhisperForConditionalGeneration

    from speechtune.models import resolve_model
    from speechtune.families.whisper import setup_training
    from speechtune.train.config import TrainConfig

    torch.manual_seed(0)
    model = WhisperForConditionalGeneration.from_pretrained(resolve_model(model_spec))
    cfg = TrainConfig(mode="lora", lora_dropout=dropout, **({"lora_targets": targets} if targets else {}))
    setup_training(cfg, model)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    hidden = torch.randn(batch, model.config.max_source_positions, model.config.d_model)
    labels = torch.randint(0, model.config.vocab_size - 2000, (batch, tokens))

    def step():
        model(encoder_outputs=(hidden,), labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    if profile:
        from torch.profiler import profile as prof
        with prof() as p:
            step()
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--dropout", type=float, nargs="+", default=[0.05, 0.0])
    ap.add_argument("--targets", nargs="+", help="lora_targets (default: train's)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--label-tokens", type=int, default=18)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    for i, p in enumerate(args.dropout):
        s = step_time(args.model, p, args.targets, args.batch_size, args.label_tokens, args.steps,
                      args.profile and i == 0)
        print(f"lora_dropout {p:g}: {s:.3f} s per step (best of {args.steps})", flush=True)


if __name__ == "__main__":
    main()
