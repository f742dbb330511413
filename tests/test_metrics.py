import json

import numpy as np
import pytest

from speechtune.errors import SpeechtuneError
from speechtune.manifest import read_manifest
from speechtune.metrics import normalize, paired_bootstrap, score_corpus, verdict, verdict_line
from speechtune.metrics.hallucination import clip_flags, has_loop, longest_loop, summarize
from speechtune.metrics.normalize import guess_language
from speechtune.metrics.score import alignment, metric_for


# --- normalisers -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Twenty five", "25"),
    ("twenty-five dollars", "$25"),
    ("One hundred and twenty three people", "123 people"),
    ("The colour of the centre", "the color of the center"),
    ("Uh, I, um, organised it.", "i organized it"),
    ("It's HALF past TWO!", "it is half past 2"),
])
def test_english_normaliser(text, expected):
    assert normalize(text, "en") == expected


def test_english_spellings_score_equal():
    r = score_corpus(["The colour of the theatre"], ["the color of the theater"], language="en")
    assert r["wer"] == 0.0
    # ... while the raw figure still counts the spelling and case differences.
    assert r["raw"]["wer"] == pytest.approx(3 / 5)  # The, colour, theatre


def test_chinese_traditional_to_simplified_and_punctuation():
    assert normalize("這是一個測試。", "zh") == "这是一个测试"
    assert normalize("臺灣的 天氣，很好！", "zh") == normalize("台湾的天气很好", "zh") == "台湾的天气很好"


def test_chinese_full_width_to_half_width():
    assert normalize("ＡＢＣ１２３　测试", "zh") == "abc123测试"


def test_basic_normaliser_keeps_marks_and_drops_brackets():
    assert normalize("Bonjour, le MONDE! [bruit]", "fr") == "bonjour le monde"
    thai = "สวัสดี"  # vowels here are combining marks; dropping them would corrupt the word
    assert normalize(thai, "th") == thai


def test_guess_language_by_script():
    assert guess_language("广州市房地产中介协会分析") == "zh"
    assert guess_language("こんにちは世界") == "ja"
    assert guess_language("안녕하세요") == "ko"
    assert guess_language("hello world") is None


# --- scoring ---------------------------------------------------------------------------------------------

def test_metric_choice_by_language_and_override():
    assert metric_for("en") == "wer"
    assert [metric_for(x) for x in ("zh", "ja", "ko", "th")] == ["cer"] * 4
    assert metric_for("zh", "wer") == "wer"
    with pytest.raises(ValueError):
        metric_for("en", "bleu")


def test_score_counts_sub_del_ins():
    r = score_corpus(["a b c d", "e f"], ["a x c", "e f g"], language="fr")
    assert (r["sub"], r["del"], r["ins"], r["hits"], r["units"]) == (1, 1, 1, 4, 6)
    assert r["wer"] == pytest.approx(3 / 6)
    assert [c["errors"] for c in r["clips"]] == [2, 1]
    assert r["clips"][1]["error_rate"] == pytest.approx(1 / 2)


def test_chinese_uses_cer_on_normalised_text():
    r = score_corpus(["甚至出現交易幾乎停滯的情況。"], ["甚至出现交易几乎停止的情况"], language="zh")
    assert r["metric"] == "cer"
    assert (r["sub"], r["units"]) == (1, 13)  # 滞 -> 止; 。 dropped, 現/幾/況 folded
    assert r["error_rate"] == pytest.approx(1 / 13)


def test_metric_override_and_guessed_language():
    r = score_corpus(["广州市房地产"], ["广州市房产"])  # no language given: guessed from the script
    assert r["metric"] == "cer" and r["del"] == 1
    assert score_corpus(["广州市房地产"], ["广州市房产"], metric="wer")["error_rate"] == 1.0


def test_empty_reference_and_hypothesis():
    r = score_corpus(["", "hello there"], ["something", ""], language="en")
    assert r["clips"][0]["ins"] == 1 and r["clips"][1]["del"] == 2
    assert r["wer"] == pytest.approx(3 / 2)


def test_alignment_ops():
    ops = alignment("a b c d".split(), "a x c d e".split())
    assert [o[0] for o in ops] == ["equal", "substitute", "equal", "insert"]
    assert ops[1][1:] == (["b"], ["x"])


# --- bootstrap -------------------------------------------------------------------------------------------

