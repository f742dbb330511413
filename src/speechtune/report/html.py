"""report.html: one self-contained page (CSS inline, plots as base64 PNGs) that a reviewer can open offline.

Top to bottom: the verdict, the forgetting guard, a table of every figure, the plots, the no-speech check
(what each model wrote on clips without speech, clips the tuned model newly writes on first), term recall
per term, and a per-clip diff of base and tuned against the reference (normalised text, as scored), clips
that got worse first.
"""
from __future__ import annotations

import base64
import html

from ..metrics.bootstrap import format_p
from ..metrics.score import alignment, chars, words
from . import plots

MAX_ROWS = 300  # a page with 10,000 diff rows is unusable; the full list is in predictions.jsonl
MAX_NS_CHARS = 200  # of a text written on a non-speech clip: a loop's first words say what it is

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;margin:0;background:#f5f6f8}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}
.sub{color:#5b6472;font-size:13px}
.verdict{border-radius:8px;padding:14px 18px;margin:16px 0 8px;font-size:18px;font-weight:600;color:#fff}
.improved{background:#2e9d57}.worse{background:#d6453d}.same{background:#6b7480}
.guard{border-radius:8px;padding:10px 16px;margin:8px 0;font-size:14px;border:1px solid}
.guard.ok{background:#eef8f1;border-color:#9fd3b0}.guard.flag{background:#fdecea;border-color:#e8a19b;font-weight:600}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{padding:5px 10px;border-bottom:1px solid #e3e6ea;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}
thead th{background:#eceff3;font-weight:600}
.figs{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.figs img{width:100%;background:#fff;border-radius:6px;border:1px solid #e3e6ea}
.diff td{text-align:left;font-size:13px}
.diff th:nth-child(1){width:70px;text-align:right}.diff th:nth-child(2){width:130px;text-align:right}
.diff td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
.diff tr.up td:first-child{border-left:4px solid #d6453d}.diff tr.down td:first-child{border-left:4px solid #2e9d57}
.diff tr.flat td:first-child{border-left:4px solid #c9ced5}.diff tr.up td.num:first-child{color:#b3261e;font-weight:600}
.diff tr.down td.num:first-child{color:#1f7a43;font-weight:600}
table.figs-t{max-width:860px}
.lbl{display:inline-block;width:44px;color:#6b7480;font-size:11px;text-transform:uppercase}
.line{margin:1px 0}.line.flag{color:#b3261e}.clip{color:#6b7480;font-size:11px;word-break:break-all}
.s{background:#fde3b5;border-radius:3px;padding:0 2px}.i{background:#cfe2fb;border-radius:3px;padding:0 2px}
.d{background:#f7d0d5;text-decoration:line-through;border-radius:3px;padding:0 2px;color:#8a1c2b}
.legend span{margin-right:12px}.pos{color:#d6453d}.neg{color:#2e9d57}
details summary{cursor:pointer;margin:8px 0}
table.ns td,table.ns th{text-align:left}table.ns td.num,table.ns th.num{text-align:right}
table.ns tr.flag td{background:#fdecea}
table.ns tr.flag td:first-child{border-left:4px solid #d6453d}
"""


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt="{:.3f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _pt(x) -> str:
    return f"{100 * x:+.1f} pt"


def _figures_table(s: dict, metric: str) -> str:
    b, t = s["base"], s["tuned"]
    rows = [
        (f"{metric.upper()} (normalised, used for the verdict)", _pct(b["error_rate"]), _pct(t["error_rate"]),
         f"{_pt(s['delta'])} (95% CI {_pt(s['ci95'][0])} .. {_pt(s['ci95'][1])}, {format_p(s['p_value'], s.get('n_resamples'))})"),
        ("WER", _pct(b["wer"]), _pct(t["wer"]), _pt(t["wer"] - b["wer"])),
        ("CER", _pct(b["cer"]), _pct(t["cer"]), _pt(t["cer"] - b["cer"])),
        ("substitutions", b["sub"], t["sub"], f"{t['sub'] - b['sub']:+d}"),
        ("deletions", b["del"], t["del"], f"{t['del'] - b['del']:+d}"),
        ("insertions", b["ins"], t["ins"], f"{t['ins'] - b['ins']:+d}"),
        ("raw WER (text as given)", _pct(b["raw"]["wer"]), _pct(t["raw"]["wer"]), _pt(t["raw"]["wer"] - b["raw"]["wer"])),
        ("raw CER (text as given)", _pct(b["raw"]["cer"]), _pct(t["raw"]["cer"]), _pt(t["raw"]["cer"] - b["raw"]["cer"])),
        ("looping outputs (clips)", b["hallucination"]["loops"], t["hallucination"]["loops"], ""),
        ("empty outputs (clips)", b["hallucination"]["empty"], t["hallucination"]["empty"], ""),
        ("outputs over 2x reference (clips)", b["hallucination"]["too_long"], t["hallucination"]["too_long"], ""),
        ("insertion rate", _pct(b["hallucination"]["insertion_rate"]), _pct(t["hallucination"]["insertion_rate"]), ""),
        ("real-time factor (lower is faster)", _num(b["rtf"]), _num(t["rtf"]), ""),
        ("clips per second", _num(b["clips_per_s"], "{:.2f}"), _num(t["clips_per_s"], "{:.2f}"), ""),
    ]
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return (f"<table class=\"figs-t\"><thead><tr><th>{s['clips']} clips</th><th>base</th><th>tuned</th><th>tuned - base</th>"
            f"</tr></thead><tbody>{body}</tbody></table>")


def _marked(ref: list[str], hyp: list[str], joiner: str) -> str:
    """The hypothesis with its errors marked: substituted, inserted, and (struck) reference words missed."""
    out = []
    for op, r, h in alignment(ref, hyp):
        if op == "equal":
            out.append(html.escape(joiner.join(h)))
        elif op == "substitute":
            out.append(f'<span class="s" title="reference: {html.escape(joiner.join(r))}">'
                       f"{html.escape(joiner.join(h))}</span>")
        elif op == "insert":
            out.append(f'<span class="i">{html.escape(joiner.join(h))}</span>')
        else:
            out.append(f'<span class="d">{html.escape(joiner.join(r))}</span>')
    body = joiner.join(out)
    # Say so: a row of struck reference words alone reads like a rendering fault.
    return body if hyp else f'<span class="sub">(no output)</span> {body}'


def _flagged(c: dict) -> bool:
    """The tuned model loops or runs on where the base did not."""
    return any(c["tuned"].get(k) and not c["base"].get(k) for k in ("loop", "too_long"))


def order_clips(clips: list[dict]) -> list[dict]:
    """Clips the tuned model newly loops or runs on first, then those that got worse (largest increase first),
    then improved (largest drop first), then same."""
    return sorted(clips, key=lambda c: (not _flagged(c), 0 if c["change"] > 0 else 1 if c["change"] < 0 else 2,
                                        -abs(c["change"]),
                                        -abs(c["tuned"]["error_rate"] - c["base"]["error_rate"])))


def _diff_table(clips: list[dict], metric: str) -> str:
    split, joiner = (words, " ") if metric == "wer" else (chars, "")
    rows = []
    for c in order_clips(clips)[:MAX_ROWS]:
        ref = split(c["ref_norm"])
        kind = "up" if c["change"] > 0 else "down" if c["change"] < 0 else "flat"
        name = c.get("source") or c["audio"]
        lines = [f'<div class="line"><span class="lbl">ref</span>{html.escape(joiner.join(ref)) or "(empty)"}</div>']
        for side in ("base", "tuned"):
            hyp = split(c[side]["hyp_norm"])
            lines.append(f'<div class="line"><span class="lbl">{side}</span>{_marked(ref, hyp, joiner)}</div>')
        if _flagged(c):  # the raw text, as the model wrote it: the normalised form may hide the loop
            lines.append(f'<div class="line flag"><span class="lbl">raw</span>{html.escape(c["tuned"]["hyp"][:300])}'
                         f' <b>(loops: {len(c["tuned"]["hyp"])} characters)</b></div>')
        rows.append(
            f'<tr class="{kind}"><td class="num">{c["change"]:+d}</td>'
            f'<td class="num">{c["base"]["errors"]} &rarr; {c["tuned"]["errors"]}<br>'
            f'<span class="sub">{_pct(c["base"]["error_rate"])} &rarr; {_pct(c["tuned"]["error_rate"])}</span></td>'
            f'<td>{"".join(lines)}<div class="clip">{html.escape(str(name))}</div></td></tr>')
    more = len(clips) - MAX_ROWS
    note = f'<p class="sub">{more} more clips in predictions.jsonl.</p>' if more > 0 else ""
    return ('<p class="legend sub"><span><span class="s">substituted</span></span><span><span class="i">inserted'
            '</span></span><span><span class="d">missed</span> (reference word left out)</span></p>'
            '<table class="diff"><thead><tr><th>&Delta; errors</th><th>base &rarr; tuned</th>'
            f'<th style="text-align:left">reference / base / tuned (normalised, as scored)</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>{note}')


def _guard_box(m: dict) -> str:
    g = m.get("guard")
    if not g:
        return ('<div class="guard ok">No forgetting guard was run. Pass <code>--guard general.jsonl</code> '
                '(general speech in the same language) to check the tuned model did not get worse elsewhere.</div>')
    cls = "flag" if g["flagged"] else "ok"
    head = "Forgetting guard FLAGGED" if g["flagged"] else "Forgetting guard passed"
    return (f'<div class="guard {cls}">{head} on {html.escape(g["data"])} (threshold {g["threshold"]:.1f} pt): '
            f'{html.escape(g["verdict_line"])}</div>')


def _ns_flagged(c: dict) -> bool:
    """The tuned model writes words on a non-speech clip where the base wrote none."""
    return c["tuned"]["words"] > 0 and c["base"]["words"] == 0


def order_no_speech(rows: list[dict]) -> list[dict]:
    """Non-speech clips the tuned model newly writes on first, then by words the tuned model wrote, then by
    the base's; ties keep the set's order."""
    return sorted(rows, key=lambda c: (not _ns_flagged(c), -c["tuned"]["words"], -c["base"]["words"]))


def _no_speech_section(m: dict, rows: list[dict] | None) -> str:
    ns = m.get("no_speech")
    if not ns or rows is None:
        return ""
    b, t = ns["base"], ns["tuned"]
    head = (f'<p class="sub">Built-in clips that hold no speech (silence, noise, hum, tones, music, clicks, '
            f'speech reversed from {html.escape(str(ns["reversed_from"]))}): any word is made up. Base writes text '
            f'on {b["clips_with_text"]} of {ns["clips"]} ({b["words"]} words), tuned on {t["clips_with_text"]} '
            f'({t["words"]} words).</p>')
    body = []
    for c in order_no_speech(rows):
        cells = [html.escape(c["name"]), html.escape(c["kind"])]
        for side in ("base", "tuned"):
            text = c[side]["text"]
            more = f' <span class="sub">... ({len(text)} characters)</span>' if len(text) > MAX_NS_CHARS else ""
            cells.append(html.escape(text[:MAX_NS_CHARS]) + more if text else '<span class="sub">(no text)</span>')
        body.append(f'<tr class="{"flag" if _ns_flagged(c) else ""}"><td>{cells[0]}</td><td>{cells[1]}</td>'
                    f'<td>{cells[2]}</td><td class="num">{c["base"]["words"]}</td><td>{cells[3]}</td>'
                    f'<td class="num">{c["tuned"]["words"]}</td></tr>')
    return (f"<h2>No speech: {ns['clips']} clips{' (FLAGGED)' if ns['flagged'] else ''}</h2>{head}"
            '<table class="ns"><thead><tr><th>clip</th><th>kind</th><th>base wrote</th><th class="num">words</th>'
            f'<th>tuned wrote</th><th class="num">words</th></tr></thead><tbody>{"".join(body)}</tbody></table>')


def _terms_section(m: dict) -> str:
    t = m.get("terms")
    if not t:
        return ""
    how = (f"from {html.escape(t['file'])}" if t.get("file") else html.escape(t["rule"]) if t.get("rule")
           else "as given")
    if t["base"]["recall"] is None:
        return f'<h2>Term recall</h2><p class="sub">{t["terms"]} terms ({how}): none occurs in the references.</p>'
    ci = (f"{_pt(t['delta'])} (95% CI {_pt(t['ci95'][0])} .. {_pt(t['ci95'][1])}, "
          f"{format_p(t['p_value'], t.get('n_resamples'))})" if t.get("ci95") else "")
    rows = sorted(t["per_term"], key=lambda r: (-r["occurrences"], r["term"]))
    body = "".join(f"<tr><td>{html.escape(r['term'])}</td><td>{r['occurrences']}</td>"
                   f"<td>{_pct(r['base_recall'])}</td><td>{_pct(r['tuned_recall'])}</td></tr>"
                   for r in rows[:MAX_ROWS] if r["occurrences"])
    unseen = sum(1 for r in rows if not r["occurrences"])
    note = f'<p class="sub">{unseen} of the terms do not occur in the references.</p>' if unseen else ""
    return (f"<h2>Term recall: {_pct(t['base']['recall'])} &rarr; {_pct(t['tuned']['recall'])}</h2>"
            f'<p class="sub">{t["terms"]} terms ({how}), {t["occurrences"]} occurrences in the references; a '
            f"term counts where the normalised hypothesis writes it (at most as often as the reference)."
            f"{f' Tuned - base: {ci}.' if ci else ''}</p>"
            '<table class="figs-t"><thead><tr><th>term</th><th>occurrences</th><th>base recall</th>'
            f"<th>tuned recall</th></tr></thead><tbody>{body}</tbody></table>{note}")


def render(m: dict, clips: list[dict], guard_clips: list[dict] | None = None,
           no_speech_clips: list[dict] | None = None) -> str:
    """The page for a compare metrics dict, its paired per-clip rows and the no-speech check's rows (see
    speechtune.compare)."""
    cls = {"improved": "improved", "worse": "worse"}.get(m["verdict"], "same")
    figs = [
        _img(plots.png(plots.draw_rates, m), "error rates with 95% CI"),
        _img(plots.png(plots.draw_scatter, m, clips), "per-clip error, base vs tuned"),
        _img(plots.png(plots.draw_error_types, m), "error types"),
        _img(plots.png(plots.draw_hallucinations, m), "hallucination signals"),
    ]
    parts = [
        f"<h1>speechtune compare</h1>"
        f'<div class="sub">base <b>{html.escape(m["base"]["model"])}</b> vs tuned <b>{html.escape(m["tuned"]["model"])}'
        f'</b> on {html.escape(m["data"])} ({m["clips"]} clips, {m["metric"].upper()}, paired bootstrap with '
        f'{m["n_resamples"]} resamples, seed {m["seed"]})</div>',
        f'<div class="verdict {cls}">{html.escape(m["verdict_line"])}</div>',
        _guard_box(m),
        "<h2>Figures</h2>", _figures_table(m, m["metric"]),
    ]
    if m.get("guard"):
        parts += [f'<h2>Guard set: {html.escape(m["guard"]["data"])}</h2>', _figures_table(m["guard"], m["guard"]["metric"])]
    parts += ['<h2>Plots</h2><div class="figs">' + "".join(figs) + "</div>",
              _no_speech_section(m, no_speech_clips), _terms_section(m),
              f"<h2>Per clip ({len(clips)}), clips that got worse first</h2>", _diff_table(clips, m["metric"])]
    if guard_clips:
        parts.append(f"<details><summary><b>Guard set per clip ({len(guard_clips)})</b></summary>"
                     f"{_diff_table(guard_clips, m['guard']['metric'])}</details>")
    parts.append('<p class="sub">Rates are corpus-level: total errors / total reference units. The interval and '
                 "p-value come from resampling clips with replacement and rescoring both models on each "
                 "resample; the verdict is a change only when the interval excludes 0 and p &lt; 0.05.</p>")
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>speechtune compare: '
            f'{html.escape(m["verdict"])}</title><meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{CSS}</style></head><body><main>{''.join(parts)}</main></body></html>\n")
