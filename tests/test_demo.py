"""The capstone: `speechtune demo` at a reduced size, real tiny.en, every step real (no mocks)."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


def test_small_demo_improves_and_serves(tmp_path):
    from speechtune.demo import run_demo

    report = run_demo("en", tmp_path / "demo", size="small")
    assert report["verdict"] == "improved", report["verdict_line"]
    assert report["tuned"] < report["base"] / 2
    assert report["ci95"][1] < 0  # the whole interval of the change is an improvement
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert summary["served"]["text"].strip()
    # compare's hallucination checks, base vs tuned: loops, the no-speech set, recall of the unknown terms
    assert {name: set(v) for name, v in summary["hallucination"]["loops"].items()} == \
        {"test": {"base", "tuned"}, "guard": {"base", "tuned"}}
    ns = summary["no_speech"]
    assert ns["clips"] == 14 and {"clips", "clips_with_text", "words"} <= set(ns["base"]) == set(ns["tuned"])
    terms = summary["terms"]
    assert terms["chosen"] == "base_never_wrote" and terms["terms"] > 0 and terms["base"] == 0.0
    assert terms["tuned"] > terms["base"]  # it learnt some of the drug names the base never wrote
    for key in ("model", "report", "export"):
        assert (tmp_path / "demo" / summary["paths"][key].split("/demo/")[-1]).exists()
    assert (tmp_path / "demo" / "report" / "report.html").stat().st_size > 10_000
    assert (tmp_path / "demo" / "prepared" / "rejects.jsonl").exists()
