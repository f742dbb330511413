"""Export a Whisper model for deployment: CTranslate2 (faster-whisper) or ONNX (onnxruntime), parity-checked."""
from .recipe import export, load_runtime

__all__ = ["export", "load_runtime"]
