"""Semantic codes (codes.py), read from real files as the Rust MLX reader lays them out."""


from pathlib import Path

import numpy as np
import pytest

from dora_reference_mel import ReferenceMelError
from dora_reference_mel.models.codes_model import CODEBOOK
from dora_reference_mel.store.codes import read_codes


def test_codes_bin_and_npy_dtypes(tmp_path):
    codes = np.array([0, 5, 1023, 77], dtype=np.int64)
    (tmp_path / "a_codes.bin").write_bytes(codes.astype("<i4").tobytes())
    np.save(tmp_path / "b_codes.npy", codes)  # int64: must not be misread as pairs of int32
    np.save(tmp_path / "c_codes.npy", codes.astype(np.int32))
    for name in ("a_codes.bin", "b_codes.npy", "c_codes.npy"):
        out = read_codes(tmp_path / name)
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, codes)


@pytest.mark.parametrize("blob, why", [(b"\x01\x00\x00", "not a whole number"),
                                       (np.array([3, 5000], "<i4").tobytes(), "outside the codebook"),
                                       (b"", "no codes")])
def test_bad_codes_files(tmp_path, blob, why):
    (tmp_path / "x_codes.bin").write_bytes(blob)
    with pytest.raises(ValueError, match=why):
        read_codes(tmp_path / "x_codes.bin")


def test_codes_found_by_voices_json_and_by_name(store, library):
    aria = store.voice("ARIA")  # case-insensitive
    assert aria.name == "aria" and aria.in_library
    assert store.load_codes(aria).shape == (500,)
    assert store.voice("basil").codes_path.suffix == ".bin"
    assert store.load_codes(store.voice("cleo")) is None
    (library["codes_dir"] / "stranger_codes.bin").write_bytes(np.arange(10, dtype="<i4").tobytes())
    np.testing.assert_array_equal(store.load_codes(store.voice("stranger")), np.arange(10))
    (library["codes_dir"] / "broken_codes.bin").write_bytes(b"\x00" * 7)
    with pytest.raises(ReferenceMelError) as err:
        store.load_codes(store.voice("broken"))
    assert err.value.code == "bad_codes" and "broken_codes.bin" in err.value.message


def _reference_mel(*args, env: dict, cwd=None):
    import os
    import subprocess

    from helpers import BIN

    return subprocess.run([str(BIN / "reference-mel"), *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, **env})


def test_node_and_every_command_judge_codes_alike(library):
    """float32 codes, a code past the 1024-entry codebook, a truncated .bin: the node refuses each switch
    with bad_codes, and verify, list, inspect and precompute say the same of each voice."""
    import json

    import pyarrow as pa

    from dora_reference_mel.config import Config
    from dora_reference_mel.node.service import ReferenceMelService

    codes = library["models"] / "codes"
    np.save(codes / "floaty_codes.npy", np.arange(50, dtype=np.float32))
    (codes / "past_codes.bin").write_bytes(np.array([1, 1024], "<i4").tobytes())
    (codes / "cut_codes.bin").write_bytes(np.arange(50, dtype="<i4").tobytes()[:-1])
    voices = json.loads(library["voices"].read_text())
    bad = {"floaty": "floaty_codes.npy", "past": "past_codes.bin", "cut": "cut_codes.bin"}
    for name, file in bad.items():
        voices["voices"][name] = {"ref_audio": "voices/basil.wav", "ref_text": "t", "codes_path": f"codes/{file}"}
    library["voices"].write_text(json.dumps(voices))

    service = ReferenceMelService(Config.from_env(library["env"]))
    for name in bad:
        error = service.handle("text", pa.array([f"VOICE:{name}|Hi."]), {})[0]
        assert error.output_id == "error" and json.loads(error.value[0].as_py())["error"] == "bad_codes", name

    precompute = _reference_mel("precompute", env=library["env"])
    assert precompute.returncode == 1 and "5 computed" in precompute.stdout, precompute.stdout
    verify = _reference_mel("verify", env=library["env"])
    assert verify.returncode == 1
    for name, why in (("floaty", "float32 is not an integer"), ("past", "outside the codebook"),
                      ("cut", "not a whole number")):
        assert f"bad      {name} codes: codes file" in verify.stdout and why in verify.stdout
        assert f"bad      {name} codes:" in precompute.stdout
        inspected = _reference_mel("inspect", name, env=library["env"])
        assert inspected.returncode == 0 and f"codes      bad: codes file {codes / bad[name]}" in inspected.stdout
    listed = json.loads(_reference_mel("list", "--json", env=library["env"]).stdout)["voices"]
    listed = {v["name"]: v["codes"]["state"] for v in listed}
    assert listed == {"aria": "ok", "basil": "ok", "cleo": "missing", "floaty": "bad", "past": "bad", "cut": "bad"}
    assert "codes=bad" in _reference_mel("list", env=library["env"]).stdout


