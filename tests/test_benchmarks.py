"""The benchmark suite's two commands, as BENCHMARKS.md gives them: a run writes the one result format
(machine, versions, commit, every metric with its unit), and compare holds a run to the committed
baseline. Speed itself is not asserted here: these machines are shared and noisy."""

import json
import subprocess
import sys

from helpers import ROOT

SUITE = ROOT / "benchmarks" / "suite.py"
BASELINE = ROOT / "benchmarks" / "baseline" / "cpu.json"


def suite(*args):
    return subprocess.run([sys.executable, str(SUITE), *args], capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_a_run_measures_every_baseline_metric_in_the_one_format(tmp_path):
    done = suite("run", "--out", str(tmp_path / "run.json"), "--repeats", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "run.json").read_text())
    baseline = json.loads(BASELINE.read_text())
    assert {"benchmark", "machine", "versions", "commit", "date", "metrics"} <= set(result)
    assert set(baseline["metrics"]) <= set(result["metrics"])
    assert all(m["unit"] and m["better"] in ("lower", "higher") and m["value"] > 0 for m in result["metrics"].values())
    loose = suite("compare", str(tmp_path / "run.json"), "--tolerance", "1000")
    assert loose.returncode == 0 and "compare: 0 of" in loose.stdout, loose.stdout


def test_compare_names_what_got_worse(tmp_path):
    same = suite("compare", str(BASELINE))
    assert same.returncode == 0 and "0 of" in same.stdout
    worse = json.loads(BASELINE.read_text())
    worse["metrics"]["cache_hit_ms"]["value"] *= 3  # lower is better: three times slower
    worse["metrics"]["hash_sha256_over_xxh3"]["value"] /= 3  # higher is better: a third of the ratio
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    done = suite("compare", str(tmp_path / "worse.json"))
    assert done.returncode == 1
    assert "2 of" in done.stdout and "cache_hit_ms" in done.stdout.splitlines()[-1]
    assert "hash_sha256_over_xxh3" in done.stdout.splitlines()[-1]
