"""Training on a tiny random Whisper: every mode learns, resume is exact, checkpoints survive failures."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from speechtune.errors import SpeechtuneError

SENTENCES = ["the patient takes metoprolol", "give him warfarin daily", "stop the lisinopril now",
             "she needs atorvastatin", "one dose of omeprazole", "check the amlodipine level",
             "no more metformin today", "a tablet of sertraline"]


def _write_manifest(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared folder in the DESIGN layout: 8 synthesized train clips, 2 valid."""
    from speechtune.audio import write_wav
    from speechtune.synth import speak

    d = tmp_path_factory.mktemp("prepared")
    (d / "audio").mkdir()
    rows = []
    for i, text in enumerate(SENTENCES):
        wav = speak(text, "en")
        write_wav(d / "audio" / f"{i}.wav", wav)
        rows.append({"audio": f"audio/{i}.wav", "text": text, "duration": len(wav) / 16000, "speaker": None,
                     "language": "en", "source": f"s:{i}"})
    _write_manifest(d / "train.jsonl", rows)
    _write_manifest(d / "valid.jsonl", rows[:2])
    return d


def _cfg(model_dir, data, out, **kw):
    from speechtune.train.recipe import TrainConfig
    # a random model fails every safeguard check: its evaluations decode once, not at six temperatures; and it
    # writes up to the token cap on each of the 13 non-speech clips (30-75 s an evaluation on a shared 2-core
    # machine): the no-speech set is decoded in tests/test_no_speech_train.py, by the real tiny.en
    base = dict(model=str(model_dir), data=str(data), out=str(out), batch_size=4, max_steps=6, lr=1e-3,
                warmup_ratio=0.0, eval_every=3, eval_batch_size=2, tensorboard=False, log_every=1,
                eval_safeguards=False, eval_no_speech=False)
    base.update(kw)
    return TrainConfig(**base)


def _losses(out: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (out / "train_log.jsonl").read_text().splitlines()
            if json.loads(l)["event"] == "train"]


@pytest.mark.parametrize("mode", ["full", "freeze-encoder", "lora"])
def test_each_mode_trains_and_loss_falls(tiny_whisper_dir, prepared, tmp_path, mode):
    from transformers import WhisperForConditionalGeneration

    from speechtune.train.recipe import train

    # Full-batch steps on 8 clips: the loss of a model that learns must fall.
    lr = {"full": 1e-3, "freeze-encoder": 2e-3, "lora": 1e-2}[mode]
    out = train(_cfg(tiny_whisper_dir, prepared, tmp_path / "out", mode=mode, batch_size=8, max_steps=8, lr=lr,
                     eval_every=8), progress=False)
    losses = _losses(out)
    assert len(losses) == 8
    assert losses[-1] < losses[0] - 0.3 and losses[-1] < min(losses[:4]), losses
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 8 and summary["mode"] == mode and summary["best_step"] == 8
    assert [e["step"] for e in summary["evals"]] == [0, 8]
    assert (out / "train_config.yaml").is_file()
    for name in ("model.safetensors", "config.json", "generation_config.json", "preprocessor_config.json",
                 "tokenizer.json"):
        assert (out / name).is_file(), name
    model = WhisperForConditionalGeneration.from_pretrained(out)  # loads as a plain HF model, offline
    base = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    enc_same = all(np.array_equal(a.detach().numpy(), b.detach().numpy()) for a, b in
                   zip(model.model.encoder.parameters(), base.model.encoder.parameters()))
    dec_same = all(np.array_equal(a.detach().numpy(), b.detach().numpy()) for a, b in
                   zip(model.model.decoder.parameters(), base.model.decoder.parameters()))
    assert enc_same == (mode != "full")  # lora adapters default to the decoder only
    assert not dec_same
    if mode == "lora":
        assert (out / "adapter" / "adapter_config.json").is_file()


