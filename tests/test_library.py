"""voices.json (library.py): entries, name resolution as primespeech resolves names, in-place edits."""

import json
import os
import stat

import pytest

from dora_reference_mel import ReferenceMelError, get_preset
from dora_reference_mel.store.kinds import kind_of
from dora_reference_mel.store.library import VoiceLibrary, edit_json_fields

V2, V4 = get_preset("v2"), get_preset("v4")


def test_aliases_and_relative_paths(store, library):
    voice = store.voice("cleo stereo")
    assert voice.name == "cleo"
    assert voice.ref_audio == library["models"] / "voices" / "cleo.wav" and voice.ref_audio.exists()


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
    assert lib.resolve("aria").stored_path(kind_of(V2)).as_posix() == "/x/aria_mel.bin"  # re-read after the write


@pytest.mark.parametrize("mode", [0o600, 0o444, 0o640])
def test_set_voice_fields_edits_the_file_a_link_leads_to_and_keeps_its_mode_and_owner(tmp_path, mode):
    """A linked voices.json stays a link and its target gets the field; the target keeps its permission
    bits (0600 stays private, 0444 read-only) and its owner, and nothing else is left in either folder."""
    (tmp_path / "shared").mkdir(), (tmp_path / "conf").mkdir()
    target, link = tmp_path / "shared" / "voices.json", tmp_path / "conf" / "voices.json"
    target.write_text('{"voices": {"aria": {"ref_audio": "aria.wav"}}}')
    os.chmod(target, mode)
    owner = (12345, 23456) if os.geteuid() == 0 else (os.getuid(), os.getgid())  # root may give any owner
    os.chown(target, *owner)
    link.symlink_to(target)
    VoiceLibrary(link).set_voice_fields({"aria": {"mel_path": "/x/aria_mel.bin"}})
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == '{"voices": {"aria": {"ref_audio": "aria.wav", "mel_path": "/x/aria_mel.bin"}}}'
    st = target.stat()
    assert stat.S_IMODE(st.st_mode) == mode and (st.st_uid, st.st_gid) == owner
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["conf", "shared", "voices.json", "voices.json"]


def test_edit_json_fields_on_a_large_library_changes_only_the_fields(tmp_path):
    """25,000 voices, every one updated (a new field for most, a replaced one for every tenth): the text
    is exactly what the owner's formatting gives with those fields, nothing else moved."""
    def library(mel_path) -> str:
        voices = {}
        for i in range(25_000):
            voices[f"v{i}"] = {"ref_audio": f"audio/v{i}.wav", "ref_text": "x", "aliases": [f"V {i}"]}
            if mel_path(i) is not None:
                voices[f"v{i}"]["mel_path"] = mel_path(i)
        return json.dumps({"models_base_path": "/m", "voices": voices, "extra": [1, 2]}, indent=2)

    updates = {f"v{i}": {"mel_path": f"codes/v{i}_mel.bin"} for i in range(25_000)}
    before = library(lambda i: "old/path.bin" if i % 10 == 0 else None)
    assert edit_json_fields(before, updates) == library(lambda i: f"codes/v{i}_mel.bin")


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
