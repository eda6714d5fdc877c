"""Names and digests: which voice names may become file names, how a path is checked before it is
resolved, how values are shown in messages, and the digests that identify samples and stored data."""

from __future__ import annotations

import unicodedata

import numpy as np
import xxhash

from ..errors import ReferenceMelError
from ..limits import MAX_PATH_BYTES, MAX_VOICE_NAME_BYTES


def check_voice_name(name, *, entry: str | None = None) -> str:
    """A name safe as a file-name prefix in the codes directory, or `bad_voice` (or, for a voices.json
    key or alias, `bad_voices_config` naming the entry). Lengths count UTF-8 bytes, as file systems do."""
    code, what = ("bad_voices_config", f"voices.json entry {entry!r}: name") if entry else ("bad_voice", "voice")
    if not isinstance(name, str):
        raise ReferenceMelError(code, f"{what}={name!r} must be a string (a voice name in voices.json)")
    shown = ascii(name[:60] + ("..." if len(name) > 60 else ""))
    if not name.strip():
        raise ReferenceMelError(code, f"{what}={shown} is empty; use a voice name from voices.json")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ReferenceMelError(code, f"{what}={shown} is not valid Unicode (a lone surrogate, as an "
                                "undecodable file name gives); rename it") from None
    if size > MAX_VOICE_NAME_BYTES:
        raise ReferenceMelError(
            code, f"{what}={shown} is {size} bytes in UTF-8; names are at most {MAX_VOICE_NAME_BYTES} bytes "
            "(file names hold 255); use a shorter name or an alias")
    if any(unicodedata.category(c)[0] == "C" for c in name):
        raise ReferenceMelError(code, f"{what}={shown} contains control characters; use a plain name")
    if "/" in name or "\\" in name or name.startswith(".") or name != name.strip():
        raise ReferenceMelError(
            code, f"{what}={shown} is not a plain name (path separators, a leading dot or surrounding "
            "spaces); use the voice's name as voices.json has it")
    return name


def path_problem(text) -> str | None:
    """Why `text` cannot name a file (empty, not valid Unicode, a NUL, longer than PATH_MAX), or None.
    Checked before any path is resolved: resolution of a long path costs time quadratic in its length."""
    if not isinstance(text, str) or not text.strip():
        return "is empty"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    if size > MAX_PATH_BYTES:
        return f"is {size} bytes long; a path holds at most {MAX_PATH_BYTES}"
    if "\0" in text:
        return "contains a NUL character"
    return None


def shown(text, limit: int = 160) -> str:
    """A value as it may appear in a message: printable characters as they are (a CJK name stays
    readable), the rest escaped; cut to about `limit` characters before escaping, so that a 2 MB value
    costs no more than a short one."""
    escape, text = (printable, text) if isinstance(text, str) else (str, repr(text))  # repr escapes already
    if len(text) <= limit:
        return escape(text)
    return f"{escape(text[:limit - 40])}...{escape(text[-30:])} ({len(text)} characters)"


def printable(text: str) -> str:
    """`text` with what a terminal cannot show as written (controls, lone surrogates, format and
    unassigned characters) escaped as Python writes it, and backslashes doubled, so that no escape is
    ambiguous; every printable character, CJK included, as it is."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else ascii(c)[1:-1] for c in text)


def samples_digest(samples: np.ndarray, sample_rate: int) -> str:
    """xxh3-128 of float32 [n, channels] PCM with its rate and channel count: the source identity.

    A non-cryptographic hash is enough here: an accidental collision among 2^128 values does not
    happen, and a crafted one needs someone who can already send this node any audio it likes."""
    digest = xxhash.xxh3_128(f"{int(sample_rate)}:{samples.shape[1]}:".encode())
    digest.update(np.ascontiguousarray(samples, dtype=np.float32).data)
    return digest.hexdigest()


def data_digest(blob) -> str:
    return xxhash.xxh3_128_hexdigest(blob)
