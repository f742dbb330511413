"""`speechtune train`'s options: the one dataclass its flags, its YAML file and its saved train_config.yaml come
from. `speechtune estimate` (speechtune.plan) reads the same fields, names and defaults from here, so an estimate
describes the run train would do.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# --mode and --lr default to the model family's (families/: whisper.MODES[0] and whisper.DEFAULT_LR, ...).
MODES_HELP = ("what trains; default: the family's first. Whisper: freeze-encoder | full | lora; "
              "CTC: freeze-feature-encoder | full | head | lora | adapter")


@dataclass
class TrainConfig:
    model: str = field(default="tiny.en", metadata={"help": "initial model: bundled name, HF folder, hub id, .pt, CT2 folder"})
    data: str = field(default="", metadata={"help": "prepared folder (train.jsonl, valid.jsonl) from `speechtune prepare`"})
    out: str = field(default="", metadata={"help": "output model folder"})
    mode: str | None = field(default=None, metadata={"help": MODES_HELP})
    language: str | None = field(default=None, metadata={"help": "language for clips whose manifest line has none (multilingual models)"})
    voice: str | None = field(default=None, metadata={"help": "TTS: the base piper voice whose phonemes, sample rate and readings (for the phoneme durations of each recording) a FastSpeech2 voice learns with (default: a voice folder's own, else joe)"})
    guard: str | None = field(default=None, metadata={"help": "general-speech manifest evaluated at every eval; best checkpoint must not get worse on it"})
    guard_threshold: float = field(default=1.0, metadata={"help": "allowed guard error-rate increase over the base model, in points"})
    mix: str | None = field(default=None, metadata={"help": "general-speech manifest mixed into the training clips, an anchor against forgetting (keep it apart from --guard)"})
    mix_ratio: float = field(default=0.2, metadata={"help": "--mix clips added per train clip, drawn once with --seed (at most what --mix holds)"})
    no_speech_ratio: float = field(default=0.0, metadata={"help": "non-speech clips (noise, hum, tones, music, clicks, reversed speech) with empty transcripts added per train clip, as Whisper-Finetune does: they teach <|endoftext|> on audio without words; never the clips the evaluations' no-speech set holds; 0 = off, below 1"})
    epochs: float = field(default=3.0, metadata={"help": "passes over train.jsonl"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps; 0 = from --epochs"})
    batch_size: int = field(default=8, metadata={"help": "clips per micro-batch (per process)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    lr: float | None = field(default=None, metadata={"help": "peak learning rate; default per family and mode (Whisper: full 1e-5, freeze-encoder 2e-5, lora 5e-4; CTC: 3e-5, x10 for a fresh head)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps with linear warmup"})
    schedule: str = field(default="linear", metadata={"help": "decay after warmup", "choices": ["linear", "cosine", "constant_with_warmup"]})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping; 0 = off"})
    seed: int = field(default=0, metadata={"help": "seeds python, numpy, torch and the batch order"})
    lora_r: int = field(default=32, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA alpha"})
    # 0 by default: decoder-only adapters on the cross-attention keys/values see all 1500 encoder frames of every
    # clip, and drawing their dropout masks took 30% of a tiny.en CPU step, with no accuracy gain measured
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_targets: list[str] | None = field(default=None, metadata={"help": "module names that get adapters (default: the family's attention and feed-forward linears)"})
    lora_encoder: bool = field(default=False, metadata={"help": "adapters in the encoder too (otherwise decoder only, and encoder outputs are cached)"})
    freeze_encoder_layers: int = field(default=0, metadata={"help": "full/lora: freeze the first N encoder layers and the conv stem, whose outputs are then computed once per clip (no augmentation)"})
    train_decoder_layers: int = field(default=0, metadata={"help": "train only the top N decoder layers; 0 = all"})
    train_top_layers: int = field(default=0, metadata={"help": "CTC --mode head: also train the top N encoder layers"})
    new_vocab: bool = field(default=False, metadata={"help": "CTC: build a character vocabulary from the transcripts and a fresh head, even where the model has one"})
    precision: str = field(default="auto", metadata={"help": "autocast: auto = bf16 on a GPU that has it, else fp16 on GPU, none on CPU", "choices": ["auto", "no", "bf16", "fp16"]})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations: less memory, ~30% slower"})
    speed_perturb: list[float] | None = field(default=None, metadata={"help": "speed factors drawn per clip, e.g. 0.9 1.0 1.1 (disables the encoder cache)"})
    noise_snr: float | None = field(default=None, metadata={"help": "add pink noise at this SNR in dB (disables the encoder cache)"})
    spec_augment: bool = field(default=False, metadata={"help": "SpecAugment via the model config's mask_time_prob/mask_feature_prob (disables the encoder cache)"})
    mask_time_prob: float = field(default=0.05, metadata={"help": "SpecAugment time-mask probability"})
    mask_feature_prob: float = field(default=0.0, metadata={"help": "SpecAugment feature-mask probability"})
    encoder_cache_mb: float = field(default=4096, metadata={"help": "memory for cached encoder outputs; beyond it they spill to disk"})
    eval_every: int = field(default=0, metadata={"help": "steps between evaluations; 0 = once per epoch"})
    eval_max_clips: int = field(default=200, metadata={"help": "clips of valid (and guard) scored per evaluation"})
    eval_safeguards: bool = field(default=True, metadata={"help": "decode evaluations with the decode-time safeguards (temperature fallback, as transcribe and serve do); --no-eval-safeguards: one greedy decoding"})
    eval_no_speech: bool = field(default=True, metadata={"help": "decode the built-in no-speech set (silence, noise, tones, music, clicks, reversed guard or valid speech; data/nospeech.py) at every evaluation and count the words written on it; under --guard a checkpoint writing text on more of its clips than the base model is not chosen; --no-eval-no-speech: skip it"})
    eval_batch_size: int = field(default=16, metadata={"help": "clips per generate batch during evaluation"})
    stop_at: float = field(default=0.0, metadata={"help": "stop once the valid error rate is at most this (e.g. 0.02), guard permitting; 0 = off"})
    patience: int = field(default=0, metadata={"help": "stop after N evaluations without a better valid score; 0 = off"})
    save_every: int = field(default=0, metadata={"help": "extra checkpoints every N steps between evaluations; 0 = at evaluations only"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept (the best one is always kept)"})
    log_every: int = field(default=10, metadata={"help": "steps between log lines"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard logs to MODEL_DIR/tensorboard"})
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], metadata={"help": "where train_log.jsonl's scalars and the config also go, several or comma-separated: tensorboard (MODEL_DIR/tensorboard), wandb (offline in MODEL_DIR/wandb unless WANDB_MODE says otherwise), mlflow (file store MODEL_DIR/mlruns unless MLFLOW_TRACKING_URI is set); none = only train_log.jsonl"})
    data_workers: int = field(default=2, metadata={"help": "DataLoader worker processes that read audio and compute log-mel features of the next micro-batches while the model computes; 0 = when a batch needs them"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 (default: what accelerate picks)"})
    resume: bool = field(default=False, metadata={"help": "require a checkpoint in --out to continue from"})
    overwrite: bool = field(default=False, metadata={"help": "discard what --out holds and start over"})


def train_default(name: str):
    """The default of one TrainConfig field (a default_factory called)."""
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default
