"""Compare a base and a tuned model on the same clips: paired bootstrap CI, p-value, verdict and report.

Both models decode the same clips with the same settings. The verdict line reads like
`improved: WER 60.3% -> 0.4% (-59.9 pt, 95% CI -64.0 .. -55.1, p<0.001)`. With --guard, the same
comparison runs on a general-speech set and is flagged when the tuned model is worse there by more than
--guard-threshold points (fine-tuning on a narrow domain can make a model forget general speech).

Two more checks run on the same decodings' settings. The no-speech check (on by default) decodes the
built-in non-speech set (data/nospeech.py, with reversed speech from the guard, else the test set) with
both models and counts the words each writes there: every one is made up. Term recall (metrics/terms.py)
asks whether the tuned model writes the domain's terms: those of --terms FILE, else the reference words the
base model never wrote. The verdict line says when the tuned model loops on more clips, or writes text on
more non-speech clips, than the base; --fail-on-hallucination then exits 1.

Writes DIR/metrics.json, predictions.jsonl (+ guard_predictions.jsonl, no_speech_predictions.jsonl),
report.html and comparison.png.
"""
from __future__ import annotations

import gc
import sys
from pathlib import Path

from collections import Counter

from .audio import SAMPLE_RATE
from .data.nospeech import MAX_REVERSED, NoSpeechClip, no_speech_clips
from .errors import SpeechtuneError
from .evaluate import add_decoding_arguments, decoding_options, decoding_record
from .evaluation import load_clip, load_rows, model_name, score_language, score_rows, speed, transcribe_rows
from .files import write_atomic, write_json, write_jsonl
from .metrics import terms as term_recall
from .metrics.bootstrap import paired_bootstrap, verdict, verdict_line
from .metrics.hallucination import no_speech_summary, written_words
from .runtimes import DecodingOptions, check_options, runtime_for, transcribe_many, warm_up

CLIP_KEYS = ("hyp", "hyp_norm", "errors", "sub", "del", "ins", "error_rate", "loop", "empty", "too_long",
             "raw_loop", "compression_ratio", "chars_per_s", "repeated")


def add_arguments(p) -> None:
    p.add_argument("--base", required=True, help="the model before fine-tuning (spec: tiny.en | base | folder | ...)")
    p.add_argument("--tuned", required=True, help="the fine-tuned model (spec or model dir)")
    p.add_argument("--data", required=True, help="test manifest (.jsonl), the domain the model was tuned for")
    p.add_argument("--guard", help="general-speech manifest to check for forgetting (e.g. ../shared/realspeech/en.jsonl)")
    p.add_argument("--guard-threshold", type=float, default=1.0,
                   help="flag the guard when tuned is worse there by more than this many points (default: 1.0)")
    p.add_argument("--out", required=True, help="folder for metrics.json, report.html, comparison.png, predictions")
    add_decoding_arguments(p)
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: 2000; at least 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--fail-on-hallucination", action="store_true",
                   help="exit 1 when the tuned model loops on more clips than the base (test set or guard), or "
                   "writes text on more of the non-speech clips")
    p.add_argument("--no-speech-check", dest="no_speech", action="store_true", default=True,
                   help="decode the built-in non-speech set with both models and count the words written "
                   "(the default)")
    p.add_argument("--skip-no-speech", dest="no_speech", action="store_false", help="do not run that check")
    p.add_argument("--terms", help="UTF-8 file of domain terms, one a line (# comments): their recall, base vs "
                   "tuned (default: the reference words the base model never wrote)")


