"""Decode-time safeguards (issue 18): the compression-ratio and log-probability checks, temperature fallback
and the no-speech rule, written once (runtimes/safeguards.py) and run by every runtime."""
from __future__ import annotations

import numpy as np
import pytest

from speechtune.errors import SpeechtuneError
from speechtune.runtimes import DecodingOptions, Result, check_options, load_runtime
from speechtune.runtimes.safeguards import (MIN_SPEECH_S, SILENCE_PEAK, Attempt, compression_ratio,
                                            decode_with_fallback, inaudible, skip_inaudible)

# what the fine-tuned model of issue 18 said of a 3 s clip, and a phrase loop
DIGITS_LOOP = "Restart n.14.14.13" + ".14" * 218 + "."
PHRASE_LOOP = "the term " * 20
SENTENCES = ["We will meet at the station at noon.", "Please schedule the meeting for tomorrow morning.",
             "Mr. Quilter is the apostle of the middle classes, and we are glad to welcome his gospel."]
THRESHOLD = DecodingOptions().compression_ratio_threshold


class Fake:
    """decode(indices, temperature) from a table of texts per temperature, recording each call."""

    def __init__(self, texts, logprob=-0.2):
        self.texts, self.logprob, self.calls = texts, logprob, []

    def __call__(self, idx, temperature):
        self.calls.append((list(idx), temperature))
        out = []
        for i in idx:
            text, logprob = self.texts(i, temperature), self.logprob
            if isinstance(text, tuple):
                text, logprob = text
            out.append(Attempt(text, avg_logprob=logprob, no_speech_prob=0.1))
        return out


def test_loops_compress_past_the_threshold_and_sentences_do_not():
    assert len(DIGITS_LOOP) == 673
    assert compression_ratio(DIGITS_LOOP) > THRESHOLD and compression_ratio(PHRASE_LOOP) > THRESHOLD
    assert all(compression_ratio(s) < THRESHOLD for s in SENTENCES)


def test_temperatures_are_openai_whispers():
    assert DecodingOptions().temperatures == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert DecodingOptions(temperature=0.4).temperatures == (0.4, 0.6, 0.8, 1.0)
    assert DecodingOptions(temperature_increment_on_fallback=0).temperatures == (0.0,)
    assert DecodingOptions(safeguards=False, temperature=0.3).temperatures == (0.3,)


def test_a_loop_at_0_falls_back_to_the_clean_text_at_0_2():
    clean = "We will meet at the station at noon."
    fake = Fake(lambda i, t: DIGITS_LOOP if (i == 1 and t == 0) else clean)
    got = decode_with_fallback(fake, 3, DecodingOptions())
    assert [a.text for a in got] == [clean] * 3
    assert [a.temperature for a in got] == [0.0, 0.2, 0.0]
    assert not any(a.fallback_failed for a in got)
    assert fake.calls == [([0, 1, 2], 0.0), ([1], 0.2)]  # only the clip that failed is decoded again


def test_a_short_loop_under_the_compression_threshold_falls_back_too():
    """Measured on an over-trained tiny.en with the safeguards on: too short to compress past 2.4, but a
    phrase said three times back to back is a loop, and the clip is decoded again hotter."""
    loop = "the Prometheus and page Kubernetes and page Kubernetes and page Kubernetes"
    clean = "the Prometheus pods are waiting on Kubernetes"
    assert compression_ratio(loop) < THRESHOLD
    fake = Fake(lambda i, t: loop if t == 0 else clean)
    (got,) = decode_with_fallback(fake, 1, DecodingOptions())
    assert (got.text, got.temperature) == (clean, 0.2)
    # with the compression check turned off, the run check is off too: the text comes as it came
    (got,) = decode_with_fallback(Fake(lambda i, t: loop), 1, DecodingOptions(compression_ratio_threshold=None))
    assert got.text == loop and got.temperature == 0.0


def test_a_clip_that_always_fails_keeps_its_best_attempt_marked():
    # every temperature fails: a loop (likely, -0.1), or a clean text the model doubts (-1.5 / -1.2)
    texts = {0.0: (PHRASE_LOOP, -0.1), 0.2: ("the term", -1.5), 0.4: ("the terms", -1.2)}
    fake = Fake(lambda i, t: texts.get(t, (DIGITS_LOOP, -0.3)))
    (got,) = decode_with_fallback(fake, 1, DecodingOptions())
    assert len(fake.calls) == 6
    # faster-whisper's choice: the most likely attempt among those under the compression threshold
    assert (got.text, got.temperature, got.fallback_failed) == ("the terms", 0.4, True)
    # all of them loops: the most likely of all
    (got,) = decode_with_fallback(Fake(lambda i, t: (PHRASE_LOOP, -t)), 1, DecodingOptions())
    assert (got.text, got.temperature, got.fallback_failed) == (PHRASE_LOOP, 0.0, True)


