"""Run the whole story offline on a bundled model: data -> baseline -> fine-tune -> proof -> export -> serve.

    speechtune demo              # English medical terms on bundled tiny.en
    speechtune demo --lang zh    # Mandarin medical terms on bundled multilingual base
    speechtune demo --task tts   # a voice: recordings -> a trained FastSpeech2 voice -> proof -> serve (demo_tts.py)

Every step is the same Python function the CLI commands call; the output folder keeps what each wrote.
"""
from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

from .errors import SpeechtuneError
from .files import write_json, write_jsonl
from .steps import Steps, timing_rows

MODELS = {"en": "tiny.en", "zh": "base"}
# Sizes: "full" is the real demo; "small" keeps the same steps at a size CI can afford.
SIZES = {"full": dict(n_train=60, n_valid=6, n_test=20, renditions=2, epochs=5),
         "small": dict(n_train=40, n_valid=4, n_test=10, renditions=2, epochs=3)}
TRAIN_VOICES = {"en": ["m1", "f3", "m3"], "zh": ["m1", "f3", "m3"]}
DEMO_LR = {"en": 4e-5, "zh": 4e-5}


def _synth(lang: str, out: Path, size: dict, seed: int) -> tuple[Path, Path]:
    """The domain corpus as one manifest with a split column, and a general-speech guard manifest."""
    from .demo_corpus import domain_splits, general_sentences
    from .synth import synth_corpus

    sentences = domain_splits(lang, size["n_train"], size["n_valid"], size["n_test"], seed=seed)
    voices = TRAIN_VOICES[lang]
    rows = []
    for split, texts in sentences.items():
        per = size["renditions"] if split == "train" else 1
        manifest = synth_corpus(texts, out / "corpus" / split, lang, voices=voices, per_sentence=per,
                                rates=[150, 170], pitches=[40, 50, 60], noise_snr=[25, 35], seed=seed, progress=False)
        for line in manifest.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            row["audio"] = f"{split}/{row['audio']}"
            rows.append(row | {"split": split})
    corpus = out / "corpus" / "manifest.jsonl"
    write_jsonl(corpus, rows)
    guard = synth_corpus(general_sentences(lang), out / "guard", lang, voices=voices, per_sentence=1,
                         rates=[160], pitches=[50], seed=seed, progress=False)
    return corpus, guard


def run_demo(lang: str = "en", out: str | Path = "demo_out", size: str = "full", seed: int = 0,
             model: str | None = None) -> dict:
    """Run the seven steps into `out`; returns the summary it also writes to out/demo_summary.json."""
    from rich.console import Console

    # Load every step's module before the first step: a broken install fails now, not after minutes of work.
    for name in (".compare", ".data.prepare", ".evaluate", ".export.recipe", ".train.recipe"):
        importlib.import_module(name, __package__)

    if lang not in MODELS:
        raise SpeechtuneError(f"demo language '{lang}' is not available", "use --lang en or --lang zh")
    console = Console()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    spec, cfg = model or MODELS[lang], SIZES[size]
    steps = Steps(console)
    t0 = time.perf_counter()

    corpus, guard = _synth_step(steps, lang, out, cfg, seed)
    test = _prepare_step(steps, corpus, out, seed)
    base = _baseline_step(steps, spec, test, out)
    model_dir = _train_step(steps, spec, lang, out, guard, cfg, seed)
    result = _compare_step(steps, spec, model_dir, test, guard, out)
    summary = _export_step(steps, lang, model_dir, test, out)
    served = _serve_step(steps, out, test)

    total = time.perf_counter() - t0
    report = {
        "language": lang, "model": spec, "metric": result["metric"],
        "baseline": base["error_rate"], "base": result["base"]["error_rate"],
        "tuned": result["tuned"]["error_rate"], "ci95": result["ci95"], "p_value": result["p_value"],
        "verdict": result["verdict"], "verdict_line": result["verdict_line"], "guard": result.get("guard"),
        **judged(result),
        "export": {"quantization": summary["quantization"], "size_mb": summary["size_mb"],
                   "pytorch": summary["parity"]["pytorch"]["error_rate"],
                   "exported": summary["parity"]["exported"]["error_rate"]},
        "served": served, "step_seconds": {k: round(v, 1) for k, v in steps.times.items()},
        "total_seconds": round(total, 1),
        "paths": {"model": str(model_dir), "report": str(out / "report" / "report.html"),
                  "export": str(out / "export-ct2-int8")},
    }
    write_json(out / "demo_summary.json", json.loads(json.dumps(report, default=str)))
    _print_summary(console, report)
    return report


