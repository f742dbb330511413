"""One long upload against `speechtune serve`: the server's peak memory, and short requests' latency meanwhile.

1. `speechtune serve MODEL --max-audio-seconds 3600` in its own process (CT2 int8, the default runtime).
2. Idle: SHORT requests of one short clip, one after another; their latency (upload to answer).
3. One long upload (an hour by default: six synthesized sentences with pauses, repeated, as FLAC; or
   digital silence), with the
   same short requests sent one after another while it decodes. The server's peak RSS during the long job
   comes from the kernel (VmHWM, reset with clear_refs before the upload), so no sample is missed.
4. The anchor, in a process of its own: faster-whisper's `WhisperModel.transcribe` on the same file with the
   same settings, which decodes the whole recording into memory first; its peak RSS minus its RSS after
   loading the model.

    python benchmarks/serve_long.py [--model tiny.en] [--minutes 60] [--kind speech|silence] [--short 20] [--out bench-out/serve_long.json]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

URL = "/v1/audio/transcriptions"
SENTENCES = ("The quick brown fox jumps over the lazy dog.", "Please restart the server before noon.",
             "She sells sea shells by the sea shore.", "We will meet at the station tomorrow morning.",
             "Turn left at the second traffic light.", "The weather today is cold and windy.")


def talk(minutes: float) -> np.ndarray:
    from speechtune.synth import speak
    gap = np.zeros(int(0.6 * 16000), np.float32)
    one = np.concatenate([np.concatenate([speak(s), gap]) for s in SENTENCES])
    n = int(minutes * 60 * 16000)
    return np.tile(one, n // len(one) + 1)[:n]


def flac(wav: np.ndarray) -> bytes:
    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, wav, 16000, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM back to the current RSS


def post(url: str, name: str, data: bytes, timeout: float = 3600) -> tuple[float, dict]:
    t = time.perf_counter()
    r = httpx.post(url + URL, files={"file": (name, data)}, data={"model": "m"}, timeout=timeout)
    r.raise_for_status()
    return time.perf_counter() - t, r.json()


def shorts(url: str, clip: bytes, n: int, until=None) -> list[float]:
    """Latencies of up to n short requests sent one after another (stopping early once `until()` is true)."""
    out = []
    for _ in range(n):
        if until and until():
            break
        out.append(post(url, "short.wav", clip)[0])
    return out


def pct(xs, q):
    return round(float(np.percentile(xs, q)), 3) if xs else None


def anchor(model: str, path: Path) -> dict:
    """faster-whisper on the whole file, in this (fresh) process: peak RSS over the RSS with the model loaded."""
    from faster_whisper import WhisperModel

    from speechtune.serve.worker import prepare_model
    m = WhisperModel(str(prepare_model(model)), device="cpu", compute_type="int8")
    list(m.transcribe(np.zeros(16000, np.float32), beam_size=1, without_timestamps=True)[0])
    loaded = rss_mb(os.getpid())
    reset_peak(os.getpid())
    t = time.perf_counter()
    segments, _ = m.transcribe(str(path), beam_size=1, vad_filter=False, without_timestamps=True,
                               condition_on_previous_text=False, temperature=0.0)
    text = " ".join(s.text for s in segments)
    return {"loaded_rss_mb": round(loaded, 1), "peak_rss_mb": round(rss_mb(os.getpid(), "VmHWM"), 1),
            "wall_s": round(time.perf_counter() - t, 1), "words": len(text.split())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--kind", choices=("speech", "silence"), default="speech",
                    help="the long upload: synthesized talk, or digital silence (the issue's 176 KB hour)")
    ap.add_argument("--short", type=int, default=20, help="short requests, idle and during the long job")
    ap.add_argument("--no-anchor", action="store_true")
    ap.add_argument("--anchor-only", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path("bench-out/serve_long.json"))
    args = ap.parse_args()
    if args.anchor_only:
        print(json.dumps(anchor(args.model, args.anchor_only)))
        return 0

    from speechtune.audio import write_wav
    from speechtune.serve.recipe import start_subprocess
    from speechtune.synth import speak
    tmp = Path(tempfile.mkdtemp(prefix="serve-long-"))
    long_path = tmp / "long.flac"
    wav = talk(args.minutes) if args.kind == "speech" else np.zeros(int(args.minutes * 60 * 16000), np.float32)
    long_path.write_bytes(flac(wav))
    del wav
    write_wav(tmp / "short.wav", speak("The quick brown fox jumps over the lazy dog."))
    clip = (tmp / "short.wav").read_bytes()
    result = {"model": args.model, "kind": args.kind, "minutes": args.minutes, "upload_mb": round(long_path.stat().st_size / 2**20, 2),
              "cpus": os.cpu_count()}
    with start_subprocess(args.model, args=["--max-audio-seconds", str(int(args.minutes * 60) + 60),
                                            "--max-upload-mb", "250"]) as s:
        pid = s.proc.pid
        post(s.url, "short.wav", clip)  # warm-up
        idle = shorts(s.url, clip, args.short)
        before = rss_mb(pid)
        reset_peak(pid)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            job = pool.submit(post, s.url, "long.flac", long_path.read_bytes())
            time.sleep(2)  # the long job is in the model
            busy = shorts(s.url, clip, args.short, until=job.done)
            seconds, body = job.result()
        result["server"] = {"rss_before_mb": round(before, 1), "peak_rss_mb": round(rss_mb(pid, "VmHWM"), 1),
                            "long_wall_s": round(seconds, 1), "long_rtf": round(seconds / (args.minutes * 60), 4),
                            "words": len(body["text"].split()),
                            "short_idle": {"n": len(idle), "p50_s": pct(idle, 50), "p95_s": pct(idle, 95)},
                            "short_during_long": {"n": len(busy), "p50_s": pct(busy, 50), "p95_s": pct(busy, 95)}}
        result["server"]["peak_over_before_mb"] = round(result["server"]["peak_rss_mb"] - before, 1)
    if not args.no_anchor:
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--anchor-only", str(long_path)],
                             capture_output=True, text=True, check=True).stdout
        a = json.loads(out.strip().splitlines()[-1])
        result["faster_whisper_whole_file"] = a | {"peak_over_loaded_mb": round(a["peak_rss_mb"] - a["loaded_rss_mb"], 1)}
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
