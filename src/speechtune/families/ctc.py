"""The CTC family: encoder-only models (wav2vec2, HuBERT, WavLM, UniSpeech(-SAT), data2vec-audio, SEW(-D),
wav2vec2-BERT, wav2vec2-Conformer, Parakeet-CTC) trained with CTC loss on character or subword labels, decoded
greedily frame by frame (runtimes/ctc.py).

Modes: `freeze-feature-encoder` (the default, the classic wav2vec2 recipe: the convolutional feature encoder
stays as pretrained), `full`, `head` (the CTC head, plus the top --train-top-layers encoder layers), `lora`
(adapters on the encoder's linear layers; the head trains in full) and `adapter` (MMS: the per-language
adapter layers and the head).

A model without a CTC head (a pretrained encoder), or any model with --new-vocab, gets a character vocabulary
built from the training transcripts and a fresh head. With an existing head the vocabulary is kept, and
transcripts holding characters it lacks are refused with how many clips and which characters.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE
from ..errors import SpeechtuneError

NAME = "ctc"
# The types of transformers' AutoModelForCTC that speechtune trains (tests/test_ctc.py checks each one is
# still in transformers' mapping).
TASK = "asr"
MODEL_TYPES = ("wav2vec2", "wav2vec2-conformer", "wav2vec2-bert", "hubert", "wavlm", "unispeech", "unispeech-sat",
               "data2vec-audio", "sew", "sew-d", "parakeet_ctc")
MODES = ("freeze-feature-encoder", "full", "head", "lora", "adapter")
# A fresh head starts from nothing and needs about 10x the lr of fine-tuning one that exists (the
# wav2vec2 recipes: 1e-4 to 3e-4 for a new head on a pretrained encoder); adapters and LoRA train few weights.
DEFAULT_LR = {"freeze-feature-encoder": 3e-5, "full": 3e-5, "head": 1e-4, "lora": 5e-4, "adapter": 1e-3}
FRESH_HEAD_LR_FACTOR = 10
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense",
                "linear_q", "linear_k", "linear_v", "linear_out", "linear1", "linear2")
EXPORT_FORMATS = ("onnx",)


def load(spec, device: str | None = None, dtype=None):
    """A `models.ctc.CTCModel` for a CTC folder or hub id (with its tokenizer)."""
    from ..models.ctc import load_ctc
    return load_ctc(spec, device=device, dtype=dtype)


def resolve(spec) -> Path:
    """The local folder of a CTC folder or hub id."""
    from ..models.ctc import resolve_ctc
    return resolve_ctc(spec)


def default_lr(cfg, bundle) -> float:
    lr = DEFAULT_LR[cfg.mode]
    return lr * FRESH_HEAD_LR_FACTOR if bundle.fresh_vocab and cfg.mode in ("freeze-feature-encoder", "full") else lr


def load_for_training(cfg, rows: list[dict], device: str | None = None, dtype=None):
    """The model to train on `rows`: with a fresh character vocabulary from their transcripts when the model
    has no tokenizer (or --new-vocab), else its own, which must spell every transcript."""
    from ..models.ctc import build_vocab, has_tokenizer, load_ctc, resolve_ctc

    folder = resolve_ctc(cfg.model)
    if cfg.new_vocab or not has_tokenizer(folder):
        work = Path(tempfile.mkdtemp(prefix="speechtune-vocab-"))
        bundle = load_ctc(folder, device=device, dtype=dtype, vocab=build_vocab(r["text"] for r in rows), work=work)
        if getattr(bundle.model.config, "adapter_attn_dim", None):
            bundle.model.init_adapter_layers()  # a new language (MMS): fresh adapters with its fresh head
        return bundle
    bundle = load_ctc(cfg.model, device=device, dtype=dtype)  # the spec: it may name an MMS language
    _check_vocabulary(bundle.tokenizer, rows)
    return bundle


def _check_vocabulary(tokenizer, rows: list[dict]) -> None:
    from ..models.ctc import unknown_chars
    missing: dict[str, int] = {}
    first = None
    clips = 0
    for r in rows:
        chars = unknown_chars(tokenizer, r["text"])
        if chars:
            clips += 1
            first = first or r
            for c in chars:
                missing[c] = missing.get(c, 0) + 1
    if missing:
        shown = " ".join(sorted(missing, key=lambda c: -missing[c])[:20])
        raise SpeechtuneError(f"{clips} clip(s) hold {len(missing)} character(s) this model's vocabulary lacks "
                              f"({shown}), first at {first.get('source') or first['audio']}",
                              "pass --new-vocab to build a vocabulary from the transcripts (a fresh CTC head), "
                              "or fix those transcripts")


class Clips:
    """A training split for a CTC model: label ids per clip; audio read from disk when a batch needs it, so
    memory does not grow with the number of clips."""

    def __init__(self, rows: list[dict], bundle):
        from ..models.ctc import label_text
        tok = bundle.tokenizer
        self.rows = rows
        self.fe = bundle.feature_extractor
        self.labels = [tok(label_text(tok, r["text"]), add_special_tokens=False).input_ids for r in rows]
        self.durations = [r["duration"] or 0.0 for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def inputs(self, idx: list[int], rng: np.random.Generator | None = None, speed=(), noise_snr=None) -> dict:
        """The model's inputs for clips `idx` (padded; an attention mask exactly when the feature extractor
        asks for one), as torch tensors."""
        from ..train.data import augment, read_wav
        wavs = [read_wav(self.rows[i]) for i in idx]
        if rng is not None and (speed or noise_snr is not None):
            wavs = [augment(w, rng, list(speed), noise_snr) for w in wavs]
        return dict(self.fe(wavs, sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt",
                            return_attention_mask=bool(getattr(self.fe, "return_attention_mask", False))))


def clips(rows: list[dict], bundle, cfg) -> Clips:
    return Clips(rows, bundle)


def feature_encoder(model):
    """The convolutional stem that turns audio into frames (None when the model has none: wav2vec2-BERT
    reads filter-bank features)."""
    base = model.base_model
    return getattr(base, "feature_extractor", None) or getattr(base, "subsampling", None)


def head(model):
    return getattr(model, "lm_head", None) or model.ctc_head


def encoder_layers(model):
    """The encoder's stack of transformer/conformer blocks (the longest ModuleList named *layers / *layer)."""
    import torch
    lists = [m for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)
             and n.rsplit(".", 1)[-1] in ("layers", "layer") and "adapter" not in n]
    return max(lists, key=len)


