"""A few named tensors of a safetensors file that arrives from outside (a VOICE:TRAINED voice's SoVITS
weights), read without trusting the file: from a descriptor its caller opened and checked, the header
bounded, only the named tensors read (each bounded, its bytes checked against the header), and a digest of
exactly what was read, so a file replaced while it is read cannot lend its name to other tensors.

The safetensors layout (huggingface/safetensors, "Format"): an 8-byte little-endian header length, a JSON
header mapping each tensor's name to its dtype, shape and byte offsets, then the data.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import xxhash

from .hubert import ModelError

MAX_HEADER_BYTES = 1 << 23  # a SoVITS model's header is about 100 KB
FLOAT_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}  # bfloat16 as its bits
# torch.save's zip archive, or its legacy pickle (protocol 2, then a long): as a little-endian header length,
# more than MAX_HEADER_BYTES either way
TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02\x8a")


def read_tensors(fd: int, names: tuple[str, ...], source: str, max_elements: int) -> tuple[dict[str, np.ndarray], str]:
    """The tensors among `names` the file on `fd` holds, as float32, and the xxh3-128 digest of their names,
    dtypes, shapes and bytes; `bad_weights` for anything that is not such a file."""
    def refuse(why: str) -> ModelError:
        return ModelError("bad_weights", f"{source} {why}")

    size = os.fstat(fd).st_size
    start = os.pread(fd, 8, 0)
    if start.startswith(TORCH_MAGIC):  # read as a header length, over MAX_HEADER_BYTES: never a safetensors file
        raise refuse("is a torch checkpoint, which needs torch to read: its codes are left to the TTS node; convert it "
                     "to safetensors with torch's names, as the MLX line's setup does, to have them computed here")
    header_bytes = int.from_bytes(start, "little") if len(start) == 8 else 0
    if not 2 <= header_bytes <= min(MAX_HEADER_BYTES, size - 8):
        raise refuse("is not a safetensors file (no header of a plausible length)")
    try:
        header = json.loads(os.pread(fd, header_bytes, 8))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise refuse(f"is not a safetensors file (its header is not JSON: {err})") from None
    if not isinstance(header, dict):
        raise refuse("is not a safetensors file (its header is not an object)")
    tensors, digest = {}, xxhash.xxh3_128()
    for name in names:
        if name not in header:
            continue
        entry = header[name]
        dtype = FLOAT_DTYPES.get(entry.get("dtype")) if isinstance(entry, dict) else None
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if isinstance(entry, dict) else (None, None)
        if dtype is None or not _ints(shape) or not _ints(offsets) or len(offsets) != 2:
            raise refuse(f"has a tensor {name!r} that is not float32, float16 or bfloat16 with a shape and offsets")
        count = math.prod(shape)
        if count > max_elements or offsets[1] - offsets[0] != count * dtype.itemsize or offsets[0] < 0 \
                or 8 + header_bytes + offsets[1] > size:
            raise refuse(f"has a tensor {name!r} of shape {shape} that is over {max_elements} values or does not fit "
                         "its offsets and the file")
        data = os.pread(fd, offsets[1] - offsets[0], 8 + header_bytes + offsets[0])
        if len(data) != offsets[1] - offsets[0]:
            raise refuse(f"ended while {name!r} was read: it changed or is truncated")
        values = np.frombuffer(data, dtype).reshape(shape)
        tensors[name] = ((values.astype(np.uint32) << 16).view(np.float32) if entry["dtype"] == "BF16"
                         else values.astype(np.float32))
        digest.update(json.dumps([name, entry["dtype"], shape]).encode())
        digest.update(data)
    return tensors, digest.hexdigest()


def _ints(value) -> bool:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)
