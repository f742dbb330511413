"""data/nospeech.py: the built-in non-speech set, and the word count compare reports on it."""
from __future__ import annotations

import numpy as np

from speechtune.audio import SAMPLE_RATE
from speechtune.data.nospeech import CLIP_SECONDS, MAX_REVERSED, no_speech_clips
from speechtune.metrics.hallucination import no_speech_summary, written_words


def _dbfs_rms(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def test_the_set_is_deterministic_named_and_at_its_levels():
    clips = no_speech_clips()
    again = no_speech_clips()
    assert len(clips) == 11 and len({c.name for c in clips}) == 11
    assert all(a.name == b.name and np.array_equal(a.wav, b.wav) for a, b in zip(clips, again))
    assert {c.kind for c in clips} == {"silence", "noise", "hum", "tone", "music", "clicks"}
    for c in clips:
        assert c.wav.dtype == np.float32 and c.wav.ndim == 1 and np.isfinite(c.wav).all()
        assert np.abs(c.wav).max() < 1.0  # nothing clips
        if c.name.endswith("dBFS"):
            want = float(c.name.rsplit("_", 1)[1][:-4])
            assert abs(_dbfs_rms(c.wav) - want) < 0.01, c.name
    by_name = {c.name: c for c in clips}
    assert len(by_name["digital_silence"].wav) == CLIP_SECONDS * SAMPLE_RATE
    assert not by_name["digital_silence"].wav.any() and len(by_name["digital_silence_0.05s"].wav) == 800


def test_given_speech_adds_at_most_three_reversed_clips():
    speech = [np.linspace(-0.5, 0.5, 1600 + i, dtype=np.float32) for i in range(5)]
    clips = no_speech_clips(speech)
    rev = [c for c in clips if c.kind == "reversed"]
    assert len(clips) == 11 + MAX_REVERSED and [c.name for c in rev] == [f"reversed_speech_{i}" for i in (1, 2, 3)]
    assert all(np.array_equal(c.wav, s[::-1]) for c, s in zip(rev, speech))


def test_words_written_count_characters_in_scripts_without_spaces():
    assert written_words("you") == 1 and written_words(" you you you ") == 3
    assert written_words(" .") == 0 and written_words("") == 0 and written_words("♪ ♪") == 0
    assert written_words("Thank you for watching!") == 4
    assert written_words("谢谢观看") == 4 and written_words("ご視聴ありがとう") == 8
    assert written_words("hello 你好") == 3


def test_no_speech_summary_counts_clips_with_text_and_words():
    assert no_speech_summary(["", " .", "you", "Thank you.", "字幕"]) == {"clips": 5, "clips_with_text": 3,
                                                                          "words": 5}
    assert no_speech_summary([]) == {"clips": 0, "clips_with_text": 0, "words": 0}
