"""Semantic codes (codes.py), read from real files as the Rust MLX reader lays them out."""


import numpy as np
import pytest

from dora_reference_mel import ReferenceMelError
from dora_reference_mel.codes import read_codes


def test_codes_bin_and_npy_dtypes(tmp_path):
    codes = np.array([0, 5, 1023, 77], dtype=np.int64)
    (tmp_path / "a_codes.bin").write_bytes(codes.astype("<i4").tobytes())
    np.save(tmp_path / "b_codes.npy", codes)  # int64: must not be misread as pairs of int32
    np.save(tmp_path / "c_codes.npy", codes.astype(np.int32))
    for name in ("a_codes.bin", "b_codes.npy", "c_codes.npy"):
        out = read_codes(tmp_path / name)
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, codes)


@pytest.mark.parametrize("blob, why", [(b"\x01\x00\x00", "not a whole number"),
                                       (np.array([3, 5000], "<i4").tobytes(), "outside the codebook"),
                                       (b"", "no codes")])
def test_bad_codes_files(tmp_path, blob, why):
    (tmp_path / "x_codes.bin").write_bytes(blob)
    with pytest.raises(ValueError, match=why):
        read_codes(tmp_path / "x_codes.bin")


def test_codes_found_by_voices_json_and_by_name(store, library):
    aria = store.voice("ARIA")  # case-insensitive
    assert aria.name == "aria" and aria.in_library
    assert store.load_codes(aria).shape == (500,)
    assert store.voice("basil").codes_path.suffix == ".bin"
    assert store.load_codes(store.voice("cleo")) is None
    (library["codes_dir"] / "stranger_codes.bin").write_bytes(np.arange(10, dtype="<i4").tobytes())
    np.testing.assert_array_equal(store.load_codes(store.voice("stranger")), np.arange(10))
    (library["codes_dir"] / "broken_codes.bin").write_bytes(b"\x00" * 7)
    with pytest.raises(ReferenceMelError) as err:
        store.load_codes(store.voice("broken"))
    assert err.value.code == "bad_codes" and "broken_codes.bin" in err.value.message
