"""`speechtune evaluate` and `speechtune compare` on a tiny random Whisper and synthesized speech."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from speechtune.audio import write_wav
from speechtune.cli import main
from speechtune.compare import compare, hallucination_failure, no_speech_block, no_speech_note, paired
from speechtune.data.nospeech import no_speech_clips
from speechtune.evaluate import evaluate
from speechtune.report.html import render
from speechtune.runtimes import DecodingOptions

SENTENCES = ["Scale the deployment to three replicas.", "The kubelet restarts the pod."]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    from speechtune.synth import speak
    root = tmp_path_factory.mktemp("data")
    (root / "audio").mkdir()
    with open(root / "test.jsonl", "w") as f:
        for i, text in enumerate(SENTENCES):
            write_wav(root / "audio" / f"{i}.wav", speak(text))
            # relative paths resolve against the manifest's folder; the second line is realspeech-style
            row = {"audio": f"audio/{i}.wav", "text": text, "language": "en"} if i == 0 else \
                  {"audio": f"audio/{i}.wav", "text": text, "duration_s": 1.0}
            f.write(json.dumps(row) + "\n")
    return root / "test.jsonl"


@pytest.fixture(scope="module")
def self_compare(tiny_whisper_dir, manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    # one temperature: the random model fails every check, and six decodings of each of the 17 clips (the
    # non-speech set's 13 among them) are minutes on a busy CPU
    result = compare(tiny_whisper_dir, tiny_whisper_dir, manifest, guard=manifest, out=out,
                     options=DecodingOptions(batch_size=8, temperature_increment_on_fallback=0), progress=False)
    return result, out


def test_compare_with_itself_is_no_change(self_compare):
    r, _ = self_compare
    assert r["delta"] == 0.0 and r["ci95"] == [0.0, 0.0] and r["p_value"] == 1.0
    assert r["verdict"] == "no significant change"
    assert r["verdict_line"].startswith("no significant change: WER ")
    assert r["base"]["wer"] == r["tuned"]["wer"]
    assert all(c["change"] == 0 for c in r["per_clip"])
    assert r["guard"]["delta"] == 0.0 and r["guard"]["flagged"] is False


def test_compare_writes_every_file_with_contract_keys(self_compare):
    _, out = self_compare
    m = json.loads((out / "metrics.json").read_text())
    for key in ("base", "tuned", "delta", "ci95", "p_value", "verdict", "guard"):
        assert key in m
    for side in ("base", "tuned"):
        s = m[side]
        for key in ("wer", "cer", "sub", "del", "ins", "raw", "rtf", "clips_per_s", "hallucination"):
            assert key in s, key
        assert s["audio_s"] > 0 and s["rtf"] > 0
        assert set(s["hallucination"]) >= {"loops", "empty", "too_long", "insertion_rate"}
    assert set(m["guard"]) >= {"base", "tuned", "delta", "ci95", "p_value", "verdict", "flagged", "threshold"}
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["ref"] for p in preds] == SENTENCES
    assert (out / "guard_predictions.jsonl").is_file()
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert "http://" not in page and "https://" not in page  # self-contained: nothing to fetch
    assert "no significant change" in page


def test_compare_runs_the_no_speech_check_and_term_recall_by_default(self_compare):
    r, out = self_compare
    m = json.loads((out / "metrics.json").read_text())
    ns = m["no_speech"]
    assert ns["clips"] == 13 and ns["reversed_from"] == r["guard"]["data"]  # 11 + the guard's 2, reversed
    assert ns["base"] == ns["tuned"] and set(ns["base"]) == {"clips", "clips_with_text", "words"}
    assert ns["flagged"] is False and ns["new_clips_with_text"] == 0
    rows = [json.loads(x) for x in (out / "no_speech_predictions.jsonl").read_text().splitlines()]
    assert [x["name"] for x in rows][:2] == ["digital_silence", "digital_silence_0.05s"]
    assert rows[0]["base"] == {"text": "", "words": 0} == rows[1]["tuned"]  # never decoded (safeguards)
    assert rows[-1]["kind"] == "reversed" and {"name", "kind", "base", "tuned"} <= set(rows[-1])
    # the random model writes words elsewhere: the counts add up
    assert ns["base"]["words"] == sum(x["base"]["words"] for x in rows)
    t = m["terms"]
    assert t["chosen"] == "base_never_wrote" and "wrote in none of its test-set hypotheses" in t["rule"]
    assert t["delta"] in (0.0, None) and all(p["base_recall"] in (0.0, None) for p in t["per_term"])
    page = (out / "report.html").read_text()
    assert "No speech: 13 clips" in page and "digital_silence_0.05s" in page and "Term recall" in page


def test_the_verdict_names_new_text_on_non_speech_clips():
    clips = no_speech_clips()[:4]
    block, rows = no_speech_block(clips, ["", "", "you", ""], ["", "you", "Thank you.", "字幕"], "g.jsonl")
    assert block["base"] == {"clips": 4, "clips_with_text": 1, "words": 1}
    assert block["tuned"] == {"clips": 4, "clips_with_text": 3, "words": 5}
    assert block["flagged"] and block["new_clips_with_text"] == 2
    assert rows[3] == {"name": clips[3].name, "kind": "noise", "seconds": 5.0, "base": {"text": "", "words": 0},
                       "tuned": {"text": "字幕", "words": 2}}
    assert no_speech_note(block) == ", but tuned writes text on 3 of 4 non-speech clips (base 1)"
    assert no_speech_note(block, after=True).startswith(", and tuned writes text on 3 of 4")
    same, _ = no_speech_block(clips, ["you"] * 4, ["you"] * 4, "g.jsonl")
    assert no_speech_note(same) == "" and not same["flagged"]
    # what --fail-on-hallucination exits 1 on
    assert hallucination_failure({"new_loops": 0, "guard": None, "no_speech": same}) is None
    assert hallucination_failure({"new_loops": 0, "guard": {"new_loops": 1}, "no_speech": block}) == \
        "the tuned model loops on 1 more clip(s) and writes text on 2 more non-speech clip(s) than the base"
    assert hallucination_failure({"new_loops": 0, "guard": None, "no_speech": None}) is None
    page = render(_tiny_metrics() | {"no_speech": block}, [], None, rows)
    # flagged rows (tuned writes where the base did not) come first
    at = [page.index(c.name) for c in clips[1:]]
    assert at[0] < at[1] and at[2] < at[1]
    assert page.count('<tr class="flag">') == 2


def _tiny_metrics() -> dict:
    rows = [{"audio": "a.wav", "text": "turn the lights off", "line": 1, "language": "en"}]
    run = {"hyps": ["turn the lights off"], "processing_s": 1.0, "audio_s": 2.0, "model": "m"}
    m, _ = paired(rows, run, run, ["en"], None, 1000, 0)
    return m | {"data": "t.jsonl", "guard": None}


def test_evaluate_writes_predictions_and_metrics(tiny_whisper_dir, manifest, tmp_path):
    m = evaluate(str(tiny_whisper_dir), manifest, out=tmp_path, options=DecodingOptions(batch_size=2),
                 progress=False)
    assert m["clips"] == 2 and m["metric"] == "wer"
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 2
    p = json.loads(lines[0])
    assert {"ref", "hyp", "ref_norm", "hyp_norm", "errors", "sub", "del", "ins", "loop", "empty"} <= set(p)
    assert p["ref_norm"] == "scale the deployment to 3 replicas"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["wer"] == m["wer"] and "predictions" not in saved


def test_cli_compare_prints_verdict_line(tiny_whisper_dir, manifest, tmp_path, capsys):
    terms = tmp_path / "terms.txt"
    terms.write_text("# the domain\nkubelet\nthree replicas\n", encoding="utf-8")
    rc = main(["compare", "--base", str(tiny_whisper_dir), "--tuned", str(tiny_whisper_dir), "--data",
               str(manifest), "--out", str(tmp_path), "--batch-size", "2", "--skip-no-speech",
               "--terms", str(terms), "--temperature-increment-on-fallback", "0"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[0].startswith("no significant change: WER ") and "p=1.00" in out[0]
    assert out[1].startswith(f"term recall (2 terms, from {terms}; 2 occurrences): ")
    assert (tmp_path / "report.html").is_file() and not (tmp_path / "no_speech_predictions.jsonl").exists()
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["no_speech"] is None and m["terms"]["chosen"] == "file" and m["terms"]["file"] == str(terms)
    assert [t["term"] for t in m["terms"]["per_term"]] == ["kubelet", "three replicas"]
    assert [t["occurrences"] for t in m["terms"]["per_term"]] == [1, 1]  # "three" normalised to "3" both sides


def test_cli_a_bad_terms_file_is_one_line_before_any_model_loads(manifest, tmp_path, capsys):
    rc = main(["compare", "--base", "no-such-model", "--tuned", "no-such-model", "--data", str(manifest),
               "--out", str(tmp_path), "--terms", str(tmp_path / "missing.txt")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: terms file not found: {tmp_path / 'missing.txt'}")


def test_cli_bad_manifest_line_is_one_line_error(tiny_whisper_dir, manifest, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(manifest.read_text() + '{"audio": "audio/missing.wav", "text": "gone"}\n')
    shutil.copytree(manifest.parent / "audio", tmp_path / "audio")
    rc = main(["evaluate", "--model", str(tiny_whisper_dir), "--data", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(f"error: {bad}:3: file not found")


def test_report_marks_word_errors():
    rows = [{"audio": "a.wav", "text": "turn the lights off", "line": 1, "language": "en"}]
    base = {"hyps": ["turn the light off"], "processing_s": 1.0, "audio_s": 2.0, "model": "base"}
    tuned = {"hyps": ["turn lights off now now"], "processing_s": 1.0, "audio_s": 2.0, "model": "tuned"}
    m, clips = paired(rows, base, tuned, ["en"], None, 1000, 0)
    page = render(m | {"data": "t.jsonl", "guard": None}, clips)
    assert '<span class="s" title="reference: lights">light</span>' in page
    assert '<span class="d">the</span>' in page and '<span class="i">now now</span>' in page
    assert clips[0]["change"] == 2 and m["delta"] == pytest.approx(3 / 4 - 1 / 4)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(self_compare, tmp_path):
    """The page renders (not blank) in a real browser; look at the PNG by hand for layout."""
    _, out = self_compare
    script = Path(__file__).parents[1] / "benchmarks" / "screenshot_report.sh"
    shot = tmp_path / "shot.png"
    subprocess.run(["bash", str(script), str(out / "report.html"), str(shot), "1400"], check=True, timeout=120)
    from PIL import Image
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape == (1400, 1280)
    assert img.std() > 10  # text, tables and plots, not an empty page


@pytest.mark.e2e
def test_fail_on_hallucination_exits_1_when_tuned_writes_on_non_speech(tiny_whisper_dir, manifest, tmp_path, capsys):
    """Real tiny.en (CTranslate2, the faster runtime here) as the base, the random model (which writes on
    anything) as the tuned one."""
    from speechtune.models.registry import bundled_ct2
    rc = main(["compare", "--base", str(bundled_ct2("tiny.en")), "--tuned", str(tiny_whisper_dir), "--data",
               str(manifest), "--out", str(tmp_path), "--batch-size", "8", "--temperature-increment-on-fallback", "0",
               "--fail-on-hallucination"])
    captured = capsys.readouterr()
    m = json.loads((tmp_path / "metrics.json").read_text())
    ns = m["no_speech"]
    assert ns["tuned"]["clips_with_text"] > ns["base"]["clips_with_text"] and ns["flagged"]
    assert f"tuned writes text on {ns['tuned']['clips_with_text']} of 13 non-speech clips " \
           f"(base {ns['base']['clips_with_text']})" in captured.out.splitlines()[0]
    assert rc == 1 and "more non-speech clip(s)" in captured.err


@pytest.mark.e2e
def test_bundled_tiny_en_scores_synthesized_speech(manifest, tmp_path):
    m = evaluate("tiny.en", manifest, DecodingOptions(batch_size=2), progress=False)
    assert m["wer"] < 0.6, [p["hyp"] for p in m["predictions"]]
    assert "deployment" in m["predictions"][0]["hyp_norm"]
    assert m["rtf"] > 0 and m["hallucination"]["empty"] == 0


def test_chinese_compare_uses_cer_and_character_diff():
    rows = [{"audio": "a.wav", "text": "甚至出現交易幾乎停滯的情況", "line": 1, "language": "zh"},
            {"audio": "b.wav", "text": "广州市房地产中介协会分析", "line": 2, "language": "zh"}]
    base = {"hyps": ["甚至出现交易几乎停止的情况", "广州市房地产中介协会分析"], "processing_s": 1.0, "audio_s": 9.0,
            "model": "base"}
    tuned = {"hyps": ["甚至出現交易幾乎停滯的情況。", "广州市房地产中介协会分析"], "processing_s": 1.0, "audio_s": 9.0,
             "model": "tuned"}
    m, clips = paired(rows, base, tuned, ["zh", "zh"], None, 1000, 0)
    assert m["metric"] == "cer" and m["verdict_line"].startswith("no significant change: CER 4.0% -> 0.0%")
    assert clips[0]["change"] == -1
    page = render(m | {"data": "zh.jsonl", "guard": None}, clips)
    assert '<span class="s" title="reference: 滞">止</span>' in page  # characters, no spaces between
