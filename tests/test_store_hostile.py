"""A voice library written by someone else, crash leftovers and a shared disk: real FIFOs, symlinks,
sparse files, hostile voices.json entries and a real crash mid-commit, through the real node
(dora's integration-test mode) and the real `reference-mel` tool. Nothing outside the codes
directory may change, nothing may block, every answer is a spectrogram or a named error."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dora_reference_mel import get_preset, reference_mel
from dora_reference_mel.config import Config
from dora_reference_mel.errors import ERROR_CODES, ReferenceMelError
from dora_reference_mel.node.service import ReferenceMelService
from dora_reference_mel.store import CORRUPT, FRESH, STALE, ReferenceStore
from dora_reference_mel.store.kinds import kind_of
from dora_reference_mel.store.library import Voice, VoiceLibrary
from helpers import BIN, ROOT, replay_cases, run_node

V2 = get_preset("v2")


def voice_event(name):
    return {"type": "Input", "id": "voice", "data": [name], "data_type": "Utf8", "metadata": {}}


def snapshot(root: Path, skip: Path) -> dict:
    """Every entry under root except `skip`: kind, and bytes of regular files (stat of large ones)."""
    seen = {}
    for path in sorted(root.rglob("*")):
        if skip == path or skip in path.parents or path.name.startswith("run-"):  # run-*: the replay's own files
            continue
        st = os.lstat(path)
        if path.is_symlink():
            seen[path] = ("link", os.readlink(path))
        elif path.is_file() and st.st_size < 1 << 24:
            seen[path] = ("file", path.read_bytes())
        elif path.is_dir():
            seen[path] = ("dir",)
        else:
            seen[path] = ("other", st.st_mode, st.st_size, st.st_mtime_ns)
    return seen


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    models, outside = tmp / "models", tmp / "outside"
    shutil.copytree(ROOT / "models", models, ignore=shutil.ignore_patterns("*.sh", "*.py"))
    codes = models / "gpt-sovits-mlx" / "codes"
    codes.mkdir(parents=True)
    outside.mkdir()
    secret = np.full((704, 4), 7.0, "<f4").tobytes()
    (outside / "secret.bin").write_bytes(secret)
    (outside / "secret.json").write_text("{}")
    os.mkfifo(codes / "fifo_mel_mel.bin")
    os.mkfifo(models / "fifo.bin")
    with open(models / "sparse.bin", "wb") as f:
        f.truncate(4 << 30)  # 4 GiB of nothing: must be refused by its size, not read
    (models / "link.bin").symlink_to(outside / "secret.bin")
    (codes / "linkside_mel.bin").write_bytes(secret)
    (codes / "linkside_mel.json").symlink_to(outside / "secret.json")
    wav = "voices/aria.wav"
    entries = {
        "\udc80bad": {"ref_audio": wav, "aliases": ["surro"]},
        "../../x": {"ref_audio": wav, "aliases": ["plainx"]},
        "fifo_mel": {"ref_audio": wav},
        "fifo_side": {"ref_audio": wav},
        "fifo_path": {"ref_audio": wav, "mel_path": "fifo.bin"},
        "sparse": {"ref_audio": wav, "mel_path": "sparse.bin"},
        "selfmel": {"ref_audio": "voices/cleo.wav", "mel_path": "voices/cleo.wav"},
        "jsonmel": {"ref_audio": wav, "mel_path": "voices.json"},
        "codesmel": {"ref_audio": wav, "mel_path": "codes/aria_codes.bin"},
        "linkmel": {"ref_audio": wav, "mel_path": "link.bin"},
        "linkside": {"ref_audio": wav},
        "shape_bool": {"ref_audio": wav},
        "shape_deep": {"ref_audio": wav},
        "shape_digits": {"ref_audio": wav},
    }
    config = json.loads((models / "voices.json").read_text())
    config["voices"].update(entries)
    (models / "voices.json").write_text(json.dumps(config, indent=2))
    # Sidecars of valid JSON but the wrong shape, beside whole .bin files.
    store = ReferenceStore(codes, VoiceLibrary(models / "voices.json", models))
    for name, bad in (("shape_bool", [True, 500]), ("shape_deep", None), ("shape_digits", None)):
        store.save(Voice(name), V2, np.ones((704, 500), np.float32), source_digest="x", source_sample_rate=1)
        side = codes / f"{name}_mel.json"
        text = side.read_text()
        if name == "shape_bool":
            side.write_text(text.replace('"shape": [\n  704,\n  500\n ]', json.dumps({"shape": bad})[1:-1]))
        elif name == "shape_deep":
            side.write_text(text[:-2] + ', "deep": ' + "[" * 50_000 + "]" * 50_000 + "}\n")
        else:
            side.write_text(text.replace('"source_sample_rate": 1', '"source_sample_rate": ' + "9" * 5000))
    os.mkfifo(codes / "fifo_side_mel.json")
    (codes / "fifo_side_mel.bin").write_bytes(np.ones((704, 500), "<f4").tobytes())
    env = {"PRIMESPEECH_MODEL_DIR": str(models), "VOICES_CONFIG": str(models / "voices.json"), "CODES_DIR": str(codes)}
    return {"tmp": tmp, "models": models, "codes": codes, "outside": outside, "env": env, "secret": secret}


NODE_CASES = {  # voice event -> expected answer
    "surro": "bad_voices_config",  # key with a lone surrogate, reached by an alias
    "plainx": "bad_voices_config",  # key "../../x", reached by a plain alias
    "语" * 100: "bad_voice",  # 300 bytes in UTF-8
    "fifo_mel": "mel",  # FIFO where the spectrogram should be
    "fifo_side": "mel",  # FIFO where the sidecar should be
    "fifo_path": "mel",  # FIFO at mel_path
    "sparse": "mel",  # 4 GiB sparse file at mel_path
    "selfmel": "mel",  # mel_path names its own ref_audio
    "jsonmel": "mel",  # mel_path names voices.json
    "codesmel": "mel",  # mel_path names a codes file
    "linkmel": "mel",  # mel_path symlinked out of the store
    "linkside": "mel",  # sidecar symlinked out of the store
    "shape_bool": "mel",
    "shape_deep": "mel",
    "shape_digits": "mel",
}


@pytest.fixture(scope="module")
def node_run(hostile):
    before = snapshot(hostile["tmp"], hostile["codes"])
    events = {**{name: voice_event(name) for name in NODE_CASES}, "good_at_the_end": voice_event("aria")}
    started = time.monotonic()
    # Cache off: every event goes through the store lookup (they share one clip, which the cache would serve).
    run = replay_cases(hostile["tmp"], events, {**hostile["env"], "MEL_CACHE_MB": "0"}, keep_logs=True)
    assert all(run["cases"].values()), run["log"][-3000:]  # an answer for every event
    return {"answers": {name: replies[0] for name, replies in run["cases"].items()},
            "last": run["cases"]["good_at_the_end"][0], "log": run["log"],
            "logs": [json.loads(o["data"][0]) for o in run["outputs"] if o["id"] == "log"], "before": before,
            "seconds": time.monotonic() - started}


@pytest.mark.parametrize("name", list(NODE_CASES), ids=[ascii(n)[:20] for n in NODE_CASES])
@pytest.mark.node
def test_node_case(node_run, name):
    answer, expected = node_run["answers"][name], NODE_CASES[name]
    if expected == "mel":
        assert answer["id"] == "mel", answer["data"]
        data = np.array(answer["data"], np.float32)
        assert np.isfinite(data).all() and not (data == 7.0).all()  # never the secret outside the store
        cleo = "selfmel" == name
        wav, rate = soundfile.read(str(ROOT / "models/voices" / ("cleo.wav" if cleo else "aria.wav")), dtype="float32")
        np.testing.assert_allclose(data, reference_mel(wav, rate).reshape(-1), atol=1e-4)
    else:
        body = json.loads(answer["data"][0])
        assert answer["id"] == "error" and body["error"] == expected, body
        assert len(body["message"]) > 30 and body["error"] != "internal"


@pytest.mark.node
def test_node_logged_why_each_stored_file_was_refused(node_run):
    log = node_run["log"]
    for why in ("is not a regular file", "holds 4294967296 bytes", "shape=[True, 500]", "not usable JSON",
                "Exceeds the limit"):
        assert why in log, why
    assert "Traceback" not in log and node_run["last"]["id"] == "mel"
    errors = [line for line in node_run["logs"] if line["level"] == "ERROR"]
    assert len(errors) == 3 and all(set(line) == {"level", "message", "timestamp", "node"} for line in errors)


@pytest.mark.node
def test_nothing_outside_the_codes_dir_changed(node_run, hostile):
    assert snapshot(hostile["tmp"], hostile["codes"]) == node_run["before"]
    assert (hostile["outside"] / "secret.bin").read_bytes() == hostile["secret"]
    written = {p.name for p in hostile["codes"].iterdir()}
    assert not [n for n in written if n.endswith(".tmp")]
    assert {"fifo_mel_mel.bin", "fifo_side_mel.json", "selfmel_mel.bin", "linkside_mel.json"} <= written
    assert not (hostile["codes"] / "fifo_mel_mel.bin").is_fifo()  # replaced by rename, never opened for writing
    assert not (hostile["codes"] / "linkside_mel.json").is_symlink()


@pytest.mark.node
def test_cli_on_the_hostile_library(hostile, node_run):
    env = {**os.environ, **hostile["env"]}
    before = snapshot(hostile["tmp"], hostile["codes"])
    for command in (["verify"], ["inspect", "surro"], ["inspect", "shape_bool"], ["precompute"], ["verify"]):
        result = subprocess.run([str(BIN / "reference-mel"), *command], env=env, capture_output=True, text=True,
                                timeout=300)
        assert "Traceback" not in result.stderr, (command, result.stderr[-2000:])
        assert result.returncode in (0, 1, 2), (command, result.returncode)
        if command == ["precompute"]:
            assert result.returncode == 1 and "2 failed" in result.stdout, result.stdout
            assert "udc80" in result.stdout and "'../../x'" in result.stdout
    after = snapshot(hostile["tmp"], hostile["codes"])
    voices_json = hostile["models"] / "voices.json"
    assert {p: v for p, v in after.items() if p != voices_json} == {p: v for p, v in before.items() if p != voices_json}
    config = json.loads(voices_json.read_text())
    assert config["voices"]["selfmel"]["mel_path"] == "gpt-sovits-mlx/codes/selfmel_mel.bin"  # the store's own file
    assert "mel_path" not in config["voices"]["../../x"]


@pytest.mark.node
def test_replaced_clip_same_size_and_mtime_is_recomputed(library, tmp_path):
    """Two clips of equal length; the second unpacked over the first with the first's mtime."""
    wav = library["models"] / "voices/aria.wav"
    a, rate = soundfile.read(str(wav), dtype="float32")
    b = np.roll(a, 4000) * 0.5
    node = ReferenceMelService(Config.from_env(library["env"]))
    first = [o for o in node.handle("voice", _names("aria"), {}) if o.output_id == "mel"][0]
    assert first.metadata["source"] == "computed"
    stat = wav.stat()
    replacement = tmp_path / "b.wav"
    soundfile.write(str(replacement), b, rate, subtype=soundfile.info(str(wav)).subtype)
    assert replacement.stat().st_size == stat.st_size
    os.replace(replacement, wav)
    os.utime(wav, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    expected = reference_mel(*soundfile.read(str(wav), dtype="float32")).reshape(-1)
    again = [o for o in node.handle("voice", _names("aria"), {}) if o.output_id == "mel"][0]  # from memory
    np.testing.assert_allclose(again.value.to_numpy(), expected, atol=1e-4)
    outputs, _ = run_node(tmp_path, [voice_event("aria")], library["env"])  # after a restart
    np.testing.assert_allclose(np.array(outputs[0]["data"], np.float32), expected, atol=1e-4)


def _names(*names):
    import pyarrow as pa

    return pa.array(list(names))


CRASH = """
import os, sys
import numpy as np
import pyarrow as pa
from dora_reference_mel import get_preset
from dora_reference_mel.store.library import Voice, VoiceLibrary
from dora_reference_mel.store import ReferenceStore
renames = []
real_replace = os.replace
def dying_replace(src, dst):
    renames.append(dst)
    if len(renames) == 2:
        os._exit(9)  # killed between committing the sidecar and the data
    real_replace(src, dst)
os.replace = dying_replace
store = ReferenceStore(sys.argv[1], VoiceLibrary(sys.argv[2]))
store.save(Voice("aria"), get_preset("v2"), np.full((704, 500), 3.0, np.float32), source_digest="other",
               source_sample_rate=48000)
"""


@pytest.mark.node
def test_crash_between_sidecar_and_data_is_never_served_and_leftovers_go(library, tmp_path):
    node = ReferenceMelService(Config.from_env(library["env"]))
    assert [o for o in node.handle("voice", _names("aria"), {}) if o.output_id == "mel"][0].metadata["source"] == "computed"
    good = (library["codes_dir"] / "aria_mel.bin").read_bytes()
    crashed = subprocess.run([sys.executable, "-c", CRASH, str(library["codes_dir"]), str(library["voices"])])
    assert crashed.returncode == 9
    leftovers = [p for p in library["codes_dir"].iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and (library["codes_dir"] / "aria_mel.bin").read_bytes() == good
    store = ReferenceStore(library["codes_dir"], VoiceLibrary(library["voices"]))
    assert store.lookup(store.voice("aria"), V2).state == CORRUPT  # new sidecar, old data: refused
    old = time.time() - 3600
    os.utime(leftovers[0], (old, old))
    outputs, log = run_node(tmp_path, [voice_event("aria")], library["env"])
    assert "computed" in log and "removed 1 temporary files" in log
    assert not [p for p in library["codes_dir"].iterdir() if p.name.endswith(".tmp")]
    np.testing.assert_array_equal(np.frombuffer(good, "<f4"), np.array(outputs[0]["data"], np.float32))


@pytest.mark.parametrize("content", ["directory", "fifo", "deep", "digits"])
@pytest.mark.node
def test_unusable_voices_json_answers_every_event(library, tmp_path, content):
    path = library["voices"]
    path.unlink()
    if content == "directory":
        path.mkdir()
    elif content == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("[" * 100_000 if content == "deep" else '{"voices": {}, "n": ' + "1" * 5000 + "}")
    outputs, log = run_node(tmp_path, [voice_event("aria"), voice_event("aria")], library["env"])
    assert [json.loads(o["data"][0])["error"] for o in outputs] == ["bad_voices_config"] * 2, log[-2000:]


def test_two_precompute_runs_at_once_keep_both_updates(library):
    env = {**os.environ, **library["env"]}
    for _ in range(3):
        runs = [subprocess.Popen([str(BIN / "reference-mel"), "precompute", "--force", "--preset", preset], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for preset in ("v2", "v4")]
        assert [run.wait(timeout=300) for run in runs] == [0, 0]
        voices = json.loads(library["voices"].read_text())["voices"]
        assert all({"mel_path", "mel_v4_path"} <= set(entry) for entry in voices.values()), voices
        for entry in voices.values():
            del entry["mel_path"], entry["mel_v4_path"]
        library["voices"].write_text(json.dumps({"voices": voices}, indent=2))


# -- properties: any sidecar, any voices.json, any file kind ------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=20)
sidecar_keys = st.sampled_from(["format", "shape", "fingerprint", "source_digest", "source_sample_rate",
                                "source_audio", "data_digest"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(sidecar_keys, json_values, min_size=1, max_size=3))
def test_any_sidecar_is_fresh_only_when_it_is_the_one_written(library, changes):
    store = ReferenceStore(library["codes_dir"], VoiceLibrary(library["voices"]))
    voice = Voice("prop")
    path = store.save(voice, V2, np.ones((704, 20), np.float32), source_digest="d", source_sample_rate=1)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    edited = {**sidecar, **changes}
    path.with_suffix(".json").write_text(json.dumps(edited))
    found = store.lookup(voice, V2, digest="d")
    assert found.state in (FRESH, STALE, CORRUPT)
    if found.fresh:
        assert all(edited[k] == sidecar[k] for k in ("format", "shape", "fingerprint", "source_digest", "data_digest"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=json_values, name=st.text(min_size=1, max_size=10))
def test_any_voices_json_resolves_or_names_the_problem(tmp_path, document, name):
    path = tmp_path / "voices.json"
    path.write_text(json.dumps({"voices": document} if isinstance(document, dict) else document))
    try:
        voice = VoiceLibrary(path).resolve(name)
    except ReferenceMelError as err:
        assert err.code in ERROR_CODES and err.code != "internal"
    else:
        assert voice is None or isinstance(voice, Voice)


@pytest.mark.parametrize("kind", ["fifo", "directory", "loop", "dangling", "empty", "socket"])
def test_any_file_kind_at_the_spectrogram_path(library, kind):
    import socket

    target = library["codes_dir"] / "kind_mel.bin"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    elif kind == "loop":
        target.symlink_to(target)
    elif kind == "dangling":
        target.symlink_to(library["codes_dir"] / "nowhere")
    elif kind == "empty":
        target.write_bytes(b"")
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(target))
    store = ReferenceStore(library["codes_dir"], VoiceLibrary(library["voices"]))
    found = store.lookup(Voice("kind"), V2)
    assert found.state in (CORRUPT, "absent") and not found.fresh
    if kind != "directory":  # the next write replaces whatever was there
        store.save(Voice("kind"), V2, np.ones((704, 3), np.float32), source_digest="d", source_sample_rate=1)
        assert store.lookup(Voice("kind"), V2, digest="d").fresh


# -- a pair is checked whole once per unchanged file (files.SETTLED_NS): every later change is still seen --


def _damage(path: Path, outside: Path, store: ReferenceStore, how: str) -> None:
    if how == "flip":  # in place, same size: only the stamps (mtime, ctime) say it changed
        with open(path, "r+b") as f:
            f.seek(40)
            byte = f.read(1)
            f.seek(40)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif how == "truncate":
        os.truncate(path, path.stat().st_size - 4)
    elif how == "link_out":  # the same bytes, moved to another folder and linked from the codes directory
        (outside / "copy.bin").write_bytes(path.read_bytes())
        path.unlink()
        path.symlink_to(outside / "copy.bin")
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif how == "removed":
        path.unlink()
    elif how == "sidecar":
        sidecar = json.loads(path.with_suffix(".json").read_text())
        sidecar["source_digest"] = "another clip"
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    elif how == "rewritten":  # a new whole pair, by the store's own commit
        store.save(Voice("memo"), V2, np.full((704, 20), 2.0, np.float32), source_digest="d", source_sample_rate=1)


@pytest.mark.parametrize("how", ["flip", "truncate", "link_out", "fifo", "removed", "sidecar", "rewritten"])
def test_a_pair_verified_once_still_sees_every_change(library, tmp_path, monkeypatch, how):
    """With the racy-stamp window at 0 (the filesystem here stamps in nanoseconds), the second lookup
    takes the once-verified path; after any change its answer is the one a store that never saw the
    pair gives."""
    import dora_reference_mel.store.files as files_module

    monkeypatch.setattr(files_module, "SETTLED_NS", 0)
    store = ReferenceStore(library["codes_dir"], VoiceLibrary(library["voices"]))
    path = store.save(Voice("memo"), V2, np.ones((704, 20), np.float32), source_digest="d", source_sample_rate=1)
    assert store.lookup(Voice("memo"), V2, digest="d").fresh
    assert store.lookup(Voice("memo"), V2, digest="d").fresh  # served by the memo: stamps unchanged
    assert (path, kind_of(V2)) in store._verified
    outside = tmp_path / "outside"
    outside.mkdir()
    _damage(path, outside, store, how)
    again = store.lookup(Voice("memo"), V2, digest="d")
    fresh_eyes = ReferenceStore(library["codes_dir"], VoiceLibrary(library["voices"])).lookup(Voice("memo"), V2, digest="d")
    assert (again.state, again.reason) == (fresh_eyes.state, fresh_eyes.reason)
    assert again.state == (FRESH if how in ("rewritten", "link_out") else STALE if how == "sidecar" else
                           "absent" if how == "removed" else CORRUPT), again.reason
    if again.fresh:  # the codes directory is the owner's: a link there is followed, to the same pair
        np.testing.assert_array_equal(again.data, fresh_eyes.data)
        np.testing.assert_array_equal(again.data, 2.0 if how == "rewritten" else 1.0)


def test_a_pair_younger_than_the_stamp_granularity_is_checked_every_time(library):
    """A write within the timestamp tick of the check can leave the stamps as they were: such a pair is
    verified whole at every lookup until both files are older than SETTLED_NS, then only once."""
    from dora_reference_mel.store.files import SETTLED_NS

    store = ReferenceStore(library["codes_dir"], VoiceLibrary(library["voices"]))
    path = store.save(Voice("young"), V2, np.ones((704, 20), np.float32), source_digest="d", source_sample_rate=1)
    assert store.lookup(Voice("young"), V2, digest="d").fresh
    assert (path, kind_of(V2)) not in store._verified
    time.sleep(SETTLED_NS / 1e9 + 0.2)
    assert store.lookup(Voice("young"), V2, digest="d").fresh
    assert (path, kind_of(V2)) in store._verified


def test_an_event_never_replaces_a_spectrogram_the_library_cannot_recompute(library, caplog):
    """A voice served only from its precomputed file (no ref_audio: the sidecar-less layout of the Rust
    port's plan), named by a reference_audio event by key, alias or display name, or a voice whose
    mel_path names another name's file: the event is answered, the owner's file stays as it was."""
    entries = json.loads(library["voices"].read_text())
    entries["voices"]["legacy"] = {"ref_text": "Only a file.", "aliases": ["Old Timer"]}
    entries["voices"]["pointed"] = {"ref_text": "Only a file too.",
                                    "mel_path": str(library["codes_dir"] / "stranger_mel.bin")}
    library["voices"].write_text(json.dumps(entries))
    rng = np.random.default_rng(3)
    kept = {}
    for name in ("legacy", "stranger"):
        path = library["codes_dir"] / f"{name}_mel.bin"
        path.write_bytes(rng.random((704, 40), dtype=np.float32).tobytes())
        kept[path] = path.read_bytes()
    service = ReferenceMelService(Config.from_env(library["env"]))
    for name, clip in [(n, "basil") for n in ("legacy", "LEGACY", "Old Timer", "oldtimer")] + [("stranger", "aria")] * 2:
        samples, rate = soundfile.read(str(library["models"] / f"voices/{clip}.wav"), dtype="float32")
        [mel] = [o for o in service.handle("reference_audio", pa.array(samples), {"sample_rate": rate, "voice": name})
                 if o.output_id == "mel"]
        assert mel.metadata["source"] in ("computed", "cache") and mel.metadata.get("write_back", "skipped") == "skipped"
    assert {p: p.read_bytes() for p in kept} == kept and not list(library["codes_dir"].glob("*.json"))
    assert sum("not writing the computed spectrogram" in r.message for r in caplog.records) == 2  # once per file
    for fresh in (service, ReferenceMelService(Config.from_env(library["env"]))):  # and after a restart
        for name, path in (("Old Timer", library["codes_dir"] / "legacy_mel.bin"),
                           ("pointed", library["codes_dir"] / "stranger_mel.bin")):
            [mel] = [o for o in fresh.handle("voice", pa.array([name]), {}) if o.output_id == "mel"]
            assert np.asarray(mel.value).tobytes() == kept[path], name


@pytest.mark.slow
@pytest.mark.parametrize("where", ["kernel", "stat"])
def test_a_clip_swapped_for_a_link_out_is_never_served(library, tmp_path, monkeypatch, where):
    """Someone who can write in a root swaps the clip for a link to a file outside, again and again, while
    CUSTOM switches name it: the file read is the file judged, so the outside file is never served.
    where: how the descriptor's file is located (the kernel's name for it, or, where the system has none,
    the path resolved again and compared by device and inode)."""
    import threading

    from dora_reference_mel.store import files

    if where == "stat":
        monkeypatch.setattr(files, "descriptor_path", lambda fd: None)
    secret = tmp_path / "outside" / "secret.wav"
    secret.parent.mkdir()
    shutil.copy(ROOT / "models/voices/cleo.wav", secret)
    voices = library["models"] / "voices"
    keep, clip, swap = voices / "keep.wav", voices / "clip.wav", voices / ".swap"
    shutil.copy(ROOT / "models/voices/basil.wav", keep)
    os.link(keep, clip)
    service = ReferenceMelService(Config.from_env(library["env"]))

    def switch(path):
        return [o for o in service.handle("text", pa.array([f"VOICE:CUSTOM|{path}|Hello.|en|Hi."]), {})
                if o.output_id != "log"][0]

    inside = np.asarray(switch(keep).value)
    stop = threading.Event()

    def swapper():
        while not stop.is_set():
            os.symlink(secret, swap)
            os.replace(swap, clip)
            os.link(keep, swap)
            os.replace(swap, clip)

    thread = threading.Thread(target=swapper)
    thread.start()
    answers = []
    try:
        for _ in range(400):
            answers.append(switch(clip))
    finally:
        stop.set()
        thread.join()
    served = [np.asarray(a.value) for a in answers if a.output_id == "mel"]
    refused = [json.loads(a.value[0].as_py()) for a in answers if a.output_id == "error"]
    assert served and all(np.array_equal(mel, inside) for mel in served)  # basil's, never cleo's
    assert {body["error"] for body in refused} <= {"bad_ref_audio"}, refused[:3]
    assert all(str(secret) not in body["message"] for body in refused)
