"""The one error family of the package: a stable code (documented in README) and a message."""

from __future__ import annotations


class ReferenceMelError(ValueError):
    """Input or configuration the node cannot serve. `code` is stable; `message` says what to do."""

    def __init__(self, code: str, message: str, *, voice: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.voice = voice

    def to_dict(self) -> dict:
        return {"error": self.code, "message": self.message, "voice": self.voice}
