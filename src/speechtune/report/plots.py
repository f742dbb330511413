"""The comparison's pictures, drawn with matplotlib's Agg renderer into PNG bytes (no display needed).

Each `draw_*` fills one Axes from a compare metrics dict (and its per-clip rows), so the same panels make
the separate images in report.html and the 2x2 comparison.png.
"""
from __future__ import annotations

import io

from matplotlib.figure import Figure

BASE, TUNED = "#8c96a8", "#2f6fdf"
WORSE, BETTER, SAME = "#d6453d", "#2e9d57", "#9aa3ad"


def png(draw, *args, size=(6.4, 4.6)) -> bytes:
    fig = Figure(figsize=size, dpi=110, layout="constrained")
    draw(fig.add_subplot(), *args)
    return _save(fig)


def _save(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # Figure without pyplot renders with Agg
    return buf.getvalue()


def _sets(m: dict) -> list[tuple[str, dict]]:
    return [("test", m)] + ([("guard", m["guard"])] if m.get("guard") else [])


def draw_rates(ax, m: dict) -> None:
    """Base and tuned corpus error rates per set, with each rate's bootstrap 95% interval."""
    metric = m["metric"].upper()
    sets = _sets(m)
    width = 0.38
    top = max(100 * max(s[side]["ci95"][1], s[side]["error_rate"]) for _, s in sets for side in ("base", "tuned"))
    top = max(top * 1.18, 1.0)
    for j, (side, color) in enumerate((("base", BASE), ("tuned", TUNED))):
        xs = [i + (j - 0.5) * width for i in range(len(sets))]
        ys = [100 * s[side]["error_rate"] for _, s in sets]
        lo = [max(100 * (s[side]["error_rate"] - s[side]["ci95"][0]), 0) for _, s in sets]
        hi = [max(100 * (s[side]["ci95"][1] - s[side]["error_rate"]), 0) for _, s in sets]
        ax.bar(xs, ys, width, color=color, label=side, yerr=[lo, hi], capsize=5, error_kw={"elinewidth": 1.2})
    # Values go in the tick labels: on the bars they collide with the interval whiskers.
    ax.set_xticks(range(len(sets)), [f"{name} ({s['clips']} clips)\nbase {100 * s['base']['error_rate']:.1f}%  "
                                     f"tuned {100 * s['tuned']['error_rate']:.1f}%" for name, s in sets])
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric} with bootstrap 95% CI")
    ax.set_ylim(0, top)
    ax.legend(loc="upper right", frameon=False)
    ax.grid(axis="y", alpha=0.3)


def draw_scatter(ax, m: dict, clips: list[dict]) -> None:
    """One point per clip: base error rate (x) vs tuned (y); below the diagonal the clip improved."""
    metric = m["metric"].upper()
    # Loops can push a clip far past 100%; those sit on the edge as triangles so the rest stays readable.
    cap = 100.0
    xs = [100 * c["base"]["error_rate"] for c in clips]
    ys = [100 * c["tuned"]["error_rate"] for c in clips]
    colors = [WORSE if c["change"] > 0 else BETTER if c["change"] < 0 else SAME for c in clips]
    top = max([min(v, cap) for v in xs + ys] + [10.0]) * 1.05
    ax.plot([0, top], [0, top], color="#444", lw=0.8, ls="--", zorder=1)
    inside = [i for i in range(len(clips)) if xs[i] <= cap and ys[i] <= cap]
    over = [i for i in range(len(clips)) if i not in set(inside)]
    ax.scatter([xs[i] for i in inside], [ys[i] for i in inside], c=[colors[i] for i in inside], s=22,
               alpha=0.75, edgecolors="none", zorder=2)
    if over:
        ax.scatter([min(xs[i], cap) for i in over], [min(ys[i], cap) for i in over], c=[colors[i] for i in over],
                   s=40, marker="^", alpha=0.9, edgecolors="none", zorder=2, clip_on=False)
    note = f"\n\u25b2 {len(over)} clip(s) over {cap:.0f}%, drawn at the edge" if over else ""
    ax.set_xlim(-top * 0.02, top)
    ax.set_ylim(-top * 0.02, top)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"base {metric} per clip (%)")
    ax.set_ylabel(f"tuned {metric} per clip (%)")
    worse = sum(c["change"] > 0 for c in clips)
    better = sum(c["change"] < 0 for c in clips)
    ax.set_title(f"per clip: {better} better, {worse} worse, {len(clips) - better - worse} same{note}")
    ax.grid(alpha=0.3)


def draw_error_types(ax, m: dict) -> None:
    """Substitutions, deletions, insertions as stacked bars, base and tuned, per set (in % of reference)."""
    bars = [(f"{name}\n{side}", s[side]) for name, s in _sets(m) for side in ("base", "tuned")]
    bottom = [0.0] * len(bars)
    for key, label, color in (("sub", "substitutions", "#e39b2d"), ("del", "deletions", "#c04f7c"),
                              ("ins", "insertions", "#5a8fd6")):
        ys = [100 * b[key] / b["units"] if b["units"] else 0.0 for _, b in bars]
        ax.bar(range(len(bars)), ys, 0.6, bottom=bottom, color=color, label=label)
        bottom = [b + y for b, y in zip(bottom, ys)]
    ax.set_xticks(range(len(bars)), [name for name, _ in bars])
    ax.set_ylabel("% of reference units")
    ax.set_title("error types")
    ax.set_ylim(0, max(bottom + [1.0]) * 1.25)
    ax.legend(loc="upper right", frameon=False, fontsize=8, ncols=3)
    ax.grid(axis="y", alpha=0.3)


def draw_hallucinations(ax, m: dict) -> None:
    """Clips flagged per signal (looping phrase, empty output, output over 2x the reference)."""
    keys = (("loops", "looping"), ("empty", "empty"), ("too_long", "> 2x length"))
    groups = [(name, side, s[side]["hallucination"]) for name, s in _sets(m) for side in ("base", "tuned")]
    width = 0.8 / len(groups)
    for j, (name, side, h) in enumerate(groups):
        xs = [i + (j - (len(groups) - 1) / 2) * width for i in range(len(keys))]
        ys = [h[k] for k, _ in keys]
        color = BASE if side == "base" else TUNED
        ax.bar(xs, ys, width * 0.95, color=color, alpha=1.0 if name == "test" else 0.55,
               hatch=None if name == "test" else "//", label=f"{name} {side}", edgecolor="white")
        for x, y in zip(xs, ys):
            ax.annotate(str(y), (x, y), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8)
    ax.set_xticks(range(len(keys)), [label for _, label in keys])
    ax.set_ylabel("clips flagged")
    ax.set_title("hallucination signals")
    most = max([g[2][k] for g in groups for k, _ in keys] + [1])
    ax.set_ylim(0, most * 1.3 + 0.5)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper right", frameon=False, fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def comparison_png(m: dict, clips: list[dict]) -> bytes:
    """The four panels on one page, with the verdict as the title: comparison.png."""
    fig = Figure(figsize=(12, 9), dpi=100, layout="constrained")
    axes = fig.subplots(2, 2)
    draw_rates(axes[0][0], m)
    draw_scatter(axes[0][1], m, clips)
    draw_error_types(axes[1][0], m)
    draw_hallucinations(axes[1][1], m)
    fig.suptitle(m["verdict_line"], fontsize=13, color=verdict_color(m["verdict"]), fontweight="bold")
    return _save(fig)


def verdict_color(verdict: str) -> str:
    return {"improved": BETTER, "worse": WORSE}.get(verdict, "#555")
