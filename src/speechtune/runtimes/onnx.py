"""An ONNX export (`speechtune export --format onnx`, see export/onnx.py for its graphs) as a runtime:
onnxruntime on the CPU, greedy (or sampled) decoding in numpy, text without segment times.

Greedy decoding, as `OnnxRuntime.transcribe_batch` does it (the same rules HF `generate` applies with one
beam, so on the same weights both give the same tokens):

    1. features = WhisperFeatureExtractor(wav) padded to 30 s;  kv = encoder(features)  (all its outputs)
    2. tokens = <|startoftranscript|> [<|lang|> <|transcribe|>] <|notimestamps|>   (language detected from
       the first decoder step's logits over language tokens when not given, multilingual models only)
    3. repeat: logits, cache = decoder(the tokens not yet in the cache, *kv, *cache);
       logits[suppress_tokens] = -inf; on the first step also logits[begin_suppress_tokens] = -inf;
       next = argmax; a sequence that produced <|endoftext|> leaves the batch (HF keeps it, padded: the same
       tokens); stop when all have ended, the length reaches max_target_positions (448), or after
       `runtimes.base.max_new_tokens(seconds)` new tokens (the cap HF decoding uses here too).
    4. text = tokenizer.decode(generated, skip_special_tokens=True)

At a temperature t > 0 step 3 samples instead of taking the argmax: next = argmax(logits / t + Gumbel noise),
a draw from softmax(logits / t), from a generator seeded with safeguards.SAMPLING_SEED. The safeguards
(safeguards.py) run over this loop: each step also adds log_softmax(logits)[next] to the sequence's sum
(openai-whisper's sum_logprobs, the <|endoftext|> included), and one decoder step on <|startoftranscript|>
alone (the one language detection reads) gives P(<|nospeech|>) of the clips that need it. A fallback
re-decodes only the clips that failed, from the encoder output already computed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE, WINDOW_SAMPLES
from ..errors import SpeechtuneError
from .base import DecodingOptions, Result, check_language, decode_language, join_segments, max_new_tokens, seconds
from .safeguards import (SAMPLING_SEED, Attempt, average_logprob, decode_with_fallback, empty_result, inaudible,
                         no_speech_token, result_of, skip_inaudible)


class OnnxRuntime:
    """An ONNX export run with onnxruntime (CPU), greedy decoding as in the module docstring."""

    name = "onnx"
    supports = frozenset({"sampling"})

    def __init__(self, folder: str | Path, threads: int = 0):
        import onnxruntime as ort
        from transformers import GenerationConfig, WhisperFeatureExtractor, WhisperTokenizer

        self.path = Path(folder)
        for name in ("encoder.onnx", "decoder.onnx", "generation_config.json", "tokenizer.json"):
            if not (self.path / name).is_file():
                raise SpeechtuneError(f"{folder}: not an ONNX Whisper export (no {name})",
                                      "export with `speechtune export MODEL --format onnx --out DIR`")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        # idle onnxruntime threads otherwise spin between runs, taking the cores from the Python work between
        # them (features, the greedy loop): 17% of the wall time on tiny.en at batch 1 (docs/benchmarks.md)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.encoder = ort.InferenceSession(str(self.path / "encoder.onnx"), opts, providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(self.path / "decoder.onnx"), opts, providers=["CPUExecutionProvider"])
        # what the encoder hands the decoder, in order: cross_k_0, cross_v_0, ...; older exports pass one tensor
        # (encoder_hidden_states, or cross_kv)
        self.memory = [i.name for i in self.decoder.get_inputs()[1:] if not i.name.startswith("past_")]
        # the decoder's self-attention cache inputs; none in exports made before it had one
        self.past = [i for i in self.decoder.get_inputs() if i.name.startswith("past_")]
        self.gen = GenerationConfig.from_pretrained(self.path)
        self.features = WhisperFeatureExtractor.from_pretrained(self.path)
        self.tokenizer = WhisperTokenizer.from_pretrained(self.path)
        self.multilingual = bool(getattr(self.gen, "is_multilingual", False))
        self.languages = {k[2:-2] for k in (getattr(self.gen, "lang_to_id", None) or {})}
        self.max_length = json.loads((self.path / "config.json").read_text()).get("max_target_positions", 448)

    def encode(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        """What the decoder reads, each array batch first: every layer's cross-attention keys and values (the
        encoder output itself in exports made before the encoder graph computed those)."""
        feats = self.features(wavs, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features.astype(np.float32)
        # one clip per run: the attention scores of a batch of 8 (432 MB a layer for tiny.en) outgrow the caches,
        # and a clip took 208 ms in a batch of 8 against 165 ms alone (no gain at 2 or 4 either)
        runs = [self.encoder.run(None, {"input_features": feats[i:i + 1]}) for i in range(len(feats))]
        return [np.concatenate(parts) for parts in zip(*runs)]

    def step(self, ids: np.ndarray, memory: list[np.ndarray], cache: list[np.ndarray] | None = None):
        """Logits after each row of `ids` [batch, tokens], and the self-attention cache to pass with the same rows
        next time; only the tokens the cache lacks are fed (all of them when it is None)."""
        feed = dict(zip(self.memory, memory))
        if not self.past:  # exports made before the cache re-read the whole prefix at every step
            out = self.decoder.run(None, {"input_ids": ids.astype(np.int64), **feed})[0]
            return (out if out.ndim == 2 else out[:, -1]), None  # older still: every position's logits
        if cache is None:  # one placeholder slot (see the module docstring)
            cache = [np.zeros((len(ids), p.shape[1], 1, p.shape[3]), dtype=np.float32) for p in self.past]
        feed.update(zip((p.name for p in self.past), cache))
        logits, *cache = self.decoder.run(None, {"input_ids": ids[:, cache[0].shape[2] - 1:].astype(np.int64), **feed})
        return logits, cache

    def first_logits(self, hidden: list[np.ndarray]) -> np.ndarray:
        """The logits after <|startoftranscript|> alone, per clip: language detection and P(<|nospeech|>)."""
        first = np.full((len(hidden[0]), 1), self.gen.decoder_start_token_id)
        return self.step(first, hidden)[0]

    def detect_language(self, hidden: list[np.ndarray]) -> list[str]:
        lang_ids = np.array(sorted(self.gen.lang_to_id.values()))
        best = lang_ids[self.first_logits(hidden)[:, lang_ids].argmax(-1)]
        names = {v: k[2:-2] for k, v in self.gen.lang_to_id.items()}
        return [names[int(i)] for i in best]

    def no_speech_probs(self, logits: np.ndarray) -> list[float]:
        """P(<|nospeech|>) from `first_logits`."""
        top = logits.max(-1, keepdims=True)
        probs = np.exp(logits - top) / np.exp(logits - top).sum(-1, keepdims=True)
        return probs[:, no_speech_token(self.gen)].tolist()

    def generate(self, hidden: list[np.ndarray], prefixes: list[list[int]], max_new_tokens: int | None = None) -> list[list[int]]:
        """Greedy tokens after each prefix (prefixes of equal length), without the prefix and the final EOT."""
        return self.sample(hidden, prefixes, max_new_tokens)[0]

    def sample(self, hidden: list[np.ndarray], prefixes: list[list[int]], max_new_tokens: int | None = None,
               temperature: float = 0.0, scores: bool = False) -> tuple[list[list[int]], list[float | None]]:
        """Tokens after each prefix (prefixes of equal length), without the prefix and the final EOT: greedy at
        temperature 0, else sampled (module docstring); with `scores`, each sequence's summed log-probability
        (EOT included), else Nones."""
        eot = self.gen.eos_token_id
        suppress = np.array(self.gen.suppress_tokens or [], dtype=np.int64)
        begin = np.array(self.gen.begin_suppress_tokens or [], dtype=np.int64)
        ids = np.array(prefixes, dtype=np.int64)
        start = ids.shape[1]
        limit = self.max_length if max_new_tokens is None else min(self.max_length, start + max_new_tokens)
        rows = np.arange(len(ids))  # the caller's row of each sequence still decoding
        out: list[list[int]] = [[] for _ in prefixes]
        sums = np.zeros(len(ids)) if scores else None
        rng = np.random.default_rng(SAMPLING_SEED)
        cache = None
        while len(rows) and ids.shape[1] < limit:
            logits, cache = self.step(ids, hidden, cache)
            logits[:, suppress] = -np.inf
            if ids.shape[1] == start:
                logits[:, begin] = -np.inf
            nxt = pick(logits, temperature, rng)
            if scores:
                sums[rows] += chosen_logprobs(logits, nxt)
            ids = np.concatenate([ids, nxt[:, None]], axis=1)
            live = ids[:, -1] != eot
            if not live.all():
                # finished sequences leave the batch: every step reads each row's cross-attention keys and
                # values (18 MB a clip for tiny.en), the bulk of a step's time at batch 8
                for r, seq in zip(rows[~live], ids[~live]):
                    out[r] = seq[start:-1].tolist()
                rows, ids, hidden = rows[live], ids[live], [m[live] for m in hidden]
                cache = None if cache is None else [c[live] for c in cache]
        for r, seq in zip(rows, ids):
            out[r] = seq[start:].tolist()
        return out, (sums.tolist() if scores else [None] * len(out))

    def prefix(self, language: str | None) -> list[int]:
        from ..models.whisper import prefix_ids
        return prefix_ids(self.gen, language if self.multilingual else None)

    def check_language(self, language: str | None) -> None:
        check_language(self, language)

    def transcribe_batch(self, wavs: list[np.ndarray], options: DecodingOptions,
                         languages: list[str | None] | None = None, prompts=None) -> list[Result]:
        """Texts of clips <= 30 s, through the safeguards (`prompts` are not supported: check_options refuses
        them first). Inaudible clips are not decoded (safeguards.skip_inaudible)."""
        return skip_inaudible(self._transcribe_audible, wavs, options, languages, prompts, self.multilingual)

    def _transcribe_audible(self, wavs: list[np.ndarray], options: DecodingOptions,
                            languages: list[str | None], prompts=None) -> list[Result]:
        budget = max_new_tokens(max(seconds(w) for w in wavs))
        hidden = self.encode(wavs)
        langs = [decode_language(self, x) for x in (languages or [options.language] * len(wavs))]
        if self.multilingual and None in langs:
            detected = self.detect_language(hidden)
            langs = [x or d for x, d in zip(langs, detected)]
        results: list[Result | None] = [None] * len(wavs)
        for lang in dict.fromkeys(langs):  # one prefix length per group keeps the batch rectangular
            idx = [i for i, x in enumerate(langs) if x == lang]
            group = [m[idx] for m in hidden]

            def decode(sub: list[int], temperature: float, group=group, lang=lang) -> list[Attempt]:
                tokens, sums = self.sample([m[sub] for m in group], [self.prefix(lang)] * len(sub), budget,
                                           temperature, scores=options.safeguards)
                return [Attempt(self.tokenizer.decode(t, skip_special_tokens=True).strip(), t,
                                None if s is None else average_logprob(s, len(t))) for t, s in zip(tokens, sums)]

            def no_speech(sub: list[int], group=group) -> list[float]:
                return self.no_speech_probs(self.first_logits([m[sub] for m in group]))

            for i, a in zip(idx, decode_with_fallback(decode, len(idx), options, no_speech)):
                results[i] = result_of(a, lang if self.multilingual else "en", seconds(wavs[i]))
        return results

    def transcribe(self, wav: np.ndarray, options: DecodingOptions) -> Result:
        """Any length, in consecutive 30 s windows (no timestamp-guided seeking: words at a cut may split)."""
        if inaudible(wav, options):
            return empty_result(wav, options.language if self.multilingual else "en")
        parts = [wav[i:i + WINDOW_SAMPLES] for i in range(0, len(wav), WINDOW_SAMPLES)]
        results = self.transcribe_batch(parts, options)
        language = results[0].language if results else options.language
        return Result(join_segments([r.text for r in results]), language, seconds(wav))


def pick(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """The next token of each row: the argmax at temperature 0, else a draw from softmax(logits / t) (the
    Gumbel-max trick: argmax of logits / t plus -log(-log(U)) noise)."""
    if temperature <= 0:
        return logits.argmax(-1)
    noise = -np.log(-np.log(rng.uniform(np.finfo(np.float32).tiny, 1.0, logits.shape)))
    return (logits / temperature + noise).argmax(-1)


def chosen_logprobs(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """log_softmax(logits)[row, token] per row, at temperature 1 (openai-whisper's sum_logprobs)."""
    top = logits.max(-1)
    norm = top + np.log(np.exp(logits - top[:, None]).sum(-1))
    return logits[np.arange(len(tokens)), tokens] - norm
