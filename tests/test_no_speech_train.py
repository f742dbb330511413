"""train --no-speech-ratio and the no-speech set in training's evaluations: the clips trained on are not the
ones evaluated, an empty transcript teaches <|endoftext|> (Whisper) or all blanks (CTC), and a checkpoint that
writes text on more non-speech clips than the base model is not guard_ok."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from speechtune.errors import SpeechtuneError
from tests.conftest import build_tiny_ctc


def _speech(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [(0.1 * rng.standard_normal(16000 * (2 + i))).astype(np.float32) for i in range(n)]


def test_training_clips_are_not_the_evaluation_set_and_repeat_exactly():
    from speechtune.data.nospeech import TRAIN_KINDS, no_speech_clips, training_no_speech_clip

    speech = _speech()
    evaluated = no_speech_clips(speech=speech)
    for seed in (0, 1234):  # 1234 is the evaluation set's own SEED: the training clips still differ
        clips = [training_no_speech_clip(i, seed, speech) for i in range(3 * len(TRAIN_KINDS))]
        assert {c.kind for c in clips} == {"silence", "noise", "hum", "tone", "music", "clicks", "reversed"}
        for c in clips:
            assert c.wav.dtype == np.float32 and len(c.wav) >= 16000 and np.abs(c.wav).max() <= 1.0
            assert np.abs(c.wav).max() > 0  # no digital silence: padded to 30 s it would be the set's clip
            assert not any(len(e.wav) == len(c.wav) and np.allclose(e.wav, c.wav) for e in evaluated), c.name
        again = training_no_speech_clip(5, seed, speech)  # clip i depends on (seed, i) only
        np.testing.assert_array_equal(again.wav, clips[5].wav)
    other = training_no_speech_clip(2, 1, speech)
    assert not np.array_equal(other.wav[:100], training_no_speech_clip(2, 0, speech).wav[:100])
    # reversed speech needs speech; without it the kinds go round without it
    assert "reversed" not in {training_no_speech_clip(i, 0).kind for i in range(len(TRAIN_KINDS))}


@pytest.mark.parametrize("multilingual", [False, True])
def test_an_empty_transcript_teaches_endoftext_right_after_the_prefix(tiny_whisper_dir, tiny_multilingual_dir,
                                                                       multilingual):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from speechtune.models.whisper import prefix_ids
    from speechtune.train.data import label_ids

    folder = tiny_multilingual_dir if multilingual else tiny_whisper_dir
    tok = WhisperProcessor.from_pretrained(folder).tokenizer
    gen = WhisperForConditionalGeneration.from_pretrained(folder).generation_config
    lang = "de" if multilingual else None
    for text in ("", "  "):
        assert label_ids(tok, gen, text, lang, 448) == prefix_ids(gen, lang)[1:] + [gen.eos_token_id]
    assert len(label_ids(tok, gen, "hello", lang, 448)) > len(prefix_ids(gen, lang))  # speech keeps its text


def test_ctc_empty_targets_give_a_finite_loss_with_gradients(tmp_path):
    import torch
    import transformers as tf

    from speechtune.families.ctc import setup_training
    from speechtune.train.config import TrainConfig
    from speechtune.train.data import collate_labels

    vocab = {"<pad>": 0, "|": 1, "a": 2, "b": 3}
    model = tf.AutoModelForCTC.from_pretrained(build_tiny_ctc(tmp_path / "m", vocab=vocab))
    setup_training(TrainConfig(mode="full"), model)  # mean reduction, zero_infinity
    audio = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    for rows in ([[2, 3, 1, 2], []], [[], []]):  # one clip without speech; a whole batch of them
        model.zero_grad()
        loss = model(input_values=audio, labels=collate_labels(rows)).loss
        assert torch.isfinite(loss) and loss > 0, rows
        loss.backward()
        assert model.lm_head.weight.grad.abs().sum() > 0  # all-blank is a target the model learns


def test_a_checkpoint_writing_on_more_non_speech_clips_is_not_guard_ok(monkeypatch):
    from speechtune.train import loop
    from speechtune.train.config import TrainConfig
    from speechtune.train.recipe import guard_note

    # the judgement alone: what the model decodes is given (decoding itself is covered end to end)
    scores = [(0, 0.5, 0.1, 1), (10, 0.2, 0.1, 1), (20, 0.1, 0.1, 3)]  # step, valid, guard, clips with text
    now = {}

    def fake_eval(whisper, es, batch_size, safeguards):
        return {"error_rate": now[es["name"]], "metric": "wer"}

    def fake_no_speech(whisper, es, batch_size, safeguards):
        return {"no_speech_words": 2 * now["clips"], "no_speech_clips_with_text": now["clips"],
                "no_speech_written": {"digital_silence": "you"}}
    monkeypatch.setattr(loop, "evaluate", fake_eval)
    monkeypatch.setattr(loop, "evaluate_no_speech", fake_no_speech)
    evals = {"valid": {"name": "valid"}, "guard": {"name": "guard"}, "no_speech": {"no_speech": True}}
    logged = []
    for guard in ("g.jsonl", None):
        cfg = TrainConfig(guard=guard, guard_threshold=1.0)
        state = {"evals": [], "best": None, "best_any": None, "bad_evals": 0}
        for step, valid, g, clips in scores:
            now.update(valid=valid, guard=g, clips=clips)
            rec = loop.run_evals(None, step, evals, cfg, state, logged.append)
            if step:
                loop.select_checkpoint(state, rec, cfg)
        last = state["evals"][-1]
        assert (last["no_speech_words"], last["no_speech_clips_with_text"], last["no_speech_ok"]) == (6, 3, False)
        assert last["guard_speech_ok"] and last["guard_ok"] == (guard is None)
        assert state["best"] == (10 if guard else 20)
        assert "no-speech: 6 words on 3 clips (more than base)" in loop.format_eval(last)
        note = guard_note(cfg, state, state["best"])
        if guard:  # the summary says why step 20, the best valid score, was not chosen
            assert "1 checkpoint(s) wrote text on more of the no-speech set's clips than the base model (1)" in note
            assert "step 20 (3)" in note
    assert logged[-1]["no_speech_written"] == {"digital_silence": "you"} and logged[-1]["event"] == "eval"


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_a_ratio_outside_0_to_1_is_one_line_error(tiny_whisper_dir, tmp_path, ratio):
    from speechtune.train.config import TrainConfig
    from speechtune.train.recipe import train

    d = tmp_path / "d"
    d.mkdir()
    (d / "train.jsonl").write_text(json.dumps({"audio": "x.wav", "text": "x"}) + "\n")
    with pytest.raises(SpeechtuneError, match="no_speech_ratio: must be at least 0 and below 1"):
        train(TrainConfig(model=str(tiny_whisper_dir), data=str(d), out=str(tmp_path / "o"), no_speech_ratio=ratio))
    assert not (tmp_path / "o").exists()  # refused before anything is written


def _prepared(d: Path, valid: int = 1) -> Path:
    """Four synthesized clips to train on, the first `valid` of them also the valid split."""
    from speechtune.audio import write_wav
    from speechtune.synth import speak

    (d / "audio").mkdir(parents=True)
    rows = []
    for i, text in enumerate(["stop the pump now", "open the valve", "check the level", "close it"]):
        wav = speak(text, "en")
        write_wav(d / "audio" / f"{i}.wav", wav)
        rows.append({"audio": f"audio/{i}.wav", "text": text, "duration": len(wav) / 16000, "language": "en"})
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:valid]))
    return d


def test_ctc_trains_with_non_speech_clips(tmp_path):
    from speechtune.train.config import TrainConfig
    from speechtune.train.recipe import train

    d = _prepared(tmp_path / "data")
    model = build_tiny_ctc(tmp_path / "m", "wav2vec2")
    out = train(TrainConfig(model=str(model), data=str(d), out=str(tmp_path / "o"), batch_size=3, max_steps=4,
                            lr=1e-2, warmup_ratio=0.0, eval_every=4, eval_batch_size=4, tensorboard=False,
                            log_every=1, no_speech_ratio=0.5), progress=False)
    summary = json.loads((Path(out) / "training_summary.json").read_text())
    assert summary["clips"] == {"train": 4, "mixed": 0, "no_speech": 2} and summary["steps"] == 4
    assert all(np.isfinite(json.loads(l)["loss"]) for l in (Path(out) / "train_log.jsonl").read_text().splitlines()
               if json.loads(l)["event"] == "train")
    assert summary["base"]["no_speech_clips_with_text"] is not None


@pytest.mark.e2e
def test_evaluations_decode_the_no_speech_set_as_evaluate_does(tmp_path, capsys):
    """Real tiny.en: the base model's and every eval's words on the no-speech set (with valid's clips
    reversed) are recorded, printed and judged; the saved model, decoded with the same options, writes what
    the chosen checkpoint's eval counted."""
    from speechtune.data.nospeech import no_speech_clips
    from speechtune.manifest import read_manifest
    from speechtune.metrics.hallucination import no_speech_summary
    from speechtune.runtimes import DecodingOptions, load_runtime, transcribe_many
    from speechtune.train.config import TrainConfig
    from speechtune.train.data import read_wav
    from speechtune.train.recipe import train

    # one step and two evaluations (each decodes 13 clips of 30 s windows: most of this test's time); the
    # guard's part of the judgement is tests above, on given scores
    d = _prepared(tmp_path / "data", valid=2)
    out = train(TrainConfig(model="tiny.en", data=str(d), out=str(tmp_path / "o"), batch_size=4, max_steps=1,
                            lr=1e-5, eval_every=1, eval_batch_size=16, eval_safeguards=False, tensorboard=False,
                            data_workers=0), progress=False)
    assert "no-speech: " in capsys.readouterr().out  # the base model's eval line
    s = json.loads((Path(out) / "training_summary.json").read_text())
    assert [e["step"] for e in s["evals"]] == [0, 1] and s["best_step"] == 1
    base = s["evals"][0]
    assert base["no_speech_clips_with_text"] >= 1  # tiny.en writes "you" on digital silence
    for e in s["evals"]:
        assert e["no_speech_words"] >= e["no_speech_clips_with_text"]
        assert e["no_speech_ok"] == (e["no_speech_clips_with_text"] <= base["no_speech_clips_with_text"])
    assert s["base"]["no_speech_words"] == base["no_speech_words"]
    clips = no_speech_clips(speech=[read_wav(r) for r in read_manifest(d / "valid.jsonl")])
    texts = transcribe_many(load_runtime(out, device="cpu"), [c.wav for c in clips],
                            DecodingOptions(batch_size=1, safeguards=False), ["en"] * len(clips))
    ns = no_speech_summary(texts)
    best = s["best"]
    assert (ns["words"], ns["clips_with_text"]) == (best["no_speech_words"], best["no_speech_clips_with_text"])
