"""Model loading: every spec a user may have becomes a Hugging Face Whisper folder (see registry.py)."""
from .registry import BUNDLED, Whisper, cache_dir, load_model, resolve_model

__all__ = ["BUNDLED", "Whisper", "cache_dir", "load_model", "resolve_model"]