def test_labels_have_prefix_and_match_hf_shift(tiny_multilingual_dir):
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from speechtune.models.whisper import prefix_ids
    from speechtune.train.data import collate_labels, label_ids

    proc = WhisperProcessor.from_pretrained(tiny_multilingual_dir)
    model = WhisperForConditionalGeneration.from_pretrained(tiny_multilingual_dir)
    gen = model.generation_config
    ids = label_ids(proc.tokenizer, gen, "hello world", "de", 448)
    prefix = prefix_ids(gen, "de")
    assert ids[: len(prefix) - 1] == prefix[1:] and ids[-1] == gen.eos_token_id
    assert proc.tokenizer.decode(ids, skip_special_tokens=True).strip() == "hello world"
    labels = collate_labels([ids, ids[:4]])
    assert labels[1, 4:].eq(-100).all()
    # The decoder input HF builds from labels starts with the full prefix.
    from transformers.models.whisper.modeling_whisper import shift_tokens_right
    dec = shift_tokens_right(labels, model.config.pad_token_id, model.config.decoder_start_token_id)
    assert dec[0, : len(prefix)].tolist() == prefix
    with pytest.raises(SpeechtuneError, match="unknown language"):
        label_ids(proc.tokenizer, gen, "x", "xx", 448)
    del torch


