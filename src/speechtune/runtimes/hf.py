"""transformers' `generate` as a runtime: any Hugging Face Whisper folder (and so any spec), PyTorch, CPU or CUDA.

Clips up to 30 s decode in batches, through the shared safeguards (safeguards.py): the encoder runs once per
batch, a fallback re-decodes only the clips that failed, avg_logprob comes from generate's scores and the
no-speech probability, for the doubtful clips only, from one decoder pass over the prefix up to
<|startoftranscript|>. (transformers' own short-form fallback re-runs the encoder for its no-speech
probability at every attempt.) Longer audio,
or a request for timestamps, goes through Whisper's own sequential long-form decoding (timestamps on, each
30 s window shifted to the last complete segment), with transformers' temperature fallback and thresholds,
where the compression ratio is measured over token ids (2 bytes each), not the text (loops score high in
both, ordinary sentences about 0.7 times as high in the former) and samples come from the 50 likeliest
tokens.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE, WINDOW_S
from .base import DecodingOptions, Result, Segment, check_language, join_segments, max_new_tokens, seconds
from .safeguards import (SAMPLING_SEED, Attempt, average_logprob, decode_with_fallback, empty_result, inaudible,
                         no_speech_token, result_of, skip_inaudible)

# mel frames in one 30 s window: long-form decoding needs at least one full window
WINDOW_FRAMES = 3000


@functools.lru_cache(maxsize=None)
def _suppress_classes():
    """Token suppression by indexing, as subclasses of transformers' own processors (Whisper's generate
    looks them up by class). transformers builds the mask with `torch.isin(arange(vocab), ids)` at every
    step, which on CPU builds of torch costs 8 ms single-threaded and 0.1-0.6 s with its thread pool busy:
    most of a CPU decoding step for tiny/base. Indexing the scores gives the same result (those logits become
    -inf) without the search. Defined once, on first use (transformers loads lazily)."""
    from transformers.generation import logits_process as lp

    class Suppress(lp.SuppressTokensLogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = scores.clone()
            scores[:, self.suppress_tokens.to(scores.device)] = -float("inf")
            return scores

    class SuppressAtBegin(lp.SuppressTokensAtBeginLogitsProcessor):
        def __call__(self, input_ids, scores):
            if input_ids.shape[-1] != self.begin_index:
                return scores
            scores = scores.clone()
            scores[:, self.begin_suppress_tokens.to(scores.device)] = -float("inf")
            return scores

    return Suppress, SuppressAtBegin


def _suppressors(generation_config):
    """The suppression processors for one `generate` call: passed per call, so nothing in the process is
    patched."""
    suppress, at_begin = _suppress_classes()
    out = []
    if generation_config.suppress_tokens:
        out.append(suppress(generation_config.suppress_tokens))
    if generation_config.begin_suppress_tokens:
        # begin_index is set by generate for every window (set_begin_index), before the first step
        out.append(at_begin(generation_config.begin_suppress_tokens, begin_index=0))
    return out


@contextlib.contextmanager
def _seeded(device, on: bool):
    """torch's generator seeded with SAMPLING_SEED inside, as it was outside."""
    import torch
    if not on:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(SAMPLING_SEED)
        yield


