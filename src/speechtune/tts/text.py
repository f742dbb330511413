"""Text normalisation before phonemization (English voices): numbers, money, ordinals and abbreviations
spelt out, so that espeak-ng reads them as a person would and the sentence splitter is not fooled by the
full stop of "Dr.".

Kept deliberately small and predictable; each rule is one regular expression, applied in this order:

1. abbreviations: Dr. -> doctor, Mr. -> mister, Mrs. -> missus, Ms. -> miz, Prof. -> professor,
   St. -> saint (before a capitalised word) / street, Jr./Sr., vs., etc., e.g., i.e., No. 5 -> number five,
   Mt., Ave., approx.
2. money: $42 -> forty-two dollars, $12.50 -> twelve dollars fifty cents, £/€ alike (pounds, euros).
3. percent: 42% -> forty-two percent.
4. ordinals: 1st, 22nd, 103rd, 4th -> first, twenty-second, one hundred third, fourth.
5. years: a bare four-digit 1100-1999 or 2010-2099 reads as a year (1999 -> nineteen ninety-nine;
   1900 -> nineteen hundred); 2000-2009 -> two thousand five.
6. times: 3:30 -> three thirty, 7:05 pm -> seven oh five p m, 9:00 -> nine o'clock.
7. numbers: 1,234,567 and 42 -> words (up to 999 trillion; longer ones digit by digit), 3.14 -> three
   point one four, -5 -> minus five.
8. symbols: & -> and, + between words -> plus.

What espeak-ng already reads well (times like 3:30, most other symbols) is left to it. Non-English voices
skip every rule: `normalize(text, lang)` only acts when `lang` starts with "en".
"""
from __future__ import annotations

import re

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10 ** 12, "trillion"), (10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand")]
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
            "nine": "ninth", "twelve": "twelfth"}

_ABBREVIATIONS = [
    (r"\bDr\.", "doctor"), (r"\bMr\.", "mister"), (r"\bMrs\.", "missus"), (r"\bMs\.", "miz"),
    (r"\bProf\.", "professor"), (r"\bSt\.(?=\s+[A-Z])", "saint"), (r"\bSt\.", "street"),
    (r"\bJr\.", "junior"), (r"\bSr\.", "senior"), (r"\bvs\.", "versus"), (r"\betc\.", "et cetera"),
    (r"\be\.g\.", "for example"), (r"\bi\.e\.", "that is"), (r"\bNo\.(?=\s*\d)", "number"),
    (r"\bMt\.", "mount"), (r"\bAve\.", "avenue"), (r"\bapprox\.", "approximately"),
]
_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
             "€": ("euro", "euros", "cent", "cents")}


def number_words(n: int) -> str:
    """0 <= n < 10**15 in words, American style without "and": 1234 -> one thousand two hundred thirty-four."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("-" + _ONES[n % 10] if n % 10 else "")
    if n < 1000:
        return _ONES[n // 100] + " hundred" + (" " + number_words(n % 100) if n % 100 else "")
    for value, name in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            return number_words(head) + " " + name + (" " + number_words(rest) if rest else "")
    raise AssertionError(n)


def ordinal_words(n: int) -> str:
    """21 -> twenty-first, 100 -> one hundredth."""
    words = number_words(n)
    head, sep, last = words.rpartition(" ") if "-" not in words.rsplit(" ", 1)[-1] else words.rpartition("-")
    if last in _ORDINAL:
        last = _ORDINAL[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + sep + last


def year_words(n: int) -> str:
    """1999 -> nineteen ninety-nine, 1900 -> nineteen hundred, 1905 -> nineteen oh five, 2005 -> two
    thousand five, 2024 -> twenty twenty-four."""
    if 2000 <= n <= 2009:
        return number_words(n)
    head, tail = divmod(n, 100)
    if tail == 0:
        return number_words(head) + " hundred"
    return number_words(head) + " " + (("oh " + _ONES[tail]) if tail < 10 else number_words(tail))


def _integer(digits: str) -> str:
    digits = digits.replace(",", "")
    if len(digits) > 15 or (len(digits) > 1 and digits.startswith("0")):
        return " ".join(_ONES[int(d)] for d in digits)  # a code or an id: read digit by digit
    return number_words(int(digits))


def _decimal(m: re.Match) -> str:
    whole, frac = m.group(1), m.group(2)
    return _integer(whole) + " point " + " ".join(_ONES[int(d)] for d in frac)


def _money(m: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCY[m.group(1)]
    whole = int(m.group(2).replace(",", ""))
    cents = int((m.group(3) or "0").ljust(2, "0")[:2])
    parts = []
    if whole or not cents:
        parts.append(f"{_integer(m.group(2))} {one if whole == 1 else many}")
    if cents:
        parts.append(f"{number_words(cents)} {sub_one if cents == 1 else sub_many}")
    return " ".join(parts)


def _time(m: re.Match) -> str:
    hours, minutes = int(m.group(1)), int(m.group(2))
    suffix = f" {m.group(3).lower()} m{m.group(4)}" if m.group(3) else ""
    if minutes == 0:
        return number_words(hours) + (suffix or " o'clock")
    return number_words(hours) + " " + (("oh " + _ONES[minutes]) if minutes < 10 else number_words(minutes)) + suffix


def _number(m: re.Match) -> str:
    sign, digits = m.group(1), m.group(2)
    plain = digits.replace(",", "")
    if not sign and "," not in digits and len(plain) == 4 and (1100 <= int(plain) <= 1999 or 2000 <= int(plain) <= 2099):
        return year_words(int(plain))
    return ("minus " if sign else "") + _integer(digits)


_NUMBER = r"\d{1,3}(?:,\d{3})+(?!\d)|\d+"


def normalize(text: str, lang: str = "en") -> str:
    """Spell out numbers, money, percentages, ordinals and common abbreviations (English only)."""
    if not lang.lower().startswith("en"):
        return text
    for pattern, words in _ABBREVIATIONS:
        text = re.sub(pattern, words, text)
    text = re.sub(rf"([$£€])\s?({_NUMBER})(?:\.(\d{{1,2}}))?(?!\d)", _money, text)
    text = re.sub(rf"({_NUMBER})(?:\.(\d+))?\s?%", lambda m: (_decimal(m) if m.group(2) else _integer(m.group(1)))
                  + " percent", text)
    text = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: ordinal_words(int(m.group(1))), text)
    text = re.sub(r"\b([01]?\d|2[0-3]):([0-5]\d)(?!\d)(?:\s?([AaPp])\.?[Mm]\b(\.?))?", _time, text)
    text = re.sub(rf"(?<![\w.])({_NUMBER})\.(\d+)\b", _decimal, text)
    text = re.sub(rf"(?<![\w.\-])(-)?({_NUMBER})\b", _number, text)
    text = re.sub(r"\s*&\s*", " and ", text)
    text = re.sub(r"(?<=\w)\s*\+\s*(?=\w)", " plus ", text)
    return text
