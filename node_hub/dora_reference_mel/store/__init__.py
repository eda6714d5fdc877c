"""The store layer: voice names and digests (names), safe file access (files), voices.json (library),
semantic codes (codes), sidecars and what a stored file is judged (sidecars), the artifact kinds (kinds)
and the precomputed store (reference_store)."""

from .reference_store import ABSENT, CORRUPT, FRESH, STALE, ReferenceStore, Stored

__all__ = ["ABSENT", "CORRUPT", "FRESH", "STALE", "ReferenceStore", "Stored"]
