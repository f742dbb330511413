"""Does a prompt listing the domain's terms make the base model write them? Term recall with and without it.

Bundled tiny.en (untuned) decodes a synthesized test set of infrastructure jargon (espeak-ng, as the demo
makes its corpus) three times on each runtime that takes a prompt (hf: transformers' generate, ct2:
CTranslate2), greedily with the default safeguards:

  none      no prompt
  terms     --prompt listing the terms ("Kubernetes, kubelet, Envoy, ...")
  control   --prompt listing as many everyday words: what a prompt does whatever it says

Term recall (metrics/terms.py: occurrences of each term in the normalised hypothesis, capped at the
reference's) and WER per run; the change from `none` with a paired bootstrap 95% CI over clips.

  python benchmarks/term_prompt.py --out /tmp/term_prompt [--runtimes hf ct2] [--sentences 36]
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from pathlib import Path

TERMS = ["Kubernetes", "kubelet", "Envoy", "Grafana", "Prometheus", "Terraform", "Istio", "Helm", "Kafka",
         "Redis", "Ansible", "Jenkins"]
# as many words as TERMS, none of them a term: a prompt of the same shape that says nothing of the domain
CONTROL = ["garden", "window", "coffee", "river", "pencil", "summer", "bicycle", "kitchen", "music", "orange",
           "holiday", "mountain"]
TEMPLATES = ["restart {a} before you upgrade {b}", "the {a} dashboard shows errors from {b}",
             "deploy {a} with {b} on the staging cluster", "{a} lost its connection to {b} last night",
             "check the {a} logs after the {b} rollout", "we moved {a} behind {b} this week"]
VOICES = ["m1", "f3", "m3"]


def sentences(n: int, seed: int = 0) -> list[str]:
    """n sentences, each with two different terms; every term appears before any appears a third time."""
    rng = random.Random(seed)
    pairs = list(itertools.permutations(TERMS, 2))
    rng.shuffle(pairs)
    return [rng.choice(TEMPLATES).format(a=a, b=b) for a, b in pairs[:n]]


def load(runtime_name: str):
    from speechtune.models.registry import bundled_ct2
    from speechtune.runtimes import DecodingOptions, load_runtime, warm_up

    runtime = load_runtime("tiny.en" if runtime_name == "hf" else bundled_ct2("tiny.en"), "cpu")
    warm_up(runtime, DecodingOptions())
    return runtime


def decode(runtime, rows: list[dict], prompt: str | None) -> tuple[list[str], float]:
    """Hypotheses of every row, and the seconds spent decoding them."""
    from speechtune.evaluation import transcribe_rows
    from speechtune.runtimes import DecodingOptions

    t = time.perf_counter()
    run = transcribe_rows(runtime, rows, DecodingOptions(language="en", prompt=prompt), progress=False)
    return run["hyps"], time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the corpus and results.json")
    ap.add_argument("--runtimes", nargs="+", default=["hf", "ct2"], choices=["hf", "ct2"])
    ap.add_argument("--sentences", type=int, default=36)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from speechtune.evaluation import load_rows
    from speechtune.metrics.score import score_corpus
    from speechtune.metrics.terms import compare_terms
    from speechtune.synth import synth_corpus

    out = Path(args.out)
    manifest = synth_corpus(sentences(args.sentences, args.seed), out / "corpus", "en", voices=VOICES,
                            per_sentence=1, rates=[150, 170], pitches=[40, 50, 60], seed=args.seed, progress=False)
    rows, _ = load_rows(manifest)
    refs, langs = [r["text"] for r in rows], ["en"] * len(rows)
    prompts = {"none": None, "terms": ", ".join(TERMS) + ".", "control": ", ".join(CONTROL) + "."}
    results = []
    for name in args.runtimes:
        runtime, hyps = load(name), {}
        for condition, prompt in prompts.items():
            hyps[condition], seconds = decode(runtime, rows, prompt)
            r = compare_terms(TERMS, refs, hyps["none"], hyps[condition], langs, n_resamples=2000, seed=0)
            results.append({"runtime": name, "prompt": condition, "prompt_text": prompt,
                            "wer": score_corpus(refs, hyps[condition], "en")["wer"],
                            "term_recall": r["tuned"]["recall"], "delta": r["delta"], "ci95": r["ci95"],
                            "p_value": r["p_value"], "occurrences": r["occurrences"], "seconds": round(seconds, 1),
                            "hyps": hyps[condition]})
    (out / "results.json").write_text(json.dumps({"terms": TERMS, "refs": refs, "results": results}, indent=1))
    print(f"tiny.en, {len(rows)} synthesized clips, {results[0]['occurrences']} term occurrences "
          f"({len(TERMS)} terms), greedy with safeguards")
    print("| runtime | prompt | WER | term recall | change vs no prompt (95% CI) | p |")
    print("|---|---|---|---|---|---|")
    for r in results:
        change = "" if r["prompt"] == "none" else (f"{100 * r['delta']:+.1f} pt ({100 * r['ci95'][0]:+.1f} .. "
                                                   f"{100 * r['ci95'][1]:+.1f})")
        p = "" if r["prompt"] == "none" else f"{r['p_value']:.3f}"
        print(f"| {r['runtime']} | {r['prompt']} | {100 * r['wer']:.1f}% | {100 * r['term_recall']:.1f}% | "
              f"{change} | {p} |")


if __name__ == "__main__":
    main()
