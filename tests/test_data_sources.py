"""`prepare` on Common Voice releases, TSVs that a quote mark must not merge, and Hugging Face datasets:
every input row is accounted for (rows read == data lines; kept + rejected == rows read)."""
import csv
import io
import json
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from speechtune.data import prepare
from speechtune.data.languages import whisper_language
from speechtune.data.readers import read_table, tsv_quoting
from speechtune.errors import SpeechtuneError
from speechtune.synth import speak

CV_HEADER = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
             "gender", "accents", "variant", "locale", "segment"]
# (subset, speaker, sentence): a zh-CN release. Two sentences begin with a quote mark, one of them never
# closes it: read with CSV quoting, that row swallowed the rows after it into one transcript.
CV_ROWS = [
    ("train", "a1", '"今天天气很好，"他说。'),
    ("train", "a1", '"请在星期五之前把报告发给我。'),
    ("train", "b2", "会议改到下午三点。"),
    ("train", "b2", "我们明天早上去公园散步。"),
    ("dev", "c3", "这家饭店的菜很好吃。"),
    ("test", "d4", "火车七点半出发。"),
    ("test", "d4", "图书馆今晚九点关门。"),
]
CV_EXTRA_VALIDATED = [("e5", "她买了一杯咖啡。")]   # validated, but in none of train/dev/test
CV_OTHER = [("f6", "这句话还没有人验证。")]
CV_INVALIDATED = [("g7", "这句话被投票否决了。")]
EN = ["Please send the quarterly report by Friday.", "The meeting moved to the third floor.",
      "Remember to water the plants on Monday.", "Our train leaves at half past seven.",
      "She ordered a coffee and a lemon cake.", "Turn right after the second traffic light."]


def rows_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def kept(out: Path) -> list[dict]:
    return [r | {"split": s} for s in ("train", "valid", "test") for r in rows_of(out / f"{s}.jsonl")]