def test_a_relative_models_base_path_is_the_same_folder_for_node_and_tool(library, tmp_path):
    """models_base_path "." is the working folder, as for the MLX node: the node (run from its dataflow's
    folder) and reference-mel from the same folder find the same files; from elsewhere both say where they
    looked, the node once per voice."""
    import json
    import os
    import subprocess
    import sys

    voices = json.loads(library["voices"].read_text())
    voices["models_base_path"] = "."
    library["voices"].write_text(json.dumps(voices))
    flow = tmp_path / "flow"
    flow.mkdir()
    # The node's own service, in a process started in `cwd` (as dora starts it), sent two switches to aria.
    code = ("import logging, sys, pyarrow as pa; from dora_reference_mel.config import Config; "
            "from dora_reference_mel.node.service import ReferenceMelService; logging.basicConfig(); "
            "service = ReferenceMelService(Config.from_env()); "
            "print([service.handle('text', pa.array(['VOICE:aria|Hi.']), {})[0].metadata.get('codes_status') "
            "for _ in range(2)])")

    def node(cwd):
        done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**os.environ, **library["env"]},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip(), done.stderr

    statuses, log = node(library["models"])
    assert statuses == "['stored', 'stored']" and "models_base_path '.' is relative" in log
    assert _reference_mel("verify", env=library["env"], cwd=library["models"]).returncode == 0

    statuses, log = node(flow)
    assert statuses == "['missing', 'missing']"
    assert f"working folder: {flow} here" in log
    assert log.count(f"its codes_path {flow / 'codes/aria_codes.bin'} ") == 1  # said once, not per switch
    verify = _reference_mel("verify", env=library["env"], cwd=flow)
    assert verify.returncode == 1 and f"missing  aria codes: no file {flow / 'codes/aria_codes.bin'}" in verify.stdout
    assert f"working folder: {flow} here" in verify.stderr


def test_codes_report_counts_seconds_at_25_codes_a_second(store, library):
    """GPT-SoVITS's semantic codes: HuBERT's 50 Hz features halved by the quantizer's stride, 25 a second."""
    (library["codes_dir"] / "quarter_codes.bin").write_bytes(np.zeros(250, dtype="<i4").tobytes())
    assert store.codes_report(store.voice("quarter")) == ("ok", "250 codes (10.00 s)")


# -- codes computed on MLX (store/kinds.py CodesKind), served by the node and the tool -------------------------

@pytest.fixture(scope="module")
def weights(upstream, tmp_path_factory):
    """(the torch recipe, hubert.safetensors, sovits.safetensors): seeded random weights written as the MLX line
    writes them, of a small model of chinese-hubert-base's architecture with its 12 heads (what the node assumes)."""
    from oracle_codes import UpstreamCodes, small_config

    reference = UpstreamCodes(small_config(attention_heads=12), upstream)
    return (reference, *reference.save(tmp_path_factory.mktemp("weights")))


def _with_weights(library, weights, hubert=None) -> dict:
    return {**library["env"], "HUBERT_WEIGHTS": str(hubert or weights[1]), "SOVITS_WEIGHTS": str(weights[2])}


def _service(env):
    from dora_reference_mel.config import Config
    from dora_reference_mel.node.service import ReferenceMelService

    return ReferenceMelService(Config.from_env(env))


def _switch(service, line: str) -> dict:
    """The metadata of the one mel a voice switch answers."""
    import pyarrow as pa

    mels = [out for out in service.handle("text", pa.array([line]), {}) if out.output_id == "mel"]
    assert len(mels) == 1
    return mels[0].metadata


def _upstream_codes(reference, samples, rate) -> np.ndarray:
    from dora_reference_mel.models import to_16k_mono

    return reference.hidden_and_codes(to_16k_mono(samples, rate))[1]


