"""A primespeech user's own library and the README's wiring, the first time, as a user would run them.

The library lives where users keep it ($HOME/.dora/models/primespeech) with the entries they write:
relative, absolute and `~` paths, recordings outside the models folder, a symlink out of it, a CJK
alias. The dataflow is the README's own "After" YAML, with only the dynamic prompt node and the TTS node
replaced by the demo's scripted prompt source and TTS stand-in, run by the real dora of both lines."""

import json
import os
import re
import subprocess

import numpy as np
import pyarrow as pa
import pytest

from dora_reference_mel import reference_mel
from dora_reference_mel.config import Config
from dora_reference_mel.features import resample, spectrogram
from dora_reference_mel.node.service import ReferenceMelService
from helpers import BIN, DORA_LINES, PROMPTS, ROOT, dora, readme_wiring, user_home


def run_wiring(tmp_path, user, line: str, name: str) -> list[dict]:
    transcript = tmp_path / f"{name}.jsonl"
    flow = readme_wiring(tmp_path, transcript)
    result = dora("run", flow, line=line, cwd=tmp_path, env=user["env"])
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    lines = [json.loads(line) for line in transcript.read_text().splitlines()]
    spoken = [entry for entry in lines if "text" in entry]
    assert [entry["text"] for entry in spoken] == [p for p, _, _ in PROMPTS], out[-4000:]  # every text, in order
    assert [(entry["voice"], entry["codes"]) for entry in spoken] == [(v, c) for _, v, c in PROMPTS], out[-4000:]
    assert "Traceback" not in out
    return spoken


@pytest.mark.dataflow
@pytest.mark.parametrize("line", list(DORA_LINES))
def test_the_readme_wiring_serves_a_users_own_library_then_precompute_and_verify_agree(tmp_path, line):
    user = user_home(tmp_path)
    run_wiring(tmp_path, user, line, "first")

    def reference_mel_tool(*args, **env):
        return subprocess.run([str(BIN / "reference-mel"), *args], env={**os.environ, **user["env"], **env},
                              capture_output=True, text=True, timeout=300)

    assert reference_mel_tool("precompute").returncode == 0
    for roots in ({}, {"REF_AUDIO_ROOTS": str(tmp_path / "elsewhere")}):  # roots never change what voices.json names
        result = reference_mel_tool("verify", **roots)
        assert result.returncode == 0 and "verify: 0 stale or corrupt" in result.stdout, result.stdout
        assert len(re.findall(r"^ok ", result.stdout, re.M)) == 5, result.stdout
    again = run_wiring(tmp_path, user, line, "again")
    assert {e["source"] for e in again[:5]} <= {"precomputed", "cache"}  # the node serves what verify calls ok
    assert "precomputed" in {e["source"] for e in again[:5]}


@pytest.mark.dataflow
def test_the_readme_wiring_speaks_when_the_startup_voice_fails(tmp_path):
    user = user_home(tmp_path)
    (user["models"] / "voices" / "doubao.wav").unlink()
    transcript = tmp_path / "tts.jsonl"
    result = dora("run", readme_wiring(tmp_path, transcript), cwd=tmp_path, env=user["env"])
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    spoken = [json.loads(line) for line in transcript.read_text().splitlines() if '"text"' in line]
    assert len(spoken) == len(PROMPTS) and spoken[0]["voice"] is None  # the TTS node's own voice


# -- the trust rule, the same whatever was served before ----------------------------------------------


def service_for(user, **env) -> ReferenceMelService:
    os.environ["HOME"], home = str(user["home"]), os.environ["HOME"]
    try:
        return ReferenceMelService(Config.from_env(env))
    finally:
        os.environ["HOME"] = home


def outputs(service, text, metadata=None):
    return [o for o in service.handle("text", pa.array([text]), metadata or {}) if o.output_id != "log"]


def test_a_custom_path_outside_the_roots_is_refused_even_once_served_as_a_library_voice(tmp_path):
    user = user_home(tmp_path)
    service = service_for(user, PRIMESPEECH_MODEL_DIR=str(user["models"]))
    custom = f"VOICE:CUSTOM|{tmp_path / 'me.wav'}|Hello.|en|Hi."
    before = outputs(service, custom)
    assert [o.output_id for o in outputs(service, "VOICE:absolute|Hi.")] == ["mel", "text"]  # now in the cache
    after = outputs(service, custom)
    for answer in (before, after):
        body = json.loads(answer[0].value[0].as_py())
        assert body["error"] == "bad_ref_audio" and "REF_AUDIO_ROOTS" in body["message"], body
    allowed = service_for(user, PRIMESPEECH_MODEL_DIR=str(user["models"]), REF_AUDIO_ROOTS=str(tmp_path))
    assert outputs(allowed, custom)[0].output_id == "mel"


