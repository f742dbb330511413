"""Voice comparison (tts/judge.py): the bundled joe voice is the target speaker, espeak-ng the base voice and
joe itself the tuned one, so the tuned voice must win on similarity and MCD. Real models throughout."""
from __future__ import annotations

import json

import numpy as np
import pytest

from speechtune.audio import SAMPLE_RATE, resample, write_wav
from speechtune.errors import SpeechtuneError
from speechtune.tts import bundled_voice_installed

pytestmark = pytest.mark.skipif(not bundled_voice_installed("joe"), reason="the joe voice is not installed")

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Please call Stella and ask her to come.",
             "It was a bright cold day in April.", "We will meet at the station at noon."]


class EspeakVoice:
    """espeak-ng (speechtune.synth) behind the voice interface: the untuned "base" voice."""
    name = "espeak-ng en-us"
    sample_rate = SAMPLE_RATE

    def synthesize(self, text: str, speed: float = 1.0, seed: int = 0) -> np.ndarray:
        from speechtune.synth import speak
        return speak(text)


class SilentVoice(EspeakVoice):
    """A broken voice: near-silence as long as espeak's reading."""
    name = "silent"

    def synthesize(self, text: str, speed: float = 1.0, seed: int = 0) -> np.ndarray:
        return np.zeros_like(super().synthesize(text)) + 1e-4


@pytest.fixture(scope="module")
def joe():
    from speechtune.tts import load_voice
    return load_voice("joe")


@pytest.fixture(scope="module")
def prepared(joe, tmp_path_factory):
    """A prepared folder whose test split is joe reading SENTENCES (seed 1: another rendition than the
    tuned voice's seed 0), at 16 kHz as prepare writes it."""
    root = tmp_path_factory.mktemp("speaker")
    (root / "audio").mkdir()
    lines = []
    for i, text in enumerate(SENTENCES):
        write_wav(root / "audio" / f"{i}.wav", resample(joe.synthesize(text, seed=1), joe.sample_rate, SAMPLE_RATE))
        lines.append(json.dumps({"audio": f"audio/{i}.wav", "text": text, "language": "en", "speaker": "joe"}))
    (root / "test.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def judged(joe, prepared, tmp_path_factory):
    from speechtune.tts.judge import judge_voices
    out = tmp_path_factory.mktemp("cmp")
    return judge_voices(EspeakVoice(), joe, prepared, out=out, n_resamples=1000, seed=0), out


def test_tuned_voice_wins_on_similarity_and_mcd(judged):
    r, _ = judged
    sim, mcd = r["similarity"], r["mcd"]
    assert sim["tuned"] > sim["base"] and sim["ci95"][0] > 0 and sim["change"] == "better"
    assert mcd["tuned"] < mcd["base"] and mcd["ci95"][1] < 0 and mcd["change"] == "better"
    assert mcd["sentences"] == len(SENTENCES)
    assert r["cer"]["tuned"] < 0.1   # Whisper tiny.en hears joe well
    assert r["whisper"] == "tiny.en" and r["verdict"] in ("better", "mixed")
    assert r["verdict_line"].startswith("voice: more like the speaker (similarity ")
    assert "intelligibility CER" in r["verdict_line"] and "MCD" in r["verdict_line"]
    assert r["tuned"]["flagged"] == 0


def test_report_files(judged):
    r, out = judged
    m = json.loads((out / "metrics.json").read_text())
    assert m["kind"] == "voice" and m["sentences"] == len(SENTENCES)
    for metric in ("similarity", "wer", "cer", "mcd", "dnsmos"):
        assert {"base", "tuned", "base_ci95", "tuned_ci95", "delta", "ci95", "p_value", "change"} <= set(m[metric])
    # the DNSMOS guard: a 1-5 quality score per voice, named in the verdict, not part of "better"
    assert 1 <= m["dnsmos"]["base"] <= 5 and 1 <= m["dnsmos"]["tuned"] <= 5 and "DNSMOS" in m["verdict_line"]
    assert m["base"]["voice"] == "espeak-ng en-us" and m["tuned"]["voice"] == "en_US-joe-medium"
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["text"] for p in preds] == SENTENCES
    for p in preds:
        for side in ("base", "tuned"):
            assert {"transcript", "similarity", "mcd", "wer", "cer", "flags", "wav"} <= set(p[side])
            assert (out / p[side]["wav"]).is_file() and (out / p[side]["spectrogram"]).is_file()
        assert (out / p["reference"]["wav"]).is_file()
    page = (out / "report.html").read_text()
    assert page.count("<audio controls") == 3 * len(SENTENCES)
    assert page.count("<img ") == 3 * len(SENTENCES) and 'src="spectrograms/000-tuned.png"' in page
    assert (out / "spectrograms" / "000-tuned.png").read_bytes()[:4] == b"\x89PNG"


