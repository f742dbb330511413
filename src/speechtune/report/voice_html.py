"""report.html for a voice comparison (tts/judge.py): listen to and look at every test sentence.

Top to bottom: the verdict, a table of the figures (each voice's value with its 95% interval, tuned - base
with its interval and p-value), then one card per sentence, flagged sentences first: its text, and for the
target's recording, the base voice and the tuned voice an audio player, a mel spectrogram and what Whisper
heard. Audio and pictures are files beside the page (audio/, spectrograms/), so the page stays small.
"""
from __future__ import annotations

import html

import numpy as np

from ..metrics.bootstrap import format_p
from ..metrics.voice import log_mel
from . import plots
from .html import CSS as BASE_CSS

MAX_SENTENCES = 200   # cards on the page; every sentence is in predictions.jsonl
SPECTROGRAM_SIZE = (4.0, 1.9)   # inches: three side by side fit the page's width
SPECTROGRAM_RANGE_DB = 80       # drawn below each picture's loudest bin; quieter is drawn as silence
HOP_MS = 10.0
WHO = ("reference", "base", "tuned")
LABELS = {"similarity": "speaker similarity (cosine, higher is better)",
          "cer": "CER of what Whisper hears (lower is better)", "wer": "WER of what Whisper hears (lower is better)",
          "mcd": "MCD to the recording, dB (lower is better)",
          "dnsmos": "DNSMOS overall quality, 1-5 (a no-regression guard)"}

CSS = BASE_CSS + """
.mixed{background:#c98a1b}
.card{background:#fff;border:1px solid #e3e6ea;border-radius:8px;padding:10px 14px;margin:12px 0}
.card.flag{border-left:5px solid #d6453d}
.card .text{font-size:15px;margin:0 0 6px}
.takes{display:grid;grid-template-columns:1fr 1fr 1fr;gap:10px}
.take img{width:100%;border:1px solid #e3e6ea;border-radius:4px}
.take audio{width:100%;height:32px}
.take .who{font-weight:600;text-transform:uppercase;font-size:11px;color:#6b7480}
.take .heard{font-size:13px;margin:4px 0}.take .m{font-size:12px;color:#5b6472}
.flags{color:#b3261e;font-size:13px;font-weight:600}
td.better{color:#1f7a43;font-weight:600}td.worse{color:#b3261e;font-weight:600}
"""


def draw_spectrogram(ax, mel: np.ndarray, hop_s: float, title: str) -> None:
    """A log-mel spectrogram ([frames, bands] dB) over time, the loudest SPECTROGRAM_RANGE_DB shown."""
    seconds = max(len(mel) * hop_s, hop_s)
    if len(mel):
        top = float(mel.max())
        ax.imshow(mel.T, origin="lower", aspect="auto", cmap="magma", vmin=top - SPECTROGRAM_RANGE_DB, vmax=top,
                  extent=(0, seconds, 0, mel.shape[1]), interpolation="nearest")
    ax.set_xlim(0, seconds)
    ax.set_xlabel("seconds", fontsize=7)
    ax.set_ylabel("mel band", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_title(title, fontsize=8)


def spectrogram_png(wav: np.ndarray, sample_rate: int, title: str) -> bytes:
    """PNG bytes of `wav`'s mel spectrogram (80 bands, 10 ms hop) titled `title`."""
    mel = log_mel(wav, sample_rate, hop_ms=HOP_MS)
    return plots.png(draw_spectrogram, mel, HOP_MS / 1000, f"{title} ({len(wav) / sample_rate:.2f} s)",
                     size=SPECTROGRAM_SIZE)


def _value(metric: str, x) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}%" if metric in ("wer", "cer") else f"{x:.2f}" if metric == "similarity" else f"{x:.1f}"


def _interval(metric: str, ci) -> str:
    return "" if not ci else f"[{_value(metric, ci[0])}, {_value(metric, ci[1])}]"


def _delta(metric: str, b: dict, n_resamples: int) -> str:
    """tuned - base with its interval and p-value: points for rates, dB for MCD."""
    if b["delta"] is None:
        return "n/a"
    scale, fmt, unit = {"wer": (100, "{:+.1f}", " pt"), "cer": (100, "{:+.1f}", " pt"),
                        "mcd": (1, "{:+.1f}", " dB")}.get(metric, (1, "{:+.2f}", ""))
    d, lo, hi = (fmt.format(scale * x) for x in (b["delta"], *b["ci95"]))
    return f"{d}{unit} (95% CI {lo} .. {hi}, {format_p(b['p_value'], n_resamples)})"


