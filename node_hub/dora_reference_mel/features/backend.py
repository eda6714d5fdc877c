"""The device the features run on, decided in one place: MLX's default device, whether MLX's CUDA backend
serves it (then cuda_kernels' kernels and copies replace the generic ops), and the compile policy: which
resampling rate pairs may run through compiled CPU kernels.

A compiled kernel is built with g++ the first time a rate pair meets it (seconds; minutes for a cold
machine's whole set), so nothing compiles unless asked: the node asks for the pairs its start-up
warm-up builds (spectrogram.warm_up), and a clip at any other rate resamples through the strided form,
the same output. The library API and the `reference-mel` tool never compile unless their caller calls
`compile_pairs` (or warm_up) itself.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable

import mlx.core as mx

from ..errors import ReferenceMelError
from ..limits import DEVICES
from . import cpu_memory


@dataclasses.dataclass(frozen=True)
class Backend:
    device: str  # "gpu" or "cpu"
    cuda: bool = False  # a CUDA GPU: cuda_kernels' kernels and DMA copies serve the graph
    compiled_pairs: frozenset[tuple[int, int]] = frozenset()  # (orig, new) rates resampled by compiled kernels

    @property
    def cpu(self) -> bool:
        return self.device == "cpu"


_selected: Backend | None = None


@functools.cache
def cuda_available() -> bool:
    """Whether MLX has a CUDA GPU here (False on Metal, on the CPU, and without MLX's CUDA backend)."""
    try:
        return bool(hasattr(mx, "cuda") and mx.cuda.is_available())
    except (AttributeError, RuntimeError):
        return False


def current() -> Backend:
    """The backend `select` chose; until something selects one, MLX's default device as it is, compiling nothing."""
    if _selected is not None:
        return _selected
    device = "gpu" if mx.default_device() == mx.gpu else "cpu"
    return Backend(device, cuda=device == "gpu" and cuda_available())


def select(name: str) -> Backend:
    """Make MLX's default device the one MEL_DEVICE names (auto, gpu or cpu; on the CPU, with its freed
    memory reused: cpu_memory), compiling nothing yet; `bad_config` when MLX has no such device."""
    global _selected
    if name not in DEVICES:
        raise ReferenceMelError("bad_config", f"MEL_DEVICE={name!r} must be auto, gpu or cpu")
    has_gpu = mx.is_available(mx.gpu)
    if name == "gpu" and not has_gpu:
        raise ReferenceMelError("bad_config", "MEL_DEVICE=gpu but MLX has no GPU here; use auto or cpu")
    device = "gpu" if (name == "gpu" or (name == "auto" and has_gpu)) else "cpu"
    mx.set_default_device(mx.gpu if device == "gpu" else mx.cpu)
    if device == "cpu":
        cpu_memory.keep_freed_memory()
    _selected = Backend(device, cuda=device == "gpu" and cuda_available())
    return _selected


def compile_pairs(pairs: Iterable[tuple[int, int]]) -> Backend:
    """Let exactly these (orig, new) rate pairs resample through compiled CPU kernels (built on first use)."""
    global _selected
    _selected = dataclasses.replace(current(), compiled_pairs=frozenset(pairs))
    return _selected