def test_flags_a_near_silent_voice_first(joe, prepared, tmp_path):
    from speechtune.report.voice_html import order_sentences
    from speechtune.tts.judge import judge_voices
    rows = [json.loads(x) for x in (prepared / "test.jsonl").read_text().splitlines()][:2]
    for r in rows:
        r["audio"] = str(prepared / r["audio"])
    r = judge_voices(joe, SilentVoice(), rows, n_resamples=1000)
    assert r["tuned"]["flagged"] == 2 and r["base"]["flagged"] == 0
    assert r["mcd"]["sentences"] == 0 and r["mcd"]["change"] == "n/a"   # no audible pair to align
    assert all(s["tuned"]["flags"][0].startswith("near-silent") for s in r["per_sentence"])
    assert "tuned flagged on 2 of 2 sentences" in r["verdict_line"]
    assert order_sentences(r["per_sentence"])[0]["flagged"]


def test_mel_cepstral_distortion(joe):
    from speechtune.metrics.voice import mel_cepstral_distortion
    from speechtune.synth import speak
    text = SENTENCES[0]
    ref = resample(joe.synthesize(text), joe.sample_rate, SAMPLE_RATE)
    again = resample(joe.synthesize(text, seed=1), joe.sample_rate, SAMPLE_RATE)
    other = speak(text)
    assert mel_cepstral_distortion(ref, ref, SAMPLE_RATE) == pytest.approx(0.0, abs=1e-9)
    same_voice, other_voice = (mel_cepstral_distortion(w, ref, SAMPLE_RATE) for w in (again, other))
    assert 0 < same_voice < other_voice
    assert np.isnan(mel_cepstral_distortion(np.zeros(SAMPLE_RATE, np.float32), ref, SAMPLE_RATE))


def test_bad_test_split(tmp_path):
    from speechtune.tts.judge import judge_voices
    (tmp_path / "test.jsonl").write_text("")
    with pytest.raises(SpeechtuneError, match="no clips"):
        judge_voices(EspeakVoice(), EspeakVoice(), tmp_path, n_resamples=1000)
    (tmp_path / "test.jsonl").write_text(json.dumps({"audio": "gone.wav", "text": "Hello."}) + "\n")
    with pytest.raises(SpeechtuneError, match="file not found: .*gone.wav"):
        judge_voices(EspeakVoice(), EspeakVoice(), tmp_path, n_resamples=1000)
    (tmp_path / "no-split").mkdir()
    with pytest.raises(SpeechtuneError, match="no test split"):
        judge_voices(EspeakVoice(), EspeakVoice(), tmp_path / "no-split", n_resamples=1000)


def test_compare_cli_judges_two_voices(prepared, tmp_path, capsys):
    from speechtune.cli import main
    lines = (prepared / "test.jsonl").read_text().splitlines()[:2]
    (prepared / "two.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "cmp"
    code = main(["compare", "--base", "joe", "--tuned", "joe", "--data", str(prepared / "two.jsonl"),
                 "--out", str(out), "--resamples", "1000"])
    printed = capsys.readouterr().out
    assert code == 0
    # the same voice twice: nothing changes
    assert printed.startswith("voice: no clearer likeness to the speaker") and "(no significant change)" in printed
    assert json.loads((out / "metrics.json").read_text())["verdict"] == "no significant change"
    assert (out / "report.html").is_file()
    assert main(["compare", "--base", "joe", "--tuned", "joe", "--data", str(tmp_path / "none.jsonl"),
                 "--out", str(out), "--resamples", "1000"]) == 2
    capsys.readouterr()
    # one voice and one spec that is not: the error names the other side, not a recognition-model error
    assert main(["compare", "--base", "joe", "--tuned", "no-such-voice", "--data", str(prepared / "two.jsonl"),
                 "--out", str(out)]) == 2
    assert "--tuned no-such-voice: the other side is a voice" in capsys.readouterr().err


def test_a_sure_but_negligible_difference_is_not_called():
    """A constant offset of a few thousandths of a dB (a re-exported voice) is significant to the bootstrap and
    meaningless to a listener: 'same'. A real difference of the same sureness is still called."""
    from speechtune.tts.judge import MIN_CHANGE, compare_metric
    base = [16.0 + 0.1 * i for i in range(20)]
    tiny = compare_metric(base, [b + 0.004 for b in base], [1.0] * 20, False, 1000, 0, MIN_CHANGE["mcd"])
    real = compare_metric(base, [b + 0.5 for b in base], [1.0] * 20, False, 1000, 0, MIN_CHANGE["mcd"])
    assert tiny["change"] == "same" and real["change"] == "worse"
