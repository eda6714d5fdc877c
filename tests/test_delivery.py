"""What the node guarantees about delivery, through the real dora CLI and daemon of both lines: a burst
that is still queued when dora delivers STOP is answered whole, by the node and by the operator."""

import json

import pytest
import yaml

from helpers import DORA_LINES, ROOT, copy_library, dora

pytestmark = pytest.mark.dataflow
BURST = 100


def burst_flow(tmp_path, form: str, transcript) -> str:
    library = copy_library(tmp_path)
    prompts = [f"VOICE:aria|text {i}" if i % 25 == 0 else f"text {i}" for i in range(BURST)]
    reference_mel = {"id": "reference-mel", "env": {**library["env"], "MEL_PRESET": "v2"}}
    wiring = {"inputs": {"text": {"source": "source/control", "queue_size": 1000, "queue_policy": "backpressure"}},
              "outputs": ["mel", "text", "error", "log"]}
    if form == "node":
        reference_mel.update(path="dora-reference-mel", **wiring)
    else:
        reference_mel["operator"] = {"python": str(ROOT / "node_hub/dora_reference_mel/dora_operator.py"), **wiring}
    nodes = [
        {"id": "source", "path": str(ROOT / "node_hub/demo_nodes/prompt_source.py"),
         "inputs": {"tick": "dora/timer/millis/200"}, "outputs": ["control"],
         "env": {"OUTPUT": "control", "BURST": "1", "PROMPTS": json.dumps(prompts)}},
        reference_mel,
        {"id": "tts", "path": str(ROOT / "node_hub/demo_nodes/tts_standin.py"),
         "inputs": {"text": {"source": "reference-mel/text", "queue_size": 1000, "queue_policy": "backpressure"},
                    "reference": {"source": "reference-mel/mel", "queue_size": 100,
                                  "queue_policy": "backpressure"}},
         "env": {"TRANSCRIPT": str(transcript)}},
    ]
    path = tmp_path / "burst.yml"
    path.write_text(yaml.safe_dump({"nodes": nodes}))
    return str(path)


@pytest.mark.parametrize("line", list(DORA_LINES))
@pytest.mark.parametrize("form", ["node", "operator"])
def test_a_burst_queued_behind_stop_is_forwarded_whole(tmp_path, form, line):
    transcript = tmp_path / "tts.jsonl"
    result = dora("run", burst_flow(tmp_path, form, transcript), line=line, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    spoken = [json.loads(line)["text"] for line in transcript.read_text().splitlines() if '"text"' in line]
    assert spoken == [f"VOICE:aria|text {i}" if i % 25 == 0 else f"text {i}" for i in range(BURST)], out[-3000:]