def paired(rows: list[dict], base_run: dict, tuned_run: dict, languages: list, metric: str | None,
           n_resamples: int, seed: int) -> tuple[dict, list[dict]]:
    """Score both runs on the same rows; returns (summary, per-clip paired rows)."""
    sides = {}
    for side, run in (("base", base_run), ("tuned", tuned_run)):
        s = score_rows(rows, run["hyps"], languages, metric, run.get("seconds"))
        s.pop("clips_scored")
        sides[side] = (s, run)
    (sb, rb), (st, rt) = sides["base"], sides["tuned"]
    pb, pt = sb.pop("predictions"), st.pop("predictions")
    boot = paired_bootstrap([p["errors"] for p in pb], [p["errors"] for p in pt], [p["units"] for p in pb],
                            n_resamples=n_resamples, seed=seed)
    summary = {
        "clips": len(rows), "metric": sb["metric"],
        "base": {"model": rb["model"], **sb, **speed(rb, len(rows)), "ci95": boot["base_ci95"]},
        "tuned": {"model": rt["model"], **st, **speed(rt, len(rows)), "ci95": boot["tuned_ci95"]},
        "delta": boot["delta"], "ci95": boot["ci95"], "p_value": boot["p_value"],
        "n_resamples": n_resamples, "seed": seed, "verdict": verdict(boot),
        "verdict_line": verdict_line(sb["metric"], sb["error_rate"], st["error_rate"], boot)
        + loop_note(sb["hallucination"]["loops"], st["hallucination"]["loops"]),
        "new_loops": max(0, st["hallucination"]["loops"] - sb["hallucination"]["loops"]),
    }
    clips = []
    for b, t in zip(pb, pt):
        clips.append({k: b[k] for k in ("audio", "source", "line", "language", "ref", "ref_norm", "units")}
                     | {"base": {k: b[k] for k in CLIP_KEYS}, "tuned": {k: t[k] for k in CLIP_KEYS},
                        "change": t["errors"] - b["errors"]})
    return summary, clips


def loop_note(base_loops: int, tuned_loops: int) -> str:
    """What the verdict line adds when the tuned model loops on more clips than the base: an error rate can
    improve while a few clips run away (the normaliser may even fold the loop into a few tokens)."""
    if tuned_loops <= base_loops:
        return ""
    return f", but {tuned_loops} clip{'s' if tuned_loops != 1 else ''} loop (base {base_loops})"


def compare(base, tuned, data, guard=None, guard_threshold: float = 1.0, out: str | Path | None = None,
            options: DecodingOptions | None = None, metric: str | None = None, n_resamples: int = 2000,
            seed: int = 0, device: str | None = None, progress: bool = True, no_speech: bool = True,
            terms: str | Path | list[str] | None = None) -> dict:
    """Compare two models (specs or loaded bundles) on a manifest. `no_speech`: run the no-speech check;
    `terms`: a terms file or a list of terms (None: the words the base never wrote). Returns the metrics.json
    dict plus `per_clip`, `guard_per_clip` (paired per-clip rows) and `no_speech_per_clip`; writes the report
    files under `out` when given."""
    if n_resamples < 1000:
        raise SpeechtuneError(f"--resamples {n_resamples} is too few for a 95% interval", "use 1000 or more")
    options = options or DecodingOptions()
    language = options.language
    rows, where = load_rows(data)
    guard_rows, guard_where = load_rows(guard) if guard else (None, None)
    term_list = term_recall.read_terms(terms) if isinstance(terms, (str, Path)) else terms
    silent = no_speech_set(guard_rows or rows, guard_where or where) if no_speech else None
    silent_language = language or most_common_language(rows)
    runs, multilingual = {}, []
    # One model in memory at a time: base fully, then tuned, each on the test set and the guard set.
    for side, spec in (("base", base), ("tuned", tuned)):
        runtime = runtime_for(spec, device)
        check_options(runtime, options)
        multilingual.append(runtime.multilingual)
        warm_up(runtime, options)
        runs[side] = {"test": transcribe_rows(runtime, rows, options, where, progress),
                      "guard": transcribe_rows(runtime, guard_rows, options, guard_where, progress)
                      if guard_rows else None}
        for r in runs[side].values():
            if r:
                r["model"] = model_name(spec, runtime)
        if silent:
            runs[side]["no_speech"] = transcribe_many(runtime, [c.wav for c in silent], options,
                                                      [silent_language] * len(silent))
        del runtime
        gc.collect()
    ml = any(multilingual)
    languages = score_language(rows, language, ml)
    result, clips = paired(rows, runs["base"]["test"], runs["tuned"]["test"], languages, metric, n_resamples, seed)
    result = {"data": where, **result, "guard": None,
              "decoding": decoding_record(options)}
    result["terms"] = terms_block(term_list, terms, rows, runs["base"]["test"]["hyps"],
                                  runs["tuned"]["test"]["hyps"], languages, n_resamples, seed)
    silent_clips = None
    if silent:
        result["no_speech"], silent_clips = no_speech_block(silent, runs["base"]["no_speech"],
                                                            runs["tuned"]["no_speech"],
                                                            guard_where if guard_rows else where)
        result["verdict_line"] += no_speech_note(result["no_speech"], after=bool(result["new_loops"]))
    else:
        result["no_speech"] = None
    guard_clips = None
    if guard_rows:
        g, guard_clips = paired(guard_rows, runs["base"]["guard"], runs["tuned"]["guard"],
                                score_language(guard_rows, language, ml), metric, n_resamples, seed)
        # Flag on the point estimate: the threshold is the forgetting a user accepts, in points.
        result["guard"] = {"data": guard_where, **g, "threshold": guard_threshold,
                           "flagged": 100 * g["delta"] > guard_threshold}
    if out is not None:
        write_report(Path(out), result, clips, guard_clips, silent_clips)
    return result | {"per_clip": clips, "guard_per_clip": guard_clips, "no_speech_per_clip": silent_clips}