def setup_training(cfg, model):
    """Set what trains under cfg.mode (a train.config.TrainConfig); returns the peft wrapper (lora) or None."""
    from ..models.registry import set_checkpointing

    model.config.ctc_loss_reduction = "mean"  # wav2vec2's configs say "sum": the loss would scale with length
    model.config.ctc_zero_infinity = True     # a clip too short for its labels must not poison the batch
    if cfg.spec_augment and getattr(model.base_model, "masked_spec_embed", None) is None:
        raise SpeechtuneError("--spec-augment: this model was built without SpecAugment's mask embedding "
                              "(mask_time_prob 0 in its config)", "train without --spec-augment")
    if hasattr(model.config, "apply_spec_augment"):
        model.config.apply_spec_augment = cfg.spec_augment
        model.config.mask_time_prob = cfg.mask_time_prob if cfg.spec_augment else 0.0
        model.config.mask_feature_prob = cfg.mask_feature_prob if cfg.spec_augment else 0.0
    if _distributed():
        _no_layerdrop(model)
    model.requires_grad_(True)
    peft_model = {"freeze-feature-encoder": _freeze_feature_encoder, "full": lambda c, m: None,
                  "head": _head_only, "lora": _lora, "adapter": _adapters}[cfg.mode](cfg, model)
    mask = getattr(model.base_model, "masked_spec_embed", None)
    if mask is not None and not cfg.spec_augment:
        # unused without SpecAugment; a trainable parameter no step uses makes DDP's all-reduce fail
        mask.requires_grad_(False)
    if cfg.gradient_checkpointing:
        set_checkpointing(model, True, {"use_reentrant": False})
    if not any(p.requires_grad for p in model.parameters()):
        raise SpeechtuneError("nothing left to train with these options")
    return peft_model


