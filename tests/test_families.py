"""Model families: which family a spec belongs to, told without loading weights, and the one-line refusal
of a model no family trains."""
from __future__ import annotations

import json

import pytest

from speechtune.cli import main
from speechtune.errors import SpeechtuneError
from speechtune.families import FAMILIES, family_for, model_type


def test_whisper_forms_belong_to_the_whisper_family(tiny_whisper_dir, tmp_path):
    from tests.conftest import bundled_ct2_dir
    pt = tmp_path / "small.pt"
    pt.write_bytes(b"")
    for spec in ("tiny.en", "base", tiny_whisper_dir, bundled_ct2_dir("tiny.en"), pt):
        assert model_type(spec) == "whisper", spec
        assert family_for(spec).NAME == "whisper"
    assert model_type("someone/some-hub-model") is None  # told by the loader, offline or not


def test_every_family_states_its_interface():
    for family in FAMILIES:
        assert family.NAME and family.MODEL_TYPES and family.MODES and family.EXPORT_FORMATS
        assert family.MODES[0] in family.DEFAULT_LR and set(family.DEFAULT_LR) == set(family.MODES)
        # a family trains in speechtune's loop, or in a process of its own (piper: GPL-3.0) with train_apart
        names = (("train_apart", "resolve", "has_checkpoint", "claims") if hasattr(family, "train_apart") else
                 ("load", "resolve", "load_for_training", "default_lr", "clips", "setup_training",
                  "encoder_cache", "loss", "save"))
        for name in names:
            assert callable(getattr(family, name)), (family.NAME, name)


def test_a_model_no_family_trains_is_a_one_line_error(tmp_path, capsys):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SpeechtuneError, match=r"a bert model, which speechtune does not train") as e:
        family_for(folder)
    assert "whisper" in e.value.hint and "wav2vec2" in e.value.hint
    assert main(["train", "--model", str(folder), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "bert" in err
    (folder / "config.json").write_text("{not json")
    with pytest.raises(SpeechtuneError, match="not valid JSON"):
        family_for(folder)
