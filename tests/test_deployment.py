"""One dataflow over two dora daemons, as docs/deployment.md tells users to run it: a coordinator and two
daemons on loopback (free ports, no multicast), of each dora line, running the shipped two-machine
dataflows with only MoFA's dynamic prompt node and the TTS nodes replaced by stand-ins. Every mel must
arrive byte-identical to the node's own in-process answer, and every text in order. On one machine,
several TTS nodes each with its own reference-mel, all sharing one codes directory."""

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import xxhash
import yaml

from dora_reference_mel.config import Config
from dora_reference_mel.contract import MEL_OUTPUT, REFERENCE_KEY, TEXT_OUTPUT
from dora_reference_mel.node.service import ReferenceMelService
from helpers import BIN, DORA_LINES, PROMPTS, ROOT, cluster, dora, spoken, user_home, with_stand_ins

pytestmark = pytest.mark.dataflow
TWO_MACHINES = ROOT / "dataflows" / "two-machines"
TEXTS = [text for text, _, _ in PROMPTS]


def shipped(name: str, line: str, tmp_path, transcripts: dict, prompts=TEXTS) -> str:
    nodes = yaml.safe_load((TWO_MACHINES / f"{name}-{'1.1' if line == '1.1' else '0.4'}.yml").read_text())["nodes"]
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump({"nodes": with_stand_ins(nodes, prompts, transcripts)}, allow_unicode=True))
    return str(path)


def in_process_digests(user, startup_voice: str) -> list[str | None]:
    """The digest of the reference each text is spoken with, from the service itself on the same texts."""
    home, os.environ["HOME"] = os.environ["HOME"], str(user["home"])
    try:
        service = ReferenceMelService(Config.from_env({"VOICE_NAME": startup_voice, "MEL_WRITE_BACK": "0"}))
        outputs = service.startup()
        for text in TEXTS:
            outputs += service.handle("text", pa.array([text]), {})
    finally:
        os.environ["HOME"] = home
    mels = {o.metadata["reference_id"]: xxhash.xxh3_64_hexdigest(np.asarray(o.value).tobytes())
            for o in outputs if o.output_id == MEL_OUTPUT}
    return [mels.get(o.metadata.get(REFERENCE_KEY)) for o in outputs if o.output_id == TEXT_OUTPUT]


@pytest.mark.parametrize("line", list(DORA_LINES))
def test_the_store_machine_layout_delivers_every_mel_byte_identical(tmp_path, line):
    user = user_home(tmp_path)
    transcript = tmp_path / "tts.jsonl"
    with cluster(line, tmp_path / "cluster", machines=("tts", "store"), env=user["env"]) as start:
        result = start(shipped("store-machine", line, tmp_path, {"primespeech-tts": transcript}))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    texts = spoken(transcript)
    assert [t["text"] for t in texts] == TEXTS, out[-3000:]
    assert [t["digest"] for t in texts] == in_process_digests(user, "Doubao")
    assert "reference-mel on daemon `store`" in out, out[-3000:]  # it ran on the other daemon


@pytest.mark.parametrize("line", list(DORA_LINES))
def test_one_reference_mel_per_machine_beside_its_tts(tmp_path, line):
    user = user_home(tmp_path)
    transcripts = {"primespeech-tts-a": tmp_path / "a.jsonl", "primespeech-tts-b": tmp_path / "b.jsonl"}
    with cluster(line, tmp_path / "cluster", env=user["env"]) as start:
        result = start(shipped("per-machine", line, tmp_path, transcripts))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    a, b = spoken(transcripts["primespeech-tts-a"]), spoken(transcripts["primespeech-tts-b"])
    assert [t["text"] for t in a] == [t["text"] for t in b] == TEXTS
    assert a[0]["voice"] == "doubao" and b[0]["voice"] == "luoxiang"  # each machine its own startup voice
    assert [t["digest"] for t in a] == in_process_digests(user, "Doubao")
    assert [t["digest"] for t in b] == in_process_digests(user, "Luo Xiang")


