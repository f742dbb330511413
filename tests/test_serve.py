"""`speechtune serve` on loopback: the official openai client, malformed uploads, load, API key, metrics,
a full queue, and graceful shutdown. Real models only: a random tiny Whisper exported to CT2 for the
protocol tests, the bundled tiny.en exported to CT2 int8 for the e2e ones."""
from __future__ import annotations

import concurrent.futures
import io
import re
import threading
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

from speechtune.audio import write_wav
from speechtune.serve.recipe import start_server

URL = "/v1/audio/transcriptions"


@pytest.fixture(scope="session")
def random_ct2(tiny_whisper_dir, tmp_path_factory):
    from speechtune.export import export
    out = tmp_path_factory.mktemp("serve-random") / "ct2"
    export(tiny_whisper_dir, "ct2", out, quantization="float32")
    return out


@pytest.fixture(scope="session")
def tiny_en_ct2(tmp_path_factory):
    from speechtune.export import export
    out = tmp_path_factory.mktemp("serve-tiny-en") / "ct2"
    export("tiny.en", "ct2", out, quantization="int8")
    return out


@pytest.fixture(scope="session")
def clip(tmp_path_factory):
    from speechtune.synth import speak
    path = tmp_path_factory.mktemp("clips") / "fox.wav"
    write_wav(path, speak("The quick brown fox jumps over the lazy dog."))
    return path