def test_the_no_speech_rule_empties_a_doubtful_decoding_of_silence():
    asked = []

    def no_speech(idx):
        asked.append(list(idx))
        return [0.9] * len(idx)

    # clip 0: doubtful (-1.5) and likely silent -> ""; clip 1: confident (-0.3), kept as openai-whisper keeps it
    fake = Fake(lambda i, t: ("you", -1.5) if i == 0 else ("you", -0.3))
    got = decode_with_fallback(fake, 2, DecodingOptions(), no_speech)
    assert [a.text for a in got] == ["", "you"]
    assert asked == [[0]]  # only the doubtful clip costs a no-speech pass
    assert fake.calls == [([0, 1], 0.0)]  # silence is not decoded again
    got = decode_with_fallback(Fake(lambda i, t: ("you", -1.5)), 1, DecodingOptions(no_speech_threshold=0.95),
                               no_speech)
    assert got[0].text == "you" and got[0].fallback_failed


def test_safeguards_off_decode_once_and_keep_the_text():
    fake = Fake(lambda i, t: (DIGITS_LOOP, -3.0))
    (got,) = decode_with_fallback(fake, 1, DecodingOptions(safeguards=False), lambda idx: [0.99] * len(idx))
    assert fake.calls == [([0], 0.0)]
    assert got.text == DIGITS_LOOP and not got.fallback_failed


def test_negative_temperatures_are_a_one_line_error(tiny_whisper_dir):
    runtime = load_runtime(tiny_whisper_dir, "cpu")
    for bad in (DecodingOptions(temperature=-0.1), DecodingOptions(temperature_increment_on_fallback=-0.2)):
        with pytest.raises(SpeechtuneError, match="at least 0"):
            check_options(runtime, bad)


def test_hf_runtime_falls_back_on_a_model_that_loops(tiny_whisper_dir):
    """The random-weight model loops greedily ("1982 1982 ..."): with safeguards every temperature is tried,
    the kept attempt is marked and reproducible (seeded sampling); without them, the loop as before."""
    from speechtune.synth import speak
    runtime = load_runtime(tiny_whisper_dir, "cpu")
    wav = speak("hello")
    options = DecodingOptions(temperature_increment_on_fallback=1.0)  # 0 then 1: fewer decodings to wait for
    (off,) = runtime.transcribe_batch([wav], options.replace(safeguards=False))
    (on,) = runtime.transcribe_batch([wav], options)
    assert compression_ratio(off.text) > THRESHOLD
    seg = on.segments[0]
    assert seg.fallback_failed and seg.temperature > 0 and seg.avg_logprob < -1 and seg.compression_ratio <= THRESHOLD
    assert runtime.transcribe_batch([wav], options)[0].text == on.text


@pytest.fixture(scope="module", params=["hf", "ct2"])
def tiny_en(request):
    from speechtune.models.registry import bundled_ct2
    return load_runtime("tiny.en" if request.param == "hf" else bundled_ct2("tiny.en"), "cpu")


def test_real_tiny_en_gives_no_text_for_noise_without_speech(tiny_en):
    """1.5 s of hiss: tiny.en says "you", doubtfully (avg_logprob -1.3) and no-speech likely (0.91)."""
    hiss = (0.1 * np.random.default_rng(0).standard_normal(24000)).astype(np.float32)
    assert tiny_en.transcribe_batch([hiss], DecodingOptions(safeguards=False))[0].text.lower() == "you"
    (r,) = tiny_en.transcribe_batch([hiss], DecodingOptions())
    assert r.text == "" and r.segments == []


def test_a_batch_falling_back_decodes_every_clip_and_repeats_itself(tiny_whisper_dir):
    """Clips of one batch that fail the checks at temperature 0 are re-decoded together (the random-weight
    model loops on all of them); transformers' generate once crashed there (TypeError in
    _maybe_reduce_batch) when one clip's sampling finished before the others'. Sampling draws from one
    seeded stream per call, so the same batch gives the same texts (a clip's sampled text may differ from
    what it gets in another batch, as in openai-whisper)."""
    from speechtune.synth import speak
    runtime = load_runtime(tiny_whisper_dir, "cpu")
    wavs = [speak("hello"), speak("take two tablets daily"), speak("stop")]
    options = DecodingOptions(temperature_increment_on_fallback=0.5)
    first = runtime.transcribe_batch(wavs, options)
    # every clip went through the fallback: it kept a hotter attempt, or failed at every temperature (then it
    # keeps its most likely attempt, which may be the greedy one when every sample holds a repeated run too)
    assert len(first) == 3 and all(r.segments and (r.segments[0].temperature > 0 or r.segments[0].fallback_failed)
                                   for r in first)
    assert [r.text for r in runtime.transcribe_batch(wavs, options)] == [r.text for r in first]