def test_the_node_computes_the_codes_of_upstreams_recipe(library, weights):
    """reference_audio at several rates and a library voice without codes file: the mel carries the codes
    GPT-SoVITS computes from the clip (>= 99 % equal), and the voice's are written with a sidecar naming the
    audio's and the weights' digests."""
    import json

    import pyarrow as pa
    import soundfile as sf

    from dora_reference_mel.models import weights_digest
    from helpers import SPEECH, VOICES

    reference, hubert, sovits = weights
    service = _service(_with_weights(library, weights))
    cleo = _switch(service, "VOICE:cleo|Hi.")
    assert cleo["codes_status"] == "computed"
    written = library["codes_dir"] / "cleo_codes.bin"
    np.testing.assert_array_equal(read_codes(written), cleo["codes"])
    sidecar = json.loads(written.with_suffix(".json").read_text())
    assert weights_digest(hubert, sovits) in sidecar["fingerprint"] and sidecar["source_digest"]

    clips = {"cleo 44.1 kHz stereo": VOICES / "cleo.wav", "basil 16 kHz": VOICES / "basil.wav",
             "22.05 kHz, twice": SPEECH / "mono_22050.wav"}
    for name, path in clips.items():
        samples, rate = sf.read(path, dtype="float32")
        samples = np.concatenate([samples] * 2) if "twice" in name else samples
        channels = 1 if samples.ndim == 1 else samples.shape[1]
        mel = service.handle("reference_audio", pa.array(samples.reshape(-1)), {"sample_rate": rate,
                                                                                "channels": channels})[0]
        status = "cache" if name.startswith("cleo") else "computed"  # cleo's samples: the switch's
        assert mel.output_id == "mel" and mel.metadata["codes_status"] == status, name
        expected, got = _upstream_codes(reference, samples, rate), np.array(mel.metadata["codes"])
        assert got.shape == expected.shape and np.mean(got == expected) >= 0.99, name
        assert len(np.unique(expected)) >= 20, f"{name}: the random weights give degenerate codes"


@pytest.mark.node
def test_custom_codes_from_memory_and_a_restart_from_disk(library, weights, tmp_path):
    """The node process (dora's test mode): the model loaded before any event, a CUSTOM clip's codes computed
    once then served from memory, a library voice's written; restarted, the voice's come from disk."""
    from helpers import run_node

    env = _with_weights(library, weights)
    custom = f"VOICE:CUSTOM|{library['models'] / 'voices' / 'basil.wav'}|Hello there.|en|Hi."
    texts = [custom, custom, "VOICE:cleo|Hi."]
    events = [{"type": "Input", "id": "text", "data": [t], "data_type": "Utf8", "metadata": {}} for t in texts]
    outputs, log = run_node(tmp_path, events, env)
    assert [o["id"] for o in outputs] == ["mel", "text"] * 3
    statuses = [line.rsplit(" codes=", 1)[1] for line in log.splitlines() if " mel voice=" in line]
    assert statuses == ["computed", "cache", "computed"], log[-3000:]
    assert log.count("codes model loaded from") == 1 and log.index("codes model loaded") < log.index(" ready on ")
    written = library["codes_dir"] / "cleo_codes.bin"
    codes = read_codes(written)

    again, log = run_node(tmp_path, events[2:], env, name="restart")
    assert [o["id"] for o in again] == ["mel", "text"]
    assert [line.rsplit(" codes=", 1)[1] for line in log.splitlines() if " mel voice=" in line] == ["stored"]
    np.testing.assert_array_equal(read_codes(written), codes)


