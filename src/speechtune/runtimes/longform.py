"""Long audio in bounded pieces, for any runtime: each piece transcribed on its own, the results joined.

A runtime's own long-form path (`transcribe(wav)`) holds the whole recording and its features in memory:
an hour of 16 kHz audio is 230 MB of samples before any features, and faster-whisper's features for it
peaked the server at 3.6 GB. Here the audio arrives as pieces (audio.pieces over audio.stream, cut at
quiet points), each one decoded through `runtime.transcribe` and shifted to its place, so memory depends on
the piece length, not the recording's. A caller that must stay responsive (serve) calls `LongTranscript.step`
once per piece and does other work between pieces.
"""
from __future__ import annotations

import dataclasses
import io
import itertools
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import audio
from ..audio import SAMPLE_RATE, WINDOW_S
from .base import DecodingOptions, Result, Segment, join_segments

# Pieces are cut near this length: one Whisper window, which decodes in a few seconds on 2 CPU cores. A
# short request in serve may wait behind one piece: with 60 s pieces it waited 8.6 s (p50) behind a long
# job on the 2 loaded cores, 2.9 s when idle (benchmarks/serve_long.py). Whisper's own long-form decoding
# moves through the audio 30 s at a time too; here each cut falls in a pause.
PIECE_S = 30.0
# Where a cut may go: the quietest 50 ms in the last this-many seconds of a piece (a pause between words).
CUT_SEARCH_S = 5.0
# Mel frames per second: a Segment's `seek` is counted in them.
FRAMES_PER_S = 100


def shift(segment: Segment, seconds: float, length: float) -> Segment:
    """`segment` of a piece `length` seconds long, moved `seconds` later: its times, clamped to the piece (a
    back end may end the last cue past the audio), and its window start where the back end gave one."""
    seek = None if segment.seek is None else segment.seek + int(round(seconds * FRAMES_PER_S))
    start, end = min(segment.start, length), min(segment.end, length)
    return dataclasses.replace(segment, start=round(start + seconds, 3), end=round(end + seconds, 3), seek=seek)


class LongTranscript:
    """One recording's transcription, a piece at a time: `step()` decodes the next piece and says whether
    any is left; `result()` joins what was decoded. Errors from the piece source (an AudioError part-way
    through a file) come out of `step()`."""

    def __init__(self, runtime, pieces: Iterator[tuple[float, np.ndarray]], options: DecodingOptions):
        self.runtime, self.options = runtime, options
        self._pieces = iter(pieces)
        self._results: list[tuple[float, float, Result]] = []  # (start, length, result) per piece
        self.seconds = 0.0  # audio decoded so far
        self.done = False

    def step(self) -> bool:
        """Decode the next piece; True while pieces remain."""
        nxt = next(self._pieces, None)
        if nxt is None:
            self.done = True
            return False
        offset, wav = nxt
        result = self.runtime.transcribe(wav, self.options)
        if self.options.language is None and result.language and getattr(self.runtime, "multilingual", False):
            # the first piece's language holds for the rest: a quiet piece must not flip the recording's language
            self.options = self.options.replace(language=result.language)
        self._results.append((offset, len(wav) / SAMPLE_RATE, result))
        self.seconds = offset + len(wav) / SAMPLE_RATE
        return True

    def result(self) -> Result:
        segments = [shift(s, offset, length) for offset, length, r in self._results for s in r.segments]
        language = next((r.language for *_, r in self._results if r.language), None)
        return Result(join_segments([r.text for *_, r in self._results]), language, round(self.seconds, 3),
                      segments)


def open_recording(source: bytes | str | Path, name: str | None = None, max_seconds: float | None = None
                   ) -> tuple[np.ndarray | None, Iterator | None]:
    """(samples, None) for audio of at most 30 s, decoded whole; (None, pieces) for longer audio, whose pieces
    are decoded as they are taken. Raises AudioError for what cannot be transcribed: undecodable, empty, or
    longer than `max_seconds` -- told from the header, or, when the file has none, by decoding it once
    (discarding the samples) before any model work."""
    if max_seconds is not None and audio.header_seconds(io.BytesIO(source) if isinstance(source, bytes) else str(source)) is None:
        for _ in audio.stream(source, name, max_seconds=max_seconds):
            pass
    blocks = audio.stream(source, name, max_seconds=max_seconds, block_s=WINDOW_S)
    first = next(blocks)
    second = next(blocks, None)
    if second is None:
        return first, None
    return None, audio.pieces(itertools.chain((first, second), blocks), PIECE_S, CUT_SEARCH_S)


def transcribe_pieces(runtime, pieces, options: DecodingOptions) -> Result:
    """The whole recording's Result, piece by piece."""
    job = LongTranscript(runtime, pieces, options)
    while job.step():
        pass
    return job.result()
