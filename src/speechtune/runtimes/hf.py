"""transformers' `generate` as a runtime: any Hugging Face Whisper folder (and so any spec), PyTorch, CPU or CUDA.

Clips up to 30 s decode in batches; longer audio, or a request for timestamps, goes through Whisper's own
sequential long-form decoding (timestamps on, each 30 s window shifted to the last complete segment).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE, WINDOW_S
from .base import DecodingOptions, Result, Segment, check_language, join_segments, max_new_tokens, seconds

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
        gen.suppress_tokens = gen.begin_suppress_tokens = None  # ours above do it
        kw["num_beams"] = options.beam_size
        if options.temperature > 0:
            kw.update(do_sample=True, temperature=options.temperature)
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
        one language and one prompt per call, so clips are grouped by both."""
        languages = languages or [options.language] * len(wavs)
        prompts = prompts or [options.prompt] * len(wavs)
        results: list[Result | None] = [None] * len(wavs)
        for key in dict.fromkeys(zip(languages, prompts)):
            idx = [i for i, k in enumerate(zip(languages, prompts)) if k == key]
            lang, prompt = key
            for i, text in zip(idx, self._batch([wavs[i] for i in idx], options, lang, prompt)):
                language = lang if self.multilingual else "en"
                results[i] = Result(text, language, seconds(wavs[i]))
        return results

    def _batch(self, wavs: list[np.ndarray], options: DecodingOptions, language, prompt) -> list[str]:
        features, mask = self._features(wavs)
        budget = max_new_tokens(max(seconds(w) for w in wavs))
        out = self._generate(features, mask, options, language, max_new_tokens=budget, **self._prompt_ids(prompt))
        return [self._decode(ids, prompt) for ids in out]

    def transcribe(self, wav: np.ndarray, options: DecodingOptions) -> Result:
        """Any length. With `options.timestamps` (or past 30 s) segments carry real cue times."""
        duration = seconds(wav)
        if duration <= WINDOW_S and not options.timestamps:
            r = self.transcribe_batch([wav], options)[0]
            r.segments = [Segment(0.0, round(duration, 3), r.text)] if r.text else []
            return r
        features, mask = self._features([wav], long_form=True)
        out = self._generate(features, mask, options, options.language, return_timestamps=True,
                             return_segments=True, condition_on_prev_tokens=False,
                             **self._prompt_ids(options.prompt))
        segments = []
        for seg in out["segments"][0]:
            text = self.whisper.tokenizer.decode(seg["tokens"], skip_special_tokens=True).strip()
            if text:
                segments.append(Segment(round(float(seg["start"]), 3), round(min(float(seg["end"]), duration), 3),
                                        text, tokens=[int(t) for t in seg["tokens"]],
                                        temperature=options.temperature))
        text = join_segments([s.text for s in segments])
        return Result(text, options.language if self.multilingual else "en", duration, segments)
