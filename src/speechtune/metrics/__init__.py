"""Scoring: normalisers, WER/CER with jiwer, paired bootstrap, hallucination signals."""
from .bootstrap import paired_bootstrap, verdict, verdict_line
from .normalize import normalize
from .score import metric_for, score_corpus

__all__ = ["normalize", "metric_for", "score_corpus", "paired_bootstrap", "verdict", "verdict_line"]
