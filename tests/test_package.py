"""The package as users get it: the sdist and the wheel built from it, the wheel installed into a clean
environment (no repository on the path, dependencies from the package registry), and the node, the
CLI and the manifest run from that install."""

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from helpers import ROOT, recorded, run_node

pytestmark = pytest.mark.slow

MANIFEST_IN_PACKAGE = "dora_reference_mel/dora-node.yml"


def sh(*args, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """`python -m build`: the sdist, then the wheel from that sdist (as a package index would build it)."""
    dist = tmp_path_factory.mktemp("dist")
    sh(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=ROOT)
    (sdist,), (wheel,) = dist.glob("*.tar.gz"), dist.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel and what it depends on; returns its bin folder."""
    venv = tmp_path_factory.mktemp("clean") / "venv"
    sh(sys.executable, "-m", "venv", venv, cwd=venv.parent)
    sh(venv / "bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check", built["wheel"], cwd=venv.parent)
    return venv / "bin"


def test_sdist_and_wheel_hold_the_package_and_nothing_local(built):
    with tarfile.open(built["sdist"]) as sdist:
        names = {Path(*Path(n).parts[1:]).as_posix() for n in sdist.getnames()}
    assert {"pyproject.toml", "README.md", f"node_hub/{MANIFEST_IN_PACKAGE}",
            "node_hub/dora_reference_mel/main.py"} <= names
    assert not any(n.startswith((".venv", "out/", ".mlxcuda")) for n in names), sorted(names)[:20]
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = set(wheel.namelist())
        meta = next(wheel.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        scripts = next(wheel.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert {MANIFEST_IN_PACKAGE, "dora_reference_mel/contract.py", "dora_reference_mel/cli.py"} <= names
    assert not any(n.startswith(("tests/", "models/", "demo_nodes/", "benchmarks/")) for n in names), sorted(names)
    assert "License-Expression: MIT" in meta and "Requires-Dist: dora-rs" in meta
    assert "dora-reference-mel = dora_reference_mel.main:main" in scripts
    assert "reference-mel = dora_reference_mel.cli:main" in scripts


def test_installed_cli_verifies_and_precomputes_the_demo_library(installed, library, tmp_path):
    env_args = ["--codes-dir", library["codes_dir"]]
    helped = sh(installed / "reference-mel", "--help", cwd=tmp_path)
    assert "precompute" in helped.stdout and "verify" in helped.stdout
    where = sh(installed / "python", "-c", "import dora_reference_mel, sys; print(dora_reference_mel.__file__)",
               cwd=tmp_path).stdout
    assert where.startswith(str(installed.parent)), where  # the installed copy, not the repository's
    env = {**library["env"], "PATH": f"{installed}:/usr/bin:/bin"}
    for command in (["precompute"], ["verify"], ["inspect", "aria"]):
        done = subprocess.run([installed / "reference-mel", *command, *env_args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and "aria" in done.stdout, done.stdout + done.stderr[-3000:]


def test_installed_node_answers_a_voice_event(installed, library, tmp_path):
    outputs, log = run_node(tmp_path, [recorded(4)], library["env"], bin_dir=installed)
    assert [o["id"] for o in outputs] == ["mel"], log[-3000:]
    assert len(outputs[0]["data"]) == 704 * 295
    assert "mel voice=basil preset=v2 source=computed shape=[1, 704, 295]" in log, log[-3000:]


def test_installed_manifest_passes_dora_validate(installed, tmp_path):
    manifest = sh(installed / "python", "-c",
                  "import importlib.resources as r; print(r.files('dora_reference_mel') / 'dora-node.yml')",
                  cwd=tmp_path).stdout.strip()
    assert manifest.startswith(str(installed.parent))
    sh(ROOT / ".venv/bin/dora", "validate", "--node-manifest", manifest, cwd=tmp_path)  # asserts it passes
