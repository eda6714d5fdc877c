"""Sidecars and judgements: how a stored artifact was made (its `.json` sidecar, validated field by field)
and what the store holds for a voice (`Stored`: fresh, stale, corrupt or absent, with the reason)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from pathlib import Path

import numpy as np

from .files import FileStamp, is_int
from .names import shown

SIDECAR_FORMAT = 2  # 2: xxh3-128 digests and full stat stamps (format 1 files are stale, then rewritten)
MAX_SIDECAR_BYTES = 64 * 1024
MAX_SOURCE_WARNINGS, MAX_WARNING_CHARS = 8, 200  # a sidecar's source_warnings, as told again (save writes two at most)

FRESH, STALE, CORRUPT, ABSENT = "fresh", "stale", "corrupt", "absent"


def _package_version() -> str:
    try:
        return importlib.metadata.version("dora-reference-mel")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


# Which package wrote a sidecar (lhotse keeps the same record of every stored array's producer).
PRODUCER = {"package": "dora-reference-mel", "version": _package_version()}


@dataclasses.dataclass(frozen=True)
class Sidecar:
    """How a stored artifact was made, validated field by field."""

    shape: tuple[int, ...]
    fingerprint: str
    source_digest: str
    source_sample_rate: int
    source_audio: FileStamp | None
    data_digest: str
    raw: dict

    @classmethod
    def parse(cls, blob: bytes, kind, max_ref_seconds: float) -> Sidecar:
        """Raise ValueError with the reason when the sidecar is not one this package wrote for `kind`
        (kinds.ArtifactKind)."""
        try:
            raw = json.loads(blob)
        except (ValueError, RecursionError) as err:
            raise ValueError(f"not usable JSON ({str(err)[:80]})") from None
        if not isinstance(raw, dict) or raw.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"not a sidecar of format {SIDECAR_FORMAT}")
        shape = raw.get("shape")
        problem = kind.shape_problem(shape, max_ref_seconds)
        if problem:
            raise ValueError(problem)
        texts = {k: raw.get(k) for k in ("fingerprint", "source_digest", "data_digest")}
        if not all(isinstance(v, str) and 0 < len(v) <= 64 for v in texts.values()):
            raise ValueError("fingerprint, source_digest and data_digest must be short strings")
        if not is_int(raw.get("source_sample_rate")):
            raise ValueError("source_sample_rate must be an integer")
        return cls(tuple(shape), texts["fingerprint"], texts["source_digest"], raw["source_sample_rate"],
                   FileStamp.from_json(raw.get("source_audio")), texts["data_digest"], raw)

    @property
    def warnings(self) -> tuple[str, ...]:
        """The source audio's warnings, as the store's `save` wrote them; none from a sidecar that holds other things."""
        found = self.raw.get("source_warnings")
        if not isinstance(found, list) or len(found) > MAX_SOURCE_WARNINGS:
            return ()
        return tuple(shown(w, MAX_WARNING_CHARS) for w in found if isinstance(w, str))


@dataclasses.dataclass(frozen=True)
class Stored:
    """What the store holds for (voice, kind), judged against the audio in hand."""

    state: str  # FRESH, STALE, CORRUPT or ABSENT
    reason: str  # why it is not fresh ("" when it is)
    path: Path | None
    data: np.ndarray | None = None  # the kind's data, read-only: a whole file (fresh or stale)
    sidecar: Sidecar | None = None

    @property
    def fresh(self) -> bool:
        return self.state == FRESH

    def against(self, digest: str, fingerprint: str) -> Stored:
        """The same file judged against audio whose samples_digest is `digest` (no re-read), for the recipe whose
        fingerprint is `fingerprint`: a file of another recipe stays stale whatever audio it was made from."""
        if self.data is None or self.sidecar is None or self.sidecar.fingerprint != fingerprint:
            return self
        if self.sidecar.source_digest == digest:
            return dataclasses.replace(self, state=FRESH, reason="")
        return dataclasses.replace(self, state=STALE, reason="made from other audio (the reference audio changed)")