def test_bootstrap_identical_systems():
    rng = np.random.default_rng(1)
    units = rng.integers(5, 20, size=50)
    errors = rng.integers(0, 5, size=50)
    r = paired_bootstrap(errors, errors, units, n_resamples=1000, seed=0)
    assert r["delta"] == 0.0
    assert r["ci95"][0] <= 0.0 <= r["ci95"][1]
    assert r["p_value"] == pytest.approx(1.0)
    assert verdict(r) == "no significant change"


def test_bootstrap_strictly_better_everywhere():
    rng = np.random.default_rng(2)
    units = rng.integers(5, 20, size=40)
    base = rng.integers(2, 5, size=40)
    tuned = base - rng.integers(1, 3, size=40)  # fewer errors on every clip
    r = paired_bootstrap(base, tuned, units, n_resamples=1000, seed=0)
    assert r["delta"] == pytest.approx(tuned.sum() / units.sum() - base.sum() / units.sum())
    assert r["p_value"] < 0.01
    assert r["ci95"][1] < 0
    assert verdict(r) == "improved"
    assert verdict(paired_bootstrap(tuned, base, units, seed=0)) == "worse"


def test_bootstrap_noise_is_not_significant():
    # Tuned wins some clips and loses as many: no real difference.
    units = np.full(40, 10)
    base = np.tile([2, 3], 20)
    tuned = np.tile([3, 2], 20)
    r = paired_bootstrap(base, tuned, units, n_resamples=2000, seed=3)
    assert r["delta"] == 0.0 and r["p_value"] > 0.5
    assert verdict(r) == "no significant change"


def test_bootstrap_is_seeded():
    args = ([3, 1, 4, 1, 5], [2, 7, 1, 8, 2], [10, 10, 10, 10, 10])
    assert paired_bootstrap(*args, seed=7) == paired_bootstrap(*args, seed=7)


def test_verdict_line_format():
    r = {"delta": -0.599, "ci95": [-0.640, -0.551], "p_value": 0.0004}
    assert verdict_line("wer", 0.603, 0.004, r) == \
        "improved: WER 60.3% -> 0.4% (-59.9 pt, 95% CI -64.0 .. -55.1, p<0.001)"


# --- hallucination ---------------------------------------------------------------------------------------

def test_loop_detection():
    hyp = "so the kubelet the kubelet the kubelet the kubelet".split()
    assert longest_loop(hyp) == (("the", "kubelet"), 4)
    assert has_loop(hyp, "so the kubelet".split())
    assert not has_loop("the cat sat on the mat".split())
    assert not has_loop("very very very good".split())      # three single words is speech
    assert has_loop("the the the the the".split())
    # A repetition the speaker really said is not a hallucination.
    chant = "go team go team go team".split()
    assert not has_loop(chant, chant)


def test_loop_detection_characters():
    assert has_loop(list("谢谢谢谢谢谢谢谢"), list("谢谢"))


def test_clip_flags_and_summary():
    ref = "turn the lights off".split()
    flags = [
        clip_flags(ref, [], insertions=0),
        clip_flags(ref, "turn the lights off please now and then again ok".split(), insertions=6),
        clip_flags(ref, ref, insertions=0),
    ]
    assert flags[0]["empty"] and not flags[0]["too_long"]
    assert flags[1]["too_long"] and flags[1]["insertion_rate"] == pytest.approx(6 / 4)
    assert not any(flags[2][k] for k in ("loop", "empty", "too_long"))
    s = summarize(flags, insertions=6, units=12)
    assert (s["empty"], s["too_long"], s["loops"], s["clips"]) == (1, 1, 0, 3)
    assert s["insertion_rate"] == pytest.approx(0.5)


# --- manifest --------------------------------------------------------------------------------------------

def test_read_manifest_resolves_paths_and_accepts_duration_s(tmp_path):
    (tmp_path / "audio").mkdir()
    lines = [
        {"audio": "audio/a.wav", "text": "hi", "duration": 1.5, "speaker": "s1", "language": "EN", "source": "x"},
        {"audio": "/abs/b.flac", "text": "yo", "duration_s": 2.0, "ref_kind": "dataset_transcript"},
    ]
    m = tmp_path / "test.jsonl"
    m.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    rows = read_manifest(m)
    assert rows[0]["audio"] == str(tmp_path / "audio" / "a.wav")
    assert rows[0]["language"] == "en" and rows[0]["duration"] == 1.5
    assert rows[1]["audio"] == "/abs/b.flac" and rows[1]["duration"] == 2.0 and rows[1]["language"] is None
    assert rows[1]["ref_kind"] == "dataset_transcript" and rows[1]["line"] == 2


