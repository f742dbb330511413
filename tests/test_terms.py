"""metrics/terms.py: term recall on exact strings, the terms chosen without a list, and the terms file."""
from __future__ import annotations

import pytest

from speechtune.errors import SpeechtuneError
from speechtune.metrics.terms import (compare_terms, count, read_terms, recall, term_counts, unknown_terms)

REFS = ["Restart Envoy before you upgrade Grafana.", "Scale the kubelet, then restart Envoy.",
        "The weather is nice today."]
BASE = ["restart envoy before you upgrade graphana", "scale the cube let then restart and boy",
        "the weather is nice today"]
TUNED = ["Restart Envoy before you upgrade Grafana!", "Scale the KUBELET, then restart Envoy Envoy.",
         "the weather is nice today"]
EN = ["en"] * 3


def test_count_matches_whole_words_and_does_not_overlap():
    assert count("gin", "the engine gin and gin tonic") == 2
    assert count("atrial fibrillation", "atrial fibrillation then atrial fibrillation again") == 2
    assert count("the term", "the term the term the term") == 3
    assert count("a a", "a a a") == 1  # non-overlapping, as str.count
    assert count("fibrillation atrial", "atrial fibrillation") == 0
    assert count("", "anything") == 0


def test_count_matches_characters_in_chinese_spaces_ignored():
    assert count("阿莫西林", "患者服用阿莫西林 阿莫 西林", characters=True) == 2
    assert count("西林", "阿莫西林", characters=True) == 1
    assert count("西林", "阿莫西林", characters=False) == 0  # as words, the run is one word


def test_recall_is_capped_at_the_references_count_and_ignores_case_and_punctuation():
    counts = term_counts(["Envoy", "Grafana", "kubelet"], REFS, TUNED, EN)
    # clip 2 writes Envoy twice where the reference says it once: one hit, not two
    assert counts == [[(1, 1), (1, 1), (0, 0)], [(1, 1), (0, 0), (1, 1)], [(0, 0), (0, 0), (0, 0)]]
    assert recall(counts) == 1.0
    assert recall(term_counts(["Envoy", "Grafana", "kubelet"], REFS, BASE, EN)) == pytest.approx(1 / 4)
    assert recall(term_counts(["sunshine"], REFS, BASE, EN)) is None


def test_chinese_terms_match_on_characters_after_the_chinese_normaliser():
    # traditional characters fold to simplified, punctuation goes
    refs, hyps = ["患者服用阿莫西林治疗心动过速。"], ["患者服用阿莫西林，治療心動過速"]
    assert term_counts(["阿莫西林", "心动过速", "布洛芬"], refs, hyps, ["zh"]) == [[(1, 1), (1, 1), (0, 0)]]


def test_unknown_terms_are_the_reference_words_the_base_never_wrote():
    assert unknown_terms(REFS, BASE, EN) == ["grafana", "kubelet"]
    # "you" is a reference word the base did write; "the" and "is" too; short words are never chosen
    assert unknown_terms(["it is ok"], ["nothing"], ["en"]) == []
    assert unknown_terms(["患者服用阿莫西林"], ["患者服用阿莫西"], ["zh"]) == ["林"]


def test_compare_terms_gives_both_recalls_a_paired_interval_and_a_per_term_table():
    r = compare_terms(["Envoy", "Grafana", "kubelet", "sunshine"], REFS, BASE, TUNED, EN, n_resamples=1000)
    assert (r["terms"], r["occurrences"], r["clips"]) == (4, 4, 2)
    assert r["base"]["recall"] == pytest.approx(0.25) and r["tuned"]["recall"] == 1.0
    assert r["delta"] == pytest.approx(0.75)
    low, high = r["ci95"]
    assert 0 < low <= r["delta"] <= high <= 1
    assert r["tuned"]["ci95"] == [1.0, 1.0]
    by_term = {t["term"]: t for t in r["per_term"]}
    assert by_term["Envoy"] == {"term": "Envoy", "occurrences": 2, "base_hits": 1, "tuned_hits": 2,
                                "base_recall": 0.5, "tuned_recall": 1.0}
    assert by_term["sunshine"]["occurrences"] == 0 and by_term["sunshine"]["base_recall"] is None
    same = compare_terms(["Envoy"], REFS, BASE, BASE, EN, n_resamples=1000)
    assert same["delta"] == 0 and same["p_value"] == 1.0 and same["verdict"] == "no significant change"
    none = compare_terms(["sunshine"], REFS, BASE, TUNED, EN)
    assert none["base"]["recall"] is None and none["ci95"] is None


def test_terms_file_skips_blank_lines_and_comments(tmp_path):
    f = tmp_path / "terms.txt"
    f.write_text("# infrastructure\nEnvoy\n\n  Grafana  \natrial fibrillation\n阿莫西林\nEnvoy\n", encoding="utf-8")
    assert read_terms(f) == ["Envoy", "Grafana", "atrial fibrillation", "阿莫西林"]


@pytest.mark.parametrize("content, message", [(None, "terms file not found"), (b"\xff\xfe\x00bad", "not UTF-8"),
                                              (b"# only a comment\n\n", "no terms")])
def test_a_bad_terms_file_is_a_one_line_error_naming_it(tmp_path, content, message):
    f = tmp_path / "terms.txt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(SpeechtuneError, match=message) as e:
        read_terms(f)
    assert str(f) in str(e.value) and "\n" not in str(e.value)
