"""Spectrogram files, sidecars and the one lookup (store.py), on real files."""

import json
import os

import numpy as np
import pytest
import xxhash

from dora_reference_mel import get_preset
from dora_reference_mel.library import Voice
from dora_reference_mel.store import ABSENT, CORRUPT, FRESH, STALE

V2, V4 = get_preset("v2"), get_preset("v4")










def test_mel_round_trip_with_sidecar(store, library):
    data = np.random.default_rng(0).random((704, 37), dtype=np.float32)
    voice = store.voice("aria")
    path = store.save_mel(voice, V2, data, source_digest="abc", source_sample_rate=48000)
    assert path == library["codes_dir"] / "aria_mel.bin"
    assert path.stat().st_size == 704 * 37 * 4
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["shape"] == [704, 37] and sidecar["preset"] == "v2" and sidecar["fingerprint"] == V2.fingerprint
    assert sidecar["source_digest"] == "abc" and sidecar["recipe"]["magnitude_eps"] == 1e-8
    stored = store.lookup(voice, V2, digest="abc")
    assert stored.state == FRESH
    np.testing.assert_array_equal(stored.data, data)
    assert not stored.data.flags.writeable
    assert store.lookup(voice, V2, digest="other").state == STALE
    assert store.lookup(voice, V4, digest="abc").state == ABSENT
    v4 = store.save_mel(voice, V4, data[:100], source_digest="abc", source_sample_rate=48000)
    assert v4.name == "aria_mel_v4.bin"
    assert not [f for f in os.listdir(library["codes_dir"]) if f.endswith(".tmp")]


def test_legacy_bin_without_sidecar(store, library):
    """Served only where there is no audio to compute from: nothing says which clip it was made from."""
    voice = store.voice("stranger")  # no voices.json entry, no ref_audio
    data = np.arange(704 * 3, dtype="<f4").reshape(704, 3)
    (library["codes_dir"] / "stranger_mel.bin").write_bytes(data.tobytes())
    found = store.lookup(voice, V2)
    assert found.state == FRESH and found.sidecar is None
    np.testing.assert_array_equal(found.data, data)
    assert store.lookup(voice, V2, digest="abc").state == STALE  # audio in hand: recompute, never guess
    (library["codes_dir"] / "stranger_mel.bin").write_bytes(data.tobytes()[:-4])
    found = store.lookup(voice, V2)
    assert found.state == CORRUPT and "multiple of 704" in found.reason


@pytest.mark.parametrize("damage", ["truncate", "flip", "nan", "sidecar"])
def test_corrupt_files_are_refused(store, library, damage):
    voice = store.voice("aria")
    data = np.ones((704, 10), np.float32)
    path = store.save_mel(voice, V2, data, source_digest="x", source_sample_rate=48000)
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(blob[:-100])
    elif damage == "flip":
        blob[10] ^= 0xFF
        path.write_bytes(blob)
    elif damage == "nan":
        bad = data.copy()
        bad[3, 3] = np.nan
        path.write_bytes(bad.tobytes())
        sidecar = json.loads(path.with_suffix(".json").read_text())
        sidecar["data_digest"] = xxhash.xxh3_128_hexdigest(bad.tobytes())
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    else:
        path.with_suffix(".json").write_text("{not json")
    assert store.lookup(voice, V2, digest="x").state == CORRUPT


def test_symlink_out_of_the_codes_dir_is_read_and_never_written_through(store, library, tmp_path):
    """The codes directory is the owner's: a link the owner put there is read wherever it leads (a
    library kept on another disk); a write replaces the link itself, never the file it points to."""
    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(np.ones(704 * 2, "<f4").tobytes())
    codes = tmp_path / "codes.bin"
    codes.write_bytes(np.array([1, 2, 3], "<i4").tobytes())
    (library["codes_dir"] / "linked_mel.bin").symlink_to(elsewhere)
    (library["codes_dir"] / "linked_codes.bin").symlink_to(codes)
    found = store.lookup(store.voice("linked"), V2)
    assert found.fresh and found.data.shape == (704, 2)  # a legacy file (no sidecar), no audio to check it by
    assert store.load_codes(store.voice("linked")).tolist() == [1, 2, 3]
    store.save_mel(Voice("linked"), V2, np.zeros((704, 1), np.float32), source_digest="x", source_sample_rate=1)
    assert elsewhere.read_bytes() == np.ones(704 * 2, "<f4").tobytes()
    assert not (library["codes_dir"] / "linked_mel.bin").is_symlink()














