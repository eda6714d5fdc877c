"""Helpers the tests share: real speech fixtures, a copy of the demo voice library, the real dora CLI of
each line, and the real node run in dora's integration-test mode (DORA_TEST_WITH_INPUTS)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import soundfile

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SPEECH = FIXTURES / "speech"
EVENTS = FIXTURES / "events"
RATES = (16000, 22050, 24000, 32000, 44100, 48000)
BIN = Path(sys.executable).parent
# The two dora lines a dataflow may run on, each in its own environment (scripts/setup.sh makes both):
# a node must register with the daemon of its own line.
DORA_LINES = {"1.1": ROOT / ".venv", "0.4": ROOT / ".venv-dora04"}


def dora(*args, line: str = "1.1", timeout: float = 240, cwd: Path | None = None,
         env: dict | None = None) -> subprocess.CompletedProcess:
    """The real dora CLI of one line, run from dataflows/ with that line's environment active (and `env`)."""
    venv = DORA_LINES[line]
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


