"""Export a Whisper model for deployment: CTranslate2 (faster-whisper) or ONNX (onnxruntime), parity-checked.

The exported folder is read back by `speechtune.runtimes.load_runtime`."""
from .recipe import convert, export

__all__ = ["convert", "export"]