def most_common_language(rows: list[dict]) -> str | None:
    """The language most of the test set's lines give (None when none does): the one the non-speech set is
    decoded in, so a multilingual model is not left to detect a language in noise."""
    common = Counter(r.get("language") for r in rows if r.get("language")).most_common(1)
    return common[0][0] if common else None


def no_speech_set(rows: list[dict], where: str) -> list[NoSpeechClip]:
    """The built-in non-speech clips, with the first MAX_REVERSED clips of `rows` reversed among them."""
    return no_speech_clips(speech=[load_clip(r, where) for r in rows[:MAX_REVERSED]])


def no_speech_block(clips: list[NoSpeechClip], base_texts: list[str], tuned_texts: list[str],
                    reversed_from: str) -> tuple[dict, list[dict]]:
    """metrics.json's `no_speech` (each side's no_speech_summary; `flagged` when the tuned model writes text
    on more clips than the base) and the per-clip rows of no_speech_predictions.jsonl."""
    block = {"clips": len(clips), "reversed_from": reversed_from, "base": no_speech_summary(base_texts),
             "tuned": no_speech_summary(tuned_texts)}
    block["new_clips_with_text"] = max(0, block["tuned"]["clips_with_text"] - block["base"]["clips_with_text"])
    block["flagged"] = block["new_clips_with_text"] > 0
    rows = [{"name": c.name, "kind": c.kind, "seconds": round(len(c.wav) / SAMPLE_RATE, 3),
             "base": {"text": b, "words": written_words(b)}, "tuned": {"text": t, "words": written_words(t)}}
            for c, b, t in zip(clips, base_texts, tuned_texts)]
    return block, rows


def no_speech_note(block: dict, after: bool = False) -> str:
    """What the verdict line adds when the tuned model writes text on more non-speech clips than the base
    (`after`: another note, the loop note, comes before it)."""
    if not block["flagged"]:
        return ""
    return (f"{', and' if after else ', but'} tuned writes text on {block['tuned']['clips_with_text']} of "
            f"{block['clips']} non-speech clips (base {block['base']['clips_with_text']})")


def terms_block(term_list: list[str] | None, source, rows: list[dict], base_hyps: list[str],
                tuned_hyps: list[str], languages: list[str | None], n_resamples: int, seed: int) -> dict:
    """metrics.json's `terms`: term_recall.compare_terms over the test set, and how the terms were chosen."""
    refs = [r["text"] for r in rows]
    if term_list is None:
        term_list = term_recall.unknown_terms(refs, base_hyps, languages)
        chosen = {"chosen": "base_never_wrote",
                  "rule": f"reference words of {term_recall.MIN_TERM_CHARS}+ characters (characters, in languages "
                          "scored per character) that the base model wrote in none of its test-set hypotheses"}
    else:
        chosen = {"chosen": "file" if isinstance(source, (str, Path)) else "list",
                  "file": str(source) if isinstance(source, (str, Path)) else None}
    return chosen | term_recall.compare_terms(term_list, refs, base_hyps, tuned_hyps, languages, n_resamples, seed)


def write_report(out: Path, result: dict, clips: list[dict], guard_clips: list[dict] | None,
                 silent_clips: list[dict] | None = None) -> None:
    from .report import html, plots

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", result)
    write_jsonl(out / "predictions.jsonl", clips)
    if guard_clips is not None:
        write_jsonl(out / "guard_predictions.jsonl", guard_clips)
    if silent_clips is not None:
        write_jsonl(out / "no_speech_predictions.jsonl", silent_clips)
    write_atomic(out / "comparison.png", plots.comparison_png(result, clips))
    write_atomic(out / "report.html", html.render(result, clips, guard_clips, silent_clips))


