"""The package as users get it: the sdist and the wheel built from it; the README's install steps run as
written in a clean environment (a clone, dependencies from the package registry, no repository on the
path); and the node, the CLI, the manifest and the README's dataflow run from that install."""

import re
import shlex
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from helpers import PROMPTS, ROOT, dora, readme_wiring, recorded, run_node, spoken, user_home

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


def readme_install_commands() -> list[str]:
    """The README's install block, as a user copies it."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- install -->\n```bash\n(.*?)```", readme, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The README's install steps, run as written in a fresh venv that has dora 1.1 (the environment whose
    dora runs the dataflow), with this repository's URL for the placeholder; returns the venv's bin folder."""
    home = tmp_path_factory.mktemp("user")
    venv = home / "venv"
    sh(sys.executable, "-m", "venv", venv, cwd=home)
    pip = [venv / "bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    sh(*pip, "dora-rs==1.1.0", "dora-rs-cli==1.1.0", cwd=home)
    for command in readme_install_commands():
        args = shlex.split(command.replace("<URL of this repository>", str(ROOT)))
        if args[:2] == ["pip", "install"]:
            args = [*pip, *args[2:]]
        sh(*args, cwd=home)
    return venv / "bin"


def test_sdist_and_wheel_hold_the_package_and_nothing_local(built):
    with tarfile.open(built["sdist"]) as sdist:
        names = {Path(*Path(n).parts[1:]).as_posix() for n in sdist.getnames()}
    assert {"pyproject.toml", "README.md", f"node_hub/{MANIFEST_IN_PACKAGE}",
            "node_hub/dora_reference_mel/node/main.py"} <= names
    assert not any(n.startswith((".venv", "out/", ".mlxcuda")) for n in names), sorted(names)[:20]
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = set(wheel.namelist())
        meta = next(wheel.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        scripts = next(wheel.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert {MANIFEST_IN_PACKAGE, "dora_reference_mel/contract.py", "dora_reference_mel/node/contract.py",
            "dora_reference_mel/features/spectrogram.py", "dora_reference_mel/store/reference_store.py",
            "dora_reference_mel/cli.py"} <= names  # every layer's sub-package
    assert not any(n.startswith(("tests/", "models/", "demo_nodes/", "benchmarks/")) for n in names), sorted(names)
    assert "License-Expression: MIT" in meta and "Requires-Dist: dora-rs" in meta
    assert "dora_reference_mel-0.1.0.dist-info/licenses/LICENSE" in names
    description = meta.split("\n\n", 1)[1]
    assert "scripts/" not in description and "](docs/" not in description  # nothing that does not ship
    assert "## Behavior" in description and "## Install" in description
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist: mlx")]
    for extra in ("cpu", "cuda12", "cuda13", "cuda"):  # each extra brings exactly one MLX backend
        assert sum(f'extra == "{extra}"' in line for line in requires) == 1, requires
    assert not any("extra" not in line and "linux" in line for line in requires), requires
    assert "dora-reference-mel = dora_reference_mel.node.main:main" in scripts
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


@pytest.mark.dataflow
def test_the_readme_install_runs_the_readme_wiring(installed, tmp_path):
    """The node as the README installs it, in the README's dataflow, run by the dora of that environment."""
    user = user_home(tmp_path)
    transcript = tmp_path / "tts.jsonl"
    result = dora("run", readme_wiring(tmp_path, transcript), cwd=tmp_path, env=user["env"], venv=installed.parent)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert [(e["text"], e["voice"]) for e in spoken(transcript)] == [(p, v) for p, v, _ in PROMPTS], out[-4000:]
    assert "Traceback" not in out