def test_a_relative_custom_path_is_taken_from_the_working_folder_and_says_so(tmp_path, library, monkeypatch):
    monkeypatch.chdir(library["models"])
    service = ReferenceMelService(Config.from_env(library["env"]))
    assert outputs(service, "VOICE:CUSTOM|voices/basil.wav|Hello.|en|Hi.")[0].output_id == "mel"
    missing = outputs(service, "VOICE:CUSTOM|voices/nobody.wav|Hello.|en|Hi.")
    message = json.loads(missing[0].value[0].as_py())["message"]
    assert "does not exist" in message and f"working folder {library['models']}" in message


# -- precompute changes voices.json only where it records a mel path ----------------------------------


def test_precompute_keeps_every_other_byte_of_voices_json(library):
    original = ('{"voices": {"aria": {"ref_audio": "voices/aria.wav", "aliases": ["Aria Demo"], "n": 1E2,\n'
                '    "big": 1e400, "z": 0.10},\n'
                '  "basil":{"ref_audio":"voices/basil.wav","mel_path":"stale/place.bin"}},\n'
                ' "models_base_path": null, "default_voice": "aria"}\n')
    library["voices"].write_text(original)
    result = subprocess.run([str(BIN / "reference-mel"), "precompute", "--preset", "v2", "v4"],
                            env={**os.environ, **library["env"]}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    codes = library["codes_dir"]
    expected = original.replace(
        '"z": 0.10}', f'"z": 0.10, "mel_path": "{codes}/aria_mel.bin", "mel_v4_path": "{codes}/aria_mel_v4.bin"}}'
    ).replace('"mel_path":"stale/place.bin"}', f'"mel_path":"{codes}/basil_mel.bin","mel_v4_path": '
              f'"{codes}/basil_mel_v4.bin"}}')
    assert library["voices"].read_text() == expected


def test_a_killed_precompute_leaves_no_temporary_beside_voices_json(library):
    leftover = library["voices"].parent / ".rmel-0123456789ab.tmp"
    leftover.write_text("{half")
    os.utime(leftover, (1, 1))
    result = subprocess.run([str(BIN / "reference-mel"), "precompute"], env={**os.environ, **library["env"]},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and not leftover.exists(), result.stderr[-2000:]


# -- pictures and kernels ------------------------------------------------------------------------------


def test_a_cjk_title_is_never_empty_boxes(tmp_path, library):
    from dora_reference_mel.plot import drawable_title

    title, families, note = drawable_title("罗翔 v2")
    assert (note is None and len(families) == 2) or (title == "<U+7F57><U+7FD4> v2" and "fonts-noto-cjk" in note)
    voices = json.loads(library["voices"].read_text())
    voices["voices"]["aria"]["aliases"].append("罗翔")
    library["voices"].write_text(json.dumps(voices, ensure_ascii=False))
    result = subprocess.run([str(BIN / "reference-mel"), "inspect", "罗翔", "--png", str(tmp_path / "p.png")],
                            env={**os.environ, **library["env"]}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and (tmp_path / "p.png").stat().st_size > 10_000, result.stderr[-2000:]
    assert (note is None) == ("fonts-noto-cjk" not in result.stderr)


def test_no_kernel_is_built_on_the_event_path(library):
    """After the start-up warm-up, a clip at a rate that was not warmed resamples uncompiled."""
    service = ReferenceMelService(Config.from_env(library["env"]))
    spectrogram.warm_up(service.config.presets)
    built = resample._piece_kernels.cache_info().currsize
    clip = np.random.default_rng(0).standard_normal(12000 * 3).astype(np.float32) * 0.1
    served = service.handle("reference_audio", pa.array(clip), {"sample_rate": 12000})[0]
    assert resample._piece_kernels.cache_info().currsize == built
    np.testing.assert_allclose(served.value.to_numpy(), reference_mel(clip, 12000).reshape(-1), atol=1e-4)


# -- the quick start, as the README gives it ---------------------------------------------------------


@pytest.mark.dataflow
def test_scripts_demo_sh_shows_voice_switches_and_a_second_run_serves_the_store():
    import shutil

    shutil.rmtree(ROOT / "out" / "demo-switches", ignore_errors=True)
    runs = [subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert "is up to date" in runs[1].stdout + runs[1].stderr  # the second run installs nothing
    assert not any(".venv-dora04" in run.stdout + run.stderr for run in runs)  # the demo runs on .venv alone
    lines = [json.loads(line) for line in (ROOT / "out/demo-switches/tts.jsonl").read_text().splitlines()]
    spoken = [line for line in lines if "text" in line]
    assert len(spoken) == 14 and [s["voice"] for s in spoken[:7]] == [
        "aria", "basil", "basil", "cleo", "aria", "CUSTOM", "CUSTOM"]
    assert {s["source"] for s in spoken[7:12]} <= {"precomputed", "cache"}
    assert "computed" in {s["source"] for s in spoken[:5]}
