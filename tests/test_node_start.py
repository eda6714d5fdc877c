"""The node's start, as users meet it: its command line, a start outside dora, and what it finds wrong
at start (voices.json's name collisions; MLX's kernels to build)."""

import importlib.metadata
import json
import os
import re
import subprocess
import sys

import pytest

from dora_reference_mel.config import ENV_VARS
from dora_reference_mel.contract import INPUTS, OUTPUTS
from dora_reference_mel.features import resample
from helpers import BIN, node_run_env, run_node

pytestmark = pytest.mark.node  # every test here runs the node process

NODE = str(BIN / "dora-reference-mel")


def run_by_hand(*args, tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DORA_")}
    return subprocess.run([NODE, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_without_warming_up(flag, tmp_path):
    result = run_by_hand(flag, tmp_path=tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    assert result.stdout.startswith("usage: dora-reference-mel")
    for name in [*INPUTS, *OUTPUTS, *ENV_VARS, "reference-mel --help"]:
        assert name in result.stdout, name
    assert "ready on" not in result.stdout + result.stderr and "DORA_NODE_CONFIG" not in result.stderr


def test_version_prints_the_package_version(tmp_path):
    result = run_by_hand("--version", tmp_path=tmp_path)
    version = importlib.metadata.version("dora-reference-mel")
    assert result.returncode == 0 and result.stdout.strip() == f"dora-reference-mel {version}"


@pytest.mark.parametrize("args", [["--voice", "aria"], ["flow.yml"]])
def test_any_other_argument_is_an_error_with_usage(args, tmp_path):
    result = run_by_hand(*args, tmp_path=tmp_path)
    assert result.returncode == 2 and "usage: dora-reference-mel" in result.stderr
    assert f"unexpected arguments {' '.join(args)!r}" in result.stderr and "Traceback" not in result.stderr


def test_a_start_outside_a_dataflow_is_one_line(tmp_path):
    result = run_by_hand(tmp_path=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and "start it from a dataflow" in result.stderr
    assert "Traceback" not in result.stderr and "ready on" not in result.stderr  # no warm-up either


def test_name_collisions_in_voices_json_are_told_once_at_start(tmp_path, library):
    voices = json.loads(library["voices"].read_text())
    voices["voices"]["Narrator"] = dict(voices["voices"]["aria"], aliases=["Teller"])
    voices["voices"]["narrator"] = dict(voices["voices"]["basil"], aliases=["teller"])
    library["voices"].write_text(json.dumps(voices))
    outputs, log = run_node(tmp_path, [], library["env"], keep_logs=True)
    said = [json.loads(o["data"][0])["message"] for o in outputs if o["id"] == "log"]
    for name in ("'narrator' matches 2 voices", "'teller' matches 2 voices"):
        assert log.count(name) == 1, log[-3000:]
        assert sum(name in message for message in said) == 1, said


@pytest.mark.slow
def test_the_kernel_notice_only_when_mlxs_cache_lacks_them(tmp_path, library):
    """A fresh machine is a fresh temporary folder: MLX keeps its CPU kernels under it."""
    if not resample.compiler_works():
        pytest.skip("no C++ compiler here: the CPU builds no kernels")
    env = {**library["env"], "TMPDIR": str(tmp_path / "tmp"), "MEL_DEVICE": "cpu"}
    (tmp_path / "tmp").mkdir()
    _, first = run_node(tmp_path, [], env, name="first")
    _, second = run_node(tmp_path, [], env, name="second")
    assert "building MLX's CPU kernels" in first and "later starts load them" in first
    assert "MLX CPU kernels built into" in first
    assert "building MLX's CPU kernels" not in second and "kernels built" not in second, second[-2000:]
    assert "about 15 s" not in first + second


def test_the_peak_rss_in_the_stop_line_is_the_nodes_own(tmp_path, library):
    """Started by a process holding 600 MB (as a test runner or a launcher may), the node reports its own
    peak: ru_maxrss would carry the parent's across fork and exec."""
    full_env, _ = node_run_env(tmp_path, [], library["env"])
    parent = ("import subprocess, sys, numpy as np; held = np.ones(600 * 2**17); "
              f"done = subprocess.run([{str(BIN / 'dora-reference-mel')!r}], capture_output=True, text=True); "
              "print(done.stderr)")
    log = subprocess.run([sys.executable, "-c", parent], env=full_env, capture_output=True, text=True,
                         timeout=300).stdout
    peak = float(re.search(r"peak RSS (\d+) MB", log).group(1))
    assert 0 < peak < 500, log[-2000:]
