"""Paired bootstrap over clips: is the tuned model's corpus error rate really different from the base's?

Both systems are scored on the same clips, so we resample clip indices with replacement and recompute
both corpus rates (total errors / total reference units) on each resample; the spread of the difference
gives a 95% percentile interval. The two-sided p-value comes from the same resamples,
p = 2 * min(#{d* >= 0}, #{d* <= 0}) / B, so p < 0.05 exactly when that interval leaves 0 out (up to
percentile interpolation) and the line never shows an interval across 0 next to a "significant" p.
Identical systems give d* = 0 everywhere and p = 1; a system better on every clip gives p = 0, reported
as below the resolution 2 / B.
"""
from __future__ import annotations

import numpy as np

ALPHA = 0.05


def paired_bootstrap(base_errors, tuned_errors, units, n_resamples: int = 2000, seed: int = 0,
                     chunk: int = 200) -> dict:
    """base_errors, tuned_errors, units: one number per clip (units = reference length, shared).

    Returns delta (tuned - base corpus rate, a fraction), ci95 [low, high], p_value, n_resamples, clips,
    and base_ci95 / tuned_ci95: the same resamples' intervals for each system's own rate (for plots).
    """
    a = np.asarray(base_errors, dtype=np.float64)
    b = np.asarray(tuned_errors, dtype=np.float64)
    n = np.asarray(units, dtype=np.float64)
    if not (a.shape == b.shape == n.shape) or a.ndim != 1:
        raise ValueError("base_errors, tuned_errors and units need one value per clip each")
    if a.size == 0:
        raise ValueError("no clips to compare")
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    delta = _rate(b.sum(), n.sum()) - _rate(a.sum(), n.sum())
    rng = np.random.default_rng(seed)
    rates_a, rates_b = np.empty(n_resamples), np.empty(n_resamples)
    # Chunks keep the index matrix small for large test sets (chunk x clips integers at a time).
    for start in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - start)
        idx = rng.integers(0, a.size, size=(k, a.size))
        tot = np.maximum(n[idx].sum(axis=1), 1.0)
        rates_a[start:start + k] = a[idx].sum(axis=1) / tot
        rates_b[start:start + k] = b[idx].sum(axis=1) / tot
    deltas = rates_b - rates_a
    low, high = _interval(deltas)
    # Ties (d* == 0, e.g. resamples that miss every clip where the systems differ) count on both sides.
    p = min(1.0, 2 * min(int((deltas >= 0).sum()), int((deltas <= 0).sum())) / n_resamples)
    return {"delta": float(delta), "ci95": [float(low), float(high)], "p_value": float(p),
            "n_resamples": n_resamples, "clips": int(a.size),
            "base_ci95": _interval(rates_a), "tuned_ci95": _interval(rates_b)}


def _interval(x: np.ndarray) -> list[float]:
    return [float(v) for v in np.percentile(x, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])]


def _rate(errors: float, units: float) -> float:
    return float(errors / units) if units else float(errors)


def verdict(result: dict) -> str:
    """'improved' / 'worse' only when the interval excludes 0 and p < 0.05; else 'no significant change'."""
    low, high = result["ci95"]
    if result["p_value"] < ALPHA and high < 0:
        return "improved"
    if result["p_value"] < ALPHA and low > 0:
        return "worse"
    return "no significant change"


def format_p(p: float, n_resamples: int | None = None) -> str:
    if p == 0 and n_resamples:  # no resample crossed 0: all we know is p is below the resolution
        return f"p<{max(2 / n_resamples, 0.001):.2g}"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


def verdict_line(metric: str, base_rate: float, tuned_rate: float, result: dict) -> str:
    """e.g. `improved: WER 60.3% -> 0.4% (-59.9 pt, 95% CI -64.0 .. -55.1, p<0.001)`."""
    low, high = result["ci95"]
    return (f"{verdict(result)}: {metric.upper()} {100 * base_rate:.1f}% -> {100 * tuned_rate:.1f}% "
            f"({100 * result['delta']:+.1f} pt, 95% CI {100 * low:+.1f} .. {100 * high:+.1f}, "
            f"{format_p(result['p_value'], result.get('n_resamples'))})")
