"""`speechtune export`: CT2 folders that faster-whisper loads offline, ONNX graphs whose greedy output equals
HF `generate`, the parity check (forced to fail, with both figures), and the atomic output folder."""
from __future__ import annotations

import json

import numpy as np
import pytest

from speechtune.audio import write_wav
from speechtune.errors import SpeechtuneError
from speechtune.export import export
from speechtune.runtimes import DecodingOptions, load_runtime


@pytest.fixture(scope="module")
def short_whisper_dir(tiny_whisper_dir, tmp_path_factory):
    """The random tiny Whisper, rewired to end after a token or two: random weights rarely emit
    <|endoftext|>, and 448 steps per clip make a parity run on them slow. The decoder's final layer norm
    outputs a constant pointing at <|endoftext|>'s (enlarged) embedding, so its logit wins whenever it
    is not suppressed."""
    import shutil

    from safetensors.torch import load_file, save_file
    out = tmp_path_factory.mktemp("short-whisper") / "model"
    shutil.copytree(tiny_whisper_dir, out)
    sd = load_file(out / "model.safetensors")
    eot = 50256
    sd["model.decoder.embed_tokens.weight"][eot] *= 10
    sd["model.decoder.layer_norm.weight"].zero_()
    sd["model.decoder.layer_norm.bias"].copy_(sd["model.decoder.embed_tokens.weight"][eot])
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from speechtune.synth import speak
    d = tmp_path_factory.mktemp("parity-data")
    lines = []
    for i, text in enumerate(["hello world", "the quick brown fox jumps over the lazy dog"]):
        write_wav(d / f"{i}.wav", speak(text))
        lines.append(json.dumps({"audio": f"{i}.wav", "text": text, "language": "en"}))
    (d / "test.jsonl").write_text("\n".join(lines) + "\n")
    return d / "test.jsonl"


