"""The CTC family end to end on tiny random-weight models: vocabulary, every mode trains, resume is exact,
decoding (timestamps, long audio), ONNX parity, serving through the openai client, one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from speechtune.errors import SpeechtuneError
from tests.conftest import build_tiny_ctc

SENTENCES = ["the patient takes metoprolol", "give him warfarin daily", "stop the lisinopril now",
             "she needs atorvastatin", "one dose of omeprazole", "check the amlodipine level"]
ZH = ["病人服用美托洛尔", "每天给他华法林", "现在停用赖诺普利", "她需要阿托伐他汀"]
TYPES = ["wav2vec2", "hubert", "wavlm", "wav2vec2-conformer", "parakeet_ctc"]


def _prepared(d: Path, sentences: list[str], lang: str) -> Path:
    from speechtune.audio import write_wav
    from speechtune.synth import speak
    (d / "audio").mkdir(parents=True)
    rows = []
    for i, text in enumerate(sentences):
        wav = speak(text, lang)
        write_wav(d / "audio" / f"{i}.wav", wav)
        rows.append({"audio": f"audio/{i}.wav", "text": text, "duration": len(wav) / 16000, "speaker": None,
                     "language": lang, "source": f"s:{i}"})
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    return d


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return _prepared(tmp_path_factory.mktemp("ctc-en"), SENTENCES, "en")


@pytest.fixture(scope="module")
def prepared_zh(tmp_path_factory) -> Path:
    return _prepared(tmp_path_factory.mktemp("ctc-zh"), ZH, "zh")


def _cfg(model, data, out, **kw):
    from speechtune.train.config import TrainConfig
    base = dict(model=str(model), data=str(data), out=str(out), batch_size=3, max_steps=8, lr=1e-2,
                warmup_ratio=0.0, eval_every=4, eval_batch_size=2, tensorboard=False, log_every=1,
                eval_no_speech=False)  # random heads: the no-speech set would only cost time here
    return TrainConfig(**{**base, **kw})


def _losses(out: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (out / "train_log.jsonl").read_text().splitlines()
            if json.loads(l)["event"] == "train"]


def _weights(folder: Path) -> dict:
    from safetensors.numpy import load_file
    return load_file(str(folder / "model.safetensors"))


def test_every_model_type_is_one_automodelforctc_maps():
    from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING_NAMES

    from speechtune.families import ctc
    assert set(ctc.MODEL_TYPES) <= set(MODEL_FOR_CTC_MAPPING_NAMES)
    assert ctc.MODES[0] == "freeze-feature-encoder"


def test_character_vocabulary_english_and_chinese():
    from speechtune.models.ctc import build_vocab, ctc_text, label_text, vocab_tokenizer
    assert ctc_text("Hello, World!  It's \"fine\".") == "hello world it's fine"
    assert ctc_text("病人 服用，美托洛尔。") == "病人服用美托洛尔"
    assert ctc_text("iPhone 15 发布") == "iphone 15发布"
    vocab = build_vocab(["Hello world", "你好，世界"])
    assert (vocab["[PAD]"], vocab["[UNK]"], vocab["|"]) == (0, 1, 2)
    assert {"h", "e", "l", "o", "w", "r", "d", "你", "好", "世", "界"} == set(vocab) - {"[PAD]", "[UNK]", "|"}


def test_label_text_follows_an_upper_case_vocabulary(tmp_path):
    from speechtune.models.ctc import label_text, unknown_chars, vocab_tokenizer
    upper = {"[PAD]": 0, "[UNK]": 1, "|": 2, **{c: i + 3 for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")}}
    tok = vocab_tokenizer(upper, tmp_path)
    assert label_text(tok, "Don't stop, Bob.") == "DON'T STOP BOB"
    assert unknown_chars(tok, "café au lait") == {"É"}
    assert unknown_chars(tok, "plain words") == set()


@pytest.mark.parametrize("model_type", TYPES)
def test_each_type_trains_from_a_pretrained_encoder_with_a_fresh_vocabulary(model_type, prepared, tmp_path):
    from speechtune.runtimes import load_runtime
    from speechtune.train.recipe import train
    model = build_tiny_ctc(tmp_path / "m", model_type)   # no tokenizer: a pretrained encoder
    out = train(_cfg(model, prepared, tmp_path / "o"), progress=False)
    losses = _losses(out)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["mode"] == "freeze-feature-encoder" and summary["steps"] == 8
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert set("metoprolwafindy") <= set(vocab)
    rt = load_runtime(out)                                # the saved folder decodes offline
    assert rt.name == "hf" and not rt.autoregressive


@pytest.mark.parametrize("mode", ["full", "head", "lora"])
def test_each_mode_trains(mode, prepared, tmp_path):
    from speechtune.train.recipe import train
    model = build_tiny_ctc(tmp_path / "m", "wav2vec2")
    out = train(_cfg(model, prepared, tmp_path / "o", mode=mode, train_top_layers=1), progress=False)
    losses = _losses(out)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    if mode == "lora":
        assert (out / "adapter" / "adapter_config.json").is_file()
    assert _weights(out)["lm_head.weight"].shape[0] == len(json.loads((out / "vocab.json").read_text()))


def test_what_each_mode_trains(tmp_path):
    from speechtune.families import ctc
    from speechtune.models.ctc import load_ctc
    from speechtune.train.config import TrainConfig
    trained = {}
    for mode in ("freeze-feature-encoder", "full", "head"):
        bundle = load_ctc(build_tiny_ctc(tmp_path / mode, "wav2vec2"), vocab={"[PAD]": 0, "[UNK]": 1, "|": 2, "a": 3},
                          work=tmp_path / f"{mode}-vocab")
        ctc.setup_training(TrainConfig(mode=mode), bundle.model)
        trained[mode] = {n.split(".")[1] if n.startswith("wav2vec2.") else n.split(".")[0]
                         for n, p in bundle.model.named_parameters() if p.requires_grad}
    assert "feature_extractor" not in trained["freeze-feature-encoder"] and "encoder" in trained["freeze-feature-encoder"]
    assert "feature_extractor" in trained["full"]
    assert trained["head"] == {"lm_head"}


def test_adapter_mode_needs_an_mms_style_model(prepared, tmp_path):
    import transformers as tf

    from speechtune.train.recipe import train
    from tests.conftest import tiny_ctc_config
    with pytest.raises(SpeechtuneError, match="no adapter layers"):
        train(_cfg(build_tiny_ctc(tmp_path / "plain", "wav2vec2"), prepared, tmp_path / "o1", mode="adapter"),
              progress=False)
    config = tiny_ctc_config("wav2vec2")
    config.adapter_attn_dim = 8
    model = tmp_path / "mms"
    tf.AutoModelForCTC.from_config(config).save_pretrained(model)
    tf.Wav2Vec2FeatureExtractor().save_pretrained(model)
    out = train(_cfg(model, prepared, tmp_path / "o2", mode="adapter", lr=1e-2), progress=False)
    losses = _losses(out)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


def test_chinese_gets_a_character_vocabulary_and_cer(prepared_zh, tmp_path):
    from speechtune.train.recipe import train
    out = train(_cfg(build_tiny_ctc(tmp_path / "m", "wav2vec2"), prepared_zh, tmp_path / "o"), progress=False)
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert set("病人服用美托洛尔") <= set(vocab)
    assert json.loads((out / "training_summary.json").read_text())["metric"] == "cer"


def test_an_existing_head_keeps_its_vocabulary_and_refuses_characters_it_lacks(prepared, tmp_path):
    from speechtune.train.recipe import train
    small = {"[PAD]": 0, "[UNK]": 1, "|": 2, **{c: i + 3 for i, c in enumerate("abcdefghijklmnoprstuvwyz")}}
    model = build_tiny_ctc(tmp_path / "m", "wav2vec2", vocab=small)  # no q, no x
    rows = [json.loads(l) for l in (prepared / "train.jsonl").read_text().splitlines()]
    rows[0]["text"] = "the quick fox"
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps({**r, "audio": str(prepared / r["audio"])}) + "\n"
                                              for r in rows))
    with pytest.raises(SpeechtuneError, match=r"1 clip\(s\) hold 2 character\(s\).*\((q x|x q)\)") as e:
        train(_cfg(model, data, tmp_path / "o1"), progress=False)
    assert "--new-vocab" in e.value.hint
    assert not (tmp_path / "o1").exists()  # refused before anything was written
    out = train(_cfg(model, data, tmp_path / "o2", new_vocab=True, max_steps=2), progress=False)
    assert {"q", "x"} <= set(json.loads((out / "vocab.json").read_text()))
    ok = train(_cfg(model, prepared, tmp_path / "o3", max_steps=2), progress=False)
    assert json.loads((ok / "vocab.json").read_text()) == small


def test_resume_gives_the_same_weights(prepared, tmp_path, monkeypatch):
    from speechtune.train.recipe import train
    from tests.conftest import Killed, kill_at
    model = build_tiny_ctc(tmp_path / "m", "wav2vec2")
    kw = dict(mode="full", max_steps=6, eval_every=3, batch_size=2, grad_accum=2, spec_augment=True,
              mask_time_prob=0.2)  # SpecAugment masks: the restored RNG state matters
    ref = train(_cfg(model, prepared, tmp_path / "ref", **kw), progress=False)

    kill_at(monkeypatch, 4)
    with pytest.raises(Killed):
        train(_cfg(model, prepared, tmp_path / "run", **kw), progress=False)
    monkeypatch.undo()
    out = train(_cfg(model, prepared, tmp_path / "run", resume=True, **kw), progress=False)
    a, b = _weights(ref), _weights(out)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def random_ctc(tmp_path_factory):
    """A complete CTC folder whose random head writes characters (a fine-tuned model stands in)."""
    from speechtune.models.ctc import build_vocab
    return build_tiny_ctc(tmp_path_factory.mktemp("ctc") / "m", "wav2vec2", vocab=build_vocab(SENTENCES), seed=3)


def test_decoding_gives_segments_with_real_times_and_chunks_long_audio(random_ctc, prepared):
    from speechtune.audio import load_audio
    from speechtune.runtimes import DecodingOptions, load_runtime
    from speechtune.runtimes.ctc import CHUNK_S
    rt = load_runtime(random_ctc)
    wav = load_audio(prepared / "audio" / "0.wav")
    plain = rt.transcribe(wav, DecodingOptions())
    timed = rt.transcribe(wav, DecodingOptions(timestamps=True))
    assert plain.text and timed.text == plain.text
    assert timed.segments and all(0 <= s.start < s.end <= len(wav) / 16000 + 1e-3 for s in timed.segments)
    long = np.concatenate([wav] * int(CHUNK_S * 2.5 * 16000 / len(wav) + 1))
    r = rt.transcribe(long, DecodingOptions(timestamps=True))
    starts = [s.start for s in r.segments]
    assert starts == sorted(starts) and r.segments[-1].end > CHUNK_S * 2
    assert r.duration == pytest.approx(len(long) / 16000)
    with pytest.raises(SpeechtuneError, match="decodes without prompt"):
        from speechtune.runtimes import check_options
        check_options(rt, DecodingOptions(prompt="metoprolol"))


def test_onnx_export_matches_pytorch(random_ctc, prepared, tmp_path):
    from speechtune.evaluation import load_rows, transcribe_rows
    from speechtune.export import export
    from speechtune.runtimes import DecodingOptions, load_runtime
    rows, _ = load_rows(prepared / "train.jsonl")
    torch_hyps = transcribe_rows(load_runtime(random_ctc), rows, DecodingOptions(), progress=False)["hyps"]
    assert all(torch_hyps)
    for q in ("float32", "int8"):
        summary = export(random_ctc, "onnx", tmp_path / q, quantization=q, data=prepared / "train.jsonl",
                         max_wer_delta=100 if q == "int8" else 0.0, progress=False)
        assert summary["family"] == "ctc" and summary["parity"]["clips"] == len(rows)
        rt = load_runtime(tmp_path / q)
        assert rt.name == "onnx"
        if q == "float32":
            assert transcribe_rows(rt, rows, DecodingOptions(), progress=False)["hyps"] == torch_hyps
    with pytest.raises(SpeechtuneError, match="exports to onnx, not ct2"):
        export(random_ctc, "ct2", tmp_path / "ct2")


def test_served_ctc_export_answers_the_openai_client(random_ctc, prepared, tmp_path):
    from openai import OpenAI

    from speechtune.audio import load_audio
    from speechtune.export import export
    from speechtune.runtimes import DecodingOptions, load_runtime
    from speechtune.serve.recipe import start_server
    export(random_ctc, "onnx", tmp_path / "onnx", quantization="int8")
    clip = prepared / "audio" / "1.wav"
    expected = load_runtime(tmp_path / "onnx").transcribe(load_audio(clip), DecodingOptions()).text
    with start_server(tmp_path / "onnx", api_key="k") as s:
        client = OpenAI(base_url=s.url + "/v1", api_key="k")
        with open(clip, "rb") as f:
            assert client.audio.transcriptions.create(model="whisper-1", file=f).text == expected
        with open(clip, "rb") as f:
            v = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json")
        assert v.segments and v.segments[0].end > v.segments[0].start
        with open(clip, "rb") as f:
            import openai
            with pytest.raises(openai.BadRequestError, match="without prompt"):
                client.audio.transcriptions.create(model="whisper-1", file=f, prompt="metoprolol")


def test_bad_specs_get_one_line_errors(tmp_path, capsys, prepared):
    from speechtune.cli import main
    from speechtune.families import family_for
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SpeechtuneError, match="a bert model, which speechtune does not train") as e:
        family_for(folder)
    assert "ctc (wav2vec2" in e.value.hint and "whisper" in e.value.hint
    model = build_tiny_ctc(tmp_path / "m", "wav2vec2")
    assert main(["train", "--model", str(model), "--data", str(prepared), "--out", str(tmp_path / "o"),
                 "--mode", "freeze-encoder"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "the ctc family trains freeze-feature-encoder" in err
    assert main(["transcribe", "--model", str(model), str(prepared / "audio" / "0.wav")]) == 2
    assert "no tokenizer" in capsys.readouterr().err


def test_the_frozen_feature_encoder_is_computed_once_per_clip(prepared, tmp_path):
    """freeze-feature-encoder caches the stem's outputs: its convolutions run once per clip however many
    epochs, and the loss matches the uncached forward's."""
    import contextlib

    from speechtune.families import ctc
    from speechtune.models.ctc import build_vocab, load_ctc
    from speechtune.train.config import TrainConfig
    from speechtune.train.data import load_split
    bundle = load_ctc(build_tiny_ctc(tmp_path / "m", "wav2vec2"), vocab=build_vocab(SENTENCES), work=tmp_path / "v")
    cfg = TrainConfig(mode="freeze-feature-encoder")
    ctc.setup_training(cfg, bundle.model)
    clips = ctc.clips(load_split(prepared / "train.jsonl"), bundle, cfg)
    stem = bundle.model.wav2vec2.feature_extractor
    convs = []
    stem.conv_layers[0].register_forward_hook(lambda m, i, o: convs.append(1))
    bundle.model.eval()  # no dropout: the two losses must agree
    plain = [float(ctc.loss(bundle.model, clips, [i], None, cfg, 0)) for i in range(len(clips))]
    cache = ctc.encoder_cache(cfg, bundle.model, tmp_path / "out", contextlib.nullcontext)
    assert cache is not None and "feature encoder" in cache.note
    convs.clear()
    for _ in range(3):
        cached = [float(ctc.loss(bundle.model, clips, [i], cache, cfg, 0)) for i in range(len(clips))]
    assert len(convs) == len(clips)  # the first pass only
    np.testing.assert_allclose(cached, plain, rtol=1e-4)
    cache.clear()
    assert "forward" not in vars(stem)
    assert ctc.encoder_cache(TrainConfig(mode="freeze-feature-encoder", noise_snr=10), bundle.model, tmp_path,
                             contextlib.nullcontext) is None
    ctc.setup_training(TrainConfig(mode="full"), bundle.model)
    assert ctc.encoder_cache(TrainConfig(mode="full"), bundle.model, tmp_path, contextlib.nullcontext) is None