def mp3_bytes(wav: np.ndarray, sr: int = 16000) -> bytes:
    """A real mp3 (LAME through PyAV), as Common Voice ships its clips."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=sr, layout="mono")
        frame = av.AudioFrame.from_ndarray((wav * 32767).astype(np.int16)[None, :], format="s16", layout="mono")
        frame.sample_rate = sr
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def wav_bytes(wav: np.ndarray, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav, 16000, format=fmt)
    return buf.getvalue()


def cv_line(speaker: str, clip: str, sentence: str, locale: str = "zh-CN") -> str:
    cells = [speaker * 32, clip, f"sid{abs(hash(sentence)) % 10**6}", sentence, "", "2", "0", "twenties",
             "female_feminine", "", "", locale, ""]
    return "\t".join(cells)


def write_tsv(path: Path, lines: list[str]) -> None:
    path.write_text("\t".join(CV_HEADER) + "\n" + "".join(x + "\n" for x in lines), encoding="utf-8")


@pytest.fixture(scope="module")
def cv(tmp_path_factory):
    """A synthesized Common Voice release folder with real mp3 clips and every TSV a release has."""
    root = tmp_path_factory.mktemp("cv") / "zh-CN"
    (root / "clips").mkdir(parents=True)
    clip = {}

    def add(speaker, sentence):
        name = f"common_voice_zh-CN_{len(clip):05d}.mp3"
        (root / "clips" / name).write_bytes(mp3_bytes(speak(sentence, lang="zh", voice="m1" if len(clip) % 2 else "f1")))
        clip[sentence] = name
        return cv_line(speaker, name, sentence)

    subsets = {"train": [], "dev": [], "test": []}
    for subset, speaker, sentence in CV_ROWS:
        subsets[subset].append(add(speaker, sentence))
    # a sentence holding a tab: one field too many, a reject, not a shifted row
    subsets["train"].append(cv_line("b2", clip[CV_ROWS[2][2]], "多了\t一个字段"))
    for subset, lines in subsets.items():
        write_tsv(root / f"{subset}.tsv", lines)
    extra = [add(s, t) for s, t in CV_EXTRA_VALIDATED]
    write_tsv(root / "validated.tsv", [x for ls in subsets.values() for x in ls] + extra)
    write_tsv(root / "other.tsv", [add(s, t) for s, t in CV_OTHER])
    write_tsv(root / "invalidated.tsv", [add(s, t) for s, t in CV_INVALIDATED])
    (root / "reported.tsv").write_text("sentence_id\tsentence\tlocale\treason\nx\ty\tzh-CN\toffensive\n")
    (root / "clip_durations.tsv").write_text("clip\tduration[ms]\n" + "".join(f"{c}\t3000\n" for c in clip.values()))
    return root


def test_commonvoice_release_keeps_every_row_and_its_splits(cv, tmp_path):
    stats = prepare(cv, tmp_path / "out", cache_dir=str(tmp_path / "c"), workers=1)
    assert stats["format"] == "commonvoice"
    data_lines = sum(len((cv / f"{s}.tsv").read_text(encoding="utf-8").splitlines()) - 1
                     for s in ("train", "dev", "test"))
    assert stats["input_lines"] == stats["rows_read"] == stats["clips"]["read"] == data_lines == len(CV_ROWS) + 1
    assert stats["clips"]["kept"] + stats["clips"]["rejected"] == stats["rows_read"]
    clips = {c["text"]: c for c in kept(tmp_path / "out")}
    want = {"train": "train", "dev": "valid", "test": "test"}
    assert {t: c["split"] for t, c in clips.items()} == {t: want[s] for s, _, t in CV_ROWS}
    assert clips['"请在星期五之前把报告发给我。']["speaker"] == "a1" * 32  # client_id is the speaker
    assert {c["language"] for c in clips.values()} == {"zh"}
    (reject,) = rows_of(tmp_path / "out" / "rejects.jsonl")
    assert reject["reason"] == "bad_row" and reject["line"] == 6 and reject["source"].endswith("train.tsv")
    assert "14 fields, the header has 13" in reject["detail"]
    assert stats["not_used"] == {"validated.tsv rows not in train.tsv, dev.tsv, test.tsv": 1,
                                 "other.tsv": 1, "invalidated.tsv": 1}
    assert all(s["quoting"] == "none" for s in stats["sources"])


def test_commonvoice_tsv_alone_resolves_clips_and_prepare_splits_it(cv, tmp_path):
    stats = prepare(cv / "train.tsv", tmp_path / "out", cache_dir=str(tmp_path / "c"), workers=1)
    assert stats["format"] == "commonvoice"
    assert stats["rejected"] == {"bad_row": 1}  # no missing_file: paths resolve under clips/
    assert stats["rows_read"] == stats["input_lines"] == 5 and stats["clips"]["kept"] == 4
    assert stats["splits"]["test"]["clips"] >= 1  # one TSV alone is not pinned to its name's split


def test_commonvoice_validated_only_is_read_when_there_are_no_splits(cv, tmp_path):
    d = tmp_path / "cv"
    d.mkdir()
    (d / "clips").symlink_to(cv / "clips")
    (d / "validated.tsv").write_bytes((cv / "validated.tsv").read_bytes())
    stats = prepare(d, tmp_path / "out", cache_dir=str(tmp_path / "c"), workers=1)
    assert stats["format"] == "commonvoice" and stats["rows_read"] == len(CV_ROWS) + 2
    assert stats["split_by"] == "speaker"  # five client_ids: the split keeps speakers apart
    where = {}
    for c in kept(tmp_path / "out"):
        where.setdefault(c["speaker"], set()).add(c["split"])
    assert all(len(s) == 1 for s in where.values())


def test_tsv_rows_never_merge(tmp_path):
    texts = ["one two three", '"Quoted start, never closed', "plain row", 'He said "hi"', '"Wrapped."']
    lines = ["path\ttext"] + [f"t.wav\t{t}" for t in texts]
    (tmp_path / "m.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # what the bug did: CSV quoting reads these 5 rows as fewer, one transcript swallowing the next lines
    assert len(list(csv.reader(lines[1:], delimiter="\t"))) < len(texts)
    reading = read_table(tmp_path / "m.tsv")
    assert [r.text for r in reading.rows] == texts and [r.line for r in reading.rows] == [2, 3, 4, 5, 6]
    assert reading.sources[0]["lines"] == reading.sources[0]["rows"] == 5
    assert reading.sources[0]["quoting"] == "none"


def test_genuinely_quoted_csv_and_tsv_read_correctly(tmp_path):
    texts = ['She said "hi", then left', "a, b and c", '"Fully quoted."', "tab\tinside"]
    for name, delim, quoting in (("q.csv", ",", csv.QUOTE_MINIMAL), ("all.tsv", "\t", csv.QUOTE_ALL),
                                 ("min.tsv", "\t", csv.QUOTE_MINIMAL)):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter=delim, quoting=quoting)
            w.writerow(["audio", "transcript", "speaker"])
            w.writerows([f"c{i}.wav", t, f"s{i}"] for i, t in enumerate(texts))
        reading = read_table(tmp_path / name)
        assert [r.text for r in reading.rows] == texts, name
        assert [r.speaker for r in reading.rows] == ["s0", "s1", "s2", "s3"]
        assert reading.sources[0]["quoting"] == "csv" and reading.sources[0]["rows"] == 4


def test_tsv_quoting_rule():
    assert tsv_quoting(['"a"\t"b"\n', 'x\ty\n'])[0]                      # quoted header
    assert tsv_quoting(['a\tb\n', 'x\t"say ""hi"""\n'])[0]               # a doubled quote: a quoting writer
    assert not tsv_quoting(['a\tb\n', 'x\t"Wrapped."\n'])[0]              # no evidence: quote marks kept
    assert not tsv_quoting(['a\tb\n', 'x\t"Cool," she said\n'])[0]       # not valid quoted TSV
    assert not tsv_quoting(['a\tb\n', 'x\t"open\n', 'y\tz"\tw\n'])[0]    # quoting would change the field count


