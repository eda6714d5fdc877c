"""Semantic prompt codes: the headerless int32 `.bin` the Rust MLX reader expects, or an integer `.npy`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..limits import CODE_RANGE
from .files import StoreFileError, read_regular


def parse_codes(blob: bytes, suffix: str) -> np.ndarray:
    """Codes as read-only int64 [N] from a headerless int32 LE .bin or an integer .npy (any int dtype)."""
    if suffix == ".npy":
        import io

        try:
            codes = np.load(io.BytesIO(blob), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"not a readable .npy ({str(err)[:80]})") from None
        if codes.dtype.kind not in "iu":
            raise ValueError(f"dtype {codes.dtype} is not an integer type")
        codes = codes.reshape(-1)
    else:
        if len(blob) % 4:
            raise ValueError(f"{len(blob)} bytes is not a whole number of int32 codes (truncated?)")
        codes = np.frombuffer(blob, dtype="<i4")
    if codes.size == 0:
        raise ValueError("it holds no codes")
    lo, hi = int(codes.min()), int(codes.max())
    if lo < CODE_RANGE[0] or hi > CODE_RANGE[1]:
        raise ValueError(f"values {lo}..{hi} are outside the codebook range {CODE_RANGE[0]}..{CODE_RANGE[1]}")
    codes = codes.astype(np.int64)
    codes.setflags(write=False)
    return codes


def read_codes(path: Path) -> np.ndarray:
    """Codes of one file, anywhere (tests and tools): see parse_codes."""
    try:
        blob, _ = read_regular(path, None, 1 << 24)
    except StoreFileError as err:
        raise ValueError(err.reason) from None
    return parse_codes(blob, Path(path).suffix)