def judged(result: dict) -> dict:
    """What the summary says of compare's hallucination checks: loops on the test (and guard) set, the
    no-speech check and term recall, base vs tuned."""
    sets = {"test": result} | ({"guard": result["guard"]} if result.get("guard") else {})
    loops = {name: {side: s[side]["hallucination"]["loops"] for side in ("base", "tuned")} for name, s in sets.items()}
    t = result.get("terms")
    terms = None if not t else ({k: t.get(k) for k in ("chosen", "terms", "occurrences", "delta", "ci95", "p_value")}
                                | {"base": t["base"]["recall"], "tuned": t["tuned"]["recall"]})
    return {"hallucination": {"loops": loops}, "no_speech": result.get("no_speech"), "terms": terms}


def _synth_step(steps: Steps, lang: str, out: Path, size: dict, seed: int) -> tuple[Path, Path]:
    """Step 1: synthesize the domain corpus and the guard set; returns their manifests."""
    steps.start(1, "synthesize a domain corpus")
    corpus, guard = _synth(lang, out, size, seed)
    n = sum(1 for _ in corpus.open(encoding="utf-8"))
    steps.console.print(f"{n} domain clips ({lang}, voices {', '.join(TRAIN_VOICES[lang])}) -> {corpus}\n"
                        f"guard: general-speech clips -> {guard}  ({steps.done():.0f} s)")
    return corpus, guard


def _prepare_step(steps: Steps, corpus: Path, out: Path, seed: int) -> Path:
    """Step 2: prepare the corpus into out/prepared; returns the held-out test manifest."""
    from .data.prepare import prepare, print_summary

    steps.start(2, "prepare")
    stats = prepare(corpus, out / "prepared", progress=True, seed=seed)
    print_summary(stats, out / "prepared")
    test = out / "prepared" / "test.jsonl"
    steps.done()
    return test


def _baseline_step(steps: Steps, spec: str, test: Path, out: Path) -> dict:
    """Step 3: score the base model on the test set; returns evaluate()'s result."""
    from .evaluate import evaluate

    steps.start(3, f"baseline: bundled {spec} on the held-out test set")
    base = evaluate(spec, test, out=out / "baseline", progress=True)
    steps.console.print(f"baseline {base['metric'].upper()}: {100 * base['error_rate']:.1f}%")
    steps.done()
    return base


def _train_step(steps: Steps, spec: str, lang: str, out: Path, guard: Path, size: dict, seed: int) -> Path:
    """Step 4: fine-tune the decoder on out/prepared; returns the model folder."""
    from .train.recipe import TrainConfig, train

    steps.start(4, "fine-tune (freeze-encoder: encoder outputs computed once, decoder trained)")
    model_dir = train(TrainConfig(model=spec, data=str(out / "prepared"), out=str(out / "model"),
                                  mode="freeze-encoder", guard=str(guard), epochs=size["epochs"], seed=seed,
                                  lr=DEMO_LR[lang], overwrite=True, tensorboard=False))
    steps.done()
    return model_dir


def _compare_step(steps: Steps, spec: str, model_dir: Path, test: Path, guard: Path, out: Path) -> dict:
    """Step 5: compare base and fine-tuned on the test and guard sets; returns compare()'s result."""
    from .compare import compare, no_speech_line, terms_line

    steps.start(5, "compare base vs fine-tuned (with the general-speech guard, the no-speech check, term recall)")
    result = compare(spec, model_dir, test, guard=guard, out=out / "report", progress=True)
    steps.console.print(f"[bold]{result['verdict_line']}")
    if result.get("guard"):
        g = result["guard"]
        steps.console.print(f"guard: {g['metric'].upper()} {100 * g['base']['error_rate']:.1f}% -> "
                            f"{100 * g['tuned']['error_rate']:.1f}%" + ("  [red]FLAGGED" if g["flagged"] else "  ok"))
    for line in (no_speech_line(result), terms_line(result)):
        if line:
            steps.console.print(line, markup=False)
    steps.done()
    return result


def _export_step(steps: Steps, lang: str, model_dir: Path, test: Path, out: Path) -> dict:
    """Step 6: export to CTranslate2 int8 with the parity check; returns export()'s summary."""
    from .export.recipe import export

    steps.start(6, "export to CTranslate2 int8, with the parity check")
    # The default 0.5 pt allowance assumes a real test set of hundreds of clips. Here one word is 0.7-1.5
    # pt, and int8 does flip a drug name now and then on a model as small as tiny: allow 2.5 words of drift.
    # counted in the metric's units: characters for CER languages such as zh, else words
    unit = "characters" if lang == "zh" else "words"
    texts = [json.loads(line)["text"] for line in test.open(encoding="utf-8")]
    words = sum(len("".join(t.split())) if unit == "characters" else len(t.split()) for t in texts)
    allowed = round(max(0.5, 250 / max(words, 1)), 1)
    summary = export(model_dir, "ct2", out / "export-ct2-int8", quantization="int8", data=test, overwrite=True,
                     max_wer_delta=allowed)
    p = summary["parity"]
    steps.console.print(
        f"int8 export {summary['size_mb']['export']:.0f} MB (from {summary['size_mb']['source']:.0f} MB): "
        f"{p['metric'].upper()} {100 * p['exported']['error_rate']:.1f}% vs PyTorch "
        f"{100 * p['pytorch']['error_rate']:.1f}% (allowed ±{allowed} pt on {words} {unit}) -> parity ok")
    steps.done()
    return summary


