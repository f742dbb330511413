"""speechtune: fine-tune Whisper on your own recordings, prove it got better, export and serve it.

The Python API mirrors the CLI:

    from speechtune import load_model, transcribe
    model = load_model("tiny.en")
    print(transcribe(model, "clip.wav").text)              # or transcribe("tiny.en", ...), or an export folder
    print(transcribe(model, "clip.wav", timestamps=True).segments)
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy so that `import speechtune` (and the CLI's --help) stays fast: torch loads only when needed.
    if name == "load_model":
        from .models import load_model
        return load_model
    if name == "transcribe":
        from .runtimes import transcribe_audio
        return transcribe_audio
    if name == "resolve_model":
        from .models import resolve_model
        return resolve_model
    raise AttributeError(name)