def test_inaudible_clips_get_no_text_and_never_reach_the_model():
    """safeguards.skip_inaudible, which every runtime's transcribe_batch goes through: digital silence, a
    clip under SILENCE_PEAK and one under MIN_SPEECH_S are left out of the batch; the rest keep their order,
    language and prompt."""
    calls = []

    def batch(wavs, options, languages, prompts):
        calls.append(([len(w) for w in wavs], languages, prompts))
        return [Result(f"clip of {len(w)}", lang, len(w) / 16000) for w, lang in zip(wavs, languages)]

    quiet = np.full(16000, 0.9 * SILENCE_PEAK, np.float32)
    faint = np.full(16000, 1.1 * SILENCE_PEAK, np.float32)
    short = np.full(int(MIN_SPEECH_S * 16000) - 1, 0.5, np.float32)
    wavs = [np.zeros(24000, np.float32), faint, quiet, short, np.zeros(0, np.float32), np.full(1600, 0.5, np.float32)]
    got = skip_inaudible(batch, wavs, DecodingOptions(), ["de", "fr", "de", "de", "de", "it"], None, True)
    assert [r.text for r in got] == ["", "clip of 16000", "", "", "", "clip of 1600"]
    assert calls == [([16000, 1600], ["fr", "it"], [None, None])]
    assert got[0].language == "de" and got[0].duration == 1.5 and got[0].segments == []
    assert skip_inaudible(batch, wavs[:1], DecodingOptions(), None, None, False)[0].language == "en"
    assert len(calls) == 1  # nothing audible: the model is not called
    assert [inaudible(w, DecodingOptions(safeguards=False)) for w in wavs] == [False] * 6


@pytest.fixture(scope="module")
def speech():
    from speechtune.synth import speak
    return speak("Please schedule the meeting for tomorrow morning.")


def test_real_tiny_en_writes_nothing_on_digital_silence_and_slivers(tiny_en):
    """Digital silence made tiny.en say a confident "you" (avg_logprob -0.38, which the no-speech rule
    keeps), and so did a 0.01 s clip: with safeguards neither is decoded."""
    silence, sliver = np.zeros(24000, np.float32), np.zeros(160, np.float32)
    off = tiny_en.transcribe_batch([silence, sliver], DecodingOptions(safeguards=False))
    assert [r.text.lower().strip(" .") for r in off] == ["you", "you"]
    for r in tiny_en.transcribe_batch([silence, sliver], DecodingOptions()):
        assert r.text == "" and r.segments == []
    # long-form and timestamped decoding too (the whole file's peak is checked first)
    long_silence = np.zeros(16000 * 40, np.float32)
    assert tiny_en.transcribe(long_silence, DecodingOptions(timestamps=True)).text == ""


def test_real_tiny_en_still_decodes_quiet_speech(tiny_en, speech):
    """Speech at a -40 dBFS peak, 40 dB above SILENCE_PEAK: decoded, word for word as at full level."""
    from speechtune.metrics.normalize import normalize
    quiet = (speech * (0.01 / np.abs(speech).max())).astype(np.float32)
    loud, soft = tiny_en.transcribe_batch([speech, quiet], DecodingOptions())
    assert "schedule the meeting" in normalize(loud.text, "en")
    assert normalize(soft.text, "en") == normalize(loud.text, "en")


def test_ct2_long_form_honours_the_options_on_hiss():
    """faster-whisper's own windows (openai-whisper's padding of the features) get the same thresholds."""
    from speechtune.models.registry import bundled_ct2
    runtime = load_runtime(bundled_ct2("tiny.en"))
    hiss = (0.1 * np.random.default_rng(0).standard_normal(24000)).astype(np.float32)
    assert runtime.transcribe(hiss, DecodingOptions(timestamps=True)).text == ""
    assert runtime.transcribe(hiss, DecodingOptions(timestamps=True, safeguards=False)).text != ""


def test_onnx_sampling_draws_from_the_softmax_and_scores_at_temperature_1():
    """The onnx runtime's own loop: argmax at 0, a draw from softmax(logits / t) above, and the chosen tokens'
    log-probabilities at temperature 1 (what avg_logprob sums)."""
    from speechtune.runtimes.onnx import chosen_logprobs, pick
    p = np.array([0.7, 0.2, 0.1])
    logits = np.log(np.tile(p, (20000, 1)))
    rng = np.random.default_rng(0)
    assert not pick(logits, 0.0, rng).any()
    for t in (1.0, 0.5):
        share = np.bincount(pick(logits, t, rng), minlength=3) / len(logits)
        assert np.abs(share - p ** (1 / t) / (p ** (1 / t)).sum()).max() < 0.01
    draws = pick(logits, 1.0, rng)
    assert np.allclose(chosen_logprobs(logits + 3.0, draws), np.log(p)[draws])
