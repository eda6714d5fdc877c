"""One truth for configuration and contract: code tables == README tables == dora-node.yml."""

import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from dora_reference_mel.config import ENV_VARS
from dora_reference_mel.contract import INPUTS, MEL_METADATA, OUTPUTS
from dora_reference_mel.errors import ERROR_CODES, ReferenceMelError
from helpers import ROOT

README = (ROOT / "README.md").read_text()
CONTRACT = (ROOT / "docs" / "contract.md").read_text()
MANIFEST = yaml.safe_load((ROOT / "node_hub/dora_reference_mel/dora-node.yml").read_text())
PACKAGE = ROOT / "node_hub" / "dora_reference_mel"


def readme_table(tag: str) -> list[list[str]]:
    """The table between <!-- tag --> markers: in the README (configuration) or docs/contract.md."""
    text = README if f"<!-- {tag} -->" in README else CONTRACT
    block = text.split(f"<!-- {tag} -->")[1].split(f"<!-- /{tag} -->")[0]
    rows = [line.strip().strip("|").split(" | ") for line in block.strip().splitlines()[2:]]
    return [[cell.strip().strip("`") for cell in row] for row in rows]


def test_env_table_matches_code_and_manifest():
    table = readme_table("config:env")
    assert [row[0] for row in table] == list(ENV_VARS)
    for name, kind, default, meaning in table:
        assert (kind, meaning) == (ENV_VARS[name][0], ENV_VARS[name][2]), name
        manifest = MANIFEST["env"][name]
        assert manifest["type"] == kind and manifest["description"] == meaning, name
        assert str(manifest.get("default", "")).lower().removesuffix(".0") == default.lower(), name
        assert ENV_VARS[name][1] == default, name
    assert set(MANIFEST["env"]) == set(ENV_VARS)


def test_code_reads_exactly_the_documented_variables():
    read = set()
    for path in PACKAGE.glob("*.py"):
        text = path.read_text()
        read |= set(re.findall(r'get\("([A-Z_]+)"\)', text)) | set(re.findall(r'env\.get\("([A-Z_]+)"', text))
    assert read == set(ENV_VARS)


def test_mel_contract_table_matches_code():
    table = readme_table("contract:mel")
    assert [row[0] for row in table] == list(MEL_METADATA)
    for key, kind, always, meaning in table:
        assert (kind, always == "yes", meaning) == MEL_METADATA[key], key


def test_error_code_table_matches_code_and_no_unlisted_code_can_be_raised():
    assert {row[0]: row[1] for row in readme_table("contract:errors")} == ERROR_CODES
    with pytest.raises(KeyError, match="not in ERROR_CODES"):
        ReferenceMelError("bad_thing", "a code nobody documented")


def test_manifest_and_one_to_one_naming():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == MANIFEST["name"] == MANIFEST["entrypoint"] == "dora-reference-mel"
    assert "dora-reference-mel" in pyproject["project"]["scripts"]
    assert {k: v["description"] for k, v in MANIFEST["inputs"].items()} == INPUTS
    assert {k: v["description"] for k, v in MANIFEST["outputs"].items()} == OUTPUTS
    check = subprocess.run([str(ROOT / ".venv/bin/dora") if (ROOT / ".venv/bin/dora").exists() else "dora",
                            "validate", "--node-manifest", str(PACKAGE / "dora-node.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr[-2000:]


def test_python_dash_m_and_contract_import_without_mlx():
    code = ("import sys; import dora_reference_mel.contract; "
            "assert 'mlx' not in sys.modules and 'mlx.core' not in sys.modules, sorted(sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    outside = subprocess.run([sys.executable, "-m", "dora_reference_mel"], capture_output=True, text=True,
                             timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT / "out")})
    # It runs the node's main, which refuses to start outside a dataflow in one line.
    assert outside.returncode == 1 and "start it from a dataflow" in outside.stderr, outside.stderr[-2000:]


def test_manifest_names_no_build_that_cannot_run():
    """The package is not on the package index: a `build:` that pip-installs it by name would fail."""
    manifest = yaml.safe_load((ROOT / "node_hub/dora_reference_mel/dora-node.yml").read_text())
    assert "build" not in manifest


def test_package_description_names_every_variable():
    description = (ROOT / "node_hub/dora_reference_mel/README.md").read_text()
    assert [name for name in ENV_VARS if f"`{name}`" not in description] == []
