"""`speechtune estimate` for a piper voice: sizes and CPU time from measured constants (plan/piper.py)."""
from __future__ import annotations

import json

import pytest


def test_a_piper_voice_is_estimated_from_its_sizes_and_the_measured_rate(tmp_path, capsys):
    from speechtune.cli import main
    from speechtune.plan.piper import CPU_MEASURED, estimate
    from speechtune.tts import bundled_voice_installed
    if not bundled_voice_installed():
        pytest.skip("the joe voice is not installed")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"audio": f"{i}.wav", "text": "x"}) + "\n"
                                                  for i in range(10)))
    e = estimate("joe", batch_size=4, clips=10, epochs=10)
    assert e.steps == 30 and 1.0 < e.static_gb < 1.1
    # 12 warm-up steps at the warm-up rate, 18 at the full rate
    assert e.cpu_hours == round((12 * CPU_MEASURED["s_per_warmup_step"] + 18 * CPU_MEASURED["s_per_step"]) / 3600, 2)
    assert estimate("joe", batch_size=8, clips=10, epochs=10).steps == 20
    assert main(["estimate", "--model", "joe", "--data", str(tmp_path), "--epochs", "10", "--batch-size", "4",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 30
