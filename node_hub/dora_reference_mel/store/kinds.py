"""The kinds of artifact the store holds and the resolver serves. A kind says how one artifact is computed
(one clip, or a batch in few device calls), what identifies its recipe (the fingerprint), where it lies
(the file stem in the codes directory, the voices.json key that may name another file) and how a stored
one is checked (its shape and size, finite values).

Today's kind is one preset's spectrogram (MelKind). The store and the resolver use only what
ArtifactKind declares, so another kind, such as the semantic codes (computed from 16 kHz samples by a
model whose weights digest is part of its fingerprint, stored as `<voice>_codes.bin`, int32 LE, with a
sidecar), is one more class here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from ..errors import ReferenceMelError
from ..features.recipe import PRESET_NAMES, V2_DEFAULT_BINS, Preset, get_preset
from ..limits import FRAMES_BINS


class ArtifactKind:
    """The interface: what the store and the resolver may ask of a kind."""

    name: str  # short, in file names and messages
    fingerprint: str  # changes whenever what compute returns would change
    file_suffix: str  # <voice><file_suffix>.bin (data) and .json (its sidecar) in the codes directory
    dtype: str  # the numpy dtype of the stored data, little-endian
    what: str  # the artifact in words, for messages
    layout: str  # how the data is laid out (its sidecar says it)

    def voice_path_key(self) -> str:
        """The voices.json key that may name this artifact's file for a voice."""
        raise NotImplementedError

    def recipe(self) -> dict:
        raise NotImplementedError

    def max_bytes(self, max_ref_seconds: float) -> int:
        """The largest stored data of a clip of at most `max_ref_seconds`."""
        raise NotImplementedError

    def shape_problem(self, shape, max_ref_seconds: float) -> str | None:
        """Why a sidecar's `shape` cannot be this kind's, or None."""
        raise NotImplementedError

    def legacy(self, blob: bytes) -> np.ndarray | str:
        """The data of a stored file without sidecar, or why such a file cannot serve."""
        raise NotImplementedError

    def check_length(self, n_samples: int, sample_rate: int) -> None:
        """`too_short` (or `bad_sample_rate`) when a clip cannot give this artifact."""
        raise NotImplementedError

    def compute(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        raise NotImplementedError

    def compute_batch(self, clips: Sequence[np.ndarray], sample_rates: Sequence[int]) -> list[np.ndarray]:
        raise NotImplementedError

    def problem(self, data: np.ndarray) -> str | None:
        """Why data (computed or read) cannot serve, or None: the one finiteness check."""
        raise NotImplementedError

    def file_stem(self, voice: str) -> str:
        return f"{voice}{self.file_suffix}"


@dataclasses.dataclass(frozen=True)
class MelKind(ArtifactKind):
    """One preset's reference feature matrix (float32, in the preset's layout, without the batch axis)."""

    preset: Preset
    dtype = "<f4"
    what = "spectrogram"

    @property
    def name(self) -> str:
        return self.preset.name

    @property
    def fingerprint(self) -> str:
        return self.preset.fingerprint

    @property
    def layout(self) -> str:
        return self.preset.layout

    @property
    def file_suffix(self) -> str:
        return "_mel" if self.preset.name == "v2" else f"_mel_{self.preset.name}"

    def voice_path_key(self) -> str:
        return "mel_path" if self.preset.name == "v2" else f"mel_{self.preset.name}_path"

    def recipe(self) -> dict:
        return self.preset.recipe()

    def max_frames(self, max_ref_seconds: float) -> int:
        preset = self.preset
        return preset.n_frames(int(max_ref_seconds * preset.sample_rate) + preset.sample_rate) + 1

    def max_bytes(self, max_ref_seconds: float) -> int:
        return self.preset.n_bins * self.max_frames(max_ref_seconds) * 4

    def shape_problem(self, shape, max_ref_seconds: float) -> str | None:
        preset, max_frames = self.preset, self.max_frames(max_ref_seconds)
        whole = isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
        frames = preset.frames_in(shape) if whole else None
        if frames is not None and 0 < frames <= max_frames:
            return None
        frames_bins = preset.layout == FRAMES_BINS
        wanted = f"[1..{max_frames}, {preset.n_bins}]" if frames_bins else f"[{preset.n_bins}, 1..{max_frames}]"
        return f"shape={str(shape)[:60]} is not {wanted}"

    def legacy(self, blob: bytes) -> np.ndarray | str:
        """A .bin without sidecar (the layout the Rust port planned): [704, n_frames] float32, v2 only."""
        if self.preset.name != "v2" or self.preset.n_bins != V2_DEFAULT_BINS:
            return "has no sidecar; only 704-bin v2 files may lack one"
        if not blob or len(blob) % (V2_DEFAULT_BINS * 4):
            return f"has no sidecar and {len(blob)} bytes, not a multiple of 704 * 4"
        return np.frombuffer(blob, dtype=self.dtype).reshape(V2_DEFAULT_BINS, -1)

    def check_length(self, n_samples: int, sample_rate: int) -> None:
        from ..features.pcm import check_long_enough

        check_long_enough(n_samples, sample_rate, self.preset)

    def compute(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        from ..features.spectrogram import reference_mel

        return self._checked(reference_mel(samples, sample_rate, preset=self.preset)[0], samples)

    def compute_batch(self, clips: Sequence[np.ndarray], sample_rates: Sequence[int]) -> list[np.ndarray]:
        """One device call for many clips; a clip whose result overflows raises like `compute`."""
        from ..features.spectrogram import reference_mel_batch

        mels = reference_mel_batch(list(clips), list(sample_rates), preset=self.preset)
        return [self._checked(mel[0], clip) for mel, clip in zip(mels, clips, strict=True)]

    def problem(self, data: np.ndarray) -> str | None:
        return None if np.isfinite(data).all() else "contains NaN or Inf"

    def _checked(self, data: np.ndarray, samples: np.ndarray) -> np.ndarray:
        if self.problem(data) is not None:
            raise ReferenceMelError(
                "non_finite_audio", f"the {self.name} spectrogram overflows float32: the samples reach "
                f"{float(np.abs(samples).max()):.3g}; send PCM scaled to [-1, 1]")
        return data


@functools.cache
def _mel_kind(preset: Preset) -> MelKind:
    return MelKind(preset)


def kind_of(what: ArtifactKind | Preset | str) -> ArtifactKind:
    """The kind a caller means: a kind as it is, a preset (or its name) as its spectrogram."""
    if isinstance(what, ArtifactKind):
        return what
    return _mel_kind(get_preset(what))


# Every file suffix a stored spectrogram may have, whatever the configured presets (the store's one scan).
MEL_SUFFIXES = {name: kind_of(name).file_suffix for name in PRESET_NAMES}
