"""One dataflow over two dora daemons, as docs/deployment.md tells users to run it: a coordinator and two
daemons on loopback (free ports, no multicast), of each dora line, running the shipped two-machine
dataflows with only MoFA's dynamic prompt node and the TTS nodes replaced by stand-ins. Every mel must
arrive byte-identical to the node's own in-process answer, and every text in order."""

import contextlib
import json
import os
import signal
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
from dora_reference_mel.service import ReferenceMelService
from helpers import DORA_LINES, PROMPTS, ROOT, cluster, spoken, user_home, with_stand_ins

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
    assert [e["startup"] for e in entries if "startup" in e] == ["doubao", "absolute"], out[-3000:]
    after_restart = [e for e in entries[[i for i, e in enumerate(entries) if "startup" in e][-1]:] if "text" in e]
    assert len(after_restart) > 1, out[-3000:]  # texts were spoken by the restarted node, before the last switch
    assert {e["voice"] for e in spoken(transcript)[:-1]} == {"absolute"}, out[-3000:]
    assert not processes_marked(marker)
