"""The real node (`dora-reference-mel`, real `Node()`) replaying recorded events in dora's
integration-test mode. Outputs come back without metadata there, so the node's per-event log
line (source, shape) is checked next to the output data."""

import json
import re
import subprocess

import numpy as np
import pyarrow as pa
import pytest

import oracle
from helpers import BIN, EVENTS, node_run_env, read_outputs, recorded, run_node

pytestmark = pytest.mark.node  # every test here runs the node process


def recorded_samples(index):
    entry = json.loads((EVENTS / "events.json").read_text())[index]
    with pa.OSFile(str(EVENTS / entry["file"])) as f:
        values = pa.ipc.open_file(f).read_all().column("value").to_numpy()
    meta = entry["metadata"]
    return values.reshape(-1, meta["channels"]["Integer"]), meta["sample_rate"]["Integer"]


def served(log):
    return [(m["voice"], m["source"], m["shape"]) for m in
            re.finditer(r"mel voice=(?P<voice>\S+) preset=\S+ source=(?P<source>\S+) shape=(?P<shape>\[[^\]]*\])", log)]


def test_replay_computed_cache_error_then_served_then_precomputed(tmp_path, library):
    events = [recorded(0), recorded(3),  # aria twice (the recording's repeat)
              {"type": "Input", "id": "reference_audio", "data": [0.5], "data_type": "Float32",
               "metadata": {"sample_rate": {"Integer": 16000}}},  # malformed: one sample
              recorded(1), recorded(2), recorded(4)]  # basil, cleo (stereo 44.1k), voice event "Basil"
    outputs, log = run_node(tmp_path, events, library["env"])
    assert [o["id"] for o in outputs] == ["mel", "mel", "error", "mel", "mel", "mel"]
    assert served(log) == [("aria", "computed", "[1, 704, 500]"), ("aria", "cache", "[1, 704, 500]"),
                           ("basil", "computed", "[1, 704, 295]"), ("cleo", "computed", "[1, 704, 244]"),
                           ("basil", "cache", "[1, 704, 295]")]  # the same audio as the basil event before
    assert json.loads(outputs[2]["data"][0])["error"] == "too_short"
    for output, index in ((outputs[0], 0), (outputs[3], 1), (outputs[4], 2)):
        samples, rate = recorded_samples(index)
        ours = np.array(output["data"], dtype=np.float32).reshape(704, -1)
        assert np.abs(ours - oracle.reference_feature(samples, rate)[0]).max() <= 1e-3
    assert outputs[0]["data"] == outputs[1]["data"]

    # A new process finds every named voice precomputed.
    again, log = run_node(tmp_path, [recorded(0), recorded(2)], library["env"], name="restart")
    assert [s[:2] for s in served(log)] == [("aria", "precomputed"), ("cleo", "precomputed")]
    assert again[0]["data"] == outputs[0]["data"]


def test_replay_two_presets_then_cache(tmp_path, library):
    env = dict(library["env"], MEL_PRESET="v2,v4")
    outputs, log = run_node(tmp_path, [recorded(2), recorded(2)], env)
    assert [o["id"] for o in outputs] == ["mel"] * 4
    assert [s[1] for s in served(log)] == ["computed", "computed", "cache", "cache"]
    assert len(outputs[1]["data"]) == 100 * (244 * 640 // 320)  # v4: 100 mels, L32 // 320 frames


def test_replay_bad_events_never_stop_the_node(tmp_path, library):
    good = recorded(1)
    bad = [
        {"data": ["not audio"], "data_type": "Utf8", "metadata": {"sample_rate": {"Integer": 16000}}},
        {"data": [0.1] * 20000, "data_type": "Float32", "metadata": {}},
        {"data": [0.1] * 20000, "data_type": "Float32", "metadata": {"sample_rate": {"Integer": -5}}},
        {"data": [0.1] * 20001, "data_type": "Float32",
         "metadata": {"sample_rate": {"Integer": 16000}, "channels": {"Integer": 2}}},
        {"data": [0.1] * 20000, "data_type": "Float32",
         "metadata": {"sample_rate": {"Integer": 16000}, "voice": {"String": "../../etc/passwd"}}},
    ]
    events = [dict(b, type="Input", id="reference_audio") for b in bad] + [good]
    outputs, _ = run_node(tmp_path, events, library["env"])
    codes = [json.loads(o["data"][0])["error"] for o in outputs[:-1]]
    assert codes == ["bad_dtype", "bad_sample_rate", "bad_sample_rate", "bad_channels", "bad_voice"]
    assert outputs[-1]["id"] == "mel"


def test_nodes_starting_together_on_a_machine_without_mlx_kernels_both_serve(tmp_path, library):
    """MLX keeps compiled kernels under the temporary folder, written in place: two nodes that build
    the same kernels at once (a fresh machine, two mel nodes in one dataflow) must both come up."""
    fresh_tmp = tmp_path / "fresh-tmp"  # MLX's kernel cache lives under TMPDIR: an empty one is a new machine
    fresh_tmp.mkdir()
    env = dict(library["env"], TMPDIR=str(fresh_tmp), MEL_PRESET="v2", MEL_WRITE_BACK="0")
    runs = []
    for name in ("one", "two"):
        full_env, outputs = node_run_env(tmp_path, [recorded(0)], env, name)
        log = open(tmp_path / f"{name}.log", "w+")
        runs.append((subprocess.Popen([str(BIN / "dora-reference-mel")], env=full_env, stderr=log), outputs, log))
    for proc, outputs, log in runs:
        assert proc.wait(timeout=600) == 0
        log.seek(0)
        text = log.read()
        log.close()
        assert [s[1] for s in served(text)] == ["computed"], text[-2000:]
        assert len(read_outputs(outputs)) == 1
    assert list((fresh_tmp / "mlx").rglob("*.so")), "MLX built no kernel: the compiled path was not taken"
