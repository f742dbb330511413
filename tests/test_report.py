"""report/: the order of the per-clip diff in report.html."""
from __future__ import annotations

from speechtune.report.html import order_clips


def _clip(change, base_rate, tuned_rate, name):
    side = lambda rate: {"hyp": "", "hyp_norm": "a b", "errors": 0, "sub": 0, "del": 0, "ins": 0,  # noqa: E731
                         "error_rate": rate, "loop": False, "empty": False, "too_long": False}
    return {"audio": name, "source": name, "ref_norm": "a b", "units": 2, "change": change,
            "base": side(base_rate), "tuned": side(tuned_rate)}


def test_diff_table_lists_worse_clips_first():
    clips = [_clip(-3, 1, 0, "better3"), _clip(0, 0, 0, "same"), _clip(1, 0, .5, "worse1"),
             _clip(4, 0, 1, "worse4"), _clip(-1, .5, 0, "better1")]
    assert [c["audio"] for c in order_clips(clips)] == ["worse4", "worse1", "better3", "better1", "same"]
