"""What makes a recording fit to fine-tune a voice (`prepare --task tts`): the checks, and their reason codes.

A voice is fine-tuned on one speaker's clean, exactly transcribed clips, at the base voice's sample rate and
in its phoneme inventory. On top of the recognition checks (checks.py), a clip is rejected when its text
holds what the voice would read by name or in another language (`unreadable_text`), when its phonemes fall
outside the base voice's phoneme map (`unknown_phoneme`: piper would drop them silently), when it is clipped,
when it sounds like another speaker than the rest of the set, or when Whisper does not hear its transcript.

Check order of a tts run (a clip gets the first reason that applies): checks.py's text reasons,
unreadable_text, unknown_phoneme, checks.py's audio reasons up to silent, clipped, rate_mismatch,
duplicate_audio, other_speaker, transcript_mismatch, split_leak.
"""
from __future__ import annotations

import unicodedata

import numpy as np

from ..errors import SpeechtuneError
from ..tts.hearing import base_language

DEFAULT_VOICE = "joe"  # the bundled piper voice en_US-joe-medium (22050 Hz)

# piper's own training recipe keeps 1-15 s utterances: under 1 s carries too little prosody to learn from,
# and VITS's monotonic alignment grows with text x frames, so long clips dominate the memory of a batch.
MIN_DURATION = 1.0
MAX_DURATION = 15.0

# A clipped sample sits at full scale. CLIP_LEVEL, not 1.0: resampling a clipped plateau to the voice's rate
# leaves it rippling just under full scale. Measured on joe clips (22050 Hz): peak-normalised to exactly 1.0,
# 0.002-0.006% of samples reach 0.99; overdriven x1.5 and clipped, 0.04-0.27%; x2, 0.5%; x3, 1-3.4% (the
# same within 0.01% after a 44.1 kHz round trip). So 0.1% passes any clean recording with a 15x margin and
# catches audible overdrive.
CLIP_LEVEL = 0.99
MAX_CLIPPED_FRACTION = 0.001

# One speaker: each clip's cosine similarity to the element-wise median of all the set's
# resemblyzer embeddings, rejected below max(SPEAKER_FLOOR, median - SPEAKER_K * max(MAD, MIN_SPEAKER_MAD)).
# Measured: 8 joe clips 0.886-0.963 (median 0.943, MAD 0.010); espeak-ng voices m1/f1/m3/f3 0.41-0.57.
# The floor rejects a clearly different voice even in a varied set; the MAD rule catches a similar voice in
# a consistent one. MIN_SPEAKER_MAD keeps a very uniform set (a synthetic voice: MAD 0.01) from rejecting
# its own livelier reads: with it the joe threshold is 0.82, six joe-MADs under joe's lowest clip.
SPEAKER_FLOOR = 0.70
SPEAKER_K = 6.0
MIN_SPEAKER_MAD = 0.02
MIN_SPEAKER_CLIPS = 3   # a median of fewer clips says nothing about which one is the odd one out

# joe's clips read back by tiny.en: CER 0.00; another sentence's text: 0.77. Domain terms are what Whisper
# gets wrong: espeak-ng readings of the demo's drug-name sentences scored a median CER of 0.27-0.50 by voice
# (0.04-0.21 for everyday sentences), so 0.5 rejected 45 of 150 correctly transcribed clips; 0.65 still
# sits well below a wrong transcript
MAX_CER = 0.65

# Reason codes a tts run adds to checks.REASONS (add, never rename), in the order the checks run.
REASONS = {
    "unreadable_text": "the transcript holds characters the voice reads by name or in another language "
                       "(another script, emoji): espeak-ng says 'Chinese letter' for each Han character",
    "unknown_phoneme": "the text has phonemes outside the base voice's phoneme map (piper would drop them)",
    "clipped": f"more than {100 * MAX_CLIPPED_FRACTION:g}% of the samples sit at full scale (the recording "
               "was overdriven)",
    "other_speaker": "the speaker embedding is far from the set's median voice (another speaker, or a "
                     "very different recording chain)",
    "transcript_mismatch": "Whisper's transcript differs from the text by more than --max-cer (CER)",
}

# Scripts (the first word of a letter's Unicode name) each non-Latin language is written in. Latin letters
# are accepted for every language (mixed text is common and espeak-ng reads it as English); any other letter
# is read by name ("Chinese letter", "Cyrillic ve") or through a language switch the voice never learnt.
SCRIPTS = {
    **dict.fromkeys(("ru", "uk", "be", "bg", "mk", "sr", "kk", "ky", "tt", "ba", "mn"), {"CYRILLIC"}),
    "el": {"GREEK"}, "he": {"HEBREW"}, "ka": {"GEORGIAN"}, "hy": {"ARMENIAN"}, "th": {"THAI"},
    **dict.fromkeys(("ar", "fa", "ur", "ps", "ug"), {"ARABIC"}),
    **dict.fromkeys(("hi", "mr", "ne", "sa"), {"DEVANAGARI"}),
    "bn": {"BENGALI"}, "ta": {"TAMIL"}, "te": {"TELUGU"}, "kn": {"KANNADA"}, "ml": {"MALAYALAM"},
    "gu": {"GUJARATI"}, "pa": {"GURMUKHI"}, "si": {"SINHALA"}, "am": {"ETHIOPIC"},
    **dict.fromkeys(("zh", "yue", "cmn"), {"CJK"}), "ja": {"CJK", "HIRAGANA", "KATAKANA"},
    "ko": {"HANGUL", "CJK"},
}
# Pictographs: arrows, maths and technical symbols, dingbats, emoji (symbols from U+2190 up). espeak-ng reads
# an emoji by its name (🍕 -> "pizza"), which no reader says, and "≠" as one of several things one could;
# ASCII and Latin-1 symbols (+ ° © ®) stay: people say "plus" and "degrees" too.
PICTOGRAPHS_FROM = 0x2190


