"""Helpers the tests share: real speech fixtures, a copy of the demo voice library, the real dora CLI of
each line, and the real node run in dora's integration-test mode (DORA_TEST_WITH_INPUTS)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile
import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SPEECH = FIXTURES / "speech"
EVENTS = FIXTURES / "events"
RATES = (16000, 22050, 24000, 32000, 44100, 48000)
LINEAR_MAX_ABS = 1e-3  # docs/recipe.md, "Tolerances": v2 values reach several hundred
BIN = Path(sys.executable).parent
# The two dora lines a dataflow may run on, each in its own environment (scripts/setup.sh makes both):
# a node must register with the daemon of its own line.
DORA_LINES = {"1.1": ROOT / ".venv", "0.4": ROOT / ".venv-dora04"}


def dora(*args, line: str = "1.1", timeout: float = 240, cwd: Path | None = None,
         env: dict | None = None, venv: Path | None = None) -> subprocess.CompletedProcess:
    """The real dora CLI of one line (or of `venv`), run from dataflows/ with that environment active (and `env`)."""
    venv = venv or DORA_LINES[line]
    if not (venv / "bin" / "dora").exists():
        raise FileNotFoundError(f"{venv} has no dora CLI: run scripts/setup.sh")
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("DORA_")}
    env.update(extra, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", VIRTUAL_ENV=str(venv))
    return subprocess.run([str(venv / "bin" / "dora"), *args], cwd=cwd or ROOT / "dataflows", env=env,
                          capture_output=True, text=True, timeout=timeout)


def speech(layout: str, rate: int, dtype: str = "float32"):
    """Real speech (espeak-ng, resampled by sox): [n] mono or [n, 2] stereo, and its rate."""
    samples, sr = soundfile.read(str(SPEECH / f"{layout}_{rate}.wav"), dtype=dtype)
    assert sr == rate
    return samples, sr


HARD_SIGNALS = ("dc_speech", "dc", "quarter_rate_tone", "sweep")


def hard_signal(kind: str, rate: int, seconds: float = 2.0) -> np.ndarray:
    """[n] float32 clips at `rate` that stress the recipe's sums: the speech fixture plus a 0.25 DC offset,
    a pure 0.5 DC, a tone at a quarter of the rate and a linear sweep from 50 Hz to Nyquist (both 0.5
    amplitude)."""
    t = np.arange(int(rate * seconds)) / rate
    if kind == "dc_speech":
        return (speech("mono", rate)[0][: t.size] + 0.25).astype(np.float32)
    if kind == "dc":
        return np.full(t.size, 0.5, np.float32)
    if kind == "quarter_rate_tone":
        return (0.5 * np.sin(2 * np.pi * rate / 4 * t + 0.3)).astype(np.float32)
    if kind == "sweep":
        return (0.5 * np.sin(2 * np.pi * (50 * t + (rate / 2 - 50) * t * t / (2 * seconds)))).astype(np.float32)
    raise ValueError(kind)


def copy_library(tmp_path: Path) -> dict:
    """A writable copy of models/ (voices.json, audio, codes) and an empty codes directory."""
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models, ignore=shutil.ignore_patterns("*.sh", "*.py"))
    codes_dir = tmp_path / "codes"
    codes_dir.mkdir()
    return {"voices": models / "voices.json", "codes_dir": codes_dir, "models": models,
            "env": {"PRIMESPEECH_MODEL_DIR": str(models), "VOICES_CONFIG": str(models / "voices.json"),
                    "CODES_DIR": str(codes_dir)}}


def recorded(index: int) -> dict:
    """A recorded event (tests/fixtures/events) as an integration-test input event."""
    entry = json.loads((EVENTS / "events.json").read_text())[index]
    return {"type": "Input", "id": entry["id"], "path": str(EVENTS / entry["file"]), "batch_index": 0,
            "column": "value", "metadata": dict(entry["metadata"])}


def node_run_env(tmp_path: Path, events: list[dict], env: dict, name: str = "run") -> tuple[dict, Path]:
    """The environment that runs the real node on `events` in dora's integration-test mode, and the file
    its outputs go to (events get their time offsets, and a Stop after the last)."""
    for i, event in enumerate(events):
        event.setdefault("time_offset_secs", 0.05 * i)
    events = events + [{"type": "Stop", "time_offset_secs": 0.05 * len(events) + 0.5}]
    inputs, outputs = tmp_path / f"{name}-inputs.json", tmp_path / f"{name}-outputs.jsonl"
    inputs.write_text(json.dumps({"id": "reference-mel", "events": events}))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DORA_")}
    full_env.update(env, DORA_TEST_WITH_INPUTS=str(inputs), DORA_TEST_WRITE_OUTPUTS_TO=str(outputs),
                    DORA_TEST_NO_OUTPUT_TIME_OFFSET="1")
    return full_env, outputs


def read_outputs(outputs: Path, keep_logs: bool = False) -> list[dict]:
    lines = outputs.read_text().splitlines() if outputs.exists() else []
    return [o for o in map(json.loads, lines) if keep_logs or o["id"] != "log"]


def run_node(tmp_path: Path, events: list[dict], env: dict, name: str = "run",
             keep_logs: bool = False, bin_dir: Path = BIN) -> tuple[list[dict], str]:
    """Run the real `dora-reference-mel` (from bin_dir) on `events` (integration-test mode); returns outputs
    and log. Outputs on `log` (the MoFA log line beside each error and warning) are left out unless keep_logs."""
    full_env, outputs = node_run_env(tmp_path, events, env, name)
    proc = subprocess.run([str(bin_dir / "dora-reference-mel")], env=full_env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_outputs(outputs, keep_logs), proc.stderr


def replay_cases(tmp_path: Path, cases: dict[str, dict], env: dict, answers: dict[str, int] | None = None,
                 keep_logs: bool = False) -> dict:
    """The one replay harness of the hostile batteries: the real node run once on every case's event, in
    order. Returns each case's answers (the outputs other than `log`: answers[case] of them, one when not
    given) under "cases", every output ("outputs", `log` lines only with keep_logs) and the node's log."""
    outputs, log = run_node(tmp_path, [dict(event, type="Input") for event in cases.values()], env, keep_logs=keep_logs)
    replies, by_case = iter([o for o in outputs if o["id"] != "log"]), {}
    for name in cases:
        by_case[name] = [reply for _, reply in zip(range((answers or {}).get(name, 1)), replies, strict=False)]
    return {"cases": by_case, "outputs": outputs, "log": log}