def hf_greedy(model_dir, wavs, max_new_tokens=None):
    import torch

    from speechtune.models import load_model
    w = load_model(model_dir, device="cpu")
    inputs = w.processor.feature_extractor(wavs, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    feats, mask = inputs.input_features, inputs.attention_mask
    kw = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    with torch.inference_mode():
        out = w.model.generate(feats, attention_mask=mask, num_beams=1, **kw)
    prefix = 2 if out[0, 0].item() == w.model.generation_config.decoder_start_token_id else 0
    eot = w.model.generation_config.eos_token_id
    rows = [r[prefix:] for r in out.tolist()]
    return [r[:r.index(eot)] if eot in r else r for r in rows]


def test_ct2_export_loads_in_faster_whisper_offline(tiny_whisper_dir, tmp_path, tone):
    from faster_whisper import WhisperModel
    out = tmp_path / "ct2"
    summary = export(tiny_whisper_dir, "ct2", out)
    names = {p.name for p in out.iterdir()}
    assert {"model.bin", "config.json", "tokenizer.json", "preprocessor_config.json",
            "speechtune_export.json", "export_summary.json"} <= names
    assert summary["quantization"] == "int8" and summary["parity"] is None
    on_disk = json.loads((out / "export_summary.json").read_text())
    assert on_disk["size_bytes"]["export"] > 0 and on_disk["size_bytes"]["source"] > on_disk["size_bytes"]["export"]
    model = WhisperModel(str(out), device="cpu", compute_type="int8")  # HF_HUB_OFFLINE=1: no download
    segments, info = model.transcribe(tone, beam_size=1, max_new_tokens=5)
    list(segments)
    assert info.duration == pytest.approx(1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["ct2"]  # no temporary folder left behind


def test_export_refuses_existing_out_and_leaves_nothing_on_error(tiny_whisper_dir, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    with pytest.raises(SpeechtuneError, match="already exists"):
        export(tiny_whisper_dir, "ct2", out)
    with pytest.raises(SpeechtuneError, match="quantization"):
        export(tiny_whisper_dir, "ct2", tmp_path / "new", quantization="int3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_onnx_graph_modules_equal_the_hf_model(tiny_whisper_dir):
    import torch
    from transformers import WhisperForConditionalGeneration

    from speechtune.export.graphs import graph_modules

    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir).eval()
    feats = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[50257, 50362, 400, 1332, 11], [50257, 50362, 11, 13, 400]])
    for untie in (False, True):  # int8 exports give the logits their own (transposed) copy of the embedding
        encoder, decoder = graph_modules(model, untie=untie)
        with torch.no_grad():
            want = model(input_features=feats, decoder_input_ids=ids).logits
            kv = encoder(feats)
            for first in (1, 2, 5):  # a prefix in one call, then one token at a time, as greedy decoding feeds them
                logits, *cache = decoder(ids[:, :first], *kv, *decoder.empty_cache(2))
                torch.testing.assert_close(logits, want[:, first - 1], atol=1e-4, rtol=1e-4)
                for t in range(first, ids.shape[1]):
                    logits, *cache = decoder(ids[:, t:t + 1], *kv, *cache)
                    torch.testing.assert_close(logits, want[:, t], atol=1e-4, rtol=1e-4)
                assert cache[0].shape[2] == 1 + ids.shape[1]  # the placeholder slot and one per token


def test_onnx_export_greedy_equals_hf_greedy(tiny_whisper_dir, tmp_path, capsys):
    from speechtune.synth import speak
    out = tmp_path / "onnx"
    export(tiny_whisper_dir, "onnx", out)
    assert {"encoder.onnx", "decoder.onnx", "tokenizer.json", "generation_config.json"} <= {p.name for p in out.iterdir()}
    import onnx
    assert not onnx.defs.has("MultiHeadAttention", "com.microsoft")  # the export's schema is not left behind
    runtime = load_runtime(out)
    wavs = [speak("hello world"), speak("the quick brown fox"), np.zeros(8000, dtype=np.float32)]
    got = runtime.generate(runtime.encode(wavs), [runtime.prefix(None)] * len(wavs), 12)
    assert got == hf_greedy(tiny_whisper_dir, wavs, 12)
    assert len(got[0]) == 12

    # `speechtune transcribe` runs the export too: greedy, text or JSON without segments
    from speechtune.audio import decode
    from speechtune.cli import main
    clip = tmp_path / "hello.wav"
    write_wav(clip, wavs[0])
    assert main(["transcribe", str(clip), "--model", str(out), "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["text"] == runtime.transcribe(decode(clip), DecodingOptions()).text and row["segments"] == []
    assert main(["transcribe", str(clip), "--model", str(out), "--format", "srt"]) == 2
    assert "without timestamps" in capsys.readouterr().err


def test_onnx_int8_has_a_weight_scale_per_output_channel(tiny_whisper_dir, tmp_path):
    import onnx

    # per-tensor scales cost tiny.en ~1 pt of WER on real English (docs/benchmarks.md); per channel keeps parity
    export(tiny_whisper_dir, "onnx", tmp_path / "q", quantization="int8")
    for name in ("encoder", "decoder"):
        graph = onnx.load(str(tmp_path / "q" / f"{name}.onnx")).graph
        scales = {i.name: list(i.dims) for i in graph.initializer if i.name.endswith("_scale")}
        matmul = [n for n in graph.node if n.op_type == "MatMulInteger"]
        assert matmul, name
        # MatMulInteger's second input is "<weight>_quantized"; its scale is the initializer "<weight>_scale"
        weight_scales = [scales.get(n.input[1].removesuffix("_quantized") + "_scale") for n in matmul]
        assert all(dims and dims[0] > 1 for dims in weight_scales), (name, weight_scales)
        # no weight is dequantized whole at run time (the tied logits weight once was, at every decoding step)
        weights = {i.name for i in graph.initializer}
        steps = {o: n for n in graph.node for o in n.output}
        for n in graph.node:
            if n.op_type == "DequantizeLinear":
                src = steps.get(n.input[0])
                assert n.input[0] not in weights and src is not None and src.op_type == "Gather", (name, n.name)
        # onnxruntime's ConvInteger is 3x slower than its fp32 Conv here
        assert not [n for n in graph.node if n.op_type == "ConvInteger"], name


def test_parity_failure_reports_both_figures(short_whisper_dir, tmp_path, manifest):
    from speechtune.export.parity import ParityError, check
    ct2 = tmp_path / "ct2"
    export(short_whisper_dir, "ct2", ct2)
    runtime = load_runtime(ct2)
    # Forced: a negative allowance fails even identical figures, so the failure path runs on real numbers.
    with pytest.raises(ParityError) as e:
        check(short_whisper_dir, runtime, manifest, max_wer_delta=-1, progress=False)
    r = e.value.result
    msg = e.value.message
    assert f"{100 * r['exported']['error_rate']:.2f}%" in msg and f"{100 * r['pytorch']['error_rate']:.2f}%" in msg
    assert r["passed"] is False and r["pytorch"]["rtf"] > 0 and r["exported"]["rtf"] > 0
    with pytest.raises(ParityError):  # through export(): nothing is published at --out
        export(short_whisper_dir, "ct2", tmp_path / "failed", data=manifest, max_wer_delta=-1, progress=False)
    assert not (tmp_path / "failed").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2"]


@pytest.mark.e2e
def test_export_cli_with_parity_on_tiny_en(tmp_path, manifest, capsys):
    from speechtune.cli import main
    out = tmp_path / "tiny-ct2"
    assert main(["export", "tiny.en", "--format", "ct2", "--out", str(out), "--data", str(manifest),
                 "--max-wer-delta", "100"]) == 0
    s = json.loads((out / "export_summary.json").read_text())
    p = s["parity"]
    assert p["clips"] == 2 and p["passed"] and p["metric"] == "wer"
    # espeak voices are hard for tiny.en; well under 100% still means real words came out of both.
    assert p["pytorch"]["error_rate"] < 0.9 and p["exported"]["error_rate"] < 0.9
    assert "parity on" in capsys.readouterr().out
    assert main(["export", "tiny.en", "--format", "ct2", "--out", str(out)]) == 2  # exists


@pytest.mark.e2e
def test_onnx_tiny_en_matches_hf_on_speech(tmp_path):
    from speechtune.models import resolve_model
    from speechtune.synth import speak
    out = tmp_path / "onnx"
    export("tiny.en", "onnx", out)
    wavs = [speak("The quick brown fox jumps over the lazy dog."), speak("Hello world, how are you today?")]
    runtime = load_runtime(out)
    got = runtime.generate(runtime.encode(wavs), [runtime.prefix(None)] * len(wavs))
    assert got == hf_greedy(resolve_model("tiny.en"), wavs)
    assert "lazy dog" in runtime.transcribe_batch(wavs, DecodingOptions())[0].text.lower()
