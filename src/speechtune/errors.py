"""The one error type a user sees. The CLI prints it as one line and exits 2; no traceback."""


class SpeechtuneError(Exception):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