def test_changed_clip_or_weights_make_computed_codes_stale(library, weights, tmp_path):
    """Codes made from another clip, or by other weights (one bit of the HuBERT file flipped), are computed
    again and replace the file; the owner's codes file (voices.json's codes_path) is never computed over."""
    import shutil

    env = _with_weights(library, weights)
    first = _switch(_service(env), "VOICE:cleo|Hi.")
    written = library["codes_dir"] / "cleo_codes.bin"
    assert first["codes_status"] == "computed" and written.exists()
    assert _switch(_service(env), "VOICE:cleo|Hi.")["codes_status"] == "stored"

    cleo = library["models"] / "voices" / "cleo.wav"
    cleo.unlink()  # a new recording in its place
    shutil.copy(library["models"] / "voices" / "basil.wav", cleo)
    changed = _switch(_service(env), "VOICE:cleo|Hi.")
    assert changed["codes_status"] == "computed" and changed["codes"] != first["codes"]
    np.testing.assert_array_equal(read_codes(written), changed["codes"])

    other_hubert = tmp_path / "other" / "hubert.safetensors"
    shutil.copytree(weights[1].parent, other_hubert.parent)
    data = bytearray(other_hubert.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor: other weights
    other_hubert.write_bytes(bytes(data))
    recomputed = _switch(_service(_with_weights(library, weights, hubert=other_hubert)), "VOICE:cleo|Hi.")
    assert recomputed["codes_status"] == "computed"
    assert _switch(_service(_with_weights(library, weights, hubert=other_hubert)), "VOICE:cleo|Hi.")["codes_status"] \
        == "stored"

    aria_codes = library["models"] / "codes" / "aria_codes.bin"  # voices.json's codes_path: the owner's
    before = aria_codes.read_bytes()
    aria = _switch(_service(env), "VOICE:aria|Hi.")
    assert aria["codes_status"] == "stored" and aria_codes.read_bytes() == before
    assert not (library["codes_dir"] / "aria_codes.bin").exists()


def test_a_trained_voice_gets_the_codes_of_its_own_sovits_weights(library, weights, upstream):
    """VOICE:TRAINED names its SoVITS weights: a safetensors file with its own ssl_proj and codebook gives the
    codes upstream computes with them; one without (an overlay on the base model) the base's; a torch
    checkpoint, or a file outside REF_AUDIO_ROOTS, no codes, and the reason on the log."""
    import copy

    import pyarrow as pa
    import soundfile as sf
    from oracle_codes import UpstreamCodes, small_config
    from safetensors.numpy import save_file

    base, _, _ = weights
    other = UpstreamCodes(small_config(attention_heads=12), upstream, seed=7)
    trained = library["models"] / "trained"
    own = other.save(trained)[1]
    overlay, checkpoint = trained / "overlay.safetensors", trained / "sovits.pth"
    save_file({"enc_p.proj.weight": np.ones((4, 4), dtype=np.float32)}, str(overlay))
    checkpoint.write_bytes(b"PK\x03\x04 not read")
    service = _service(_with_weights(library, weights))
    clip = library["models"] / "voices" / "basil.wav"
    samples, rate = sf.read(clip, dtype="float32")
    expected_own = copy.copy(base)
    expected_own.ssl_proj, expected_own.quantizer = other.ssl_proj, other.quantizer
    expected = {own: _upstream_codes(expected_own, samples, rate), overlay: _upstream_codes(base, samples, rate)}
    assert np.mean(expected[own] == expected[overlay]) < 0.5  # the two weights do give other codes
    for sovits, codes in expected.items():
        mel = _switch(service, f"VOICE:TRAINED|gpt.ckpt|{sovits}|{clip}|Hello there.|en|Hi.")
        assert mel["codes_status"] == "computed" and mel["sovits_weights"] == str(sovits)
        assert np.mean(np.array(mel["codes"]) == codes) >= 0.99, sovits.name
    for sovits, why in ((checkpoint, "is a torch checkpoint"), ("/etc/hostname", "is not a file inside")):
        outputs = service.handle("text", pa.array([f"VOICE:TRAINED|gpt.ckpt|{sovits}|{clip}|Hello there.|en|Hi."]), {})
        mel = next(out.metadata for out in outputs if out.output_id == "mel")
        assert mel["codes_status"] == "missing" and "codes" not in mel
        logged = " ".join(out.value[0].as_py() for out in outputs if out.output_id == "log")
        assert why in logged and "[bad_weights]" in logged, logged


def test_hostile_trained_weights_leave_the_mel_without_codes_and_say_why(library, weights):
    """SoVITS weights named by an event that are not what they claim: each switch is answered at once, its mel
    served without codes and the reason on `log`; nothing blocks on a FIFO, allocates what a header claims, or
    serves codes a wrong codebook would give. A file with only ssl_proj is an overlay: the base's codebook."""
    import faulthandler
    import os

    import pyarrow as pa
    from safetensors.numpy import load_file, save_file

    base = load_file(str(weights[2]))
    trained = library["models"] / "trained"
    trained.mkdir()

    def weights_file(name: str, **changes) -> Path:
        save_file({**base, **changes}, str(trained / name))
        return trained / name

    os.mkfifo(trained / "fifo.safetensors")
    (trained / "folder.safetensors").mkdir()
    (trained / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    huge = (trained / "huge.safetensors")
    header = b'{"ssl_proj.weight": {"dtype": "F32", "shape": [65536, 65536, 2], "data_offsets": [0, 34359738368]}}'
    huge.write_bytes(len(header).to_bytes(8, "little") + header)
    cases = {
        "fifo.safetensors": "is not a regular file", "folder.safetensors": "is not a regular file",
        "garbage.safetensors": "is not a safetensors file",
        "huge.safetensors": "is over 4194304 values",
        weights_file("bias.safetensors", **{"ssl_proj.bias": np.zeros(7, np.float32)}).name: "are not a [",
        weights_file("rows.safetensors", **{CODEBOOK: np.zeros((2048, base[CODEBOOK].shape[1]), np.float32)}).name:
            "at most 1024 rows",
        weights_file("nan.safetensors", **{"ssl_proj.bias": np.full_like(base["ssl_proj.bias"], np.nan)}).name:
            "NaN or infinite",
    }
    service = _service(_with_weights(library, weights))
    clip = library["models"] / "voices" / "basil.wav"
    # A switch that blocks (on the FIFO, say) would hang the node: here it ends the run with every traceback.
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        for name, why in cases.items():
            outputs = service.handle("text", pa.array([f"VOICE:TRAINED|gpt.ckpt|{trained / name}|{clip}|Hi.|en|Hi."]), {})
            mel = next(out.metadata for out in outputs if out.output_id == "mel")
            logged = " ".join(out.value[0].as_py() for out in outputs if out.output_id == "log")
            assert mel["codes_status"] == "missing" and "[bad_weights]" in logged and why in logged, (name, logged)
    finally:
        faulthandler.cancel_dump_traceback_later()
    only_proj = {k: v for k, v in base.items() if k.startswith("ssl_proj.")}
    save_file(only_proj, str(trained / "overlay.safetensors"))
    overlay = _switch(service, f"VOICE:TRAINED|gpt.ckpt|{trained / 'overlay.safetensors'}|{clip}|Hello there.|en|Hi.")
    plain = _switch(service, f"VOICE:CUSTOM|{clip}|Hello there.|en|Hi.")
    assert overlay["codes_status"] == "computed" and overlay["codes"] == plain["codes"]


def test_a_legacy_codes_file_and_a_short_clip(library, weights, caplog):
    """A `<voice>_codes.bin` without sidecar is the owner's: served as stored, never replaced. A clip outside
    3 to 10 s keeps its mel, without codes, and the warning names bad_ref_duration."""
    import pyarrow as pa

    legacy = library["codes_dir"] / "cleo_codes.bin"
    legacy.write_bytes(np.arange(30, dtype="<i4").tobytes())
    service = _service(_with_weights(library, weights))
    cleo = _switch(service, "VOICE:cleo|Hi.")
    assert cleo["codes_status"] == "stored" and cleo["codes"] == list(range(30))
    assert legacy.read_bytes() == np.arange(30, dtype="<i4").tobytes()
    assert not legacy.with_suffix(".json").exists()

    outputs = service.handle("reference_audio", pa.array(np.zeros(32_000, np.float32)), {"sample_rate": 16_000})
    mel = outputs[0]
    assert mel.output_id == "mel" and "codes" not in mel.metadata and mel.metadata.get("codes_status") is None
    assert any("[bad_ref_duration] the reference is 2.00 s" in w for w in mel.metadata["warnings"])
    assert [o.output_id for o in outputs] == ["mel", "log", "log"]  # the clip's duration warning, and the codes'
    assert "bad_ref_duration" in outputs[2].value[0].as_py()


def test_without_weights_codes_are_read_as_before_and_said_once(library, caplog):
    """No weights files (the default paths, under the models root): one start message naming the missing
    file and the setup script; codes files serve as before, other voices' mels say codes_status missing."""
    import logging

    caplog.set_level(logging.INFO)
    service = _service(library["env"])
    messages = [r.getMessage() for r in caplog.records if "not computed" in r.getMessage()]
    assert len(messages) == 1
    assert str(library["models"] / "gpt-sovits-mlx" / "hubert.safetensors") in messages[0]
    assert "scripts/setup_models.py" in messages[0]
    assert _switch(service, "VOICE:aria|Hi.")["codes_status"] == "stored"
    for _ in range(2):
        assert _switch(service, "VOICE:cleo|Hi.")["codes_status"] == "missing"
    assert len([r for r in caplog.records if "not computed" in r.getMessage()]) == 1  # at start, not per switch
    assert not list(library["codes_dir"].glob("*_codes.*"))
    caplog.clear()
    _service({**library["env"], "MEL_CODES": "off"})
    assert not [r for r in caplog.records if "not computed" in r.getMessage()]


def test_precompute_computes_codes_and_verify_list_judge_them(library, weights):
    import json

    env = _with_weights(library, weights)
    first = _reference_mel("precompute", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "computed   cleo codes" in first.stdout and "aria codes" not in first.stdout  # aria's: the owner's
    import soundfile as sf

    expected = _upstream_codes(weights[0], *sf.read(library["models"] / "voices" / "cleo.wav", dtype="float32"))
    written = read_codes(library["codes_dir"] / "cleo_codes.bin")
    assert written.shape == expected.shape and np.mean(written == expected) >= 0.99  # the upstream recipe's codes
    assert "codes_path" not in json.loads(library["voices"].read_text())["voices"]["cleo"]  # else it would be the owner's
    again = _reference_mel("precompute", env=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout
    assert _reference_mel("verify", env=env).returncode == 0
    listed = json.loads(_reference_mel("list", "--json", env=env).stdout)["voices"]
    assert {v["name"]: v["codes"]["state"] for v in listed} == {"aria": "ok", "basil": "ok", "cleo": "ok"}

    (library["models"] / "voices" / "cleo.wav").write_bytes((library["models"] / "voices" / "basil.wav").read_bytes())
    verify = _reference_mel("verify", env=env)
    assert verify.returncode == 1 and "stale    cleo codes:" in verify.stdout, verify.stdout



@pytest.mark.dataflow
@pytest.mark.parametrize("line", ["1.1", "0.4"])
@pytest.mark.parametrize("form", ["node", "operator"])
def test_codes_through_a_dataflow_of_either_line_and_form(library, weights, tmp_path, form, line):
    """The node and the operator under the real dora CLI of both lines, with weights: a library voice without
    codes file and a CUSTOM clip are spoken with the codes the upstream recipe computes from their clips
    (>= 99 % equal), and a plain text after them with the CUSTOM clip's."""
    import json

    import soundfile as sf
    import yaml

    from helpers import ROOT, dora

    voices = library["models"] / "voices"
    prompts = ["VOICE:cleo|One.", f"VOICE:CUSTOM|{voices / 'basil.wav'}|Hello there.|en|Two.", "Three."]
    transcript = tmp_path / "tts.jsonl"
    wiring = {"inputs": {"text": {"source": "source/control", "queue_size": 100, "queue_policy": "backpressure"}},
              "outputs": ["mel", "text", "error", "log"]}
    reference_mel = {"id": "reference-mel", "env": _with_weights(library, weights)}
    if form == "node":
        reference_mel.update(path="dora-reference-mel", **wiring)
    else:
        reference_mel["operator"] = {"python": str(ROOT / "node_hub/dora_reference_mel/dora_operator.py"), **wiring}
    nodes = [{"id": "source", "path": str(ROOT / "node_hub/demo_nodes/prompt_source.py"),
              "inputs": {"tick": "dora/timer/millis/700"}, "outputs": ["control"],
              "env": {"OUTPUT": "control", "PROMPTS": json.dumps(prompts)}},
             reference_mel,
             {"id": "tts", "path": str(ROOT / "node_hub/demo_nodes/tts_standin.py"),
              "inputs": {"text": {"source": "reference-mel/text", "queue_policy": "backpressure"},
                         "reference": {"source": "reference-mel/mel", "queue_policy": "backpressure"}},
              "env": {"TRANSCRIPT": str(transcript)}}]
    flow = tmp_path / "codes.yml"
    flow.write_text(yaml.safe_dump({"nodes": nodes}))
    result = dora("run", str(flow), line=line, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    spoken = [json.loads(entry) for entry in transcript.read_text().splitlines() if '"text"' in entry]
    assert [entry["text"] for entry in spoken] == prompts, out[-3000:]
    for entry, clip in zip(spoken, ["cleo.wav", "basil.wav", "basil.wav"], strict=True):
        expected = _upstream_codes(weights[0], *sf.read(voices / clip, dtype="float32"))
        got = np.array(entry["prompt_codes"])
        assert got.shape == expected.shape and np.mean(got == expected) >= 0.99, (entry["text"], clip)