def test_unbalanced_quote_in_a_quoted_file_is_an_error_naming_the_lines(tmp_path):
    (tmp_path / "d.csv").write_text('path,text\na.wav,fine\nb.wav,"never closed\nc.wav,swallowed\n'
                                    'd.wav,"also"\ne.wav,ok\n')
    with pytest.raises(SpeechtuneError, match=r"d\.csv: lines 3-5 were read as one row \(an unbalanced quote "
                                              r"at line 3\)") as e:
        read_table(tmp_path / "d.csv")
    assert "double each quote" in e.value.hint
    (tmp_path / "q.tsv").write_text('"path"\t"text"\n"a.wav"\t"multi\nline"\n')
    with pytest.raises(SpeechtuneError, match="lines 2-3 were read as one row .*line break") as e:
        read_table(tmp_path / "q.tsv")
    assert "every header field is quoted" in e.value.hint


def test_rows_with_too_few_or_too_many_fields_are_rejects(tmp_path):
    (tmp_path / "f.tsv").write_text("path\ttext\tspeaker\na.wav\thello\ns1\nb.wav\tx\ty\tz\n\t\t\nc.wav\tok\ts2\n")
    reading = read_table(tmp_path / "f.tsv")
    assert [(r.line, r.error and r.error[0]) for r in reading.rows] == [(2, "bad_row"), (3, "bad_row"),
                                                                      (4, "bad_row"), (6, None)]
    assert "2 fields, the header has 3" in reading.rows[0].error[1]
    assert reading.sources[0]["lines"] == reading.sources[0]["rows"] == 4  # the blank line 5 is neither


def test_locales_map_to_whisper_codes():
    cases = {"zh-CN": "zh", "zh-TW": "zh", "zh-HK": "zh", "en": "en", "pt-BR": "pt", "sv-SE": "sv",
             "nan-tw": "nan", "yue": "yue", "fy-NL": "fy", "ga-IE": "ga", "rm-sursilv": "rm", "hy-AM": "hy",
             "ne-NP": "ne", "pa-IN": "pa", "jv": "jw", "nb-NO": "no", "es": "es", None: None, " ": None}
    assert {k: whisper_language(k) for k in cases} == cases


# ---- Hugging Face datasets -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_data(tmp_path_factory):
    """The same six clips three ways: files + JSONL, and columns for a datasets.Dataset (bytes embedded)."""
    d = tmp_path_factory.mktemp("hf")
    encoded = []
    for i, text in enumerate(EN):
        wav = speak(text, voice=["m1", "f1", "m3"][i % 3], rate=150 + 10 * i)
        data, name = (mp3_bytes(wav), f"clip{i}.mp3") if i % 2 else (wav_bytes(wav, "FLAC"), f"clip{i}.flac")
        (d / name).write_bytes(data)
        encoded.append((name, data))
    (d / "m.jsonl").write_text("".join(json.dumps({"audio": n, "text": t, "speaker": f"spk{i % 3}", "language": "en"})
                                       + "\n" for i, ((n, _), t) in enumerate(zip(encoded, EN))))
    columns = {"audio": [{"bytes": b, "path": n} for n, b in encoded], "sentence": EN,
               "client_id": [f"spk{i % 3}" for i in range(len(EN))], "locale": ["en"] * len(EN),
               "path": [n for n, _ in encoded]}
    return d, columns


def _dataset(columns):
    from datasets import Audio, Dataset
    return Dataset.from_dict(columns).cast_column("audio", Audio())


def _clips(out: Path) -> set:
    return {(c["text"], c["duration"], c["speaker"], c["language"]) for c in kept(out)}


@pytest.fixture(scope="module")
def jsonl_clips(hf_data, tmp_path_factory):
    d, _ = hf_data
    out = tmp_path_factory.mktemp("jsonl-out") / "out"
    prepare(d / "m.jsonl", out, cache_dir=str(d / "cache"), workers=1)
    clips = _clips(out)
    assert len(clips) == len(EN)
    return clips


