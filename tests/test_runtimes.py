"""The decoding runtimes behind one interface: which runtime reads which folder, what each refuses, the
shared routing of clips, and that every export decodes like the PyTorch model it came from."""
from __future__ import annotations

import json

import numpy as np
import pytest

from speechtune.audio import write_wav
from speechtune.cli import main
from speechtune.errors import SpeechtuneError
from speechtune.export import export
from speechtune.metrics.score import score_corpus
from speechtune.runtimes import DecodingOptions, Result, check_options, export_format, load_runtime, transcribe_many
from speechtune.synth import speak

# sentences the real tiny.en gets (nearly) right from espeak's voice: what is compared is export vs PyTorch
SENTENCES = ["We will meet at the station at noon.", "Please schedule the meeting for tomorrow morning.",
             "Turn off the lights before you leave the room.", "My phone number has changed since last year."]


@pytest.fixture(scope="module")
def exports(tiny_whisper_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("exports")
    export(tiny_whisper_dir, "ct2", d / "ct2", quantization="int8")
    export(tiny_whisper_dir, "onnx", d / "onnx")
    return d


def test_load_runtime_picks_the_runtime_each_folder_was_made_for(tiny_whisper_dir, exports):
    assert export_format(tiny_whisper_dir) is None and load_runtime(tiny_whisper_dir, "cpu").name == "hf"
    assert export_format(exports / "ct2") == "ct2" and load_runtime(exports / "ct2").name == "ct2"
    assert export_format(exports / "onnx") == "onnx" and load_runtime(exports / "onnx").name == "onnx"
    # without the metadata file, the files it holds decide
    (exports / "ct2" / "speechtune_export.json").rename(exports / "meta.json")
    try:
        assert export_format(exports / "ct2") == "ct2"
    finally:
        (exports / "meta.json").rename(exports / "ct2" / "speechtune_export.json")


def test_each_runtime_refuses_what_it_cannot_do_in_one_line(tiny_whisper_dir, exports):
    onnx, ct2, hf = (load_runtime(exports / "onnx"), load_runtime(exports / "ct2"),
                     load_runtime(tiny_whisper_dir, "cpu"))
    with pytest.raises(SpeechtuneError, match="decodes without timestamps"):
        check_options(onnx, DecodingOptions(timestamps=True))
    with pytest.raises(SpeechtuneError, match="beams"):
        check_options(ct2, DecodingOptions(beam_size=4))
    check_options(hf, DecodingOptions(beam_size=4, timestamps=True, prompt="kubelet", temperature=0.2))
    for runtime in (onnx, ct2, hf):  # the English-only rule, written once
        with pytest.raises(SpeechtuneError, match="English-only"):
            check_options(runtime, DecodingOptions(language="zh"))
        check_options(runtime, DecodingOptions(language="en"))


class Recorder:
    """A runtime that answers each clip with its length, recording how it was called."""
    name, supports, multilingual, languages = "rec", frozenset(), True, {"en", "zh"}

    def __init__(self):
        self.calls = []

    def transcribe_batch(self, wavs, options, languages=None, prompts=None):
        self.calls.append(("batch", options.language, [len(w) for w in wavs]))
        return [Result(str(len(w)), options.language, len(w) / 16000) for w in wavs]

    def transcribe(self, wav, options):
        self.calls.append(("long", options.language, [len(wav)]))
        return Result(str(len(wav)), options.language, len(wav) / 16000)


def test_transcribe_many_keeps_order_groups_languages_and_routes_long_clips():
    lengths = [16000, 31 * 16000, 8000, 24000, 4000]
    wavs = [np.zeros(n, np.float32) for n in lengths]
    rec = Recorder()
    texts = transcribe_many(rec, wavs, DecodingOptions(batch_size=2), ["en", "en", "zh", "en", "zh"])
    assert texts == [str(n) for n in lengths]
    assert rec.calls == [("batch", "en", [16000, 24000]), ("long", "en", [31 * 16000]),
                         ("batch", "zh", [4000, 8000])]


def test_hf_runtime_decodes_as_plain_generate(tiny_whisper_dir):
    """The suppression processors passed per call give the tokens transformers' own give (no process-wide
    patch any more), under the same length cap. (Without the safeguards: this random model loops, and they
    would sample again.)"""
    import torch

    from speechtune.models import load_model
    from speechtune.runtimes import max_new_tokens, runtime_for
    w = load_model(tiny_whisper_dir, device="cpu")
    wavs = [speak("hello world"), speak("the quick brown fox"), np.zeros(8000, np.float32)]
    inputs = w.processor.feature_extractor(wavs, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    cap = max_new_tokens(max(len(x) for x in wavs) / 16000)
    with torch.inference_mode():
        out = w.model.generate(inputs.input_features, attention_mask=inputs.attention_mask, max_new_tokens=cap)
    want = [t.strip() for t in w.tokenizer.batch_decode(out, skip_special_tokens=True)]
    got = [r.text for r in runtime_for(w).transcribe_batch(wavs, DecodingOptions(safeguards=False))]
    assert got == want and any(got)


def test_int8_ct2_folder_converts_to_weights_close_to_the_source(tiny_whisper_dir, exports):
    """Training from an int8 CT2 folder needs float weights: each row is dequantized with its scale, so it is
    within half a quantization step of the original (it used to be read as raw int8 values)."""
    from safetensors.numpy import load_file

    from speechtune.models.ct2 import read_model_bin, to_hf_state_dict
    sd = to_hf_state_dict(read_model_bin(exports / "ct2" / "model.bin"))
    src = load_file(str(tiny_whisper_dir / "model.safetensors"))
    checked = 0
    for name, w in src.items():
        if name.endswith("fc1.weight") or name.endswith("q_proj.weight"):
            step = np.abs(w).max(axis=1, keepdims=True) / 127
            assert np.all(np.abs(sd[name].astype(np.float32) - w) <= step / 2 + 1e-6), name
            checked += 1
    assert checked >= 4


@pytest.mark.e2e
@pytest.mark.parametrize("fmt,quantization", [("ct2", "int8"), ("ct2", "float16"), ("onnx", "int8")])
def test_transcribe_an_export_of_tiny_en_as_pytorch_does(fmt, quantization, tmp_path, capsys):
    """`speechtune transcribe --model EXPORT` decodes with the export's own runtime: an int8 CT2 folder used to
    go through the CT2 -> HF converter and print `our our our ...`."""
    clips = []
    for i, text in enumerate(SENTENCES):
        clips.append(tmp_path / f"{i}.wav")
        write_wav(clips[-1], speak(text, "en"))
    out = tmp_path / "export"
    export("tiny.en", fmt, out, quantization=quantization)
    texts = {}
    for model in ("tiny.en", str(out)):
        assert main(["transcribe", *map(str, clips), "--model", model, "--format", "json"]) == 0
        texts[model] = [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()]
    torch_wer = score_corpus(SENTENCES, texts["tiny.en"], language="en")["wer"]
    export_wer = score_corpus(SENTENCES, texts[str(out)], language="en")["wer"]
    assert torch_wer < 0.3, texts["tiny.en"]  # the premise: real words came out of PyTorch
    # within the parity tolerance for this few words (32): at most one word apart
    assert abs(export_wer - torch_wer) <= 1 / 32 + 1e-9, texts
    assert all(len(t) < 2 * len(s) for t, s in zip(texts[str(out)], SENTENCES))  # no loop


def test_every_runtime_measures_what_the_safeguards_check(tiny_whisper_dir, exports):
    """Each runtime reports a clip's avg_logprob and compression ratio; HF and ONNX (the same fp32 weights)
    agree on avg_logprob; this random model fails at every temperature, and each runtime marks it."""
    runtimes = [load_runtime(tiny_whisper_dir, "cpu"), load_runtime(exports / "ct2"), load_runtime(exports / "onnx")]
    wavs = [speak("hello world")]
    once = DecodingOptions(temperature_increment_on_fallback=0)
    segs = {rt.name: rt.transcribe_batch(wavs, once)[0].segments[0] for rt in runtimes}
    assert all(s.temperature == 0 and s.avg_logprob < -1 and s.compression_ratio > 0 for s in segs.values())
    assert segs["hf"].avg_logprob == pytest.approx(segs["onnx"].avg_logprob, abs=1e-3)
    for rt in runtimes:
        seg = rt.transcribe_batch(wavs, DecodingOptions(temperature_increment_on_fallback=1.0))[0].segments[0]
        assert seg.fallback_failed and seg.temperature in (0.0, 1.0), rt.name