def _distributed() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _no_layerdrop(model) -> None:
    """LayerDrop skips whole layers at random, and DDP's gradient all-reduce fails on parameters a rank did
    not use in a step: under a launcher it is off (the config's and every module's copy of it)."""
    if getattr(model.config, "layerdrop", 0):
        print(f"note: layerdrop {model.config.layerdrop} turned off under a distributed launcher", flush=True)
    for obj in (model.config, *model.modules(), *(c for c in vars(model.config).values()
                                                   if hasattr(c, "layerdrop"))):
        if isinstance(getattr(obj, "layerdrop", None), (int, float)):
            obj.layerdrop = 0.0


def _freeze_feature_encoder(cfg, model):
    stem = feature_encoder(model)
    if stem is not None:
        stem.requires_grad_(False)
        if hasattr(stem, "_requires_grad"):  # wav2vec2's stem then skips building a graph through itself
            stem._requires_grad = False


def _head_only(cfg, model):
    layers = encoder_layers(model)
    if not 0 <= cfg.train_top_layers <= len(layers):
        raise SpeechtuneError(f"option train_top_layers: {cfg.train_top_layers} is not between 0 and "
                              f"{len(layers)}, this model's number of encoder layers")
    model.requires_grad_(False)
    head(model).requires_grad_(True)
    for layer in layers[len(layers) - cfg.train_top_layers:]:
        layer.requires_grad_(True)


def _lora(cfg, model):
    import torch
    from peft import LoraConfig

    from ..models.registry import add_lora
    _freeze_feature_encoder(cfg, model)
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    targets = [t for t in (cfg.lora_targets or LORA_TARGETS) if t in names]
    if cfg.lora_targets and len(targets) < len(cfg.lora_targets):
        bad = sorted(set(cfg.lora_targets) - names)
        raise SpeechtuneError(f"lora_targets: no module named {', '.join(bad)} in this model",
                              f"its linear layers: {', '.join(sorted(names))}")
    head_name = "lm_head" if getattr(model, "lm_head", None) is not None else "ctc_head"
    lconf = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                       target_modules=targets, modules_to_save=[head_name])
    return add_lora(model, lconf)


def _adapters(cfg, model):
    if not getattr(model.config, "adapter_attn_dim", None):
        raise SpeechtuneError(f"--mode adapter: {getattr(model, 'name_or_path', 'this model')} has no adapter "
                              "layers (adapter_attn_dim in its config; MMS models have them)",
                              "use --mode freeze-feature-encoder or lora")
    model.freeze_base_model()  # the adapters stay as loaded: a language's own, or fresh ones for a new vocabulary
    for p in model._get_adapters().values():  # the adapter layers and the CTC head, as MMS trains them
        p.requires_grad = True