def no_speech_line(result: dict) -> str | None:
    ns = result.get("no_speech")
    if not ns:
        return None
    b, t = ns["base"], ns["tuned"]
    return (f"no speech ({ns['clips']} clips): base writes text on {b['clips_with_text']} ({b['words']} words), "
            f"tuned on {t['clips_with_text']} ({t['words']} words)" + (" -> FLAGGED" if ns["flagged"] else ""))


def terms_line(result: dict) -> str | None:
    t = result.get("terms")
    if not t or t["base"]["recall"] is None:
        return None
    how = f"from {t['file']}" if t.get("file") else "the base model never wrote" if t["chosen"] == "base_never_wrote" \
        else "given"
    ci = (f" ({100 * t['delta']:+.1f} pt, 95% CI {100 * t['ci95'][0]:+.1f} .. {100 * t['ci95'][1]:+.1f})"
          if t["ci95"] else "")
    return (f"term recall ({t['terms']} terms, {how}; {t['occurrences']} occurrences): "
            f"{100 * t['base']['recall']:.1f}% -> {100 * t['tuned']['recall']:.1f}%{ci}")


def guard_line(result: dict) -> str | None:
    g = result.get("guard")
    if not g:
        return None
    state = (f"FLAGGED: tuned is worse by more than {g['threshold']:.1f} pt on general speech"
             if g["flagged"] else f"ok (threshold {g['threshold']:.1f} pt)")
    return f"guard {g['data']}: {g['verdict_line']} -> {state}"


def hallucination_failure(result: dict) -> str | None:
    """Why --fail-on-hallucination fails a comparison (None: it passes): the tuned model loops on more
    clips than the base (test set and guard together), or writes text on more non-speech clips."""
    new_loops = result["new_loops"] + ((result.get("guard") or {}).get("new_loops") or 0)
    new_text = (result.get("no_speech") or {}).get("new_clips_with_text") or 0
    why = [f"loops on {new_loops} more clip(s)"] * bool(new_loops) + \
          [f"writes text on {new_text} more non-speech clip(s)"] * bool(new_text)
    return f"the tuned model {' and '.join(why)} than the base" if why else None


def both_voices(base, tuned) -> bool:
    """Whether --base and --tuned are both voices (text to speech), which compare judges as voices. One voice
    and one spec that is not is an error naming what is wrong with the other (a typo, an uninstalled voice),
    not a recognition error about the voice."""
    from .tts import is_voice, resolve_voice
    voices = [is_voice(base), is_voice(tuned)]
    if any(voices) and not all(voices):
        other, flag = (tuned, "--tuned") if voices[0] else (base, "--base")
        try:
            resolve_voice(other)
        except SpeechtuneError as e:
            raise SpeechtuneError(f"{flag} {other}: the other side is a voice, this is not one ({e.message})",
                                  "compare two voices, or two recognition models") from None
    return all(voices)


def voice_main(args) -> int:
    """compare for two voices: tts/judge.py on the test sentences of --data (a prepared folder or manifest)."""
    from .tts import load_voice
    from .tts.judge import judge_voices
    r = judge_voices(load_voice(args.base), load_voice(args.tuned), args.data, out=args.out,
                     language=args.language, n_resamples=args.resamples, seed=args.seed)
    print(r["verdict_line"])
    print(f"report: {Path(args.out) / 'report.html'} (metrics.json, predictions.jsonl, audio/ beside it)")
    return 0


def main(args) -> int:
    if both_voices(args.base, args.tuned):
        return voice_main(args)
    r = compare(args.base, args.tuned, args.data, guard=args.guard, guard_threshold=args.guard_threshold,
                out=args.out, options=decoding_options(args), metric=args.metric, n_resamples=args.resamples,
                seed=args.seed, device=args.device, no_speech=args.no_speech, terms=args.terms)
    print(r["verdict_line"])
    for line in (guard_line(r), no_speech_line(r), terms_line(r)):
        if line:
            print(line)
    print(f"report: {Path(args.out) / 'report.html'} (metrics.json, comparison.png, predictions.jsonl beside it)")
    failure = hallucination_failure(r)
    if args.fail_on_hallucination and failure:
        print(f"failing: {failure} (--fail-on-hallucination)", file=sys.stderr)
        return 1
    return 0
