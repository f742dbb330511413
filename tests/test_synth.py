import numpy as np
import pytest

from speechtune.errors import SpeechtuneError
from speechtune.synth import speak


def test_speak_english_is_16k_mono_float32_speech():
    wav = speak("The quick brown fox jumps over the lazy dog.")
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert 1.0 < len(wav) / 16000 < 5.0
    assert np.isfinite(wav).all() and 0.05 < np.abs(wav).max() <= 1.0


def test_speak_mandarin():
    wav = speak("今天天气很好，我们去公园散步。", lang="zh")
    assert len(wav) / 16000 > 1.0 and np.sqrt(np.mean(wav ** 2)) > 0.01


def test_speak_is_a_pure_function_of_its_arguments():
    a = speak("Same words every time.", voice="f3")
    speak("Something else in between.", voice="m1", rate=220)
    b = speak("Same words every time.", voice="f3")
    assert np.array_equal(a, b)


def test_voice_rate_and_pitch_change_the_audio():
    base = speak("Counting one two three four five.")
    slow = speak("Counting one two three four five.", rate=110)
    assert len(slow) > 1.3 * len(base)
    f3, m3 = speak("Counting one two three.", voice="f3"), speak("Counting one two three.", voice="m3")
    assert not np.array_equal(f3, m3)
    high = speak("Counting one two three.", pitch=90)
    assert not np.array_equal(high, speak("Counting one two three.", pitch=10))


def test_unknown_voice_and_language_are_user_errors():
    with pytest.raises(SpeechtuneError, match="variant"):
        speak("hello", voice="nosuchvoice")
    with pytest.raises(SpeechtuneError, match="language"):
        speak("hello", lang="xx")


def _rows(manifest):
    import json
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


def test_synth_corpus_writes_manifest_and_wavs(tmp_path):
    import soundfile as sf
    from speechtune.synth import synth_corpus
    manifest = synth_corpus(["Good morning.", "  ", "Open the door please."], tmp_path / "c", "en",
                            voices=["m1", "f3", "m3"], per_sentence=3, progress=False)
    rows = _rows(manifest)
    assert len(rows) == 6
    assert {k for k in ("audio", "text", "duration", "speaker", "language", "source")} <= set(rows[0])
    assert [r["text"] for r in rows] == ["Good morning."] * 3 + ["Open the door please."] * 3
    assert {r["speaker"] for r in rows[:3]} == {"m1", "f3", "m3"}  # renditions use different voices
    for r in rows:
        wav, sr = sf.read(manifest.parent / r["audio"])
        assert sr == 16000 and abs(len(wav) / sr - r["duration"]) < 1e-3 and r["language"] == "en"


def test_synth_corpus_is_deterministic_by_seed(tmp_path):
    from speechtune.synth import synth_corpus
    opts = dict(voices=["m1", "f3"], per_sentence=1, noise_snr=[5.0, 25.0])
    sents = ["One two three.", "Four five six.", "Seven eight nine."]
    a = synth_corpus(sents, tmp_path / "a", seed=7, progress=False, **opts)
    b = synth_corpus(sents, tmp_path / "b", seed=7, progress=False, **opts)
    c = synth_corpus(sents, tmp_path / "c", seed=8, progress=False, **opts)
    assert a.read_text() == b.read_text()
    for r in _rows(a):
        assert (a.parent / r["audio"]).read_bytes() == (b.parent / r["audio"]).read_bytes()
    assert [r["snr_db"] for r in _rows(a)] != [r["snr_db"] for r in _rows(c)]


def test_add_noise_hits_the_requested_snr():
    from speechtune.synth import add_noise
    wav = speak("Noise should sit twenty decibels below this speech.")
    noisy = add_noise(wav, 20.0, np.random.default_rng(0))
    noise = noisy - wav
    voiced = np.abs(wav) > 0.02 * np.abs(wav).max()
    snr = 10 * np.log10(np.mean(wav[voiced] ** 2) / np.mean(noise ** 2))
    assert abs(snr - 20.0) < 0.5


def test_synth_cli_zh(tmp_path):
    from speechtune.cli import main
    sents = tmp_path / "zh.txt"
    sents.write_text("# 注释\n你好世界。\n我们明天开会。\n", encoding="utf-8")
    assert main(["synth", str(sents), "--lang", "zh", "--out", str(tmp_path / "o"), "--voices", "f3", "m1"]) == 0
    rows = _rows(tmp_path / "o" / "manifest.jsonl")
    assert [r["text"] for r in rows] == ["你好世界。", "我们明天开会。"]
    assert rows[0]["language"] == "zh" and rows[0]["source"] == "zh.txt:2" and rows[0]["voice"].startswith("cmn")


def test_synth_cli_errors_are_one_line(tmp_path, capsys):
    from speechtune.cli import main
    assert main(["synth", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")]) == 2
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    assert main(["synth", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not UTF-8" in capsys.readouterr().err