class HFRuntime:
    """A loaded `models.Whisper` bundle (model + processor), decoded with `generate`."""
    name = "hf"
    supports = frozenset({"beams", "sampling", "prompt", "timestamps", "translate"})

    def __init__(self, whisper):
        self.whisper = whisper
        self.path = Path(whisper.path)
        self.multilingual = whisper.multilingual
        gen = whisper.model.generation_config
        self.languages = {k[2:-2] for k in (getattr(gen, "lang_to_id", None) or {})}

    @property
    def model(self):
        return self.whisper.model

    def check_language(self, language: str | None) -> None:
        check_language(self, language)

    def _generate(self, features, mask, options: DecodingOptions, language: str | None, **kw):
        import copy

        import torch
        from transformers import LogitsProcessorList

        gen = copy.deepcopy(self.model.generation_config)
        processors = LogitsProcessorList(_suppressors(gen))
        # ours above do it. As arguments, not only on `gen`: transformers 5 fills a config's None fields from
        # the model's own config, which brought its torch.isin processors back (44% of a random tiny model's
        # decoding time, profiled on a busy 2-core CPU)
        gen.suppress_tokens = gen.begin_suppress_tokens = None
        kw.update(suppress_tokens=None, begin_suppress_tokens=None)
        if kw.pop("scores", False):
            gen.return_dict_in_generate = gen.output_scores = True
        kw["num_beams"] = options.beam_size
        if options.temperature > 0 and "temperature" not in kw:  # (long-form fallback passes its temperatures)
            kw.update(do_sample=True, temperature=options.temperature)
            # from the whole distribution, as openai-whisper (transformers' default keeps the top 50; set on
            # greedy calls too, it warns)
            gen.top_k = 0
        if self.multilingual:
            kw["task"] = options.task
            if language:
                kw["language"] = language
        with torch.inference_mode():
            return self.model.generate(features, attention_mask=mask, generation_config=gen,
                                       logits_processor=processors, **kw)

    def _features(self, wavs: list[np.ndarray], long_form: bool = False):
        fe = self.whisper.processor.feature_extractor
        kw = dict(sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True)
        inputs = fe(wavs, truncation=False, padding="longest", **kw) if long_form else fe(wavs, **kw)
        if long_form and inputs.input_features.shape[-1] < WINDOW_FRAMES:
            inputs = fe(wavs, **kw)
        model = self.model
        return inputs.input_features.to(model.device, model.dtype), inputs.attention_mask.to(model.device)

    def _prompt_ids(self, prompt: str | None) -> dict:
        import torch
        if not prompt:
            return {}
        ids = self.whisper.tokenizer.get_prompt_ids(prompt)
        return {"prompt_ids": torch.tensor(ids, device=self.model.device)}

    def _decode(self, ids, prompt: str | None) -> str:
        text = self.whisper.tokenizer.decode(ids, skip_special_tokens=True).strip()
        if prompt and text.startswith(prompt.strip()):  # generate returns the prompt in front of the transcript
            text = text[len(prompt.strip()):].strip()
        return text

    def transcribe_batch(self, wavs: list[np.ndarray], options: DecodingOptions,
                         languages: list[str | None] | None = None,
                         prompts: list[str | None] | None = None) -> list[Result]:
        """Clips of at most 30 s (longer ones are cut to the first window: use `transcribe`). generate takes
        one language and one prompt per call, so clips are grouped by both. Inaudible clips are not decoded
        (safeguards.skip_inaudible)."""
        return skip_inaudible(self._transcribe_audible, wavs, options, languages, prompts, self.multilingual)

    def _transcribe_audible(self, wavs: list[np.ndarray], options: DecodingOptions,
                            languages: list[str | None], prompts: list[str | None]) -> list[Result]:
        languages = languages or [options.language] * len(wavs)
        prompts = prompts or [options.prompt] * len(wavs)
        results: list[Result | None] = [None] * len(wavs)
        for key in dict.fromkeys(zip(languages, prompts)):
            idx = [i for i, k in enumerate(zip(languages, prompts)) if k == key]
            lang, prompt = key
            for i, attempt in zip(idx, self._batch([wavs[i] for i in idx], options, lang, prompt)):
                results[i] = result_of(attempt, lang if self.multilingual else "en", seconds(wavs[i]))
        return results

    def _batch(self, wavs: list[np.ndarray], options: DecodingOptions, language, prompt) -> list[Attempt]:
        """One language and prompt: each clip's kept attempt (safeguards.decode_with_fallback)."""
        features, mask = self._features(wavs)
        budget = max_new_tokens(max(seconds(w) for w in wavs))
        prompt_ids = self._prompt_ids(prompt)
        if not options.safeguards:  # one plain generate call, as before the safeguards
            def plain(idx: list[int], temperature: float) -> list[Attempt]:
                out = self._generate(features, mask, options, language, max_new_tokens=budget, **prompt_ids)
                return [Attempt(self._decode(ids, prompt)) for ids in out]
            return decode_with_fallback(plain, len(wavs), options)

        def decode(idx: list[int], temperature: float) -> list[Attempt]:
            opts = options.replace(temperature=temperature, beam_size=options.beam_size if temperature == 0 else 1)
            with _seeded(self.model.device, temperature > 0):
                # the features, not the cached encoder outputs: when a clip of a batch finishes first,
                # transformers' generate drops it from input_features (TypeError in _maybe_reduce_batch on
                # None, seen on a batch of noise, reversed speech and a 0.15 s clip)
                out = self._generate(features[idx], mask[idx], opts, language, max_new_tokens=budget,
                                     scores=True, **prompt_ids)
            return [Attempt(self._decode(ids, prompt), tokens, logprob)
                    for ids, (tokens, logprob) in zip(out.sequences, self._scored(out, opts))]
        return decode_with_fallback(decode, len(wavs), options,
                                    lambda idx: self._no_speech_probs(self._encode(features[idx]), prompt_ids))

    def _encode(self, features):
        import torch
        with torch.inference_mode():
            return self.model.get_encoder()(features).last_hidden_state

    def _no_speech_probs(self, encoded, prompt_ids: dict) -> list[float]:
        """P(<|nospeech|>) after <|startoftranscript|> (and the prompt before it), per clip: the decoder is
        causal, so the tokens after it (language, task) do not change it."""
        import torch
        gen = self.model.generation_config
        prefix = [*prompt_ids["prompt_ids"].tolist()] if prompt_ids else []
        ids = torch.tensor([prefix + [gen.decoder_start_token_id]] * len(encoded), device=encoded.device)
        with torch.inference_mode():
            logits = self.model(encoder_outputs=(encoded,), decoder_input_ids=ids).logits[:, -1]
        return logits.float().softmax(-1)[:, no_speech_token(gen)].tolist()

    def _scored(self, out, options: DecodingOptions) -> list[tuple[list[int], float]]:
        """Each sequence's generated text tokens (up to <|endoftext|>) and avg_logprob. generate's scores are
        the processed logits (suppression applied, divided by the temperature when sampling); beam search
        gives its own length-normalised score."""
        import torch
        gen = self.model.generation_config
        eot = gen.eos_token_id
        if options.beam_size > 1:
            return [(self._text_tokens(row.tolist()), float(s)) for row, s in zip(out.sequences, out.sequences_scores)]
        steps = len(out.scores)  # one a step; each sequence is the prefix, then one token a step (EOT padded)
        generated = out.sequences[:, out.sequences.shape[1] - steps:]
        lengths = [int((row == eot).nonzero()[0]) if (row == eot).any() else steps for row in generated]
        scale = options.temperature if options.temperature > 0 else 1.0
        with torch.inference_mode():
            logits = [s.float() * scale if scale != 1.0 else s.float() for s in out.scores]
            logprobs = torch.stack([s.gather(-1, generated[:, k:k + 1])[:, 0] - torch.logsumexp(s, -1)
                                    for k, s in enumerate(logits)], 1)
        return [(row[:n].tolist(), average_logprob(float(lp[:n + 1].sum()), n))
                for row, n, lp in zip(generated, lengths, logprobs)]

    def _text_tokens(self, row: list[int]) -> list[int]:
        """The tokens of a sequence after its decoder prefix (the prompt, <|startoftranscript|> and the special
        tokens after it), up to <|endoftext|>."""
        gen = self.model.generation_config
        k = row.index(gen.decoder_start_token_id) + 1
        while k < len(row) and row[k] > gen.eos_token_id:  # language, task, <|notimestamps|>: all above EOT
            k += 1
        return row[k:row.index(gen.eos_token_id, k) if gen.eos_token_id in row[k:] else len(row)]

    def transcribe(self, wav: np.ndarray, options: DecodingOptions) -> Result:
        """Any length. With `options.timestamps` (or past 30 s) segments carry real cue times."""
        duration = seconds(wav)
        if inaudible(wav, options):
            return empty_result(wav, options.language if self.multilingual else "en")
        if duration <= WINDOW_S and not options.timestamps:
            return self.transcribe_batch([wav], options)[0]
        features, mask = self._features([wav], long_form=True)
        prompt_ids = self._prompt_ids(options.prompt)
        # the cap per window, within the decoder's positions (the prompt, and up to 4 prefix tokens)
        room = self.model.config.max_target_positions - 4 - len(prompt_ids.get("prompt_ids", []))
        with _seeded(self.model.device, options.safeguards):
            out = self._generate(features, mask, options, options.language, return_timestamps=True,
                                 return_segments=True, condition_on_prev_tokens=False,
                                 max_new_tokens=min(max_new_tokens(duration), room),
                                 **self._long_form_safeguards(options), **prompt_ids)
        segments = []
        for seg in out["segments"][0]:
            text = self.whisper.tokenizer.decode(seg["tokens"], skip_special_tokens=True).strip()
            if text:
                # the temperature a window ended at is not returned by transformers: left unknown
                segments.append(Segment(round(float(seg["start"]), 3), round(min(float(seg["end"]), duration), 3),
                                        text, tokens=[int(t) for t in seg["tokens"]]))
        text = join_segments([s.text for s in segments])
        return Result(text, options.language if self.multilingual else "en", duration, segments)

    @staticmethod
    def _long_form_safeguards(options: DecodingOptions) -> dict:
        """transformers' own long-form fallback and thresholds, from the same options."""
        if not options.safeguards:
            return {}
        kw = {"compression_ratio_threshold": options.compression_ratio_threshold,
              "logprob_threshold": options.logprob_threshold, "no_speech_threshold": options.no_speech_threshold}
        if options.no_speech_threshold is not None and options.logprob_threshold is None:
            kw["no_speech_threshold"] = None  # transformers compares against logprob_threshold unguarded
        return {"temperature": options.temperatures, **{k: v for k, v in kw.items() if v is not None}}
