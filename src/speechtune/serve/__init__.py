"""`speechtune serve`: an OpenAI-compatible transcription service (FastAPI), its worker and its client."""