def processes_marked(marker: str, command: str = "") -> list[int]:
    """Pids of the processes whose environment carries RESTART_TEST_MARKER=marker (set on every node of a
    dataflow this test started) and whose command line contains `command`: never anyone else's."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # gone, or not ours to read
            continue
        if f"RESTART_TEST_MARKER={marker}".encode() in environ and command.encode() in cmdline:
            pids.append(int(entry))
    return pids


@pytest.mark.slow
def test_restart_policy_brings_the_node_back_with_the_voice_it_last_switched_to(tmp_path):
    """dora 1.1 restarts a killed node (`restart_policy: on-failure` in the shipped example); the new process
    comes back with the voice texts were last switched to, not its startup voice, so the rest of the
    dialogue keeps that voice. Every text shares one request_id (one answer split into sentences), and
    each is spoken with its own switch's voice. Texts that arrive while the node is down may be lost: dora
    delivers them to no one. The test signals only processes carrying its own marker."""
    user = user_home(tmp_path)
    transcript = tmp_path / "tts.jsonl"
    prompts = ["VOICE:absolute|before 0"] + [f"text {i}" for i in range(1, 80)] + ["VOICE:Tilde|last"]
    flow = Path(shipped("store-machine", "1.1", tmp_path, {"primespeech-tts": transcript}, prompts))
    marker = uuid.uuid4().hex
    nodes = yaml.safe_load(flow.read_text())["nodes"]
    for node in nodes:
        node["env"] = {**node.get("env", {}), "RESTART_TEST_MARKER": marker}
        if node["id"] == "mofa-prompt-input":
            node["env"]["METADATA"] = json.dumps({"request_id": "answer-1"})
    flow.write_text(yaml.safe_dump({"nodes": nodes}, allow_unicode=True))
    running = None
    try:
        with cluster("1.1", tmp_path / "cluster", machines=("tts", "store"), env=user["env"]) as start:
            running = start(flow, wait=False)
            deadline = time.monotonic() + 120
            while len(spoken(transcript)) < 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            node = processes_marked(marker, "bin/dora-reference-mel")
            assert len(node) == 1, node
            os.kill(node[0], signal.SIGKILL)
            out, _ = running.communicate(timeout=240)
    finally:
        if running is not None and running.poll() is None:
            running.kill()
        for pid in processes_marked(marker):  # whatever of this dataflow a failure left running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    entries = [json.loads(line) for line in transcript.read_text().splitlines()]
    texts = [t["text"] for t in spoken(transcript)]
    assert texts[-1] == "VOICE:Tilde|last", out[-3000:]  # the restarted node served the last switch
    assert spoken(transcript)[-1]["voice"] == "tilde" and texts == sorted(texts, key=prompts.index)
    assert "restart" in out.lower(), out[-3000:]
    # each start's voice; the restarted node's startup mel goes again before the first text spoken with it
    starts = [voice for voice, _ in itertools.groupby(e["startup"] for e in entries if "startup" in e)]
    assert starts == ["doubao", "absolute"], out[-3000:]
    after_restart = [e for e in entries[[i for i, e in enumerate(entries) if "startup" in e][-1]:] if "text" in e]
    assert len(after_restart) > 1, out[-3000:]  # texts were spoken by the restarted node, before the last switch
    assert {e["voice"] for e in spoken(transcript)[:-1]} == {"absolute"}, out[-3000:]
    assert not processes_marked(marker)


# -- several TTS nodes on one machine, each with its own reference-mel (docs/primespeech.md) ------------

# Each participant's texts, and the voice (voices.json key) each must be spoken with: at every position
# the three participants speak with different voices, so a switch reaching another participant shows.
PARTICIPANTS = {
    "student1": [("student1: before any switch, the startup voice.", "absolute"),
                 ("VOICE:linked|student1: a symlinked recording.", "linked"),
                 ("student1: still the linked voice.", "linked"),
                 ('{"prompt": "VOICE:Doubao|student1: by display name, wrapped in JSON."}', "doubao")],
    "student2": [("student2: before any switch, the startup voice.", "doubao"),
                 ("VOICE:absolute|student2: a recording named by an absolute path.", "absolute"),
                 ("VOICE:Tilde|student2: by alias, under ~.", "tilde"),
                 ("student2: still the tilde voice.", "tilde")],
    "tutor": [("tutor: before any switch, the startup voice.", "tilde"),
              ("VOICE:罗翔|tutor: a CJK alias.", "luoxiang"),
              ("VOICE:absolute|tutor: the voice student2 took first.", "absolute"),
              ("VOICE:Nobody|tutor: an unknown voice, the voice before it speaks.", "absolute")],
}


def voice_chat_wiring(tmp_path, transcripts: dict) -> str:
    """docs/primespeech.md's voice-chat YAML, with a scripted text source per segmenter output and the
    TTS nodes replaced by stand-ins."""
    doc = (ROOT / "docs" / "primespeech.md").read_text()
    nodes = yaml.safe_load(re.search(r"<!-- wiring:voice-chat -->\n```yaml\n(.*?)```", doc, re.S).group(1))
    for node in list(nodes):
        source = node["inputs"]["text"]["source"]
        if source.startswith("multi-text-segmenter/"):  # one scripted source in place of each segmenter output
            participant, output = node["id"].removeprefix("reference-mel-"), source.split("/")[1]
            node["inputs"]["text"]["source"] = f"text-{participant}/{output}"
            nodes.append({"id": f"text-{participant}", "path": str(ROOT / "node_hub/demo_nodes/prompt_source.py"),
                          "inputs": {"tick": "dora/timer/millis/150"}, "outputs": [output],
                          "env": {"OUTPUT": output,
                                  "PROMPTS": json.dumps([text for text, _ in PARTICIPANTS[participant]])}})
    path = tmp_path / "voice-chat.yml"
    path.write_text(yaml.safe_dump({"nodes": with_stand_ins(nodes, [], transcripts)}, allow_unicode=True))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("line", list(DORA_LINES))
def test_three_tts_nodes_each_with_its_own_reference_mel(tmp_path, line):
    user = user_home(tmp_path)
    library = json.loads((user["models"] / "voices.json").read_text())
    library["voices"]["absolute"]["aliases"] = ["Zhao Daniu"]  # the doc's startup voices
    library["voices"]["tilde"]["aliases"].append("Ma Yun")
    (user["models"] / "voices.json").write_text(json.dumps(library, ensure_ascii=False))
    transcripts = {f"primespeech-{p}": tmp_path / f"{p}.jsonl" for p in PARTICIPANTS}
    result = dora("run", voice_chat_wiring(tmp_path, transcripts), line=line, cwd=tmp_path, env=user["env"])
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    digests = {}
    for participant, expected in PARTICIPANTS.items():
        texts = spoken(transcripts[f"primespeech-{participant}"])
        assert [(t["text"], t["voice"]) for t in texts] == expected, (participant, out[-3000:])  # all, in order
        for t in texts:
            digests.setdefault(t["voice"], set()).add(t["digest"])
    assert all(len(found) == 1 for found in digests.values()), digests  # one spectrogram per voice, whoever served it
    stored = sorted(p.name for p in user["codes_dir"].iterdir())
    assert not [name for name in stored if name.endswith(".tmp")], stored  # the shared folder holds whole files only
    verify = subprocess.run([str(BIN / "reference-mel"), "verify"], env={**os.environ, **user["env"]},
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0 and "verify: 0 stale or corrupt" in verify.stdout, verify.stdout
    # four files: linked's recording is absolute's, so it is served from the cache and never computed
    assert len(re.findall(r"^ok ", verify.stdout, re.M)) == 4, verify.stdout