# -- a primespeech user's library and dataflow ---------------------------------------------------------

VOICES = ROOT / "models" / "voices"
# The switches a prompt source sends to a user_home library, and the voice and codes each text must be
# spoken with.
PROMPTS = [
    ("Before any switch: the startup voice.", "doubao", 500),
    ("VOICE:absolute|Recorded outside the models folder, named by an absolute path.", "absolute", 295),
    ("VOICE:Tilde|Named by a path under ~, found by its alias.", "tilde", 244),
    ("VOICE:linked|A symlink in the models folder to a recording elsewhere.", "linked", 295),
    ('{"prompt": "VOICE:罗翔|你好，这是一个中文的名字。"}', "luoxiang", 500),
    ("VOICE:CUSTOM|~/.dora/models/primespeech/voices/doubao.wav|Good morning.|en|A custom clip in the models root.",
     "CUSTOM", "none"),
    ("VOICE:CUSTOM|/etc/hostname|x|en|Outside REF_AUDIO_ROOTS: refused, the voice before it speaks.", "CUSTOM", "none"),
    ("VOICE:Nobody|An unknown voice: the voice before it speaks.", "CUSTOM", "none"),
]


def codes(path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((np.arange(n) % 1024).astype("<i4").tobytes())


def user_home(tmp_path) -> dict:
    """$HOME with a primespeech library as users keep it, and recordings elsewhere."""
    home = tmp_path / "home"
    models = home / ".dora" / "models" / "primespeech"
    (models / "voices").mkdir(parents=True)
    recordings, elsewhere = home / "recordings", tmp_path / "elsewhere"
    recordings.mkdir()
    elsewhere.mkdir()
    (models / "voices" / "doubao.wav").write_bytes((VOICES / "aria.wav").read_bytes())
    (tmp_path / "me.wav").write_bytes((VOICES / "basil.wav").read_bytes())
    (recordings / "tilde.wav").write_bytes((VOICES / "cleo.wav").read_bytes())
    (elsewhere / "kept.wav").write_bytes((VOICES / "basil.wav").read_bytes())
    (models / "voices" / "linked.wav").symlink_to(elsewhere / "kept.wav")
    codes_dir = models / "gpt-sovits-mlx" / "codes"
    codes(codes_dir / "doubao_codes.bin", 500)
    codes(tmp_path / "me_codes.bin", 295)
    codes(recordings / "tilde_codes.bin", 244)
    codes(codes_dir / "linked_codes.bin", 295)
    codes(codes_dir / "luoxiang_codes.bin", 500)
    library = {
        "default_voice": "doubao",
        "voices": {
            "doubao": {"ref_audio": "voices/doubao.wav", "ref_text": "Good morning.", "aliases": ["Doubao"]},
            "absolute": {"ref_audio": str(tmp_path / "me.wav"), "ref_text": "Hello there.",
                         "codes_path": str(tmp_path / "me_codes.bin")},
            "tilde": {"ref_audio": "~/recordings/tilde.wav", "ref_text": "And I am the stereo voice.",
                      "codes_path": "~/recordings/tilde_codes.bin", "aliases": ["Tilde"]},
            "linked": {"ref_audio": "voices/linked.wav", "ref_text": "Hello there."},
            "luoxiang": {"ref_audio": "voices/doubao.wav", "ref_text": "你好。", "aliases": ["罗翔"],
                         "speed_factor": 1.1},
        },
    }
    (models / "voices.json").write_text(json.dumps(library, ensure_ascii=False, indent=2), encoding="utf-8")
    return {"home": home, "models": models, "codes_dir": codes_dir, "env": {"HOME": str(home)}}


def with_stand_ins(nodes: list[dict], prompts: list[str], transcripts: dict[str, Path]) -> list[dict]:
    """A primespeech dataflow's nodes with MoFA's dynamic prompt node and each `dora-primespeech` TTS node
    replaced by the demo's scripted prompt source and TTS stand-in (absolute paths; transcripts by node id)."""
    for node in nodes:
        if node.get("path") == "dynamic":
            node["path"] = str(ROOT / "node_hub/demo_nodes/prompt_source.py")
            node.setdefault("inputs", {})["tick"] = "dora/timer/millis/150"
            node["env"] = {"OUTPUT": "control", "PROMPTS": json.dumps(prompts)}
        elif node.get("path") == "dora-primespeech":
            node["path"] = str(ROOT / "node_hub/demo_nodes/tts_standin.py")
            node["outputs"] = []
            node["env"] = {**node.get("env", {}), "TRANSCRIPT": str(transcripts[node["id"]])}
    return nodes


def readme_wiring(tmp_path: Path, transcript: Path) -> str:
    """The README's "After" wiring, with the two stand-ins for MoFA's dynamic node and its TTS node."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- wiring:after -->\n```yaml\n(.*?)```", readme, re.S).group(1)
    nodes = with_stand_ins(yaml.safe_load(block), [p for p, _, _ in PROMPTS], {"primespeech-tts": transcript})
    path = tmp_path / "flow.yml"
    path.write_text(yaml.safe_dump({"nodes": nodes}, allow_unicode=True))
    assert {n["id"] for n in nodes} == {"mofa-prompt-input", "reference-mel", "primespeech-tts"}
    return str(path)


def spoken(transcript: Path) -> list[dict]:
    """The texts a TTS stand-in spoke, one dict each, in order."""
    lines = transcript.read_text().splitlines() if transcript.exists() else []
    return [entry for entry in map(json.loads, lines) if "text" in entry]


# -- several dora daemons on loopback -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def cluster(line: str, folder: Path, machines=("a", "b"), env: dict | None = None):
    """A coordinator and one daemon per machine id, of one dora line, on loopback only (free ports; 1.1's
    zenoh peers meet at one fixed endpoint, no multicast). Yields `start(flow)`, which runs a dataflow on
    them with `dora start --attach` and returns the finished process (wait=False: the running Popen)."""
    venv = DORA_LINES[line]
    dora_bin = str(venv / "bin" / "dora")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DORA_")}
    full_env.update(env or {}, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", VIRTUAL_ENV=str(venv))
    port = free_port()
    if line == "1.1":
        zenoh = free_port()
        coordinator = [dora_bin, "coordinator", "--port", str(port), "--store", "memory"]
        daemon_args = ["--coordinator-port", str(port), "--zenoh-peer", f"tcp/127.0.0.1:{zenoh}"]
        start_args = ["--coordinator-port", str(port)]
    else:
        control = free_port()
        coordinator = [dora_bin, "coordinator", "--port", str(port), "--control-port", str(control)]
        daemon_args = ["--coordinator-addr", "127.0.0.1", "--coordinator-port", str(port)]
        start_args = ["--coordinator-port", str(control)]
    folder.mkdir(parents=True, exist_ok=True)
    processes = []

    def spawn(args, cwd: Path, name: str):
        cwd.mkdir(exist_ok=True)
        log = open(folder / f"{name}.log", "w")
        processes.append(subprocess.Popen(args, cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT))

    def start(flow, wait: bool = True, timeout: float = 300):
        args = [dora_bin, "start", str(flow), *start_args, "--attach"]
        if not wait:
            return subprocess.Popen(args, cwd=folder, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
        return subprocess.run(args, cwd=folder, env=full_env, capture_output=True, text=True, timeout=timeout)

    try:
        spawn(coordinator, folder, "coordinator")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the coordinator listens before any daemon may register
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        for machine in machines:
            spawn([dora_bin, "daemon", "--machine-id", machine, "--local-listen-port", str(free_port()), *daemon_args],
                  folder / machine, f"daemon-{machine}")
        time.sleep(3)  # the daemons register with the coordinator
        yield start
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def huge_sparse_wav(path: Path, seconds: int, channels: int = 32, rate: int = 384000) -> None:
    """A 16-bit PCM WAV that declares `seconds` of `channels` at `rate` Hz: its data is a hole, so the file
    takes 4 KiB on disk however much it would decode to."""
    data = seconds * rate * channels * 2
    header = b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16) + b"data" + struct.pack("<I", data)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + data)
