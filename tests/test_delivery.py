"""What the node guarantees about delivery, through the real dora CLI and daemon of both lines: a burst
that is still queued when dora delivers STOP is answered whole, by the node and by the operator, with
hostile texts inside it; a bad setting stops either form with one line naming it."""

import json
import re

import pytest
import yaml

from helpers import DORA_LINES, ROOT, copy_library, dora, run_node

pytestmark = pytest.mark.dataflow
BURST = 100
# ASCII on the wire, a lone surrogate once the JSON is decoded: dora cannot send it back as ref_text.
SURROGATE = json.dumps({"prompt": "VOICE:CUSTOM|voices/basil.wav|bad \ud800 text|en|after a bad switch"})


def prompts() -> list[str]:
    return [SURROGATE if i == 50 else f"VOICE:aria|text {i}" if i % 25 == 0 else f"text {i}" for i in range(BURST)]


def burst_flow(tmp_path, form: str, transcript, **env) -> str:
    library = copy_library(tmp_path)
    reference_mel = {"id": "reference-mel", "env": {**library["env"], "MEL_PRESET": "v2", **env}}
    wiring = {"inputs": {"text": {"source": "source/control", "queue_size": 1000, "queue_policy": "backpressure"}},
              "outputs": ["mel", "text", "error", "log"]}
    if form == "node":
        reference_mel.update(path="dora-reference-mel", **wiring)
    else:
        reference_mel["operator"] = {"python": str(ROOT / "node_hub/dora_reference_mel/dora_operator.py"), **wiring}
    nodes = [
        {"id": "source", "path": str(ROOT / "node_hub/demo_nodes/prompt_source.py"),
         "inputs": {"tick": "dora/timer/millis/200"}, "outputs": ["control"],
         "env": {"OUTPUT": "control", "BURST": "1", "PROMPTS": json.dumps(prompts())}},
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
    if form == "operator" and spoken != prompts():
        # dora's operator runtime (0.4.1 and 1.1 alike) closes an operator's channel at STOP, whatever it
        # answers, and drops what is still queued for it (docs/delivery.md): the custom node form is the one
        # that forwards them all. What did reach the operator is forwarded, in order.
        assert "for unknown operator" in out and spoken == prompts()[:len(spoken)], out[-3000:]
        return
    assert spoken == prompts(), out[-3000:]
    assert "Traceback" not in out  # the surrogate switch answered bad_text; its text and the 49 after it went on


@pytest.mark.parametrize("line", list(DORA_LINES))
@pytest.mark.parametrize("form", ["node", "operator"])
def test_a_bad_setting_stops_either_form_with_one_line(tmp_path, form, line):
    result = dora("run", burst_flow(tmp_path, form, tmp_path / "tts.jsonl", MAX_REF_SECONDS="1e307"), line=line,
                  cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    # (dora hands the YAML value 1e307 over as its 308 digits: the message shows the start of what it got)
    assert re.search(r"dora-reference-mel: bad configuration \[bad_config\]: MAX_REF_SECONDS='1\d*' must be a "
                     r"number from 0.1 to 3600", out), out[-3000:]


@pytest.mark.node
@pytest.mark.parametrize("line", list(DORA_LINES))
def test_dora_0_4_test_mode_never_delivers_an_empty_array(tmp_path, line):
    """dora 0.4.1's integration-test mode (DORA_TEST_WITH_INPUTS) drops an input whose array is empty
    (docs/delivery.md): under 1.1 the empty reference_audio gets its `empty_audio` answer, under 0.4.1 the
    node never sees it, and the next event is answered either way."""
    rate = {"sample_rate": {"Integer": 16000}}
    events = [{"type": "Input", "id": "reference_audio", "data": data, "data_type": "Float32", "metadata": rate}
              for data in ([], [0.5])]
    outputs, log = run_node(tmp_path, events, copy_library(tmp_path)["env"], bin_dir=DORA_LINES[line] / "bin")
    answered = [json.loads(o["data"][0])["error"] for o in outputs]
    assert answered == (["empty_audio", "too_short"] if line == "1.1" else ["too_short"]), log[-2000:]
