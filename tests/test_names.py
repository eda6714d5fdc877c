"""Voice names (names.py): which names may become file names in the codes directory."""


import pytest

from dora_reference_mel import ReferenceMelError
from dora_reference_mel.names import check_voice_name


@pytest.mark.parametrize("name", ["", " ", "../etc/passwd", "a/b", "a\\b", "..", ".hidden", "x\x00y",
                                  "tab\there", "x" * 201, "语" * 67, "bad\udc80name", 42, None])
def test_bad_voice_names(name):
    with pytest.raises(ReferenceMelError) as err:
        check_voice_name(name)
    assert err.value.code == "bad_voice"


def test_good_voice_names():
    for name in ("luoxiang", "Luo Xiang", "罗翔", "a.b-c_d", "x" * 200, "语" * 66):
        assert check_voice_name(name) == name
