"""Voice names (names.py): which names may become file names in the codes directory."""


import pytest

from dora_reference_mel import ReferenceMelError
from dora_reference_mel.store.names import check_voice_name


@pytest.mark.parametrize("name", ["", " ", "../etc/passwd", "a/b", "a\\b", "..", ".hidden", "x\x00y",
                                  "tab\there", "x" * 201, "语" * 67, "bad\udc80name", 42, None])
def test_bad_voice_names(name):
    with pytest.raises(ReferenceMelError) as err:
        check_voice_name(name)
    assert err.value.code == "bad_voice"


def test_good_voice_names():
    for name in ("luoxiang", "Luo Xiang", "罗翔", "a.b-c_d", "x" * 200, "语" * 66):
        assert check_voice_name(name) == name


def test_a_name_finds_keys_then_aliases_as_the_mlx_node_then_keys_without_spaces(library):
    """config.rs::find_voice: the key equal to the lowercased name, then aliases. "Luo Xiang" is doubao's
    alias, so it is doubao, though the key luoxiang is the name without its space."""
    import json

    import pyarrow as pa

    from dora_reference_mel.config import Config
    from dora_reference_mel.node.service import ReferenceMelService

    voices = {"luoxiang": {"ref_audio": "voices/basil.wav", "ref_text": "l"},
              "doubao": {"ref_audio": "voices/aria.wav", "ref_text": "d", "aliases": ["Luo Xiang", "Basil"]},
              "Basil": {"ref_audio": "voices/basil.wav", "ref_text": "b"}}
    library["voices"].write_text(json.dumps({"voices": voices}))
    service = ReferenceMelService(Config.from_env(library["env"]))

    def spoken_by(name: str) -> str:
        mel = service.handle("text", pa.array([f"VOICE:{name}|Hello."]), {})[0]
        assert mel.output_id == "mel", mel.value
        return mel.metadata["voice"]

    assert spoken_by("Luo Xiang") == "doubao"  # an exact alias before the key without spaces
    assert spoken_by("basil") == "doubao"  # the alias before a key that matches only in another case
    assert spoken_by("LuoXiang") == "luoxiang"
    assert spoken_by("luo  xiang") == "luoxiang"  # no key, no alias: this node's step without spaces