def test_two_processes_train_a_ctc_model(prepared, tmp_path):
    """torchrun with 2 CPU processes (gloo): a fresh vocabulary built the same on both ranks, the stem cache
    under DDP, one model folder written once."""
    import os
    import sys

    from tests.test_distributed import run_bounded
    model = build_tiny_ctc(tmp_path / "m", "wav2vec2")
    out = tmp_path / "o"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "speechtune.cli", "train", "--model", str(model), "--data", str(prepared), "--out", str(out),
           "--batch-size", "2", "--epochs", "2", "--no-tensorboard", "--lr", "1e-2", "--no-eval-no-speech"]
    r = run_bounded(cmd, env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 4  # 6 clips, batch 2, 2 ranks: 2 steps an epoch
    assert r.stderr.count("trained ") == 1 and (out / "vocab.json").is_file()


def test_compare_and_evaluate_work_on_ctc_models(random_ctc, prepared, prepared_zh, tmp_path):
    from speechtune.compare import compare
    from speechtune.evaluate import evaluate
    from speechtune.models.ctc import build_vocab
    other = build_tiny_ctc(tmp_path / "other", "hubert", vocab=build_vocab(SENTENCES), seed=5)
    result = compare(random_ctc, other, prepared / "train.jsonl", guard=prepared / "valid.jsonl",
                     out=tmp_path / "report", n_resamples=1000, progress=False)
    assert result["verdict"] and result["base"]["metric"] == "wer" and (tmp_path / "report" / "report.html").is_file()
    assert result["guard"] is not None
    zh = evaluate(random_ctc, prepared_zh / "train.jsonl", progress=False)
    assert zh["metric"] == "cer"  # Chinese is scored by character, as for Whisper


def _tiny_mms(folder: Path) -> dict[str, dict]:
    """A tiny MMS-style folder: adapter layers in the config, a vocab.json nested by language, and one
    adapter.<lang>.safetensors (adapter layers + a head of that language's size) per language."""
    import string

    import torch
    import transformers as tf
    from safetensors.torch import save_file

    from tests.conftest import tiny_ctc_config
    base = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    vocabs = {"eng": {**base, **{c: i + 5 for i, c in enumerate(string.ascii_lowercase + "'")}},
              "fra": {**base, **{c: i + 5 for i, c in enumerate(string.ascii_lowercase + "'éèàç")}}}
    config = tiny_ctc_config("wav2vec2", vocab_size=len(vocabs["eng"]))
    config.adapter_attn_dim = 8
    torch.manual_seed(0)
    model = tf.Wav2Vec2ForCTC(config)
    model.save_pretrained(folder)
    tf.Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(vocabs))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Wav2Vec2CTCTokenizer", "pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>",
        "eos_token": "</s>", "word_delimiter_token": "|", "do_lower_case": False}))
    adapters = {}
    for i, (lang, vocab) in enumerate(vocabs.items()):
        torch.manual_seed(10 + i)
        model.lm_head = torch.nn.Linear(config.hidden_size, len(vocab))
        adapters[lang] = {k: torch.randn_like(v) * 0.1 for k, v in model._get_adapters().items()}
        save_file({k: v.contiguous() for k, v in adapters[lang].items()}, str(folder / f"adapter.{lang}.safetensors"))
    return adapters


