"""Text -> IPA phonemes -> phoneme ids, the way piper voices were trained to read them.

Piper voices (VITS, `phoneme_type: espeak`) take espeak-ng's IPA (`espeak_TextToPhonemes`, phoneme mode
`espeakPHONEMES_IPA` = 0x02), split into Unicode code points after NFD decomposition, one sentence at a
time. Each clause is phonemized on its own and followed by the punctuation that ended it (`. ? !` end a
sentence; `, : ;` are kept with a space after them), and text that ends without punctuation gets a `.`, as
piper does (its espeak-ng fork reports the clause terminator; the stock espeak-ng 1.52 of espeakng-loader
does not, so we split clauses here, on the same punctuation, before asking espeak-ng). espeak-ng's
language-switch marks, `(fr)...(en)`, are dropped.

Ids follow piper's `phonemes_to_ids`: `^` then `_`, then each phoneme's ids followed by `_` (pad), then `$`.
Phonemes missing from the voice's `phoneme_id_map` are skipped (piper logs and skips them too).

espeak-ng is the C library bundled by `espeakng-loader`, driven through ctypes like speechtune.synth: loaded
and unloaded per call (a few milliseconds) under a lock, so no espeak state outlives a call and synth's
guarantee that a synthesized corpus is a pure function of its arguments still holds in the same process.
"""
from __future__ import annotations

import ctypes
import re
import threading
import unicodedata

from ..errors import SpeechtuneError

BOS, EOS, PAD = "^", "$", "_"
SENTENCE_END = ".?!"
CLAUSE_END = ",:;"
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_PHONEMES_IPA = 0x02
# A terminator is punctuation followed by whitespace or the end (closing quotes/brackets may sit between):
# "3.5", "e.g" inside a word and "a,b" are not clause ends.
_TERMINATOR = re.compile(r"(\.{3}|…|[.?!]+|[,:;])[\"'”’)\]]*(?=\s|$)")
_LANG_SWITCH = re.compile(r"\([^)]*\)")
_lock = threading.Lock()


def clauses(text: str) -> list[tuple[str, str, bool]]:
    """(clause text, its terminator, whether it ends a sentence). A paragraph break (blank line) ends a
    sentence; text that ends without punctuation gets ".". An ellipsis is a pause (","), not an end."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        pos = 0
        for m in _TERMINATOR.finditer(paragraph):
            mark = m.group(1)
            term = "," if mark in ("...", "…") else "?" if "?" in mark else "!" if "!" in mark else mark[0]
            out.append((paragraph[pos:m.start()].strip(), term, term in SENTENCE_END))
            pos = m.end()
        rest = paragraph[pos:].strip()
        if rest:
            out.append((rest, ".", True))
        elif out and not out[-1][2]:
            out[-1] = (out[-1][0], out[-1][1], True)  # a paragraph ending on "," still ends the sentence
    return out


def _espeak_phonemes(pieces: list[str], voice: str) -> list[str]:
    """IPA for each piece of text (one espeak-ng session for all of them)."""
    import _ctypes

    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    try:
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        if lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0) <= 0:
            raise SpeechtuneError("espeak-ng failed to initialise", "reinstall espeakng-loader")
        try:
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise SpeechtuneError(f"espeak-ng has no voice {voice!r} (named by the voice's .onnx.json)",
                                      "fix espeak.voice in the voice's .onnx.json, e.g. en-us")
            out = []
            for piece in pieces:
                buf = ctypes.create_string_buffer(piece.encode("utf-8"))
                ptr = ctypes.c_char_p(ctypes.addressof(buf))
                parts = []
                # espeak-ng returns one clause per call and advances the pointer; NULL at the end
                while ptr.value:
                    ipa = lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, _PHONEMES_IPA)
                    if ipa:
                        parts.append(ipa.decode("utf-8", errors="replace").strip())
                out.append(" ".join(p for p in parts if p))
            return out
        finally:
            lib.espeak_Terminate()
    finally:
        _ctypes.dlclose(lib._handle)


def phonemize(text: str, voice: str = "en-us") -> list[list[str]]:
    """Phonemes (single code points, punctuation included) of each sentence of already normalised text."""
    parts = clauses(text)
    with _lock:
        ipa = _espeak_phonemes([c for c, _, _ in parts], voice)
    sentences: list[list[str]] = []
    current: list[str] = []
    for (_, term, ends), phonemes in zip(parts, ipa):
        phonemes = _LANG_SWITCH.sub("", phonemes).strip()
        if phonemes or current:  # a lone "?!" with nothing before it says nothing
            current.extend(unicodedata.normalize("NFD", phonemes + term + (" " if term in CLAUSE_END else "")))
        if ends and current:
            while current and current[-1] == " ":
                current.pop()
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    return [s for s in sentences if any(p.strip() and p not in SENTENCE_END + CLAUSE_END for p in s)]


def merge_clusters(phonemes: list[str], clusters: set[tuple[str, ...]]) -> list[str]:
    """Join runs of phonemes the voice has one id for (its config's `vowel_clusters`, e.g. a + ɪ -> aɪ)."""
    if not clusters:
        return phonemes
    longest = max(len(c) for c in clusters)
    out, i = [], 0
    while i < len(phonemes):
        for n in range(min(longest, len(phonemes) - i), 1, -1):
            if tuple(phonemes[i:i + n]) in clusters:
                out.append("".join(phonemes[i:i + n]))
                i += n
                break
        else:
            out.append(phonemes[i])
            i += 1
    return out


def phoneme_ids(phonemes: list[str], id_map: dict[str, list[int]]) -> list[int]:
    """piper's scheme: ^ _ p1 _ p2 _ ... pn _ $ (each phoneme's ids, then the pad's)."""
    for sym in (BOS, EOS, PAD):
        if sym not in id_map:
            raise SpeechtuneError(f"the voice's phoneme_id_map has no {sym!r}", "is it a piper voice config?")
    ids = [*id_map[BOS], *id_map[PAD]]
    for p in phonemes:
        if p in id_map:
            ids += [*id_map[p], *id_map[PAD]]
    return ids + list(id_map[EOS])
