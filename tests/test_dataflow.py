"""dataflows/tts.yml with the real dora CLI and daemon, both ways users start it."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, copy_library, dora

DATAFLOWS = ROOT / "dataflows"
STORE = ROOT / "out" / "demo-store"
pytestmark = pytest.mark.dataflow


def consumer_lines(output: str) -> list[tuple[str, str, str]]:
    return re.findall(r"consumer: voice=(\S+) preset=(\S+) source=(\S+) refer", output)


def test_every_dataflow_validates():
    for path in DATAFLOWS.glob("*.yml"):
        result = dora("validate", path.name)
        assert result.returncode == 0, result.stdout + result.stderr


def git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout


def test_dora_run_tts_yml_twice():
    shutil.rmtree(STORE, ignore_errors=True)
    shutil.rmtree(ROOT / "out" / "demo", ignore_errors=True)
    before = git_status()
    first = dora("run", "tts.yml")
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    assert sorted(consumer_lines(out)) == sorted([
        ("aria", "v2", "computed"), ("basil", "v2", "computed"), ("cleo", "v2", "computed"),
        ("aria", "v2", "cache"), ("basil", "v2", "cache")])  # the voice event: basil's audio, already served
    assert "5 requests answered" in out and "0 with an unexpected answer" in out
    assert "CONTRACT VIOLATION" not in out
    assert "warm-up output sent" in out  # tts.yml declares `warmup`: the node paid its first large send at start
    assert {p.name for p in STORE.glob("codes/*_mel.bin")} == {"aria_mel.bin", "basil_mel.bin", "cleo_mel.bin"}
    pngs = list((ROOT / "out" / "demo").glob("*.png"))
    assert sorted(p.name for p in pngs) == ["aria_v2.png", "basil_v2.png", "cleo_v2.png"]  # one per voice, replaced
    assert all(p.stat().st_size > 10_000 for p in pngs)

    second = dora("run", "tts.yml")
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    sources = sorted(s for _, _, s in consumer_lines(out))
    assert sources == ["cache", "cache", "precomputed", "precomputed", "precomputed"]
    assert git_status() == before, "the demo must not write into the git tree (only into git-ignored out/)"


def test_dora_up_start_attach():
    dora("down", timeout=60)
    up = dora("up", timeout=60)
    assert up.returncode == 0, up.stderr
    try:
        started = dora("start", "tts.yml", "--attach")
        out = started.stdout + started.stderr
        assert started.returncode == 0, out[-4000:]
    finally:
        dora("down", timeout=60)
    assert "5 requests answered" in out and "0 with an unexpected answer" in out


def test_demo_wiring_matches_node_manifest():
    """Every shipped dataflow wires exactly the inputs and outputs dora-node.yml declares."""
    manifest = yaml.safe_load((ROOT / "node_hub/dora_reference_mel/dora-node.yml").read_text())
    for path in DATAFLOWS.rglob("*.yml"):
        for node in yaml.safe_load(path.read_text())["nodes"]:
            if node.get("path") == "dora-reference-mel":
                assert set(node["outputs"]) <= set(manifest["outputs"]), path
                assert set(node["inputs"]) <= set(manifest["inputs"]), path


@pytest.mark.slow
def test_soak_2000_mixed_events():
    """dataflows/soak.yml: every request answered (re-sent where dora dropped it), bad ones with the
    right error, the node alive to the end, memory bounded, nothing written outside the codes dir."""
    store = ROOT / "out" / "soak-store"
    shutil.rmtree(store, ignore_errors=True)
    before = git_status()
    passwd = Path("/etc/passwd").stat().st_mtime_ns
    result = dora("run", "soak.yml", timeout=1200)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert re.search(r"2000 requests answered in [\d.]+ s, \d+ re-sent, 0 with an unexpected answer", out), out[-3000:]
    assert "consumer: totals {'mel': 1500, 'error': 500}" in out or "'error': 500, 'mel': 1500" in out
    stopping = re.search(r"stopping: sent (\d+) mel, (\d+) error and \d+ text events; cache \d+ entries, ([\d.]+) MB; "
                         r"peak RSS (\d+) MB", out)
    assert stopping, "the node must reach its own orderly stop"
    mel, errors, cache_mb, peak = (float(g) for g in stopping.groups())
    assert mel >= 1500 and errors >= 500 and cache_mb <= 64
    # Bound: the 64 MB cache + ~250 MB of process (MLX, Arrow, Python) + the source's window of 200
    # requests in flight, queued in the node (up to 1.4 MB of audio each): see docs/delivery.md.
    assert peak <= 64 + 250 + 200 * 1.4, peak
    assert git_status() == before and Path("/etc/passwd").stat().st_mtime_ns == passwd
    written = sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))
    assert written == ["codes"] + sorted(f"codes/{v}_mel.{x}" for v in ("aria", "basil", "cleo") for x in ("bin", "json"))


def run_fresh(name: str, store: str) -> str:
    shutil.rmtree(ROOT / "out" / store, ignore_errors=True)
    result = dora("run", name)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    return out


def test_operator_form_gives_the_same_outputs_as_the_node_form():
    as_node = re.findall(r"consumer: (voice=.*crc=\w+)", run_fresh("tts.yml", "demo-store"))
    as_operator = re.findall(r"consumer: (voice=.*crc=\w+)", run_fresh("tts_operator.yml", "demo-store-operator"))
    assert len(as_node) == 5 and sorted(as_node) == sorted(as_operator)


def test_readme_before_and_after_validate(tmp_path):
    """The wiring before (docs/primespeech.md) and after (README): both validate as dataflows, and the
    after differs from the before by this node and the TTS node's inputs (the real TTS node replaced by
    the stand-in). tests/test_user_library.py runs the after."""
    before_doc = (ROOT / "docs" / "primespeech.md").read_text()
    before = yaml.safe_load(before_doc.split("```yaml")[1].split("```")[0])
    after = yaml.safe_load((ROOT / "README.md").read_text().split("<!-- wiring:after -->\n```yaml")[1].split("```")[0])
    assert [n["id"] for n in after] == ["mofa-prompt-input", "reference-mel", "primespeech-tts"]
    assert [n for n in after if n["id"] != "reference-mel"][0] == before[0]
    for name, nodes in (("before", before), ("after", after)):
        for node in nodes:
            if node.get("path") == "dora-primespeech":
                node["path"] = str(ROOT / "node_hub/demo_nodes/tts_standin.py")
        path = tmp_path / f"{name}.yml"
        path.write_text(yaml.safe_dump({"nodes": nodes}))
        result = dora("validate", str(path))
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_shipped_input_uses_backpressure():
    """dora's default queue policy silently drops messages under load (docs/delivery.md); every
    input of a shipped dataflow carries events that must arrive."""
    for path in DATAFLOWS.rglob("*.yml"):
        for node in yaml.safe_load(path.read_text())["nodes"]:
            inputs = node.get("inputs") or node.get("operator", {}).get("inputs") or {}
            for name, spec in inputs.items():
                if isinstance(spec, str) and spec.startswith("dora/timer/"):
                    continue  # a lost tick only delays the next line of a scripted source
                assert isinstance(spec, dict) and spec.get("queue_policy") == "backpressure", (path.name, node["id"], name)


LOG_SINK = """import json
from dora import Node
for event in Node():
    if event["type"] == "INPUT":
        print("log-sink:", json.loads(event["value"][0].as_py())["message"], flush=True)