def _serve_step(steps: Steps, out: Path, test: Path) -> dict:
    """Step 7: serve the export on loopback and transcribe one test clip over HTTP; returns what was served."""
    steps.start(7, "serve on loopback and transcribe one held-out clip over HTTP")
    served = _serve_once(out / "export-ct2-int8", test, steps.console)
    steps.done()
    return served


def _serve_once(export_dir: Path, test: Path, console) -> dict:
    import httpx

    from .serve.recipe import start_server

    row = json.loads(test.read_text(encoding="utf-8").splitlines()[0])
    audio = Path(row["audio"]) if Path(row["audio"]).is_absolute() else test.parent / row["audio"]
    with start_server(export_dir) as server:
        with open(audio, "rb") as f:
            r = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": (audio.name, f, "audio/wav")},
                           data={"model": "whisper-1", "language": row.get("language") or ""}, timeout=120)
        r.raise_for_status()
        text = r.json()["text"]
        console.print(f"POST {server.url}/v1/audio/transcriptions\n  reference: {row['text']}\n  served:    {text}")
    return {"url": server.url, "reference": row["text"], "text": text}


def _print_summary(console, r: dict) -> None:
    from rich.table import Table

    m = r["metric"].upper()
    t = Table(title=f"speechtune demo ({r['language']}, {r['model']})", show_header=False)
    t.add_row("verdict", r["verdict_line"])
    t.add_row(f"test {m}", f"{100 * r['base']:.1f}% -> {100 * r['tuned']:.1f}% "
                           f"(95% CI of the change {100 * r['ci95'][0]:+.1f} .. {100 * r['ci95'][1]:+.1f} pt)")
    if r["guard"]:
        g = r["guard"]
        t.add_row(f"guard {g['metric'].upper()}", f"{100 * g['base']['error_rate']:.1f}% -> "
                                                  f"{100 * g['tuned']['error_rate']:.1f}%"
                                                  + (" (worse beyond threshold)" if g["flagged"] else ""))
    loops = r["hallucination"]["loops"]
    t.add_row("looping clips", ", ".join(f"{name} {v['base']} -> {v['tuned']}" for name, v in loops.items()))
    if r["no_speech"]:
        ns = r["no_speech"]
        t.add_row("no speech", f"text on {ns['base']['clips_with_text']} -> {ns['tuned']['clips_with_text']} of "
                               f"{ns['clips']} non-speech clips ({ns['base']['words']} -> {ns['tuned']['words']} "
                               "words)" + (" (more than the base)" if ns["flagged"] else ""))
    if r["terms"] and r["terms"]["base"] is not None:
        tr = r["terms"]
        ci = (f" (95% CI of the change {100 * tr['ci95'][0]:+.1f} .. {100 * tr['ci95'][1]:+.1f} pt)"
              if tr["ci95"] else "")
        which = " the base never wrote" if tr["chosen"] == "base_never_wrote" else ""
        t.add_row("term recall", f"{100 * tr['base']:.1f}% -> {100 * tr['tuned']:.1f}% over {tr['terms']} terms"
                                 f"{which}{ci}")
    timing_rows(t, r)
    console.print(t)


def add_arguments(p) -> None:
    p.add_argument("--task", default="asr", choices=["asr", "tts"],
                   help="asr: fine-tune recognition (default); tts: train a voice (speechtune.demo_tts)")
    p.add_argument("--lang", default="en", choices=sorted(MODELS), help="en: tiny.en on medical English; zh: base on Mandarin")
    p.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    p.add_argument("--size", default="full", choices=sorted(SIZES), help="small: fewer clips (what CI runs)")
    p.add_argument("--seed", type=int, default=0)


def main(args) -> int:
    if args.task == "tts":
        from .demo_tts import run_tts_demo
        report = run_tts_demo("demo_tts_out" if args.out == "demo_out" else args.out, args.size, args.seed)
        return 0 if report["verdict"] != "worse" else 1
    report = run_demo(args.lang, args.out, args.size, args.seed)
    return 0 if report["verdict"] == "improved" else 1