def test_dataset_saved_to_disk_and_as_parquet_match_jsonl(hf_data, jsonl_clips, tmp_path):
    d, columns = hf_data
    ds = _dataset(columns)
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "x.parquet"))
    for src in (tmp_path / "saved", tmp_path / "x.parquet"):
        out = tmp_path / f"out-{src.name}"
        stats = prepare(src, out, cache_dir=str(d / "cache"), workers=1)
        assert stats["format"] == "hf" and stats["input_lines"] == stats["rows_read"] == len(EN)
        assert _clips(out) == jsonl_clips, src
        assert {c["source"] for c in kept(out)} == set(columns["path"])  # named by the dataset's own path


def test_dataset_dict_and_hub_layout_keep_their_splits(hf_data, jsonl_clips, tmp_path):
    from datasets import DatasetDict
    d, columns = hf_data
    ds = _dataset(columns)
    dd = DatasetDict(train=ds.select(range(4)), validation=ds.select([4]), test=ds.select([5]))
    dd.save_to_disk(str(tmp_path / "dd"))
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    for name, part in (("train", ds.select(range(4))), ("test", ds.select([4, 5])), ("other", ds.select([0]))):
        part.to_parquet(str(hub / f"{name}-00000-of-00001.parquet"))
    expect = {"dd": {"train": 4, "valid": 1, "test": 1}, "hub": {"train": 4, "valid": 0, "test": 2}}
    for src in (tmp_path / "dd", tmp_path / "hub"):
        out = tmp_path / f"out-{src.name}"
        stats = prepare(src, out, cache_dir=str(d / "cache"), workers=1)
        assert _clips(out) == jsonl_clips, src
        assert {s: v["clips"] for s, v in stats["splits"].items()} == expect[src.name]
        assert stats["input_lines"] == stats["rows_read"] == len(EN)
    assert list(stats["not_used"].values()) == [1]  # the hub folder's `other` split is not read


def test_dataset_with_audio_paths_and_one_split(hf_data, jsonl_clips, tmp_path):
    from datasets import Audio, Dataset, DatasetDict
    d, columns = hf_data
    by_path = Dataset.from_dict({**columns, "audio": [str(d / p) for p in columns["path"]]})
    by_path = by_path.cast_column("audio", Audio())
    DatasetDict(train=by_path, other=by_path.select([0])).save_to_disk(str(tmp_path / "paths"))
    out = tmp_path / "out"
    stats = prepare(tmp_path / "paths", out, cache_dir=str(d / "cache"), workers=1)
    assert _clips(out) == jsonl_clips
    assert stats["not_used"] == {f"{tmp_path / 'paths'}/other (split other)": 1}
    assert stats["splits"]["test"]["clips"] >= 1  # train alone is not pinned: prepare splits it


def test_hf_dataset_by_name_goes_through_load_dataset(hf_data, jsonl_clips, tmp_path, monkeypatch):
    import datasets
    d, columns = hf_data
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    _dataset(columns).to_parquet(str(hub / "data" / "train-00000-of-00001.parquet"))
    out = tmp_path / "out"
    stats = prepare(None, out, cache_dir=str(d / "cache"), workers=1, hf_dataset=str(hub), hf_split="train")
    assert stats["input"] == f"hf:{hub}" and stats["rows_read"] == len(EN)
    assert _clips(out) == jsonl_clips
    with pytest.raises(SpeechtuneError, match="cannot load the Hugging Face dataset"):
        prepare(None, tmp_path / "o2", hf_dataset=str(tmp_path / "no-such-dataset"))


def test_missing_datasets_library_says_how_to_install(hf_data, tmp_path, monkeypatch):
    d, columns = hf_data
    _dataset(columns).save_to_disk(str(tmp_path / "saved"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(SpeechtuneError, match=r"pip install 'speechtune\[hf\]'"):
        prepare(tmp_path / "saved", tmp_path / "out", cache_dir=str(d / "cache"), workers=1)


def test_cli_takes_input_and_out_as_positionals(cv, tmp_path, capsys):
    from speechtune.cli import main
    args = ["--workers", "1", "--cache-dir", str(tmp_path / "c")]
    assert main(["prepare", str(cv), str(tmp_path / "o"), *args]) == 0
    assert json.loads((tmp_path / "o" / "stats.json").read_text())["format"] == "commonvoice"
    assert main(["prepare", "--hf-dataset", "x", str(tmp_path / "o2"), "--out", str(tmp_path / "o3")]) == 2
    assert "only an output folder" in capsys.readouterr().err
