"""The real primespeech dataflow shapes (mofa-tts, the MLX node's test-tts) with this node inserted on
one edge, run by the real dora CLI and daemon of both lines a user's dataflow may be on: 0.4.1 (what
MoFA and the Rust dora-gpt-sovits-mlx node use) and 1.1."""

import json
import re
import shutil

import pytest
import yaml

from helpers import DORA_LINES, ROOT, dora

pytestmark = pytest.mark.dataflow

ARIA_TEXT = "Good morning. This is the reference voice of the demo dataflow."
BASIL_TEXT = "Hello there, I am a second voice, a little lower, sampled at sixteen kilohertz in mono."
CLEO_TEXT = "And I am the stereo voice. My two channels differ, so the mono mix matters."
CUSTOM_TEXT = "Hello there, I am a second voice."
# (voice, refer frames, codes, ref_text) each text must be spoken with, in order, after its voice switch.
MOFA_EXPECTED = [
    ("ariademo", 500, "500", ARIA_TEXT),  # display name "Aria Demo"
    ("ariademo", 500, "500", ARIA_TEXT),  # plain text: the same voice
    ("basilmoss", 295, "295", BASIL_TEXT),  # key, in JSON {"prompt": ...}
    ("cleostereo", 244, "none", CLEO_TEXT),  # alias
    ("CUSTOM", 295, "none", CUSTOM_TEXT),  # CUSTOM inside the models root
    ("CUSTOM", 295, "none", CUSTOM_TEXT),  # CUSTOM outside: refused, the text still spoken
    ("CUSTOM", 295, "none", CUSTOM_TEXT),  # unknown voice: reported, spoken
    ("CUSTOM", 295, "none", CUSTOM_TEXT),  # broken VOICE: line: reported, forwarded as is
]


def run(name: str, line: str, store: str) -> tuple[str, list[dict]]:
    """Run a dataflow; returns dora's log and the TTS stand-in's transcript (one dict per line)."""
    shutil.rmtree(ROOT / "out" / store, ignore_errors=True)
    result = dora("run", name, line=line)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    transcript = ROOT / "out" / store / "tts.jsonl"
    lines = transcript.read_text().splitlines() if transcript.exists() else []
    return out, [json.loads(line) for line in lines]


@pytest.mark.parametrize("line", list(DORA_LINES))
@pytest.mark.parametrize("name, store", [("mofa-tts.yml", "mofa-store"), ("mofa-tts-operator.yml", "mofa-store-operator")])
def test_mofa_tts_serves_every_switch_before_its_text(name, store, line):
    out, transcript = run(name, line, store)
    assert transcript[0] == {"startup": "ariademo", "refer": [1, 704, 500]}  # VOICE_NAME, before any text
    spoken = transcript[1:]
    assert [(s["voice"], s["refer"][2], str(s["codes"]), s["ref_text"]) for s in spoken] == MOFA_EXPECTED, out[-4000:]
    # every text forwarded unchanged and in order: its value, and its metadata (question_id)
    nodes = yaml.safe_load((ROOT / "dataflows" / name).read_text())["nodes"]
    sent = json.loads(next(n for n in nodes if n["id"] == "mofa-prompt-input")["env"]["PROMPTS"])
    assert [s["text"] for s in spoken] == sent
    assert [s["question_id"] for s in spoken] == list(range(8))
    errors = re.findall(r"system-log: ERROR reference-mel: \[(\w+)\]", out)
    assert errors == ["bad_ref_audio", "unknown_voice", "bad_text"]
    assert "VOICE:CUSTOM ref_audio /etc/hostname is not a file inside the folders a CUSTOM path may lead into" in out
    assert "add its folder to REF_AUDIO_ROOTS" in out


@pytest.mark.parametrize("line", list(DORA_LINES))
def test_mlx_test_tts_gets_its_startup_voice(line):
    out, transcript = run("gpt-sovits-mlx-test-tts.yml", line, "mlx-store")
    # sent at start, and again just before the first text spoken with it (the first can be lost,
    # docs/delivery.md); dora orders each input on its own, so the repeat may be recorded after that text
    starts = [entry for entry in transcript if "startup" in entry]
    assert transcript[0] == {"startup": "basil", "refer": [1, 704, 295]} and len(starts) <= 2, out[-4000:]
    assert all(entry == transcript[0] for entry in starts)
    spoken = [entry for entry in transcript if "text" in entry]
    assert [(s["voice"], s["refer"], s["codes"]) for s in spoken] == [("basil", [1, 704, 295], 295)] * 3, out[-4000:]
    assert [s["text"] for s in spoken] == ["First test sentence.", "Second test sentence.", "Third test sentence."]


def test_demo_runs_under_dora_04():
    out, _ = run("tts.yml", "0.4", "demo-store")
    assert "5 requests answered" in out and "0 with an unexpected answer" in out
