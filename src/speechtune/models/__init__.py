"""Model loading: every spec a user may have becomes a Hugging Face Whisper folder (see registry.py), or a CTC
model folder (ctc.py)."""
from .registry import BUNDLED, Whisper, cache_dir, load_model, model_type, resolve_model

__all__ = ["BUNDLED", "Whisper", "cache_dir", "load_model", "model_type", "resolve_model"]