"""


@pytest.mark.slow
def test_an_input_without_backpressure_is_named_once_at_start(tmp_path):
    """dora 1.1 drops the oldest message of a full queue under its default policy: the node reads its
    own wiring and says, on its log and its `log` output, which input lacks backpressure and the fix.
    dora 0.4 has no queue policy: there it says nothing."""
    library = copy_library(tmp_path)
    (tmp_path / "log_sink.py").write_text(LOG_SINK)
    backpressure = {"queue_size": 100, "queue_policy": "backpressure"}
    outputs = {}
    for line, policy in (("1.1", "default"), ("1.1", "backpressure"), ("0.4", "default")):
        text = {"source": "prompts/control", "queue_size": 100, **({"queue_policy": policy} if policy != "default" else {})}
        nodes = [
            {"id": "prompts", "path": str(ROOT / "node_hub/demo_nodes/prompt_source.py"), "outputs": ["control"],
             "inputs": {"tick": "dora/timer/millis/150"},
             "env": {"OUTPUT": "control", "PROMPTS": json.dumps(["VOICE:aria|Hello.", "Plain text."])}},
            {"id": "reference-mel", "path": "dora-reference-mel", "inputs": {"text": text},
             "outputs": ["mel", "text", "error", "log"], "env": library["env"]},
            {"id": "tts", "path": str(ROOT / "node_hub/demo_nodes/tts_standin.py"),
             "inputs": {"text": {"source": "reference-mel/text", **backpressure},
                        "reference": {"source": "reference-mel/mel", **backpressure}}},
            {"id": "log-sink", "path": str(tmp_path / "log_sink.py"),
             "inputs": {"log": {"source": "reference-mel/log", **backpressure}}},
        ]
        flow = tmp_path / f"{line}-{policy}.yml"
        flow.write_text(yaml.safe_dump({"nodes": nodes}))
        result = dora("run", str(flow), line=line, cwd=tmp_path)
        outputs[line, policy] = result.stdout + result.stderr
        assert result.returncode == 0, outputs[line, policy][-4000:]
        assert "tts: spoke 2 texts" in outputs[line, policy]
    wanted = "input text (from prompts/control) has no queue_policy: backpressure"
    fix = "text: {source: prompts/control, queue_size: 100, queue_policy: backpressure}"
    unwired = outputs["1.1", "default"]
    assert unwired.count(f"log-sink: {wanted}") == 1 and fix in unwired
    assert len(re.findall(f"reference-mel.*WARNING.*{re.escape(wanted)}", unwired)) == 1  # the node's own log
    assert "queue_policy" not in outputs["1.1", "backpressure"] + outputs["0.4", "default"]
