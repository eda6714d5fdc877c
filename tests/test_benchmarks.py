"""The benchmarks as a suite, as BENCHMARKS.md gives them: every entry point at benchmarks/' top runs and
writes the one result format (machine, versions, commit, every metric with its unit), the committed results
are in it, and the suite's compare holds a run to the committed baseline of its machine kind. Speed itself is
not asserted here: these machines are shared and noisy."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT

BENCHMARKS = ROOT / "benchmarks"
SUITE = BENCHMARKS / "suite.py"
BASELINE = BENCHMARKS / "baseline" / "cpu.json"
H200_BASELINE = BENCHMARKS / "baseline" / "h200.json"
ENTRY_POINTS = sorted(BENCHMARKS.glob("*.py"))
RESULT_KEYS = {"benchmark", "machine", "versions", "commit", "date", "metrics"}


def suite(*args):
    return subprocess.run([sys.executable, str(SUITE), *args], capture_output=True, text=True, timeout=600, cwd=ROOT)


def assert_one_shape(result: dict) -> None:
    assert RESULT_KEYS <= set(result), sorted(result)
    assert {"cpu", "cores", "gpu"} <= set(result["machine"])
    assert result["metrics"], "a result without a metric"
    for name, item in result["metrics"].items():
        assert item["unit"] and item["better"] in ("lower", "higher") and isinstance(item["value"], float), name


def test_a_run_measures_every_baseline_metric_in_the_one_format(tmp_path):
    done = suite("run", "--out", str(tmp_path / "run.json"), "--repeats", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "run.json").read_text())
    baseline = json.loads(BASELINE.read_text())
    assert_one_shape(result)
    assert set(baseline["metrics"]) <= set(result["metrics"])
    assert all(m["value"] > 0 for m in result["metrics"].values())
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


def test_compare_holds_a_gpu_run_against_the_h200_baseline(tmp_path):
    gpu_run = json.loads(H200_BASELINE.read_text())
    cpu = json.loads(BASELINE.read_text())
    assert set(gpu_run) == set(cpu) | {"built_from"}, "h200.json is in cpu.json's format"
    assert gpu_run["machine"]["gpu"] and not cpu["machine"]["gpu"]
    gpu_run["metrics"]["compute_v2_10s_ms"]["value"] *= 3
    (tmp_path / "gpu.json").write_text(json.dumps(gpu_run))
    done = suite("compare", str(tmp_path / "gpu.json"))  # the baseline follows the run's machine
    assert done.returncode == 1 and "baseline h200.json" in done.stdout.splitlines()[0], done.stdout
    assert done.stdout.splitlines()[-1].endswith("compute_v2_10s_ms"), done.stdout
    against_cpu = suite("compare", str(tmp_path / "gpu.json"), "--baseline", str(BASELINE), "--tolerance", "1000")
    assert against_cpu.returncode == 0 and "(not measured in this run)" in against_cpu.stdout, against_cpu.stdout


def test_the_h200_baseline_holds_metrics_the_suite_measures():
    """Each of its metrics is named as `suite.py run` names it (torch's ratios only where torch is here)."""
    names = set(json.loads(H200_BASELINE.read_text())["metrics"])
    cpu_names = set(json.loads(BASELINE.read_text())["metrics"])
    assert names - cpu_names <= {f"compute_{p}_10s_over_torch" for p in ("v2", "v3", "v4")}


def test_benchmarks_top_holds_only_entry_points():
    assert {p.name for p in (BENCHMARKS / "lib").glob("*.py")} >= {"timing.py", "torch_recipe.py", "two_nodes.py"}
    assert (BENCHMARKS / "nodes" / "node_bench.yml").exists()
    for entry in ENTRY_POINTS:
        assert 'if __name__ == "__main__":' in entry.read_text(), f"{entry.name} is a helper: it belongs in lib/"


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda p: p.name)
def test_every_entry_point_imports_and_answers_help(entry):
    done = subprocess.run([sys.executable, str(entry), "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-2000:]


def test_committed_results_are_one_json_per_benchmark_and_machine():
    results = BENCHMARKS / "results"
    assert {p.name for p in results.iterdir()} == {"cpu", "h200"}
    assert not [p for p in results.rglob("*") if p.is_file() and p.suffix != ".json"], "text logs beside the results"
    for path in results.rglob("*.json"):
        result = json.loads(path.read_text())
        assert_one_shape(result)
        assert result["benchmark"] == path.stem, path
        assert bool(result["machine"]["gpu"]) == (path.parent.name == "h200"), path


CHEAP = {
    "hash_speed.py": ["--repeats", "3"],
    "voices_json_edit.py": ["--voices", "20"],
    "profile_stages.py": ["--repeats", "1", "--seconds", "3"],
    "resampler_compile.py": ["--rates", "16000"],
    "batch_stages.py": ["--clips", "2", "--repeats", "1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("entry", sorted(CHEAP))
def test_a_cheap_entry_point_writes_the_one_result_format(entry, tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / entry), *CHEAP[entry], "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_one_shape(json.loads(out.read_text()))


def test_results_go_to_the_folder_of_this_machine():
    sys.path.insert(0, str(BENCHMARKS))
    from lib.timing import machine_kind, out_path

    assert machine_kind() in ("cpu", "h200")
    assert out_path(None, "x") == BENCHMARKS / "results" / machine_kind() / "x.json"
