"""evaluation.py, the component every scoring command decodes through."""
from __future__ import annotations

def test_score_language_fallbacks():
    from speechtune.evaluation import score_language
    rows = [{"text": "hello", "language": "fr"}, {"text": "hello"}, {"text": "广州市房地产"}]
    assert score_language(rows, None, multilingual=False) == ["fr", "en", "en"]
    assert score_language(rows, None, multilingual=True) == ["fr", None, "zh"]
    assert score_language(rows, "de", multilingual=True) == ["fr", "de", "de"]
