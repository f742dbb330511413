import numpy as np
import pytest

from speechtune.errors import SpeechtuneError
from speechtune.synth import speak


def test_speak_english_is_16k_mono_float32_speech():
    wav = speak("The quick brown fox jumps over the lazy dog.")
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert 1.0 < len(wav) / 16000 < 5.0
    assert np.isfinite(wav).all() and 0.05 < np.abs(wav).max() <= 1.0


def test_speak_mandarin():
    wav = speak("今天天气很好，我们去公园散步。", lang="zh")
    assert len(wav) / 16000 > 1.0 and np.sqrt(np.mean(wav ** 2)) > 0.01


def test_speak_is_a_pure_function_of_its_arguments():
    a = speak("Same words every time.", voice="f3")
    speak("Something else in between.", voice="m1", rate=220)
    b = speak("Same words every time.", voice="f3")
    assert np.array_equal(a, b)


def test_voice_rate_and_pitch_change_the_audio():
    base = speak("Counting one two three four five.")
    slow = speak("Counting one two three four five.", rate=110)
    assert len(slow) > 1.3 * len(base)
    assert not np.array_equal(speak("Counting one two three.", voice="f3"), speak("Counting one two three.", voice="m3"))
    high = speak("Counting one two three.", pitch=90)
    assert not np.array_equal(high, speak("Counting one two three.", pitch=10))


def test_unknown_voice_and_language_are_user_errors():
    with pytest.raises(SpeechtuneError, match="variant"):
        speak("hello", voice="nosuchvoice")
    with pytest.raises(SpeechtuneError, match="language"):
        speak("hello", lang="xx")
