"""The one error family of the package: a stable code (listed in contract.ERROR_CODES) and a message."""

from __future__ import annotations

from .contract import ERROR_CODES


class ReferenceMelError(ValueError):
    """Input or configuration the node cannot serve. `code` is stable; `message` says what to do."""

    def __init__(self, code: str, message: str, *, voice: str | None = None):
        if code not in ERROR_CODES:  # a new code must be documented before it can be raised
            raise KeyError(f"error code {code!r} is not in contract.ERROR_CODES")
        super().__init__(message)
        self.code = code
        self.message = message
        self.voice = voice

    def to_dict(self) -> dict:
        return {"error": self.code, "message": self.message, "voice": self.voice}