@pytest.mark.parametrize("line, says", [
    ("{not json", "not valid JSON"),
    ('{"text": "hi"}', 'missing "audio"'),
    ('{"audio": "a.wav"}', 'missing "text"'),
    ("[1, 2]", "expected a JSON object"),
])
def test_read_manifest_bad_line_names_file_and_line(tmp_path, line, says):
    m = tmp_path / "bad.jsonl"
    m.write_text('{"audio": "a.wav", "text": "ok"}\n' + line + "\n")
    with pytest.raises(SpeechtuneError) as e:
        read_manifest(m)
    assert f"{m}:2" in e.value.message and says in e.value.message


def test_read_manifest_missing_file(tmp_path):
    with pytest.raises(SpeechtuneError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


LOOP_673 = "Restart n.14.14.13" + ".14" * 218  # what a fine-tuned tiny.en wrote for a 3 s clip


def test_raw_flags_catch_a_loop_the_normaliser_folds():
    from speechtune.evaluation import score_rows
    from speechtune.metrics.hallucination import raw_flags
    rows = [{"audio": "a.wav", "text": "Restart Envoy before you upgrade Grafana.", "language": "en"},
            {"audio": "b.wav", "text": "Define the term before you use it.", "language": "en"},
            {"audio": "c.wav", "text": "And so my fellow Americans, ask not what your country can do for you.",
             "language": "en"}]
    hyps = [LOOP_673, "the term the term the term", "And so my fellow Americans ask not what your country can do for you"]
    s = score_rows(rows, hyps, ["en"] * 3, seconds=[3.0, 2.5, 7.0])
    p = s["predictions"]
    assert len(LOOP_673) == 672 and p[0]["raw_loop"] and p[0]["loop"]
    assert p[0]["compression_ratio"] > 2.4 and p[0]["chars_per_s"] > 200 and p[0]["repeated"].startswith(".14")
    assert p[1]["loop"] and not p[2]["loop"] and not p[2]["raw_loop"]
    assert p[1]["raw_loop"] and s["hallucination"]["loops"] == 2 and s["hallucination"]["raw_loops"] == 2
    for text, seconds in [("今天天气很好，我们去公园散步吧。", 3.0), ("1, 2, 3, 4, 5, 6, 7, 8, 9, 10", 4.0),
                          ("very very very good", 2.0), ("no no no no", 1.5), ("", 1.0)]:
        assert not raw_flags(text, seconds)["raw_loop"], text
    assert raw_flags("you " * 60, 3600.0)["raw_loop"]  # a hallucination on an hour of silence


def test_verdict_names_a_new_loop():
    from speechtune.compare import loop_note, paired
    rows = [{"audio": f"{i}.wav", "text": t, "line": i, "language": "en"}
            for i, t in enumerate(["restart envoy before you upgrade grafana", "scale the deployment now",
                                   "the kubelet restarts the pod"])]
    base = {"hyps": ["restore envoy before you upgrade grafana", "scale the employment now", "the cubelet restarts"],
            "seconds": [3.0, 2.0, 2.0], "processing_s": 1.0, "audio_s": 7.0, "model": "base"}
    tuned = {"hyps": [LOOP_673, "scale the deployment now", "the kubelet restarts the pod"],
             "seconds": [3.0, 2.0, 2.0], "processing_s": 1.0, "audio_s": 7.0, "model": "tuned"}
    m, clips = paired(rows, base, tuned, ["en"] * 3, None, 1000, 0)
    assert m["verdict_line"].endswith(", but 1 clip loop (base 0)") and m["new_loops"] == 1
    assert clips[0]["tuned"]["raw_loop"] and not clips[0]["base"]["raw_loop"]
    assert loop_note(2, 2) == "" and loop_note(0, 3) == ", but 3 clips loop (base 0)"
    from speechtune.report.html import order_clips, render
    assert order_clips(clips)[0]["audio"] == "0.wav"  # the looping clip leads the diff table
    assert "(loops: 672 characters)" in render(m | {"data": "t.jsonl", "guard": None}, clips)
