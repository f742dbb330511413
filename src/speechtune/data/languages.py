"""Dataset locale codes -> the language codes Whisper's language tokens use.

Common Voice, and the Hugging Face datasets made from it, name a language by a locale such as `zh-CN`,
`pt-BR` or `sv-SE`; Whisper has one token per language (`<|zh|>`, `<|pt|>`, `<|sv|>`). Most locales map
by dropping the region (`hy-AM` -> `hy`, `ne-NP` -> `ne`, `pa-IN` -> `pa`); LOCALES lists the ones that
do not, and says why. A language Whisper has no token for keeps its own code: `train` then refuses it
by name rather than training it under a wrong token.
"""
from __future__ import annotations

LOCALES = {
    # Common Voice's zh-HK is Cantonese in traditional characters, but Whisper before large-v3 (the
    # bundled base included) has no <|yue|> token and writes Cantonese as zh. Common Voice's own `yue`
    # locale stays yue, which only large-v3 and later know.
    "zh-hk": "zh",
    "yue": "yue",
    # Taiwanese Hokkien (Min Nan) is not Mandarin; Whisper has no token for it, so it is kept as nan.
    "nan-tw": "nan",
    # Whisper spells a few languages its own way.
    "jv": "jw",      # Javanese
    "nb": "no",      # Norwegian Bokmål: Whisper's `no` (Nynorsk is `nn`)
    "nb-no": "no",
    "fil": "tl",     # Filipino: Whisper's Tagalog token
    "iw": "he",      # the old ISO code for Hebrew
    # No Whisper token: Frisian, Irish, Romansh (both Common Voice variants). Listed so the choice is
    # visible; the region is dropped as for any other locale.
    "fy-nl": "fy",
    "ga-ie": "ga",
    "rm-sursilv": "rm",
    "rm-vallader": "rm",
}


def whisper_language(locale: str | None) -> str | None:
    """The Whisper language code for a dataset locale (`zh-CN` -> `zh`, `pt-BR` -> `pt`); None stays None.
    Case and `_` vs `-` do not matter."""
    if locale is None or not str(locale).strip():
        return None
    code = str(locale).strip().lower().replace("_", "-")
    if code in LOCALES:
        return LOCALES[code]
    base = code.split("-")[0]
    return LOCALES.get(base, base)
