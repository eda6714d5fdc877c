"""Fixtures shared by the tests (the helpers they call are in helpers.py)."""

from __future__ import annotations

import pytest
from hypothesis import settings

from helpers import ROOT, copy_library

# The same examples on every run and machine: a failure found once is found again, and no run fails by chance.
settings.register_profile("derandomized", derandomize=True, deadline=None)
settings.load_profile("derandomized")


@pytest.fixture
def library(tmp_path) -> dict:
    """A writable copy of models/ (voices.json, audio, codes) and an empty codes directory."""
    return copy_library(tmp_path)


@pytest.fixture(scope="session")
def upstream(tmp_path_factory):
    """GPT-SoVITS's quantizer modules (oracle_codes.unpack_upstream), for the torch recipe of the codes."""
    from oracle_codes import unpack_upstream

    folder = unpack_upstream(tmp_path_factory.mktemp("upstream"))
    if folder is None:
        pytest.skip("the package index is out of reach: cannot download gpt-sovits-cpufast for its quantizer")
    return folder


@pytest.fixture
def store(library):
    """The store over that copy."""
    from dora_reference_mel.store import ReferenceStore
    from dora_reference_mel.store.library import VoiceLibrary

    return ReferenceStore(library["codes_dir"], VoiceLibrary(library["voices"]))


@pytest.fixture(scope="session", autouse=True)
def shipped_models_stay_untouched():
    """No test (nor anything it runs) may write into the shipped models/ folder."""
    before = {p: p.read_bytes() for p in (ROOT / "models").rglob("*") if p.is_file()}
    yield
    after = {p: p.read_bytes() for p in (ROOT / "models").rglob("*") if p.is_file()}
    assert after == before, "models/ was modified during the tests"


@pytest.fixture(scope="session", autouse=True)
def mlx_kernels_built():
    """MLX builds each compiled kernel once per machine (seconds on a Linux CPU, with the system C++
    compiler) and keeps it on disk: build them all before tests start nodes under time limits."""
    from dora_reference_mel import get_preset
    from dora_reference_mel.features import spectrogram

    spectrogram.warm_up([get_preset(name) for name in ("v2", "v3", "v4", "sv")])
