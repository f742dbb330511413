"""`prepare` on messy inputs: every broken clip is rejected with the right reason, every good clip is kept."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechtune.data import REASONS, prepare
from speechtune.errors import SpeechtuneError
from speechtune.synth import speak

SENTENCES = [
    "Please send the quarterly report by Friday.",
    "The meeting moved to the third floor.",
    "Remember to water the plants on Monday.",
    "Our train leaves at half past seven.",
    "She ordered a coffee and a lemon cake.",
    "The printer on the left is out of paper.",
    "We should test the backup before the update.",
    "His flight from Boston landed early.",
    "Turn right after the second traffic light.",
    "The library closes at nine tonight.",
    "Bring an umbrella, it might rain later.",
    "The new budget was approved this morning.",
]
VOICES = ["m1", "f1", "m3", "f3"]


@pytest.fixture(scope="module")
def voices_cache():
    """Synthesized speech for the good clips, made once per module."""
    return [speak(s, voice=VOICES[i % 4], rate=150 + 5 * i) for i, s in enumerate(SENTENCES)]


def rows_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def kept(out: Path) -> list[dict]:
    return [r | {"split": s} for s in ("train", "valid", "test") for r in rows_of(out / f"{s}.jsonl")]


# ---- the broken-input suite -----------------------------------------------------------------------
# Each case writes its files into `d` and returns the CSV cells (audio, text[, speaker, split]); the
# expected reason is the third element. Cells may be raw bytes to inject invalid UTF-8.

def _good(d, wavs, k, name=None, **kw):
    name = name or f"good{k}.wav"
    sf.write(d / name, wavs[k], 16000, **kw)
    return name


def case_missing_file(d, w):
    return ["nowhere/clip.wav", SENTENCES[0]]


def case_truncated_wav(d, w):
    _good(d, w, 0, "trunc.wav")
    (d / "trunc.wav").write_bytes((d / "trunc.wav").read_bytes()[:30])
    return ["trunc.wav", SENTENCES[0]]


def case_text_renamed_wav(d, w):
    (d / "notes.wav").write_text("these are meeting notes, not audio\n" * 20)
    return ["notes.wav", SENTENCES[1]]


def case_random_bytes_mp3(d, w):
    (d / "noise.mp3").write_bytes(np.random.default_rng(0).bytes(4000))
    return ["noise.mp3", SENTENCES[2]]


def case_zero_bytes(d, w):
    (d / "zero.wav").write_bytes(b"")
    return ["zero.wav", SENTENCES[3]]


def case_header_only_wav(d, w):
    sf.write(d / "header.wav", np.zeros(0, np.float32), 16000)
    return ["header.wav", SENTENCES[3]]


def case_nan_samples(d, w):
    x = w[1].copy()
    x[100:200] = np.nan
    sf.write(d / "nan.wav", x, 16000, subtype="FLOAT")
    return ["nan.wav", SENTENCES[1]]


def case_inf_samples(d, w):
    x = w[2].copy()
    x[50] = np.inf
    sf.write(d / "inf.wav", x, 16000, subtype="FLOAT")
    return ["inf.wav", SENTENCES[2]]


def case_digital_silence(d, w):
    sf.write(d / "silence.wav", np.zeros(32000, np.float32), 16000)
    return ["silence.wav", SENTENCES[4]]


def case_faint_hiss(d, w):
    sf.write(d / "hiss.wav", (1e-4 * np.random.default_rng(1).standard_normal(32000)).astype(np.float32), 16000)
    return ["hiss.wav", SENTENCES[4]]


def case_too_short(d, w):
    sf.write(d / "short.wav", w[5][4000:4800], 16000)  # 0.05 s
    return ["short.wav", "ok"]


def case_too_long(d, w):
    sf.write(d / "long.wav", np.tile(w[6], int(45 * 16000 / len(w[6])) + 1)[: 45 * 16000], 16000)
    return ["long.wav", SENTENCES[6]]


def case_empty_text(d, w):
    return [_good(d, w, 7, "empty_text.wav"), ""]


def case_whitespace_text(d, w):
    return [_good(d, w, 8, "space_text.wav"), "   \t  "]


def case_text_too_long(d, w):
    return [_good(d, w, 9, "long_text.wav"), " ".join(["meeting"] * 500)]


def case_mismatch_long_text(d, w):
    # a paragraph of transcript for a one-second clip: the wrong transcript
    return [_good(d, w, 10, "mismatch1.wav"), " ".join(SENTENCES[:6])]


def case_mismatch_one_word(d, w):
    sf.write(d / "mismatch2.wav", np.concatenate([w[11], w[0], w[3]]), 16000)
    return ["mismatch2.wav", "yes"]


def case_duplicate(d, w):
    shutil.copy(d / "good2.wav", d / "copy_of_good2.wav")
    return ["copy_of_good2.wav", SENTENCES[2], "f1"]


def case_duplicate_other_container(d, w):
    pcm, _ = sf.read(d / "good3.wav", dtype="int16")
    sf.write(d / "good3_again.flac", pcm, 16000)  # the same samples in another container
    return ["good3_again.flac", SENTENCES[3], "f3"]


def case_extra_field(d, w):
    return ["good4.wav", "hello", "m1", "", "surplus"]


def case_missing_field(d, w):
    return ["good4.wav"]


def case_non_utf8_text(d, w):
    return [_good(d, w, 5, "latin1.wav"), "caf\xe9 au lait".encode("latin-1")]


def case_no_audio_path(d, w):
    return ["", SENTENCES[0]]


def case_path_is_folder(d, w):
    (d / "a_folder.wav").mkdir()
    return ["a_folder.wav", SENTENCES[0]]


def case_unknown_split(d, w):
    return [_good(d, w, 6, "holdout.wav"), SENTENCES[6], "m3", "holdout"]


BROKEN = [
    (case_missing_file, "missing_file"),
    (case_truncated_wav, "undecodable"),
    (case_text_renamed_wav, "undecodable"),
    (case_random_bytes_mp3, "undecodable"),
    (case_zero_bytes, "empty_audio"),
    (case_header_only_wav, "empty_audio"),
    (case_nan_samples, "non_finite"),
    (case_inf_samples, "non_finite"),
    (case_digital_silence, "silent"),
    (case_faint_hiss, "silent"),
    (case_too_short, "too_short"),
    (case_too_long, "too_long"),
    (case_empty_text, "empty_text"),
    (case_whitespace_text, "empty_text"),
    (case_text_too_long, "text_too_long"),
    (case_mismatch_long_text, "rate_mismatch"),
    (case_mismatch_one_word, "rate_mismatch"),
    (case_duplicate, "duplicate_audio"),
    (case_duplicate_other_container, "duplicate_audio"),
    (case_extra_field, "bad_row"),
    (case_missing_field, "bad_row"),
    (case_non_utf8_text, "bad_encoding"),
    (case_no_audio_path, "bad_row"),
    (case_path_is_folder, "missing_file"),
    (case_unknown_split, "bad_row"),
]


def _cell(v):
    if isinstance(v, bytes):
        return v
    return (f'"{v}"' if "," in str(v) else str(v)).encode("utf-8")


def build_csv(d: Path, wavs) -> tuple[Path, dict, list[str]]:
    """Good clips in several formats and rates, then the broken cases. Returns the csv, the expected
    reason per CSV line, and the good transcripts."""
    lines = [b"path,text,speaker,split"]
    good = []
    for k in range(len(SENTENCES)):
        name = f"good{k}.wav"
        if k == 1:
            name = "good1.flac"
            sf.write(d / name, wavs[k], 16000)
        elif k == 4:  # 44.1 kHz stereo
            import soxr
            x = soxr.resample(wavs[k], 16000, 44100)
            sf.write(d / "good4.wav", np.stack([x, 0.5 * x], axis=1), 44100)
        elif k == 5:  # 8 kHz ogg vorbis
            import soxr
            name = "good5.ogg"
            sf.write(d / name, soxr.resample(wavs[k], 16000, 8000), 8000, format="OGG", subtype="VORBIS")
        else:
            _good(d, wavs, k)
        lines.append(b",".join(_cell(c) for c in [name, SENTENCES[k], VOICES[k % 4], ""]))
        good.append(SENTENCES[k])
    expected = {}
    for make, reason in BROKEN:
        cells = make(d, wavs)
        if make in (case_extra_field, case_missing_field):
            row = cells
        else:
            row = cells + ["m7", ""][len(cells) - 2:]
        lines.append(b",".join(_cell(c) for c in row))
        expected[len(lines)] = reason
    # a leak: same transcript and speaker placed in train and in test by the split column
    sf.write(d / "leak_a.wav", speak("The fire drill starts at noon.", voice="m7", rate=150), 16000)
    sf.write(d / "leak_b.wav", speak("The fire drill starts at noon.", voice="m7", rate=170), 16000)
    lines.append(b"leak_a.wav,The fire drill starts at noon.,m7,train")
    expected[len(lines)] = "split_leak"
    lines.append(b"leak_b.wav,The fire drill starts at noon.,m7,test")
    good.append("The fire drill starts at noon.")
    path = d / "data.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, expected, good


@pytest.fixture(scope="module")
def messy(tmp_path_factory, voices_cache):
    d = tmp_path_factory.mktemp("messy")
    path, expected, good = build_csv(d, voices_cache)
    out = d / "prepared"
    stats = prepare(path, out, cache_dir=str(d / "cache"), workers=1)
    return path, expected, good, out, stats


def test_at_least_25_broken_inputs_in_the_suite():
    assert len(BROKEN) + 1 >= 25


def test_every_broken_row_has_the_right_reason(messy):
    path, expected, _, out, _ = messy
    got = {r["line"]: r["reason"] for r in rows_of(out / "rejects.jsonl")}
    assert got == expected
    for r in rows_of(out / "rejects.jsonl"):
        assert r["source"] == str(path) and r["reason"] in REASONS and r["detail"]


def test_every_good_clip_is_kept(messy):
    _, _, good, out, stats = messy
    clips = kept(out)
    assert sorted(c["text"] for c in clips) == sorted(good)
    assert stats["clips"] == {"read": len(good) + len(BROKEN) + 1, "kept": len(good), "rejected": len(BROKEN) + 1}
    for c in clips:
        wav, sr = sf.read(out / c["audio"])
        assert sr == 16000 and wav.ndim == 1 and abs(len(wav) / sr - c["duration"]) < 1e-3
        assert set(c) == {"audio", "text", "duration", "speaker", "language", "source", "split"}


def test_resampled_and_downmixed_clips_keep_their_length(messy, voices_cache):
    _, _, _, out, _ = messy
    by_text = {c["text"]: c for c in kept(out)}
    for k in (1, 4, 5):  # flac, 44.1 kHz stereo, 8 kHz ogg
        assert abs(by_text[SENTENCES[k]]["duration"] - len(voices_cache[k]) / 16000) < 0.03


def test_split_column_and_leak(messy):
    _, _, _, out, _ = messy
    by_text = {c["text"]: c for c in kept(out)}
    assert by_text["The fire drill starts at noon."]["split"] == "test"


def test_outputs_and_stats(messy):
    _, _, good, out, stats = messy
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "rejects.jsonl", "stats.json", "durations.png"):
        assert (out / name).is_file()
    assert (out / "durations.png").read_bytes()[:4] == b"\x89PNG"
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk["clips"] == stats["clips"]
    assert sum(s["clips"] for s in stats["splits"].values()) == len(good)
    assert stats["rejected"]["undecodable"] == 3 and stats["rejected"]["duplicate_audio"] == 2
    assert sum(stats["rejected"].values()) == len(BROKEN) + 1
    assert abs(sum(s["hours"] for s in stats["speakers"].values()) - stats["hours"]) < 1e-3
    assert all(stats["splits"][s]["clips"] >= 1 for s in ("train", "valid", "test"))


def test_speakers_are_disjoint_across_splits(messy):
    _, _, _, out, stats = messy
    assert stats["split_by"] == "speaker"
    where = {}
    for c in kept(out):
        where.setdefault(c["speaker"], set()).add(c["split"])
    assert all(len(s) == 1 for s in where.values()), where


def test_rerun_reuses_the_cache_and_is_deterministic(messy, tmp_path):
    path, _, _, out, stats = messy
    again = prepare(path, tmp_path / "again", cache_dir=str(path.parent / "cache"), workers=2)
    assert stats["cache"]["decoded"] > 20
    assert again["cache"] == {"hits": stats["cache"]["decoded"] + stats["cache"]["hits"], "decoded": 0}
    for s in ("train", "valid", "test", "rejects"):
        assert (out / f"{s}.jsonl").read_text() == (tmp_path / "again" / f"{s}.jsonl").read_text()


# ---- other input formats ---------------------------------------------------------------------------

def _speech(text, voice="m1", rate=160):
    return speak(text, voice=voice, rate=rate)


def test_nemo_manifest_with_offsets(tmp_path):
    a, b = _speech(SENTENCES[0]), _speech(SENTENCES[1], "f3")
    gap = np.zeros(8000, np.float32)
    sf.write(tmp_path / "rec.wav", np.concatenate([a, gap, b]), 16000)
    sf.write(tmp_path / "whole.wav", _speech(SENTENCES[2], "m3"), 16000)
    total = (len(a) + len(gap) + len(b)) / 16000
    lines = [
        {"audio_filepath": "rec.wav", "offset": 0.0, "duration": len(a) / 16000, "text": SENTENCES[0]},
        {"audio_filepath": "rec.wav", "offset": (len(a) + len(gap)) / 16000, "duration": len(b) / 16000,
         "text": SENTENCES[1]},
        {"audio_filepath": "rec.wav", "offset": total + 5, "duration": 2.0, "text": "beyond the end"},
        {"audio": {"path": "whole.wav"}, "sentence": SENTENCES[2]},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{not json\n[1, 2]\n" + '{"text": "no audio"}\n'
    (tmp_path / "m.jsonl").write_bytes(text.encode() + b'{"audio": "whole.wav", "text": "\xff\xfe"}\n')
    stats = prepare(tmp_path / "m.jsonl", tmp_path / "out", cache_dir=str(tmp_path / "c"), workers=1,
                    language="en")
    rej = {r["line"]: r["reason"] for r in rows_of(tmp_path / "out" / "rejects.jsonl")}
    assert rej == {3: "bad_segment", 5: "bad_row", 6: "bad_row", 7: "bad_row", 8: "bad_encoding"}
    clips = {c["text"]: c for c in kept(tmp_path / "out")}
    assert set(clips) == set(SENTENCES[:3]) and stats["format"] == "jsonl"
    assert abs(clips[SENTENCES[1]]["duration"] - len(b) / 16000) < 0.01
    assert clips[SENTENCES[0]]["language"] == "en"


def test_kaldi_dir_with_segments_cuts_a_long_recording(tmp_path):
    parts = [_speech(s, v) for s, v in zip(SENTENCES[:8], VOICES * 2)]
    gap = np.zeros(16000 * 3, np.float32)
    rec = np.concatenate([x for p in parts for x in (p, gap)])
    assert len(rec) / 16000 > 30  # too long as one clip: segments make it usable
    (tmp_path / "wav").mkdir()
    sf.write(tmp_path / "wav" / "rec1.wav", rec, 16000)
    d = tmp_path / "data" / "train"
    d.mkdir(parents=True)
    (d / "wav.scp").write_text("rec1 wav/rec1.wav\nrec2 sox in.flac -t wav - |\n")
    seg, text, spk, t = [], [], [], 0.0
    for i, p in enumerate(parts):
        seg.append(f"utt{i} rec1 {t:.3f} {t + len(p) / 16000:.3f}")
        text.append(f"utt{i} {SENTENCES[i]}")
        spk.append(f"utt{i} {VOICES[i % 4]}")
        t += (len(p) + len(gap)) / 16000
    seg += ["utt8 rec2 0 1.5", "utt9 rec1 0 1.5", "utt10 nosuchrec 0 1"]
    text += ["utt8 piped", "utt10 orphan"]  # utt9 has no transcript
    (d / "segments").write_text("\n".join(seg) + "\n")
    (d / "text").write_text("\n".join(text) + "\n")
    (d / "utt2spk").write_text("\n".join(spk) + "\n")
    (tmp_path / "data" / "train" / "notes").write_text("ignored")
    stats = prepare(d, tmp_path / "out", cache_dir=str(tmp_path / "c"), workers=2)
    reasons = sorted(r["reason"] for r in rows_of(tmp_path / "out" / "rejects.jsonl"))
    assert reasons == ["bad_row", "missing_file", "missing_text"]
    clips = kept(tmp_path / "out")
    assert sorted(c["text"] for c in clips) == sorted(SENTENCES[:8]) and stats["format"] == "kaldi"
    assert {c["speaker"] for c in clips} == set(VOICES) and stats["split_by"] == "speaker"


def test_folder_of_audio_and_txt(tmp_path):
    for i, spk in enumerate(["alice", "alice", "bob", "bob", "carol", "carol"]):
        (tmp_path / "in" / spk).mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / "in" / spk / f"c{i}.wav", _speech(SENTENCES[i], VOICES[i % 4]), 16000)
        (tmp_path / "in" / spk / f"c{i}.txt").write_text(SENTENCES[i] + "\n")
    sf.write(tmp_path / "in" / "carol" / "untranscribed.wav", _speech(SENTENCES[7]), 16000)
    (tmp_path / "in" / "bob" / "orphan.txt").write_text("no audio for me")
    sf.write(tmp_path / "in" / "bob" / "latin.wav", _speech(SENTENCES[8], "f1"), 16000)
    (tmp_path / "in" / "bob" / "latin.txt").write_bytes("na\xefve caf\xe9".encode("latin-1"))
    stats = prepare(tmp_path / "in", tmp_path / "out", cache_dir=str(tmp_path / "c"), workers=1)
    rej = {Path(r["source"]).name: r["reason"] for r in rows_of(tmp_path / "out" / "rejects.jsonl")}
    assert rej == {"untranscribed.wav": "missing_text", "orphan.txt": "missing_file", "latin.txt": "bad_encoding"}
    clips = kept(tmp_path / "out")
    assert sorted(c["text"] for c in clips) == sorted(SENTENCES[:6]) and stats["format"] == "folder"
    assert {c["speaker"] for c in clips} == {"alice", "bob", "carol"}
    assert len({c["split"] for c in clips}) == 3  # one speaker per split


def test_audiofolder_with_split_subfolders_and_tsv(tmp_path):
    for split_name, idx in (("train", [0, 1, 2, 3]), ("test", [4, 5])):
        d = tmp_path / "af" / split_name
        d.mkdir(parents=True)
        rows = ["file_name\ttranscription"]
        for i in idx:
            sf.write(d / f"{i}.wav", _speech(SENTENCES[i], VOICES[i % 4]), 16000)
            rows.append(f"{i}.wav\t{SENTENCES[i]}")
        (d / "metadata.tsv").write_text("\n".join(rows) + "\n")
    stats = prepare(tmp_path / "af", tmp_path / "out", cache_dir=str(tmp_path / "c"), workers=1)
    assert stats["format"] == "audiofolder"
    split_of = {c["text"]: c["split"] for c in kept(tmp_path / "out")}
    assert split_of == {SENTENCES[i]: ("train" if i < 4 else "test") for i in range(6)}


def test_mandarin_rate_bounds_use_characters(tmp_path):
    zh = ["今天天气很好，我们去公园散步。", "请在星期五之前把报告发给我。", "会议改到下午三点。"]
    rows = ["audio,text,language"]
    for i, s in enumerate(zh):
        sf.write(tmp_path / f"z{i}.wav", speak(s, lang="zh", voice=VOICES[i]), 16000)
        rows.append(f"z{i}.wav,{s},zh")
    # an English paragraph's worth of characters on a short Mandarin clip is a mismatch
    rows.append(f"z2.wav,{'这是一个完全不对的很长很长的转写文本' * 4},zh")
    (tmp_path / "zh.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    stats = prepare(tmp_path / "zh.csv", tmp_path / "out", cache_dir=str(tmp_path / "c"), workers=1)
    assert stats["clips"]["kept"] == 3 and stats["rejected"] == {"rate_mismatch": 1}
    assert {c["language"] for c in kept(tmp_path / "out")} == {"zh"}


# ---- splits, exit status, CLI ---------------------------------------------------------------------

def test_utterance_split_small_set_has_valid_and_test(tmp_path):
    rows = ["audio,text"]
    for i in range(5):
        sf.write(tmp_path / f"u{i}.wav", _speech(SENTENCES[i]), 16000)
        rows.append(f"u{i}.wav,{SENTENCES[i]}")
    (tmp_path / "u.csv").write_text("\n".join(rows) + "\n")
    s1 = prepare(tmp_path / "u.csv", tmp_path / "o1", cache_dir=str(tmp_path / "c"), workers=1, seed=1)
    assert s1["split_by"] == "utterance"
    assert [s1["splits"][s]["clips"] for s in ("train", "valid", "test")] == [3, 1, 1]
    s1b = prepare(tmp_path / "u.csv", tmp_path / "o1b", cache_dir=str(tmp_path / "c"), workers=1, seed=1)
    assert (tmp_path / "o1" / "test.jsonl").read_text() == (tmp_path / "o1b" / "test.jsonl").read_text()
    tests = {(tmp_path / "o1" / "test.jsonl").read_text()}
    for seed in range(2, 8):
        prepare(tmp_path / "u.csv", tmp_path / f"s{seed}", cache_dir=str(tmp_path / "c"), workers=1, seed=seed)
        tests.add((tmp_path / f"s{seed}" / "test.jsonl").read_text())
    assert len(tests) > 1  # the seed matters
    assert s1b["splits"] == s1["splits"]


def test_split_by_speaker_needs_speakers(tmp_path):
    sf.write(tmp_path / "a.wav", _speech(SENTENCES[0]), 16000)
    (tmp_path / "a.csv").write_text(f"audio,text\na.wav,{SENTENCES[0]}\n")
    with pytest.raises(SpeechtuneError, match="split-by speaker"):
        prepare(tmp_path / "a.csv", tmp_path / "o", cache_dir=str(tmp_path / "c"), workers=1, split_by="speaker")


def test_nothing_usable_is_an_error_but_rejects_are_written(tmp_path):
    (tmp_path / "bad.csv").write_text("audio,text\nmissing.wav,hello\nalso_missing.wav,hi\n")
    with pytest.raises(SpeechtuneError, match="no usable clips"):
        prepare(tmp_path / "bad.csv", tmp_path / "o", cache_dir=str(tmp_path / "c"), workers=1)
    assert [r["reason"] for r in rows_of(tmp_path / "o" / "rejects.jsonl")] == ["missing_file"] * 2


def test_unreadable_inputs_are_errors(tmp_path):
    with pytest.raises(SpeechtuneError, match="not found"):
        prepare(tmp_path / "nope.csv", tmp_path / "o")
    (tmp_path / "nohead.csv").write_text("a.wav,hello\n")
    with pytest.raises(SpeechtuneError, match="no audio column"):
        prepare(tmp_path / "nohead.csv", tmp_path / "o")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SpeechtuneError, match="no clips"):
        prepare(tmp_path / "empty.jsonl", tmp_path / "o")
    (tmp_path / "x.xlsx").write_text("")  # .parquet is a format now (Hugging Face datasets)
    with pytest.raises(SpeechtuneError, match="--format"):
        prepare(tmp_path / "x.xlsx", tmp_path / "o")


def test_cli_exit_status_and_summary(tmp_path, capsys):
    from speechtune.cli import main
    for i in range(3):
        sf.write(tmp_path / f"c{i}.wav", _speech(SENTENCES[i]), 16000)
    (tmp_path / "d.csv").write_text("file,transcript\n" + "".join(f"c{i}.wav,{SENTENCES[i]}\n" for i in range(3))
                                    + "gone.wav,hello\n")
    args = ["prepare", str(tmp_path / "d.csv"), "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")]
    assert main(args + ["--workers", "1", "--trim-silence", "--normalize"]) == 0
    out = capsys.readouterr().out
    assert "missing_file" in out and "train" in out
    (tmp_path / "none.csv").write_text("file,transcript\ngone.wav,hello\n")
    assert main(["prepare", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "\nerror: no usable clips" in err and "Traceback" not in err
    (tmp_path / "o3").mkdir()
    (tmp_path / "o3" / "precious.txt").write_text("user data")
    assert main(["prepare", str(tmp_path / "d.csv"), "--out", str(tmp_path / "o3")]) == 2


def test_trim_and_normalize(tmp_path):
    x = 0.05 * _speech(SENTENCES[0])
    padded = np.concatenate([np.zeros(16000, np.float32), x, np.zeros(16000, np.float32)])
    sf.write(tmp_path / "p.wav", padded, 16000)
    (tmp_path / "p.csv").write_text(f"audio,text\np.wav,{SENTENCES[0]}\n")
    prepare(tmp_path / "p.csv", tmp_path / "o", cache_dir=str(tmp_path / "c"), workers=1,
            trim_silence=True, normalize=True)
    (clip,) = kept(tmp_path / "o")
    wav, _ = sf.read(tmp_path / "o" / clip["audio"])
    assert len(wav) < len(padded) - 1.5 * 16000
    assert abs(10 * np.log10(np.mean(wav ** 2)) - (-20.0)) < 1.0


def test_reason_codes_are_documented_in_order():
    doc = (Path(__file__).parents[1] / "docs" / "data.md").read_text(encoding="utf-8")
    table = [line.split("`")[1] for line in doc.splitlines() if line.startswith("| `")]
    table = [code for code in table if code in REASONS]
    assert table == list(REASONS)