def test_an_mms_model_loads_the_language_its_spec_names_and_trains_its_adapter(prepared, tmp_path):
    import torch

    from speechtune.families import ctc as family
    from speechtune.models import model_type
    from speechtune.models.ctc import load_ctc
    from speechtune.train.recipe import train
    adapters = _tiny_mms(tmp_path / "mms")
    spec = f"{tmp_path / 'mms'}:fra"
    with pytest.raises(SpeechtuneError, match="adapters for 2 languages.*names none"):
        load_ctc(tmp_path / "mms", device="cpu")
    with pytest.raises(SpeechtuneError, match="no language 'deu' among its 2"):
        load_ctc(f"{tmp_path / 'mms'}:deu", device="cpu")
    with pytest.raises(SpeechtuneError, match="has no languages"):
        load_ctc(f"{build_tiny_ctc(tmp_path / 'plain', 'wav2vec2', vocab={'[PAD]': 0, '[UNK]': 1, '|': 2})}:fra")
    assert model_type(spec) == "wav2vec2"

    bundle = family.load_for_training(_cfg(spec, prepared, tmp_path / "o", mode="adapter"), [], device="cpu")
    assert bundle.model.config.vocab_size == 36 and bundle.tokenizer.convert_tokens_to_ids("é") == 32
    family.setup_training(_cfg(spec, prepared, tmp_path / "o", mode="adapter"), bundle.model)
    loaded = bundle.model._get_adapters()
    # fra's own adapter, not eng's and not re-initialised by --mode adapter
    assert all(torch.equal(loaded[k].detach(), v) for k, v in adapters["fra"].items())
    assert {n for n, p in bundle.model.named_parameters() if p.requires_grad} == set(adapters["fra"])

    out = train(_cfg(spec, prepared, tmp_path / "o", mode="adapter", lr=1e-2), progress=False)
    losses = _losses(out)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert (out / "adapter.fra.safetensors").is_file()
    tuned = load_ctc(out, device="cpu")  # the tuned folder remembers its language: no suffix needed
    assert tuned.tokenizer.target_lang == "fra" and tuned.model.config.vocab_size == 36