def test_teacher_forcing_keeps_the_no_speech_position(tiny_multilingual_dir):
    """Clips.teacher: the decoder input is what HF builds from labels (the prefix is forced, then the row);
    the target after <|sot|> is ignored for speech and is <|nospeech|> for a non-speech clip, whose next
    target, right after the prefix, is <|endoftext|>."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    from speechtune.models.whisper import prefix_ids
    from speechtune.runtimes.safeguards import no_speech_token
    from speechtune.train.data import Clips, collate_labels

    proc = WhisperProcessor.from_pretrained(tiny_multilingual_dir)
    gen = WhisperForConditionalGeneration.from_pretrained(tiny_multilingual_dir).generation_config
    rows = [{"audio": "a.wav", "text": t, "duration": 1.0, "language": "de", "source": t or "noise"}
            for t in ("hello world", "")]
    clips = Clips(rows, proc, gen, None, 448)
    inputs, labels = clips.teacher([0, 1])
    hf = shift_tokens_right(collate_labels(clips.labels), gen.eos_token_id, gen.decoder_start_token_id)
    n = len(prefix_ids(gen, "de"))
    assert inputs[0].tolist() == hf[0].tolist() and inputs[1, :n].tolist() == prefix_ids(gen, "de")
    assert labels[0, 0] == -100 and labels[0, 1:].tolist() == collate_labels(clips.labels)[0, 1:].tolist()
    assert labels[1, 0] == no_speech_token(gen) and labels[1, n - 1] == gen.eos_token_id
    assert labels[1, 1:n - 1].tolist() == prefix_ids(gen, "de")[2:]  # the forced task tokens between


def test_multilingual_language_from_manifest_or_flag(tiny_multilingual_dir, prepared, tmp_path):
    from speechtune.train.recipe import train

    d = tmp_path / "data"
    d.mkdir()
    rows = [json.loads(l) for l in (prepared / "train.jsonl").read_text().splitlines()]
    for r in rows:
        r["audio"] = str(prepared / r["audio"])
        r["language"] = None
    _write_manifest(d / "train.jsonl", rows)
    with pytest.raises(SpeechtuneError, match="no language"):
        train(_cfg(tiny_multilingual_dir, d, tmp_path / "a", max_steps=1), progress=False)
    out = train(_cfg(tiny_multilingual_dir, d, tmp_path / "b", max_steps=2, eval_every=2, language="en"),
                progress=False)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["eval_on"] == "train-slice"  # no valid.jsonl here


def test_guard_without_language_is_scored_by_its_script(tiny_multilingual_dir, prepared, tmp_path):
    from speechtune.train.recipe import train

    # like ../shared/realspeech/zh.jsonl: general speech whose lines carry no language field
    rows = [json.loads(l) for l in (prepared / "train.jsonl").read_text().splitlines()][:2]
    guard = tmp_path / "guard.jsonl"
    _write_manifest(guard, [{"audio": str(prepared / r["audio"]), "text": "广州市房地产中介协会分析"} for r in rows])
    out = train(_cfg(tiny_multilingual_dir, prepared, tmp_path / "out", max_steps=1, eval_every=1,
                     guard=str(guard)), progress=False)
    summary = json.loads((out / "training_summary.json").read_text())
    assert (summary["metric"], summary["guard_metric"]) == ("wer", "cer")


def _weights(out: Path) -> dict:
    from safetensors.numpy import load_file
    return load_file(str(out / "model.safetensors"))


def _weights_of(model_dir: Path) -> dict:
    from transformers import WhisperForConditionalGeneration
    model = WhisperForConditionalGeneration.from_pretrained(model_dir)
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def test_resume_gives_the_same_weights(tiny_whisper_dir, prepared, tmp_path, monkeypatch):
    from speechtune.train.recipe import train
    from tests.conftest import Killed, kill_at

    # full mode with dropout so the restored RNG state matters too
    kw = dict(mode="full", max_steps=6, eval_every=3, batch_size=3, grad_accum=2, lr=1e-3, warmup_ratio=0.3)
    ref = train(_cfg(tiny_whisper_dir, prepared, tmp_path / "ref", **kw), progress=False)

    kill_at(monkeypatch, 4)
    with pytest.raises(Killed):
        train(_cfg(tiny_whisper_dir, prepared, tmp_path / "run", **kw), progress=False)
    assert not (tmp_path / "run" / "model.safetensors").exists()
    monkeypatch.undo()
    with pytest.raises(SpeechtuneError, match="different options"):
        train(_cfg(tiny_whisper_dir, prepared, tmp_path / "run", **dict(kw, lr=2e-3)), progress=False)
    out = train(_cfg(tiny_whisper_dir, prepared, tmp_path / "run", resume=True, **kw), progress=False)
    a, b = _weights(ref), _weights(out)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    steps = [json.loads(l)["step"] for l in (out / "train_log.jsonl").read_text().splitlines()
             if json.loads(l)["event"] == "train"]
    assert steps == [1, 2, 3, 4, 4, 5, 6]  # step 4 ran, was lost with the kill, and ran again from step 3


def test_no_speech_ratio_adds_silent_clips_and_resume_stays_exact(tiny_whisper_dir, prepared, tmp_path, monkeypatch):
    from speechtune.audio import load_audio
    from speechtune.train.recipe import train
    from tests.conftest import Killed, kill_at

    # 4 non-speech clips join the 8 (12 clips: 3 batches of 4 an epoch, so steps 4-6 are a second epoch); their
    # WAVs are written again on resume, byte for byte
    kw = dict(mode="full", max_steps=6, eval_every=3, batch_size=4, no_speech_ratio=0.5)
    ref = train(_cfg(tiny_whisper_dir, prepared, tmp_path / "ref", **kw), progress=False)
    kill_at(monkeypatch, 4)
    with pytest.raises(Killed):
        train(_cfg(tiny_whisper_dir, prepared, tmp_path / "run", **kw), progress=False)
    monkeypatch.undo()
    with pytest.raises(SpeechtuneError, match="different options.*no_speech_ratio"):
        train(_cfg(tiny_whisper_dir, prepared, tmp_path / "run", **dict(kw, no_speech_ratio=0.25)), progress=False)
    out = train(_cfg(tiny_whisper_dir, prepared, tmp_path / "run", resume=True, **kw), progress=False)
    a, b = _weights(ref), _weights(out)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    files = sorted((out / "no_speech").iterdir())
    assert [p.name for p in files] == sorted(p.name for p in (ref / "no_speech").iterdir()) and len(files) == 4
    assert all(p.read_bytes() == (ref / "no_speech" / p.name).read_bytes() for p in files)
    assert all(np.abs(load_audio(p)).max() > 0 for p in files)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["clips"] == {"train": 8, "mixed": 0, "no_speech": 4} and summary["no_speech_ratio"] == 0.5
    assert summary["config"]["no_speech_ratio"] == 0.5


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    import torch

    from speechtune.train import checkpoint

    root = tmp_path / "ck"
    checkpoint.save(root, 1, {"w": torch.ones(3)}, {"state": {"step": 1}})

    def broken(obj, f, *a, **k):
        Path(f).write_bytes(b"half a file")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(root, 2, {"w": torch.zeros(3)}, {"state": {"step": 2}})
    monkeypatch.undo()
    assert checkpoint.steps(root) == [1]
    assert [p.name for p in root.iterdir()] == ["step-000001"]
    weights, trainer = checkpoint.load(checkpoint.latest(root))
    assert torch.equal(weights["w"], torch.ones(3)) and trainer["state"]["step"] == 1
    # A leftover temporary folder (kill -9 mid-save) is ignored and swept.
    (root / ".step-000003.tmp123").mkdir()
    assert checkpoint.latest(root).name == "step-000001"
    checkpoint.sweep(root)
    assert [p.name for p in root.iterdir()] == ["step-000001"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_whisper_dir, prepared, tmp_path, monkeypatch):
    import torch

    from speechtune.families import whisper
    from speechtune.train import loop
    from speechtune.train.recipe import train

    real = whisper.loss

    def poisoned(model, clips, idx, cache, cfg, step):
        loss = real(model, clips, idx, cache, cfg, step)
        return loss * float("nan") if step >= 4 else loss
    monkeypatch.setattr(whisper, "loss", poisoned)
    out = tmp_path / "out"
    with pytest.raises(loop.TrainingDiverged, match=r"loss became nan at step 5.*step-000003") as e:
        train(_cfg(tiny_whisper_dir, prepared, out, max_steps=8, eval_every=3), progress=False)
    assert e.value.hint and "--lr" in e.value.hint
    from speechtune.train import checkpoint
    assert checkpoint.steps(out / "checkpoints") == [3]
    weights, trainer = checkpoint.load(out / "checkpoints" / "step-000003")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (out / "model.safetensors").exists()


def test_lora_merged_model_equals_adapter_on_base(tiny_whisper_dir, prepared, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    from speechtune.train.recipe import train

    # with activation checkpointing on while training: it must be off, without deprecation noise, in the output
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = train(_cfg(tiny_whisper_dir, prepared, tmp_path / "out", mode="lora", lora_encoder=True,
                         max_steps=3, lr=1e-2, eval_every=3, gradient_checkpointing=True), progress=False)
    assert not [w for w in caught if "checkpointing" in str(w.message)]
    merged = WhisperForConditionalGeneration.from_pretrained(out).eval()
    assert not any(getattr(m, "gradient_checkpointing", False) for m in merged.modules()) and merged.config.use_cache
    base = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
    torch.manual_seed(0)
    feats = torch.randn(2, 80, 3000)
    dec = torch.tensor([[50257, 50362, 400, 1332], [50257, 50362, 11, 13]])
    with torch.no_grad():
        a = merged(input_features=feats, decoder_input_ids=dec).logits
        b = adapted(input_features=feats, decoder_input_ids=dec).logits
        plain = base.get_base_model()(input_features=feats, decoder_input_ids=dec).logits if hasattr(base, "get_base_model") else None
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    with adapted.disable_adapter(), torch.no_grad():
        c = adapted(input_features=feats, decoder_input_ids=dec).logits
    assert not torch.allclose(a, c, atol=1e-4)  # the adapter changed something
    del plain


def test_cached_bottom_plus_top_is_the_hf_encoder(tiny_whisper_dir):
    import torch
    from transformers import WhisperForConditionalGeneration

    from speechtune.train.encoder_cache import encode_bottom, encode_top

    encoder = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir).get_encoder().eval()
    feats = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = encoder(feats, output_hidden_states=True)
        for depth in range(len(encoder.layers) + 1):
            bottom = encode_bottom(encoder, feats, depth)
            if depth < len(encoder.layers):
                torch.testing.assert_close(bottom, ref.hidden_states[depth])
            torch.testing.assert_close(encode_top(encoder, bottom, depth), ref.last_hidden_state)


@pytest.mark.parametrize("kw, depth", [(dict(mode="full"), None), (dict(mode="full", freeze_encoder_layers=1), 1),
                                       (dict(mode="full", freeze_encoder_layers=2), 1),
                                       (dict(mode="freeze-encoder"), 2), (dict(mode="lora"), 2),
                                       (dict(mode="lora", lora_encoder=True), 0),
                                       (dict(mode="lora", lora_encoder=True, freeze_encoder_layers=1), 1)])
def test_cache_depth_follows_what_trains(tiny_whisper_dir, kw, depth):
    from transformers import WhisperForConditionalGeneration

    from speechtune.train.encoder_cache import frozen_depth
    from speechtune.families.whisper import setup_training
    from speechtune.train.config import TrainConfig

    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    setup_training(TrainConfig(**kw), model)
    # all layers frozen but the final norm trainable (full, freeze 2 of 2): the last layer stays uncached
    assert frozen_depth(model.get_encoder()) == depth


def test_training_top_encoder_layers_on_cached_states_matches_uncached(tiny_whisper_dir, prepared, tmp_path,
                                                                       monkeypatch):
    from speechtune.train import encoder_cache
    from speechtune.train.recipe import train

    kw = dict(mode="full", freeze_encoder_layers=1, max_steps=4, eval_every=4, batch_size=4, lr=1e-3)
    cached = _weights(train(_cfg(tiny_whisper_dir, prepared, tmp_path / "cached", **kw), progress=False))
    monkeypatch.setattr(encoder_cache, "frozen_depth", lambda encoder: None)
    plain = _weights(train(_cfg(tiny_whisper_dir, prepared, tmp_path / "plain", **kw), progress=False))
    base = _weights_of(tiny_whisper_dir)
    for k in plain:
        # the cache keeps states in fp16: the runs differ by ~1e-5 where training moved weights by ~2.5e-3
        np.testing.assert_allclose(cached[k], plain[k], atol=1e-4, rtol=0, err_msg=k)
        frozen = k.startswith(("model.encoder.conv", "model.encoder.embed_positions", "model.encoder.layers.0."))
        assert np.array_equal(cached[k], base[k]) == frozen, k


def test_bf16_reaches_the_cached_encoder_layers(tiny_whisper_dir, prepared, tmp_path, monkeypatch, capsys):
    import torch

    from speechtune.train import encoder_cache, recipe
    from speechtune.train.recipe import train

    # The cached bottom and the trainable top run outside the model's forward; --precision must reach them.
    seen = []
    real_top = encoder_cache.encode_top

    def spy(encoder, hidden, depth):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return real_top(encoder, hidden, depth)
    monkeypatch.setattr(encoder_cache, "encode_top", spy)
    # an fp32 run first: one process may train several times with different precisions. "auto" stays fp32 on
    # a CPU, and says so where the CPU could do bf16.
    monkeypatch.setattr(recipe, "_cpu_has_bf16", lambda: True)
    fp32 = train(_cfg(tiny_whisper_dir, prepared, tmp_path / "fp32", mode="lora", max_steps=1, eval_every=1),
                 progress=False)
    assert json.loads((fp32 / "training_summary.json").read_text())["precision"] == "no"
    assert "--precision bf16 trains about 1.5x faster" in capsys.readouterr().err
    seen.clear()
    out = train(_cfg(tiny_whisper_dir, prepared, tmp_path / "out", mode="full", freeze_encoder_layers=1,
                     precision="bf16", max_steps=2, eval_every=2), progress=False)
    assert "1.5x faster" not in capsys.readouterr().err
    assert seen and set(seen) == {torch.bfloat16}
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["steps"] == 2


def test_guard_threshold_picks_the_checkpoint(monkeypatch):
    from speechtune.train.loop import select_checkpoint

    class C:
        guard_threshold = 1.0
    state = {"evals": [{"step": 0, "valid": 0.6, "guard": 0.10, "guard_ok": True}], "best": None, "best_any": None,
             "bad_evals": 0}
    for step, valid, guard in [(10, 0.3, 0.105), (20, 0.1, 0.20), (30, 0.2, 0.109)]:
        rec = {"step": step, "valid": valid, "guard": guard, "guard_ok": guard <= 0.10 + 0.01}
        state["evals"].append(rec)
        select_checkpoint(state, rec, C)
    assert state["best"] == 30 and state["best_any"] == 20 and state["bad_evals"] == 0
    # a checkpoint worse than the base on the domain is never "best", even with its guard intact
    state = {"evals": [{"step": 0, "valid": 0.68, "guard": 0.146, "guard_ok": True}], "best": None,
             "best_any": None, "bad_evals": 0}
    for step, valid, guard in [(10, 4.0, 0.123), (20, 0.18, 0.166)]:
        rec = {"step": step, "valid": valid, "guard": guard, "guard_ok": guard <= 0.146 + 0.01}
        state["evals"].append(rec)
        select_checkpoint(state, rec, C)
    # ...while --patience still counts from the lowest guard-keeping eval, as before
    assert state["best"] is None and state["best_any"] == 20 and state["bad_evals"] == 1


@pytest.mark.parametrize("case", ["missing_dir", "empty_train", "bad_yaml_key", "out_is_file", "bad_target",
                                  "layer_counts"])
def test_bad_input_names_the_problem(tiny_whisper_dir, prepared, tmp_path, case):
    from speechtune.cli import main as cli_main
    from speechtune.config import build_config
    from speechtune.train.recipe import TrainConfig, train

    if case == "missing_dir":
        with pytest.raises(SpeechtuneError, match="nope"):
            train(_cfg(tiny_whisper_dir, tmp_path / "nope", tmp_path / "o"))
    elif case == "empty_train":
        d = tmp_path / "d"
        d.mkdir()
        (d / "train.jsonl").write_text("")
        with pytest.raises(SpeechtuneError, match="train.jsonl"):
            train(_cfg(tiny_whisper_dir, d, tmp_path / "o"))
    elif case == "bad_yaml_key":
        y = tmp_path / "t.yaml"
        y.write_text("lr: 1e-5\nlearning_rat: 3\n")
        with pytest.raises(SpeechtuneError, match="learning_rat"):
            build_config(TrainConfig, y, {})
        assert cli_main(["train", "--config", str(y), "--data", str(prepared), "--out", str(tmp_path / "o")]) == 2
    elif case == "out_is_file":
        f = tmp_path / "file"
        f.write_text("x")
        with pytest.raises(SpeechtuneError, match="is a file"):
            train(_cfg(tiny_whisper_dir, prepared, f))
    elif case == "bad_target":
        with pytest.raises(SpeechtuneError, match="lora_targets"):
            train(_cfg(tiny_whisper_dir, prepared, tmp_path / "o", mode="lora", lora_targets=["qkv"]))
    else:  # a negative count would slice from the other end; more layers than the model has is a typo
        for kw in (dict(freeze_encoder_layers=-1), dict(freeze_encoder_layers=3), dict(train_decoder_layers=-2)):
            with pytest.raises(SpeechtuneError, match=f"{next(iter(kw))}: {next(iter(kw.values()))} is not between 0 and 2"):
                train(_cfg(tiny_whisper_dir, prepared, tmp_path / "o", mode="full", **kw))


def test_mix_adds_general_clips_and_refuses_guard_overlap(tiny_whisper_dir, prepared, tmp_path):
    from speechtune.train.recipe import train

    out = train(_cfg(tiny_whisper_dir, prepared, tmp_path / "o", max_steps=0, epochs=1, eval_every=3,
                     mix=str(prepared / "valid.jsonl"), mix_ratio=0.25))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["clips"] == {"train": 8, "mixed": 2, "no_speech": 0}
    assert summary["steps"] == 3  # one epoch of 10 clips in batches of 4; the 8 domain clips alone take 2
    with pytest.raises(SpeechtuneError, match="share 2 clip"):
        train(_cfg(tiny_whisper_dir, prepared, tmp_path / "o2", mix=str(prepared / "valid.jsonl"),
                   guard=str(prepared / "train.jsonl")))


DRUGS = ["metoprolol", "lisinopril", "atorvastatin", "amlodipine", "omeprazole", "levothyroxine",
         "gabapentin", "hydrochlorothiazide", "montelukast", "escitalopram", "clopidogrel", "pantoprazole"]


def _synth_split(sentences: list[str], d: Path, name: str, seed: int) -> None:
    from speechtune.synth import synth_corpus

    m = synth_corpus(sentences, d / name, progress=False, seed=seed)
    rows = [json.loads(l) for l in m.read_text().splitlines()]
    for r in rows:
        r["audio"] = f"{name}/{r['audio']}"
    _write_manifest(d / f"{name}.jsonl", rows)


@pytest.mark.e2e
def test_e2e_tiny_en_learns_drug_names(tmp_path):
    """Real tiny.en mishears drug names ("metoprolol" -> "me to prong"); held-out sentences (new templates,
    new pairs of drugs) must lose more than half their errors after a short freeze-encoder run."""
    from speechtune.runtimes import DecodingOptions, load_runtime, transcribe_many
    from speechtune.train.recipe import TrainConfig, train
    from speechtune.train.data import read_wav
    from speechtune.metrics.score import score_corpus

    templates = ["the patient takes {a} every morning", "please renew the {a} prescription",
                 "we stopped {a} last week"]
    held = ["switch from {a} to {b} tomorrow", "do not combine {a} with {b}"]
    _synth_split([t.format(a=d) for d in DRUGS for t in templates], tmp_path / "data", "train", seed=1)
    _synth_split([held[i % 2].format(a=DRUGS[i], b=DRUGS[(i + 5) % 12]) for i in range(0, 12, 3)]
                 + [held[(i + 1) % 2].format(a=DRUGS[i], b=DRUGS[(i + 7) % 12]) for i in range(1, 12, 3)],
                 tmp_path / "data", "valid", seed=2)
    cfg = TrainConfig(model="tiny.en", data=str(tmp_path / "data"), out=str(tmp_path / "model"),
                      mode="freeze-encoder", lr=1e-4, epochs=4, eval_every=1000, tensorboard=False,
                      eval_no_speech=False)  # tests/test_no_speech_train.py covers that evaluation
    out = train(cfg, progress=False)
    summary = json.loads((out / "training_summary.json").read_text())
    base, best = summary["base"]["valid"], summary["best"]["valid"]
    assert base > 0.3, base  # the premise: tiny.en gets these wrong
    assert best < base / 2, (base, best)
    # The saved folder transcribes held-out clips as well as the in-training evaluation said.
    rows = [json.loads(l) for l in (tmp_path / "data" / "valid.jsonl").read_text().splitlines()]
    tuned = load_runtime(out, device="cpu")
    hyps = transcribe_many(tuned, [read_wav({"audio": str(tmp_path / "data" / r["audio"]), "source": r["audio"]})
                                   for r in rows], DecodingOptions())
    wer = score_corpus([r["text"] for r in rows], hyps, language="en")["error_rate"]
    assert wer == pytest.approx(best, abs=0.02)