class StemCache:
    """The frozen convolutional feature encoder's output, computed once per clip and reused every epoch (the
    stem is about a third of a wav2vec2-base forward pass by FLOPs; it has no dropout, so a cached output is
    the one it would compute again). Each clip's output is computed alone, so it does not depend on the
    padding of the batch it first came in. During a cached step the stem's `forward` hands the model the
    batch's stored outputs (anything else, evaluations included, runs the real stem); `clear()` gives the
    stem its own forward back."""

    def __init__(self, stem, folder: Path, max_memory_mb: float, autocast):
        from ..train.encoder_cache import EncoderCache
        self.stem = stem
        self.store = EncoderCache(folder, max_memory_mb, 0, autocast=autocast)  # its bounded memory + disk spill
        self.lengths: dict[int, int] = {}  # samples per clip: the attention mask and the dummy input's length
        self.pending = None
        self.note = "feature encoder outputs cached"
        stem.forward = self._forward

    def _forward(self, input_values):
        if self.pending is None:  # nothing staged (an evaluation, say): the real stem
            return type(self.stem).forward(self.stem, input_values)
        out, self.pending = self.pending, None
        return out

    def inputs(self, clips, idx: list[int], device, dtype) -> dict:
        """The model's inputs for `idx` with the stem's outputs staged: a zero waveform of the batch's length
        (the model only reads its shape) and the attention mask the feature extractor would give."""
        import torch
        for i in idx:
            if i not in self.store:
                x = clips.inputs([i])
                with torch.inference_mode(), self.store.autocast():
                    h = self.stem(x["input_values"].to(device, dtype))
                self.store.put(i, h[0].float().cpu().numpy())
                self.lengths[i] = x["input_values"].shape[1]
        feats = [self.store.get(i) for i in idx]
        width = max(f.shape[1] for f in feats)
        staged = torch.zeros(len(idx), feats[0].shape[0], width, dtype=dtype)
        for k, f in enumerate(feats):
            staged[k, :, :f.shape[1]] = torch.from_numpy(f.astype(np.float32))
        self.pending = staged.to(device)
        lengths = [self.lengths[i] for i in idx]
        inputs = {"input_values": torch.zeros(len(idx), max(lengths), dtype=dtype, device=device)}
        if getattr(clips.fe, "return_attention_mask", False):
            inputs["attention_mask"] = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long().to(device)
        return inputs

    def clear(self) -> None:
        if "forward" in vars(self.stem):
            del self.stem.forward
        self.store.clear()


def encoder_cache(cfg, model, out: Path, autocast):
    """A StemCache when the convolutional feature encoder is frozen and no waveform augmentation changes its
    input (SpecAugment masks later states, so it keeps the cache); None otherwise, and for models whose stem
    is not wav2vec2's (Parakeet's subsampling, wav2vec2-BERT's filter banks)."""
    stem = getattr(model.base_model, "feature_extractor", None)
    if stem is None or any(p.requires_grad for p in stem.parameters()):
        return None
    if cfg.speed_perturb or cfg.noise_snr is not None:
        return None
    return StemCache(stem, out / "encoder_cache", cfg.encoder_cache_mb, autocast)


def loss(model, clips, idx, cache, cfg, step: int):
    """Mean CTC loss of one micro-batch (per target token, zero_infinity on)."""
    from ..train.data import augment_rng, collate_labels

    inner = getattr(model, "module", model)
    device, dtype = inner.device, next(inner.parameters()).dtype
    if cache is not None:
        inputs = cache.inputs(clips, idx, device, dtype)
    else:
        rng = augment_rng(cfg.seed, step, idx)
        inputs = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device)
                  for k, v in clips.inputs(idx, rng, cfg.speed_perturb or (), cfg.noise_snr).items()}
    labels = collate_labels([clips.labels[i] for i in idx]).to(device)
    return model(**inputs, labels=labels).loss


def save(model, peft_model, bundle, folder: Path) -> None:
    """A complete CTC folder (adapters merged; also kept under adapter/), loadable offline by `load`."""
    from ..models.ctc import save_ctc
    from ..models.registry import set_checkpointing

    if peft_model is not None:
        # the head is saved whole (modules_to_save); a speech encoder has no token embeddings to save
        peft_model.save_pretrained(str(folder / "adapter"), save_embedding_layers=False)
        model = peft_model.merge_and_unload()
    set_checkpointing(model, False)
    if hasattr(model.config, "apply_spec_augment"):
        model.config.apply_spec_augment = False
    save_ctc(bundle, model, folder)