def wav_bytes(wav, sr=16000, subtype="PCM_16", fmt="WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav, sr, subtype=subtype, format=fmt)
    return buf.getvalue()


def post(url, content: bytes = None, name="a.wav", data=None, **kw):
    files = {"file": (name, content)} if content is not None else None
    return httpx.post(url + URL, files=files, data=data or {"model": "whisper-1"}, timeout=120, **kw)


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


# Servers of the random model run without the decode-time safeguards: it fails every check, and decoding it
# at six temperatures tests nothing these protocol tests are about (test_safeguards.py tests those).
@pytest.fixture(scope="module")
def server(random_ct2):
    with start_server(random_ct2, safeguards=False, max_upload_mb=2, max_batch=4) as s:
        yield s


def test_health_reports_ready_and_backend(server):
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ready" and r.json()["backend"] == "ct2"


def _malformed(url: str, good: bytes) -> list[tuple[str, httpx.Response, int]]:
    t = np.arange(16000) / 16000
    nan_wav = wav_bytes(np.where(t < 0.5, 0.1, np.nan).astype(np.float32), subtype="FLOAT")
    header_only = wav_bytes(np.zeros(0, dtype=np.float32))
    big = good * (3 * 2**20 // len(good) + 1)  # over the 2 MB cap
    cases = [
        ("GET on the endpoint", httpx.get(url + URL), 405),
        ("PUT on the endpoint", httpx.put(url + URL, content=b"x"), 405),
        ("unknown path", httpx.post(url + "/v1/audio/translate", files={"file": ("a.wav", good)}), 404),
        ("no body, no content type", httpx.post(url + URL), 415),
        ("JSON instead of multipart", httpx.post(url + URL, json={"file": "a.wav"}), 415),
        ("multipart without a file", httpx.post(url + URL, data={"model": "whisper-1"},
                                                files={"other": ("x.txt", b"hi")}), 400),
        ("file sent as a text field", httpx.post(url + URL, data={"file": "a.wav", "model": "m"},
                                                 files={"other": ("x", b"x")}), 400),
        ("empty file", post(url, b""), 400),
        ("garbage bytes", post(url, b"\x00\x01garbage" * 50), 415),
        ("plain text file", post(url, b"hello, this is not audio\n" * 20, name="notes.txt"), 415),
        ("PNG image", post(url, b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, name="a.png"), 415),
        ("truncated WAV header", post(url, good[:20]), 415),
        ("WAV with no samples", post(url, header_only), 400),
        ("NaN samples", post(url, nan_wav), 400),
        ("upload over the cap", post(url, big), 413),
        ("bad response_format", post(url, good, data={"model": "m", "response_format": "xml"}), 400),
        ("temperature not a number", post(url, good, data={"model": "m", "temperature": "hot"}), 400),
        ("temperature out of range", post(url, good, data={"model": "m", "temperature": "5"}), 400),
        ("temperature NaN", post(url, good, data={"model": "m", "temperature": "nan"}), 400),
        ("unknown language", post(url, good, data={"model": "m", "language": "zz"}), 400),
        ("German for an English-only model", post(url, good, data={"model": "m", "language": "de"}), 400),
        ("prompt too long", post(url, good, data={"model": "m", "prompt": "word " * 1000}), 400),
        ("two files", httpx.post(url + URL, files=[("file", ("a.wav", good)), ("file", ("b.wav", good))]), 400),
        ("over the cap, streamed without a length", httpx.post(
            url + URL, content=iter([b'--abc\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n']
                                    + [good] * (3 * 2**20 // len(good) + 1)),
            headers={"content-type": "multipart/form-data; boundary=abc"}), 413),
        ("broken multipart body", httpx.post(url + URL, content=b"--xyz\r\nContent-Disposition: form-data; "
                                             b"name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF",
                                             headers={"content-type": "multipart/form-data; boundary=abc"}), 400),
    ]
    return cases


def test_malformed_requests_get_4xx_and_server_keeps_serving(server, clip):
    good = clip.read_bytes()
    cases = _malformed(server.url, good)
    assert len(cases) >= 20
    for what, r, status in cases:
        assert r.status_code == status, f"{what}: {r.status_code} {r.text[:200]}"
        if status != 405 or "json" in r.headers.get("content-type", ""):
            err = r.json()["error"]
            assert err["message"] and err["code"], what
    r = post(server.url, good)
    assert r.status_code == 200 and "text" in r.json()


def test_response_formats(server, clip):
    good = clip.read_bytes()
    # A set temperature skips the fallback ladder, which random weights would climb to the top every time.
    for fmt in ("text", "srt", "vtt"):
        r = post(server.url, good, data={"model": "m", "response_format": fmt, "temperature": "0.5"})
        assert r.status_code == 200, fmt
    v = post(server.url, good, data={"model": "m", "response_format": "verbose_json", "temperature": "0.5"}).json()
    assert v["duration"] == pytest.approx(sf.info(clip).duration, abs=0.01)
    assert {"segments", "language", "text"} <= set(v)
    vtt = post(server.url, good, data={"model": "m", "response_format": "vtt", "temperature": "0.5"}).text
    assert vtt.startswith("WEBVTT")


def test_long_audio_is_chunked(server, clip):
    from speechtune.audio import load_audio
    wav = np.concatenate([load_audio(clip)] * 14)  # ~38 s, past one 30 s window
    r = post(server.url, wav_bytes(wav, subtype="PCM_16", fmt="FLAC"), name="long.flac", data={"model": "m", "response_format": "verbose_json", "temperature": "0.5"})
    assert r.status_code == 200
    assert r.json()["duration"] > 30
    assert max(s["end"] for s in r.json()["segments"]) > 0


def test_metrics_counters_move(server, clip):
    before = httpx.get(server.url + "/metrics").text
    assert post(server.url, clip.read_bytes()).status_code == 200
    assert post(server.url, b"not audio at all").status_code == 415
    after = httpx.get(server.url + "/metrics").text
    ok = 'speechtune_requests_total{endpoint="/v1/audio/transcriptions",status="200"}'
    assert metric(after, ok) == metric(before, ok) + 1
    assert metric(after, "speechtune_audio_seconds_total") > metric(before, "speechtune_audio_seconds_total")
    err = 'speechtune_errors_total{type="undecodable"}'
    assert metric(after, err) == metric(before, err) + 1
    assert metric(after, "speechtune_request_latency_seconds_count") == \
        metric(before, "speechtune_request_latency_seconds_count") + 1
    assert "speechtune_queue_depth" in after


def test_api_key_enforced(random_ct2, clip, monkeypatch):
    with start_server(random_ct2, safeguards=False, api_key="s3cret") as s:
        assert post(s.url, clip.read_bytes()).status_code == 401
        r = post(s.url, clip.read_bytes(), headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert post(s.url, clip.read_bytes(), headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(s.url + "/health").status_code == 200  # probes need no key


class Gate:
    """The real runtime, held at a gate so a test can fill the queue deterministically."""

    def __init__(self, runtime):
        self.runtime, self.open, self.entered = runtime, threading.Event(), threading.Event()
        self.name, self.path, self.multilingual = runtime.name, runtime.path, runtime.multilingual

    def check_language(self, language):
        self.runtime.check_language(language)

    def transcribe_batch(self, *args):
        self.entered.set()
        assert self.open.wait(60)
        return self.runtime.transcribe_batch(*args)

    def transcribe(self, *args):
        self.entered.set()
        assert self.open.wait(60)
        return self.runtime.transcribe(*args)


def test_queue_full_gives_503_with_retry_after_then_recovers(random_ct2, clip):
    from speechtune.runtimes import load_runtime
    gate = Gate(load_runtime(random_ct2))
    good = clip.read_bytes()
    with start_server(random_ct2, safeguards=False, backend=gate, max_queue=1, max_batch=1) as s, \
            concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(post, s.url, good)
        assert gate.entered.wait(60)  # the worker holds job 1
        second = pool.submit(post, s.url, good)  # waits in the queue (size 1)
        deadline = time.monotonic() + 30
        while s.app.state.serve["worker"].depth() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        r = post(s.url, good)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        gate.open.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert post(s.url, good).status_code == 200


def test_graceful_shutdown_finishes_in_flight_request(random_ct2, clip):
    from speechtune.runtimes import load_runtime
    gate = Gate(load_runtime(random_ct2))
    s = start_server(random_ct2, safeguards=False, backend=gate)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pending = pool.submit(post, s.url, clip.read_bytes())
        assert gate.entered.wait(60)
        stopping = pool.submit(s.stop)
        time.sleep(0.5)
        gate.open.set()
        assert pending.result().status_code == 200
        stopping.result()
    with pytest.raises(httpx.ConnectError):
        httpx.get(s.url + "/health", timeout=2)


def test_two_model_workers_serve_concurrent_requests(random_ct2, clip):
    with start_server(random_ct2, safeguards=False, workers=2, max_batch=2) as s, concurrent.futures.ThreadPoolExecutor(6) as pool:
        codes = [r.status_code for r in pool.map(lambda _: post(s.url, clip.read_bytes()), range(6))]
        assert codes == [200] * 6
        assert len(s.app.state.serve["worker"]._threads) == 2


@pytest.mark.e2e
def test_openai_client_transcribes_and_16_concurrent_succeed(tiny_en_ct2, clip):
    from openai import OpenAI

    with start_server(tiny_en_ct2, api_key="k") as s:
        client = OpenAI(base_url=s.url + "/v1", api_key="k")
        with open(clip, "rb") as f:
            t = client.audio.transcriptions.create(model="whisper-1", file=f)
        assert "lazy dog" in t.text.lower()
        with open(clip, "rb") as f:
            v = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                   language="en", temperature=0.0)
        assert v.duration > 2 and v.segments and v.segments[0].end > v.segments[0].start
        with open(clip, "rb") as f:
            srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
        assert "-->" in srt

        def one(i):
            with open(clip, "rb") as f:
                return client.audio.transcriptions.create(model="whisper-1", file=f).text

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            texts = list(pool.map(one, range(16)))
        assert all("lazy dog" in x.lower() for x in texts)
        m = httpx.get(s.url + "/metrics").text
        assert metric(m, "speechtune_batch_size_sum") > metric(m, "speechtune_batch_size_count")  # batches > 1


@pytest.mark.e2e
def test_transcribe_cli_against_server(tiny_en_ct2, clip, capsys, tmp_path):
    from speechtune.cli import main
    with start_server(tiny_en_ct2, api_key="k") as s:
        assert main(["transcribe", str(clip), "--server", s.url, "--api-key", "k"]) == 0
        assert "lazy dog" in capsys.readouterr().out.lower()
        assert main(["transcribe", str(clip), "--server", s.url, "--format", "json", "--api-key", "k"]) == 0
        assert '"segments"' in capsys.readouterr().out
        bad = tmp_path / "bad.wav"
        bad.write_bytes(b"nope")
        assert main(["transcribe", str(clip), str(bad), "--server", s.url, "--api-key", "k"]) == 1
        err = capsys.readouterr().err
        assert "bad.wav" in err and "415" in err
        assert main(["transcribe", str(clip), "--server", s.url]) == 1  # no key
    assert main(["transcribe", str(clip), "--server", s.url, "--api-key", "k"]) == 1  # server gone
    assert "cannot reach" in capsys.readouterr().err


@pytest.mark.e2e
def test_any_spec_is_exported_to_ct2_in_cache_or_served_through_hf(clip, tiny_whisper_dir):
    from speechtune.models import cache_dir
    from speechtune.models.registry import bundled_ct2
    with start_server("tiny.en") as s:  # the shipped CT2 folder itself, int8 on load: no CT2 -> HF -> CT2
        h = httpx.get(s.url + "/health").json()
        assert h["backend"] == "ct2" and h["model"] == str(bundled_ct2("tiny.en"))
        assert s.app.state.serve["backend"].fw.model.compute_type == "int8_float32"
        assert "lazy dog" in post(s.url, clip.read_bytes()).json()["text"].lower()
    with start_server(tiny_whisper_dir) as s:  # an HF folder: exported once to CT2 int8 in the cache
        assert httpx.get(s.url + "/health").json()["model"].startswith(str(cache_dir() / "serve"))
    with start_server("tiny.en", kind="hf") as s:
        assert httpx.get(s.url + "/health").json()["backend"] == "hf"
        assert "lazy dog" in post(s.url, clip.read_bytes()).json()["text"].lower()
        r = post(s.url, clip.read_bytes(), data={"model": "m", "response_format": "verbose_json"})
        assert r.status_code == 200 and r.json()["segments"]


def test_an_upload_longer_than_the_cap_gets_413_quickly(random_ct2, tmp_path):
    import soundfile as sf
    flac = tmp_path / "hour.flac"
    with sf.SoundFile(str(flac), "w", samplerate=8000, channels=1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(60):
            f.write(np.zeros(8000 * 60, dtype=np.int16))
    with start_server(random_ct2, safeguards=False, max_audio_seconds=600) as s:
        t = time.perf_counter()
        r = post(s.url, flac.read_bytes())
        assert r.status_code == 413 and r.json()["error"]["code"] == "audio_too_long"
        assert "at most 600 s" in r.json()["error"]["message"] and time.perf_counter() - t < 5


class Recorder:
    """The real runtime, recording the length of every clip it is handed; its first call waits at a gate."""

    def __init__(self, runtime):
        self.runtime, self.open, self.entered, self.calls = runtime, threading.Event(), threading.Event(), []
        self.name, self.path, self.multilingual = runtime.name, runtime.path, runtime.multilingual

    def check_language(self, language):
        self.runtime.check_language(language)

    def _hold(self, kind, seconds):
        self.calls.append((kind, seconds))
        self.entered.set()
        assert self.open.wait(60)

    def transcribe_batch(self, wavs, *args):
        self._hold("batch", [len(w) / 16000 for w in wavs])
        return self.runtime.transcribe_batch(wavs, *args)

    def transcribe(self, wav, *args):
        self._hold("piece", len(wav) / 16000)
        return self.runtime.transcribe(wav, *args)


@pytest.fixture(scope="module")
def talk():
    """17 s of six sentences with pauses between them, as long recordings are."""
    from speechtune.synth import speak
    gap = np.zeros(int(0.6 * 16000), np.float32)
    return np.concatenate([np.concatenate([speak(s), gap]) for s in (
        "The quick brown fox jumps over the lazy dog.", "Please restart the server before noon.",
        "She sells sea shells by the sea shore.", "We will meet at the station tomorrow morning.",
        "Turn left at the second traffic light.", "The weather today is cold and windy.")])


def _long_flac(talk, seconds: float) -> bytes:
    return wav_bytes(np.tile(talk, int(seconds * 16000 / len(talk)) + 1)[:int(seconds * 16000)], fmt="FLAC")


def test_a_long_upload_is_decoded_a_piece_at_a_time_with_short_requests_served_between(tiny_en_ct2, clip, talk):
    """A 75 s upload reaches the model as pieces of at most 30 s cut in pauses (memory per request does
    not grow with the audio), and a short request sent while the first piece decodes is answered before the
    second piece."""
    from speechtune.runtimes import load_runtime
    from speechtune.runtimes.longform import PIECE_S
    rec = Recorder(load_runtime(tiny_en_ct2))
    with start_server(tiny_en_ct2, backend=rec) as s, concurrent.futures.ThreadPoolExecutor(2) as pool:
        long = pool.submit(post, s.url, _long_flac(talk, 75), "long.flac",
                           {"model": "m", "response_format": "verbose_json"})
        assert rec.entered.wait(60)  # the first piece is in the model
        short = pool.submit(post, s.url, clip.read_bytes())
        deadline = time.monotonic() + 30
        while s.app.state.serve["worker"].depth() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        rec.open.set()
        assert "lazy dog" in short.result().json()["text"].lower()
        r = long.result()
    assert r.status_code == 200, r.text
    pieces = [sec for kind, sec in rec.calls if kind == "piece"]
    assert [kind for kind, _ in rec.calls] == ["piece", "batch", "piece", "piece"]  # the short one went between
    assert all(p <= PIECE_S for p in pieces) and sum(pieces) == pytest.approx(75, abs=0.01)
    body = r.json()
    assert body["duration"] == pytest.approx(75, abs=0.01)
    starts = [seg["start"] for seg in body["segments"]]
    assert starts == sorted(starts) and starts[-1] > 65 and max(seg["end"] for seg in body["segments"]) <= 75
    text = body["text"].lower()  # each sentence is said 4 or 5 times; the cut fell in a pause
    assert min(text.count(w) for w in ("restart the server", "traffic light", "windy")) >= 4, text


def test_a_request_whose_client_went_away_is_cancelled_and_frees_the_model(random_ct2, clip, talk):
    from speechtune.runtimes import load_runtime
    rec = Recorder(load_runtime(random_ct2))
    with start_server(random_ct2, safeguards=False, backend=rec) as s:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            gone = pool.submit(httpx.post, s.url + URL, files={"file": ("long.flac", _long_flac(talk, 150))},
                               data={"model": "m"}, timeout=2)
            assert rec.entered.wait(60)
            with pytest.raises(httpx.ReadTimeout):
                gone.result()
        deadline = time.monotonic() + 10
        while not metric(httpx.get(s.url + "/metrics").text, "speechtune_cancelled_total") and time.monotonic() < deadline:
            time.sleep(0.1)
        rec.open.set()
        assert metric(httpx.get(s.url + "/metrics").text, "speechtune_cancelled_total") == 1
        assert post(s.url, clip.read_bytes()).status_code == 200  # the model is free again
        assert [kind for kind, _ in rec.calls] == ["piece", "batch"]  # no piece decoded after the client left
        assert s.app.state.serve["worker"].depth() == 0