def unreadable(text: str, language: str | None) -> tuple[str, str] | None:
    """("unreadable_text", detail) when `text` holds a letter of a script `language` is not written in, or a
    pictograph; else None. The detail names the characters (at most five), so the user can spell them out."""
    scripts = {"LATIN"} | SCRIPTS.get(base_language(language), set())
    bad = []
    for ch in dict.fromkeys(text):
        name = unicodedata.name(ch, "")
        foreign = ch.isalpha() and name.split(" ")[0] not in scripts
        picture = unicodedata.category(ch) in ("So", "Sm") and ord(ch) >= PICTOGRAPHS_FROM
        if foreign or picture:
            bad.append(f"{ch!r} ({name.lower() or hex(ord(ch))})")
    if not bad:
        return None
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return "unreadable_text", (f"{', '.join(bad[:5])}{more}: the voice (language {language or 'unknown'}) "
                               "reads these by name; write the words as they are spoken")


def phoneme_problem(voice, text: str) -> tuple[str, str] | None:
    """("unknown_phoneme", detail) when `voice.phonemize(text)` yields phonemes outside `voice.id_map` (the
    detail names them), or ("unreadable_text", detail) when it yields nothing to speak; else None."""
    try:
        sentences = voice.phonemize(text)
    except SpeechtuneError as e:
        return "unreadable_text", f"{e.message}: the voice has nothing to say for this text"
    missing = sorted({p for s in sentences for p in s if p not in voice.id_map})
    if not missing:
        return None
    return "unknown_phoneme", (f"phoneme(s) {' '.join(missing)} not in the phoneme map of voice {voice.name}; "
                               "drop the clip or choose a base voice of this language")


def clipped_fraction(wav: np.ndarray) -> float:
    """The fraction of samples at or above CLIP_LEVEL in magnitude (0.0 for an empty clip)."""
    return float(np.mean(np.abs(wav) >= CLIP_LEVEL)) if wav.size else 0.0


def clipping_problem(fraction: float) -> tuple[str, str] | None:
    """("clipped", detail) when more than MAX_CLIPPED_FRACTION of a clip's samples sit at full scale."""
    if fraction <= MAX_CLIPPED_FRACTION:
        return None
    return "clipped", (f"{100 * fraction:.2f}% of the samples are at full scale (at most "
                       f"{100 * MAX_CLIPPED_FRACTION:.1f}%): the recording was overdriven; record it again "
                       "with less input gain")


def speaker_similarity(embeddings: np.ndarray, floor: float = SPEAKER_FLOOR,
                       k: float = SPEAKER_K) -> tuple[np.ndarray, float, float]:
    """(each clip's cosine to the median voice, the set's median cosine, the threshold) for [n, d]
    embeddings, n >= MIN_SPEAKER_CLIPS. A clip is another speaker when its cosine < threshold =
    max(floor, median - k * max(MAD, MIN_SPEAKER_MAD)). The element-wise median embedding is the centroid:
    a few odd clips move it less than they would a mean."""
    from ..metrics.voice import cosine
    centroid = np.median(embeddings, axis=0)
    cos = cosine(embeddings, np.broadcast_to(centroid, embeddings.shape))
    median = float(np.median(cos))
    mad = float(np.median(np.abs(cos - median)))
    return cos, median, max(floor, median - k * max(mad, MIN_SPEAKER_MAD))


def speaker_problem(similarity: float, median: float, threshold: float) -> tuple[str, str] | None:
    """("other_speaker", detail) when a clip's similarity to the median voice is under the threshold."""
    if similarity >= threshold:
        return None
    return "other_speaker", (f"speaker similarity {similarity:.2f} to the set's median voice, under "
                             f"{threshold:.2f} (the set's median is {median:.2f}): another speaker? A voice is "
                             "fine-tuned on one; --speaker-floor / --speaker-k set the bar")


def cers(refs: list[str], hyps: list[str], languages: list[str | None]) -> list[float]:
    """Per clip character error rate of `hyps` against `refs`, both through recognition's normaliser (so
    "twenty-one" and "21" agree)."""
    from ..metrics.score import score_corpus
    langs = [base_language(lang) or None for lang in languages]
    return [c["error_rate"] for c in score_corpus(refs, hyps, language=langs, metric="cer")["clips"]]


def transcript_problem(cer: float, hyp: str, max_cer: float) -> tuple[str, str] | None:
    """("transcript_mismatch", detail) when Whisper's CER exceeds max_cer; the detail quotes what it heard."""
    if cer <= max_cer:
        return None
    heard = hyp if len(hyp) <= 80 else hyp[:77] + "..."
    return "transcript_mismatch", (f"CER {cer:.2f} over --max-cer {max_cer} between the text and what Whisper "
                                   f"hears ({heard!r}): fix the transcript or drop the clip")