def figures_table(m: dict) -> str:
    rows = []
    for metric, label in LABELS.items():
        b = m[metric]
        sides = "".join(f'<td>{_value(metric, b[side])} <span class="sub">{_interval(metric, b[side + "_ci95"])}'
                        "</span></td>" for side in ("base", "tuned"))
        rows.append(f"<tr><td>{html.escape(label)}</td>{sides}<td>{html.escape(_delta(metric, b, m['n_resamples']))}"
                    f'</td><td class="{b["change"]}">{b["change"]}</td></tr>')
    rows.append(f"<tr><td>flagged sentences (near-silent, or far too long or short)</td>"
                f"<td>{m['base']['flagged']}</td><td>{m['tuned']['flagged']}</td><td></td><td></td></tr>")
    return (f'<table class="figs-t"><thead><tr><th>{m["sentences"]} sentences</th><th>base</th><th>tuned</th>'
            f"<th>tuned - base</th><th>change</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def order_sentences(sentences: list[dict]) -> list[dict]:
    """Sentences a voice is flagged on first (the tuned voice's before the base's), then in test-set order."""
    return sorted(sentences, key=lambda s: (not s["tuned"]["flags"], not s["flagged"], s["index"]))


def _take(s: dict, who: str) -> str:
    t = s[who]
    head = f'<div class="who">{who}{"" if who == "reference" else ": " + html.escape(t["voice"])}</div>'
    media = (f'<audio controls preload="none" src="{html.escape(t["wav"])}"></audio>'
             f'<img alt="mel spectrogram, {who}" src="{html.escape(t["spectrogram"])}">')
    if who == "reference":
        return f'<div class="take">{head}{media}<div class="m">{html.escape(str(s.get("source") or ""))}</div></div>'
    mcd = "n/a" if t["mcd"] is None else f"{t['mcd']:.1f} dB"
    heard = html.escape(t["transcript"]) or '<span class="sub">(nothing)</span>'
    flags = "".join(f'<div class="flags">{html.escape(f)}</div>' for f in t["flags"])
    return (f'<div class="take">{head}{media}<div class="heard"><span class="lbl">heard</span>{heard}</div>'
            f'<div class="m">similarity {t["similarity"]:.2f} &middot; CER {100 * t["cer"]:.1f}% &middot; '
            f'WER {100 * t["wer"]:.1f}% &middot; MCD {mcd} &middot; {t["seconds"]:.2f} s</div>{flags}</div>')


def sentence_card(s: dict) -> str:
    takes = "".join(_take(s, who) for who in WHO)
    return (f'<div class="card{" flag" if s["flagged"] else ""}"><p class="text">{s["index"] + 1}. '
            f'{html.escape(s["text"])}</p><div class="takes">{takes}</div></div>')


def render(m: dict, sentences: list[dict]) -> str:
    """The page for a voice comparison's metrics dict and its per-sentence rows (see tts/judge.py)."""
    cls = {"better": "improved", "worse": "worse", "mixed": "mixed"}.get(m["verdict"], "same")
    shown = order_sentences(sentences)[:MAX_SENTENCES]
    more = len(sentences) - len(shown)
    flagged = sum(s["flagged"] for s in sentences)
    parts = [
        "<h1>speechtune compare: voices</h1>"
        f'<div class="sub">base <b>{html.escape(m["base"]["voice"])}</b> vs tuned <b>{html.escape(m["tuned"]["voice"])}'
        f'</b> on {html.escape(m["data"])} ({m["sentences"]} sentences; intelligibility heard by Whisper '
        f'{html.escape(m["whisper"])}; paired bootstrap with {m["n_resamples"]} resamples, seed {m["seed"]})</div>',
        f'<div class="verdict {cls}">{html.escape(m["verdict_line"])}</div>',
        "<h2>Figures</h2>", figures_table(m),
        f"<h2>Per sentence ({len(sentences)}), {flagged} flagged, flagged first</h2>",
        "".join(sentence_card(s) for s in shown),
        f'<p class="sub">{more} more sentences in predictions.jsonl.</p>' if more > 0 else "",
        '<p class="sub">Similarity is the cosine of each clip\'s speaker embedding to the mean embedding of the '
        "test recordings. WER and CER are corpus-level (total errors / total reference units) over what Whisper "
        "hears in each voice's audio. MCD compares each clip with the recording of the same sentence after "
        "DTW alignment. Intervals and p-values come from resampling sentences with replacement; a change is "
        "reported only when the interval excludes 0.</p>",
    ]
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>speechtune compare: voices, '
            f'{html.escape(m["verdict"])}</title><meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{CSS}</style></head><body><main>{''.join(parts)}</main></body></html>\n")
