"""Serving under load, and the int8 exports (CTranslate2, ONNX) against Hugging Face generate.

1. Export MODEL (default the bundled tiny.en) to CTranslate2 int8.
2. Single-stream baseline: one faster-whisper WhisperModel on that folder transcribes the files one after
   another (it decodes each file, as the server decodes each upload), with the server's decoding settings (greedy, no VAD, no timestamps, no previous-text
   conditioning), so the only difference is concurrency and batching.
3. Load: `speechtune serve` in its own process on a free loopback port; CLIENTS threads post the same clips
   through the OpenAI-compatible endpoint until REQUESTS answers came back. Throughput is audio seconds
   answered per wall second; latency is per request, upload to answer.
4. RTF of each int8 export (CTranslate2, ONNX) vs HF `generate` in fp32 on the manifest (all greedy, batch 1
   and 8), with WER of each: the parity check of `speechtune export`, with no allowance enforced, each in a
   process of its own.

    python benchmarks/serve_load.py [--model tiny.en] [--data ../shared/realspeech/en.jsonl]
        [--clients 16] [--requests 88] [--workers 2] [--out bench-out/serve_load.json]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent


def pct(xs, q):
    return float(np.percentile(np.array(xs), q)) if xs else float("nan")


def baseline(ct2_dir: Path, files: list[Path], durations: dict, repeats: int) -> dict:
    """Each file path straight to WhisperModel.transcribe, which decodes it (as the server decodes uploads)."""
    from faster_whisper import WhisperModel
    model = WhisperModel(str(ct2_dir), device="cpu", compute_type="int8", cpu_threads=os.cpu_count() or 1)
    opts = dict(beam_size=1, vad_filter=False, without_timestamps=True, condition_on_previous_text=False,
                temperature=0.0)
    list(model.transcribe(str(files[0]), **opts)[0])  # warm-up
    lat, audio = [], 0.0
    t0 = time.perf_counter()
    for _ in range(repeats):
        for f in files:
            t = time.perf_counter()
            list(model.transcribe(str(f), **opts)[0])
            lat.append(time.perf_counter() - t)
            audio += durations[f]
    wall = time.perf_counter() - t0
    return {"requests": len(lat), "audio_s": round(audio, 2), "wall_s": round(wall, 2),
            "throughput_audio_s_per_s": audio / wall, "p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "errors": 0}


def load(url: str, files: list[Path], clients: int, requests: int, durations: dict) -> dict:
    lock = threading.Lock()
    state = {"next": 0}
    lat, errors, audio = [], [], [0.0]

    def client():
        with httpx.Client(timeout=600) as http:
            while True:
                with lock:
                    i = state["next"]
                    if i >= requests:
                        return
                    state["next"] += 1
                path = files[i % len(files)]
                t = time.perf_counter()
                try:
                    r = http.post(url + "/v1/audio/transcriptions", data={"model": "whisper-1"},
                                  files={"file": (path.name, path.read_bytes())})
                    ok = r.status_code == 200
                except httpx.HTTPError as e:
                    ok, r = False, e
                with lock:
                    if ok:
                        lat.append(time.perf_counter() - t)
                        audio[0] += durations[path]
                    else:
                        errors.append(str(getattr(r, "status_code", r)))

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - t0
    metrics = httpx.get(url + "/metrics").text
    batch = {ln.split()[0]: float(ln.split()[1]) for ln in metrics.splitlines()
             if ln.startswith("speechtune_batch_size_sum") or ln.startswith("speechtune_batch_size_count")}
    return {"requests": len(lat) + len(errors), "clients": clients, "audio_s": round(audio[0], 2),
            "wall_s": round(wall, 2), "throughput_audio_s_per_s": audio[0] / wall, "p50_s": pct(lat, 50),
            "p95_s": pct(lat, 95), "errors": len(errors), "error_kinds": sorted(set(errors)),
            "mean_batch": batch.get("speechtune_batch_size_sum", 0) / max(batch.get("speechtune_batch_size_count", 1), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "realspeech" / "en.jsonl"))
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=88, help="requests in the load run (default: 2 passes)")
    ap.add_argument("--batch-size", type=int, default=8, help="server batch size (default: 8)")
    ap.add_argument("--workers", type=int, default=2, help="server model workers (default: 2)")
    ap.add_argument("--skip-rtf", action="store_true", help="skip the HF vs int8 RTF comparison")
    ap.add_argument("--rtf-batch-sizes", type=int, nargs="+", default=[1, 8],
                    help="batch sizes of the HF vs int8 RTF comparison (default: 1 8)")
    ap.add_argument("--out", default="bench-out/serve_load.json")
    args = ap.parse_args()

    from speechtune.audio import load_audio
    from speechtune.export import export
    from speechtune.manifest import read_manifest
    from speechtune.serve.recipe import start_subprocess

    rows = read_manifest(args.data)
    files = [Path(r["audio"]) for r in rows]
    wavs = [load_audio(f) for f in files]
    durations = {f: len(w) / 16000 for f, w in zip(files, wavs)}
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
                         f"{os.getloadavg()[0]:.2f} at start", "model": args.model, "data": args.data,
              "clips": len(rows), "audio_s": round(sum(durations.values()), 2)}
    with tempfile.TemporaryDirectory() as tmp:
        ct2 = Path(tmp) / "ct2-int8"
        summary = export(args.model, "ct2", ct2, quantization="int8")
        result["export_size_mb"] = summary["size_mb"]
        repeats = max(1, round(args.requests / len(files)))
        print(f"single stream: faster-whisper, {repeats} pass(es) over {len(files)} clips ...", flush=True)
        result["single_stream"] = baseline(ct2, files, durations, repeats)
        print(f"load: {args.clients} clients, {args.requests} requests, {args.workers} worker(s) ...", flush=True)
        result["server_workers"], result["server_batch_size"] = args.workers, args.batch_size
        server = start_subprocess(ct2, args=["--batch-size", str(args.batch_size), "--max-queue", "256",
                                                 "--workers", str(args.workers)],
                                  log=Path(tmp) / "server.log")
        try:
            load(server.url, files[:4], 4, 8, durations)  # warm-up
            result["server"] = load(server.url, files, args.clients, args.requests, durations)
        finally:
            server.stop()
        # The machine is shared: a second baseline after the load run brackets it in time.
        print("single stream again ...", flush=True)
        result["single_stream_after"] = baseline(ct2, files, durations, repeats)
        single = (result["single_stream"]["throughput_audio_s_per_s"]
                  + result["single_stream_after"]["throughput_audio_s_per_s"]) / 2
        result["speedup_server_vs_single"] = result["server"]["throughput_audio_s_per_s"] / single
        if not args.skip_rtf:
            result["rtf"] = []
            for bs in args.rtf_batch_sizes:
                for fmt in ("ct2", "onnx"):
                    print(f"RTF: HF generate fp32 vs {fmt} int8 on the manifest, batch {bs} ...", flush=True)
                    summary = parity_run(args.model, fmt, args.data, bs, Path(tmp))
                    p = summary["parity"]
                    result[f"{fmt}_size_mb"] = summary["size_mb"]
                    result["rtf"].append({"batch_size": bs, "format": fmt, "hf_fp32": p["pytorch"],
                                          "int8": p["exported"], "speedup": p["pytorch"]["rtf"] / p["exported"]["rtf"],
                                          "metric": p["metric"]})
    result["load_average_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))


def parity_run(model: str, fmt: str, data: str, batch_size: int, tmp: Path) -> dict:
    """`speechtune export --data` in a process of its own: HF generate fp32, then the int8 export, greedy, on the
    manifest. In this process, after the load run and faster-whisper, the ONNX export had read about 25% slower
    than alone while HF read the same; a fresh process gives both sides the same start."""
    out = tmp / f"{fmt}-int8-b{batch_size}"
    subprocess.run([sys.executable, "-m", "speechtune", "export", model, "--format", fmt, "--quantization", "int8",
                    "--out", str(out), "--data", data, "--batch-size", str(batch_size), "--max-wer-delta", "1e9"],
                   check=True, capture_output=True)
    return json.loads((out / "export_summary.json").read_text())


def report(r: dict) -> str:
    s, s2, v = r["single_stream"], r["single_stream_after"], r["server"]
    lines = [f"machine: {r['machine']}; load average {r['load_average_end']:.2f} at the end",
             f"data: {r['data']} ({r['clips']} clips, {r['audio_s']} s of audio); model {r['model']} -> CT2 int8 "
             f"({r['export_size_mb']['export']} MB)", "",
             "| run | requests | audio-s/s | p50 latency s | p95 latency s | errors |", "|---|---:|---:|---:|---:|---:|",
             f"| faster-whisper WhisperModel, one after another (before) | {s['requests']} | "
             f"{s['throughput_audio_s_per_s']:.2f} | {s['p50_s']:.2f} | {s['p95_s']:.2f} | {s['errors']} |",
             f"| faster-whisper WhisperModel, one after another (after) | {s2['requests']} | "
             f"{s2['throughput_audio_s_per_s']:.2f} | {s2['p50_s']:.2f} | {s2['p95_s']:.2f} | {s2['errors']} |",
             f"| speechtune serve, {v['clients']} concurrent clients, {r['server_workers']} worker(s), "
             f"batch <= {r['server_batch_size']} (mean {v['mean_batch']:.1f}) | "
             f"{v['requests']} | {v['throughput_audio_s_per_s']:.2f} | {v['p50_s']:.2f} | {v['p95_s']:.2f} | "
             f"{v['errors']} |", "",
             f"server throughput / single stream (mean of before and after): {r['speedup_server_vs_single']:.2f}x "
             "(target >= 1.5x)"]
    if r.get("rtf"):
        m = r["rtf"][0]["metric"].upper()
        lines += ["", f"ONNX int8 export: {r['onnx_size_mb']['export']} MB; each row: `speechtune export --data` "
                  "in a process of its own", "",
                  f"| batch | int8 export | HF generate fp32 RTF | int8 RTF | int8 speed-up (target >= 2x) | HF {m} "
                  f"| int8 {m} |", "|---:|---|---:|---:|---:|---:|---:|"]
        for t in r["rtf"]:
            lines.append(f"| {t['batch_size']} | {t['format']} | {t['hf_fp32']['rtf']:.3f} | {t['int8']['rtf']:.3f} | "
                         f"{t['speedup']:.2f}x | {100 * t['hf_fp32']['error_rate']:.2f}% | "
                         f"{100 * t['int8']['error_rate']:.2f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
