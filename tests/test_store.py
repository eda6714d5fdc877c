"""Codes, spectrogram files, sidecars and voices.json, on real files."""

import json
import os

import numpy as np
import pytest
import xxhash

from dora_reference_mel import ReferenceMelError, get_preset
from dora_reference_mel.codes import read_codes
from dora_reference_mel.library import Voice, VoiceLibrary
from dora_reference_mel.names import check_voice_name
from dora_reference_mel.store import ABSENT, CORRUPT, FRESH, STALE, ReferenceStore

V2, V4 = get_preset("v2"), get_preset("v4")


@pytest.fixture
def store(library):
    return ReferenceStore(library["codes_dir"], VoiceLibrary(library["voices"]))


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


def test_aliases_and_relative_paths(store, library):
    voice = store.voice("cleo stereo")
    assert voice.name == "cleo"
    assert voice.ref_audio == library["models"] / "voices" / "cleo.wav" and voice.ref_audio.exists()


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


@pytest.mark.parametrize("name", ["", " ", "../etc/passwd", "a/b", "a\\b", "..", ".hidden", "x\x00y",
                                  "tab\there", "x" * 201, "语" * 67, "bad\udc80name", 42, None])
def test_bad_voice_names(name):
    with pytest.raises(ReferenceMelError) as err:
        check_voice_name(name)
    assert err.value.code == "bad_voice"


def test_good_voice_names():
    for name in ("luoxiang", "Luo Xiang", "罗翔", "a.b-c_d", "x" * 200, "语" * 66):
        assert check_voice_name(name) == name


def test_set_voice_fields_keeps_every_key_and_the_order(library):
    original = json.loads(library["voices"].read_text())
    original["extra_top_level"] = {"keep": [1, 2]}
    original["voices"]["aria"]["unknown_field"] = "kept"
    library["voices"].write_text(json.dumps(original, indent=2))
    lib = VoiceLibrary(library["voices"])
    lib.set_voice_fields({"aria": {"mel_path": "/x/aria_mel.bin"}})
    updated = json.loads(library["voices"].read_text())
    assert list(updated) == list(original)
    assert list(updated["voices"]["aria"])[:-1] == list(original["voices"]["aria"])
    assert updated["voices"]["aria"]["mel_path"] == "/x/aria_mel.bin"
    updated["voices"]["aria"].pop("mel_path")
    assert updated == original
    assert lib.resolve("aria").mel_path(V2).as_posix() == "/x/aria_mel.bin"  # re-read after the write


@pytest.mark.parametrize("content, why", [(b"", "not usable JSON"), (b"[1, 2]", "voices"),
                                          (b'{"voices": {"a": 3}}', "must be an object"),
                                          (b'{"voices": {}, "models_base_path": 5}', "models_base_path"),
                                          (b"[" * 100_000, "not usable JSON"),
                                          (b'{"voices": {}, "n": ' + b"7" * 5000 + b"}", "not usable JSON")])
def test_bad_voices_json(tmp_path, content, why):
    path = tmp_path / "voices.json"
    path.write_bytes(content)
    library = VoiceLibrary(path)
    for _ in range(2):  # every lookup is told, not only the first
        with pytest.raises(ReferenceMelError, match=why) as err:
            library.resolve("a")
        assert err.value.code == "bad_voices_config"


def test_primespeech_lookup_order_and_ambiguity(tmp_path):
    path = tmp_path / "voices.json"
    path.write_text(json.dumps({"voices": {
        "luoxiang": {"ref_audio": "a.wav", "ref_text": "t", "aliases": ["Professor Luo"]},
        "doubao": {"ref_audio": "b.wav", "ref_text": "t", "aliases": ["luoxiang-alt", "Twin"]},
        "chenyifan": {"ref_audio": "c.wav", "ref_text": "t", "aliases": ["twin"]}}}))
    library = VoiceLibrary(path, model_dir=tmp_path / "root")
    assert library.resolve("LuoXiang").name == "luoxiang"  # lowercased key
    assert library.resolve("Luo Xiang").name == "luoxiang"  # display name: spaces removed
    assert library.resolve("professor luo").name == "luoxiang"  # alias
    assert library.resolve("Doubao").ref_audio == tmp_path / "root" / "b.wav"  # models root, not the file's folder
    with pytest.raises(ReferenceMelError) as err:
        library.resolve("TWIN")
    assert err.value.code == "ambiguous_voice" and "doubao" in err.value.message and "chenyifan" in err.value.message


def test_bad_entries_are_refused_by_name_the_rest_serve(tmp_path):
    path = tmp_path / "voices.json"
    path.write_text('{"voices": {"../../x": {"ref_audio": "a.wav", "aliases": ["plain"]}, '
                    '"\\udc80bad": {"ref_audio": "a.wav", "aliases": ["surro"]}, "good": {"ref_audio": "g.wav"}}}')
    library = VoiceLibrary(path)
    for name, shown in (("plain", "../../x"), ("surro", "udc80")):
        with pytest.raises(ReferenceMelError) as err:
            library.resolve(name)
        assert err.value.code == "bad_voices_config" and shown in err.value.message
    assert library.resolve("good").name == "good"


def test_missing_voices_json_means_no_library(tmp_path):
    assert VoiceLibrary(tmp_path / "none.json").resolve("aria") is None
