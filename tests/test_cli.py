"""`reference-mel precompute | verify | inspect` on a real 20-voice library, and concurrent writers."""

import importlib.metadata
import json
import multiprocessing
import os
import subprocess
import sys
import weakref

import numpy as np
import pyarrow as pa
import pytest
import soundfile

from dora_reference_mel import get_preset, reference_mel
from dora_reference_mel.config import Config
from dora_reference_mel.node.service import ReferenceMelService
from dora_reference_mel.store import ReferenceStore
from dora_reference_mel.store.library import VoiceLibrary
from helpers import BIN, RATES, ROOT, SPEECH, run_node


def cli(*args, env=None):
    return subprocess.run([str(BIN / "reference-mel"), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def library20(tmp_path):
    """20 voices of real speech at 16 to 48 kHz, mono and stereo, in primespeech's layout."""
    base = tmp_path / "primespeech"
    (base / "audio").mkdir(parents=True)
    voices = {}
    sources = [SPEECH / f"{layout}_{rate}.wav" for rate in RATES for layout in ("mono", "stereo")]
    sources += [ROOT / "models/voices" / f"{v}.wav" for v in ("aria", "basil", "cleo")]
    for i in range(20):
        source = sources[i % len(sources)]
        samples, rate = soundfile.read(str(source), dtype="int16")
        name = f"voice{i:02d}"
        soundfile.write(str(base / "audio" / f"{name}.wav"), samples[i * 97:], rate)  # distinct audio each
        voices[name] = {"ref_audio": f"audio/{name}.wav", "ref_text": "x", "aliases": [f"Voice {i}"],
                        "custom_key": {"kept": i}}
    config = {"default_voice": "voice00", "models_base_path": str(base), "voices": voices, "extra": [1, 2]}
    (base / "voices.json").write_text(json.dumps(config, indent=2))
    codes = base / "gpt-sovits-mlx" / "codes"
    return {"base": base, "voices": base / "voices.json", "codes": codes,
            "args": ["--voices", str(base / "voices.json"), "--codes-dir", str(codes)],
            "env": {"VOICES_CONFIG": str(base / "voices.json"), "CODES_DIR": str(codes)}}


def test_precompute_then_nothing_then_exactly_the_changed_voice(library20):
    before = json.loads(library20["voices"].read_text())
    first = cli("precompute", *library20["args"])
    assert first.returncode == 0, first.stderr
    assert "20 computed, 0 up to date, 0 failed" in first.stdout
    assert "computing [" in first.stderr  # the progress bar
    assert len(list(library20["codes"].glob("voice*_mel.bin"))) == 20
    after = json.loads(library20["voices"].read_text())
    assert list(after) == list(before) and after["extra"] == [1, 2]
    for name, entry in after["voices"].items():
        assert entry.pop("mel_path") == f"gpt-sovits-mlx/codes/{name}_mel.bin"
    assert after == before  # nothing else changed, key order kept
    stamp = library20["voices"].stat().st_mtime_ns

    second = cli("precompute", *library20["args"])
    assert second.returncode == 0 and "0 computed, 20 up to date" in second.stdout
    assert "nothing to do" in second.stdout
    assert library20["voices"].stat().st_mtime_ns == stamp  # not even rewritten

    wav = library20["base"] / "audio/voice07.wav"
    samples, rate = soundfile.read(str(wav), dtype="int16")
    soundfile.write(str(wav), samples[: len(samples) // 2], rate)
    third = cli("precompute", *library20["args"])
    assert "1 computed, 19 up to date" in third.stdout and "voice07 v2 (stale: made from other audio" in third.stdout
    stored = ReferenceStore(library20["codes"], VoiceLibrary(library20["voices"])).lookup(
        VoiceLibrary(library20["voices"]).resolve("voice07"), get_preset("v2"))
    assert stored.fresh
    np.testing.assert_array_equal(stored.data, reference_mel(samples[: len(samples) // 2], rate)[0])


def test_precompute_in_chunks_of_voices(library20, monkeypatch, capsys):
    """A library larger than one chunk (here 7 voices a chunk): every voice once, nothing twice."""
    from dora_reference_mel import cli as tool
    from dora_reference_mel import precompute

    monkeypatch.setattr(precompute, "VOICES_PER_CHUNK", 7)
    samples, held = [], []
    real_load = precompute.load

    def load(resolver, job):  # how many voices' samples are alive each time one more voice is read
        job = real_load(resolver, job)
        samples.append(weakref.ref(job.request.samples))
        held.append(sum(ref() is not None for ref in samples))
        return job

    monkeypatch.setattr(precompute, "load", load)
    assert tool.main(["precompute", *library20["args"], "--preset", "v2", "v4"]) == 0
    assert "40 computed, 0 up to date, 0 failed" in capsys.readouterr().out
    assert 7 < max(held) <= 14  # the next chunk is read while one computes; never more than two chunks
    assert tool.main(["precompute", *library20["args"], "--preset", "v2", "v4"]) == 0
    assert "0 computed, 40 up to date" in capsys.readouterr().out


def test_failures_do_not_stop_the_others(library20):
    config = json.loads(library20["voices"].read_text())
    config["voices"]["voice03"]["ref_audio"] = "audio/absent.wav"
    config["voices"]["voice04"]["ref_audio"] = "voices.json"  # not audio
    nan_clip = np.full((48000, 1), 0.1, np.float32)
    nan_clip[100] = np.nan
    soundfile.write(str(library20["base"] / "audio/voice05.wav"), nan_clip, 48000, subtype="FLOAT")
    soundfile.write(str(library20["base"] / "audio/voice06.wav"), np.zeros((400_000 * 3, 1), np.int16), 400_000)
    library20["voices"].write_text(json.dumps(config))
    result = cli("precompute", *library20["args"], "--preset", "v2", "v3")
    assert result.returncode == 1
    assert "32 computed, 0 up to date, 8 failed" in result.stdout  # every good voice, whatever the bad ones
    assert "voice03 v2: [bad_ref_audio] ref_audio" in result.stdout and "does not exist" in result.stdout
    assert "voice04 v3: [bad_ref_audio] ref_audio" in result.stdout and "not readable audio" in result.stdout
    assert "voice05 v2: [non_finite_audio]" in result.stdout and "voice06 v3: [bad_sample_rate]" in result.stdout
    assert len(list(library20["codes"].glob("voice*_mel*.bin"))) == 32


@pytest.mark.node
def test_node_after_precompute_serves_every_voice_precomputed(library20, tmp_path):
    assert cli("precompute", *library20["args"]).returncode == 0
    events = [{"type": "Input", "id": "voice", "data": [f"Voice {i}"], "data_type": "Utf8", "metadata": {}}
              for i in range(20)]
    outputs, log = run_node(tmp_path, events, library20["env"])
    assert [o["id"] for o in outputs] == ["mel"] * 20
    assert log.count("source=precomputed") == 20 and "source=computed" not in log


def test_verify_reports_stale_and_corrupt(library20):
    assert cli("precompute", *library20["args"]).returncode == 0
    ok = cli("verify", *library20["args"])
    assert ok.returncode == 0 and "verify: 0 stale or corrupt" in ok.stdout
    (library20["codes"] / "voice02_mel.bin").write_bytes(b"\0" * 100)
    wav = library20["base"] / "audio/voice05.wav"
    samples, rate = soundfile.read(str(wav), dtype="int16")
    soundfile.write(str(wav), samples[::-1], rate)
    bad = cli("verify", *library20["args"])
    assert bad.returncode == 1 and "verify: 2 stale or corrupt" in bad.stdout
    assert "corrupt  voice02 v2" in bad.stdout and "stale    voice05 v2: made from other audio" in bad.stdout


@pytest.mark.node
def test_list_and_verify_cover_the_files_of_voices_voices_json_does_not_list(library20):
    """A reference_audio event's voice is written back without a voices.json entry: the store still
    lists it, verify checks it, and every sidecar says which package version wrote it."""
    assert cli("precompute", *library20["args"]).returncode == 0
    service = ReferenceMelService(Config.from_env(library20["env"]))
    samples, rate = soundfile.read(str(SPEECH / "mono_16000.wav"), dtype="float32")
    out = service.handle("reference_audio", pa.array(samples), {"sample_rate": rate, "voice": "visitor"})
    assert out[0].metadata["write_back"] == "written"
    listed = json.loads(cli("list", "--json", *library20["args"]).stdout)
    names = [(v["name"], v["in_library"], v["stored"]["v2"]["state"]) for v in listed["voices"]]
    assert names == [(f"voice{i:02d}", True, "fresh") for i in range(20)] + [("visitor", False, "fresh")]
    version = importlib.metadata.version("dora-reference-mel")
    assert {v["stored"]["v2"]["producer"]["version"] for v in listed["voices"]} == {version}
    assert cli("verify", *library20["args"]).stdout.count("ok       visitor v2 (not in voices.json)") == 1
    (library20["codes"] / "visitor_mel.bin").write_bytes(b"\0" * 64)  # damaged: verify says so
    bad = cli("verify", *library20["args"])
    assert bad.returncode == 1 and "corrupt  visitor v2 (not in voices.json)" in bad.stdout
    text = cli("list", *library20["args"]).stdout
    assert "visitor" in text and "codes dir only  v2=corrupt" in text and "20 voices in voices.json, 1 more" in text


def test_inspect_voice_and_file(library20, tmp_path):
    assert cli("precompute", *library20["args"]).returncode == 0
    out = cli("inspect", "voice 1", *library20["args"], "--png", str(tmp_path / "v.png"))
    assert out.returncode == 0, out.stderr
    assert "source     precomputed file" in out.stdout and "shape      [1, 704, " in out.stdout
    assert "codes      missing" in out.stdout
    assert (tmp_path / "v.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = cli("inspect", str(SPEECH / "stereo_44100.wav"), "--preset", "v4")
    assert out.returncode == 0 and "shape      [1, 100, 250]" in out.stdout and "2 channel(s)" in out.stdout
    missing = cli("inspect", "nobody", *library20["args"])
    assert missing.returncode == 2 and "neither an audio file nor a voice" in missing.stderr


def test_sv_precompute_verify_inspect(library20, tmp_path):
    """The v2Pro speaker preset through every command: stored as <voice>_mel_sv, frames first."""
    done = cli("precompute", "--preset", "v2", "sv", *library20["args"])
    assert done.returncode == 0 and "40 computed, 0 up to date, 0 failed" in done.stdout, done.stdout + done.stderr
    assert len(list(library20["codes"].glob("voice*_mel_sv.bin"))) == 20
    checked = cli("verify", "--preset", "sv", *library20["args"])
    assert checked.returncode == 0 and "verify: 0 stale or corrupt" in checked.stdout
    out = cli("inspect", "voice 1", "--preset", "sv", *library20["args"], "--png", str(tmp_path / "sv.png"))
    assert out.returncode == 0, out.stderr
    assert "source     precomputed file" in out.stdout and "_mel_sv.bin" in out.stdout
    assert "frames_bins: " in out.stdout and ", 80]" in out.stdout
    assert (tmp_path / "sv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- concurrency ---------------------------------------------------------------------------------


def _reader_writer(args):
    """One node process: serve the same voice from two alternating clips, with no memory cache."""
    env, worker, rounds = args
    service = ReferenceMelService(Config.from_env({**env, "MEL_CACHE_MB": "0"}))
    clips = [soundfile.read(str(SPEECH / f"mono_{rate}.wav"), dtype="float32") for rate in (48000, 22050)]
    served = []
    for i in range(rounds):
        samples, rate = clips[(i + worker) % 2]
        out = service.handle("reference_audio", pa.array(samples), {"sample_rate": rate, "voice": "shared"})
        served.append(((i + worker) % 2, out[0].metadata.get("source"), out[0].value.to_numpy().copy()))
    return served


def test_concurrent_nodes_and_precompute_never_serve_or_leave_a_bad_file(library20):
    config = json.loads(library20["voices"].read_text())
    config["voices"] = {"shared": {"ref_audio": "audio/voice00.wav"}}
    library20["voices"].write_text(json.dumps(config))
    (library20["base"] / "audio/voice00.wav").write_bytes((SPEECH / "mono_48000.wav").read_bytes())
    expected = [reference_mel(*soundfile.read(str(SPEECH / f"mono_{r}.wav"), dtype="float32"))[0].reshape(-1)
                for r in (48000, 22050)]
    precompute = subprocess.Popen(
        [sys.executable, "-c", "import sys; from dora_reference_mel.cli import main\n"
         "for _ in range(8): main(['precompute', '--force'] + sys.argv[1:])", *library20["args"]],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(_reader_writer, [(library20["env"], w, 12) for w in range(3)])
    assert precompute.wait(timeout=600) == 0
    sources = set()
    for served in results:
        for which, source, data in served:
            sources.add(source)
            np.testing.assert_allclose(data, expected[which], rtol=0, atol=1e-5)  # never the other clip's
    assert "precomputed" in sources and "computed" in sources
    store = ReferenceStore(library20["codes"], VoiceLibrary(library20["voices"]))
    final = store.lookup(store.voice("shared"), get_preset("v2"))  # whole, digest-consistent
    assert final.state in ("fresh", "stale") and final.data.shape[0] == 704
    assert not [p for p in library20["codes"].iterdir() if p.name.endswith(".tmp")]


def test_inspect_png_names_the_file_it_wrote_and_the_extra_it_needs(library20, tmp_path):
    out = cli("inspect", "voice00", "--png", str(tmp_path / "pic"), *library20["args"])
    assert out.returncode == 0 and f"png        {tmp_path / 'pic.png'}" in out.stdout and (tmp_path / "pic.png").exists()
    # Without matplotlib (its import fails as it does when the package is absent):
    code = ("import sys; sys.modules['matplotlib'] = None; from dora_reference_mel.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "inspect", "voice00", "--png", str(tmp_path / "x.png"),
                             *library20["args"]], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pip install 'dora-reference-mel[plot]'" in result.stderr


def test_an_option_overrides_a_bad_variable(library20):
    bad = {"MEL_DEVICE": "tpu", **library20["env"]}
    assert cli("verify", env=bad).returncode == 2  # the variable is used: one clear line
    result = cli("verify", "--device", "cpu", env=bad)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


def test_get_preset_applies_the_resampler_to_a_preset_object():
    v2 = get_preset("v2")
    assert get_preset(v2) is v2
    assert get_preset(v2, resampler="soxr_hq").resampler == "soxr_hq"
    assert get_preset(get_preset("v2", resampler="soxr_hq")).resampler == "soxr_hq"
    assert get_preset(v2, v2_bins=1025).n_bins == 1025


# -- voices.json that cannot be written, or changes during the run -------------------------------------


def _in_private_mounts(script: str) -> subprocess.CompletedProcess:
    """`script` (sh) in a mount namespace of its own: its mounts vanish with it, whatever the test does."""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-euc", script],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def mounts_allowed():
    if subprocess.run(["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", "/mnt"],
                      capture_output=True).returncode:
        pytest.skip("needs unshare and mount (root): the read-only and full file systems are real mounts")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["read-only bind mount", "full tmpfs"])
def test_precompute_reports_a_voices_json_it_cannot_write(library20, tmp_path, mounts_allowed, how):
    """voices.json on a read-only mount (as deployment.md suggests mounting it) or on a full disk: every
    spectrogram is still written, the summary names the file and the fix, exit 0 (every voice was computed),
    no traceback, the file untouched and no temporary left; the node then serves every voice from its files
    by their default names."""
    codes, conf, out = tmp_path / "codes", tmp_path / "conf", tmp_path / "out"
    conf.mkdir(), out.mkdir()
    voices = conf / "voices.json"
    original = library20["voices"].read_bytes()
    voices.write_bytes(original)
    tool = f"{BIN / 'reference-mel'} precompute --voices {voices} --codes-dir {codes} > {out}/stdout 2> {out}/stderr"
    if how == "read-only bind mount":  # what docker's -v voices.json:...:ro does
        setup = f"mount --bind {voices} {voices}; mount -o remount,bind,ro {voices}"
    else:  # a small file system filled up after voices.json was copied in
        setup = (f"mount -t tmpfs -o size=256k tmpfs {conf}; cp {library20['voices']} {voices}; "
                 f"cat /dev/zero > {conf}/filler 2>/dev/null || true")
    done = _in_private_mounts(f"{setup}; rc=0; {tool} || rc=$?; cp {voices} {out}/after.json; "
                              f"ls -A {conf} > {out}/listing; exit $rc")
    stdout, stderr = (out / "stdout").read_text(), (out / "stderr").read_text()
    assert done.returncode == 0, done.stderr + stdout + stderr
    assert "Traceback" not in stderr and "20 computed, 0 up to date, 0 failed" in stdout
    assert f"cannot record the mel paths in {voices}" in stdout
    assert "the node finds them by their default names in CODES_DIR" in stdout
    assert (out / "after.json").read_bytes() == original
    assert not [name for name in (out / "listing").read_text().split() if name.startswith(".rmel-")]
    store = ReferenceStore(codes, VoiceLibrary(library20["voices"]))
    assert all(store.lookup(store.voice(f"voice{i:02d}"), get_preset("v2")).fresh for i in range(20))


@pytest.mark.parametrize("change", ["entries removed or changed", "made unusable", "removed"])
def test_precompute_survives_voices_json_changing_during_the_run(library20, monkeypatch, capsys, change):
    """Another writer edits voices.json between the plan and the record: the run records what it still
    can, leaves the rest, and always ends with its summary."""
    from dora_reference_mel import cli as tool
    from dora_reference_mel.resolve import Resolver

    real_resolve = Resolver.resolve_batch

    def compute_while_someone_edits(resolver, requests, kind, **options):
        config = json.loads(library20["voices"].read_text())
        if change == "entries removed or changed":
            del config["voices"]["voice03"]
            config["voices"]["voice04"] = "not an entry any more"
            library20["voices"].write_text(json.dumps(config, indent=2))
        elif change == "made unusable":
            library20["voices"].write_text('{"voices": ')
        else:
            library20["voices"].unlink()
        return real_resolve(resolver, requests, kind, **options)

    monkeypatch.setattr(Resolver, "resolve_batch", compute_while_someone_edits)
    status = tool.main(["precompute", *library20["args"]])
    out = capsys.readouterr().out
    assert "20 computed, 0 up to date, 0 failed" in out
    if change == "entries removed or changed":
        assert status == 0, out
        after = json.loads(library20["voices"].read_text())
        assert "voice03" not in after["voices"] and after["voices"]["voice04"] == "not an entry any more"
        assert all(after["voices"][f"voice{i:02d}"]["mel_path"] for i in range(20) if i not in (3, 4))
    else:
        assert status == 0 and "not recorded in voices.json" in out
        assert "was removed during the run" in out if change == "removed" else "bad_voices_config" in out
        assert not [p for p in library20["base"].iterdir() if p.name.startswith(".rmel-")]


def test_precompute_and_verify_with_a_codes_dir_named_in_bytes_that_are_not_utf8(library20, tmp_path):
    """A codes directory whose name is not UTF-8: its files are written and served by their default
    names; voices.json, which holds only UTF-8 text, is left as it was, and the summary says why."""
    codes = tmp_path / os.fsdecode(b"codes-\xff")
    before = library20["voices"].read_bytes()
    args = ["--voices", str(library20["voices"]), "--codes-dir", str(codes)]
    done = cli("precompute", *args)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "20 computed, 0 up to date, 0 failed" in done.stdout
    assert "voice00 mel_path=" in done.stdout and "codes-\\udcff" in done.stdout and "not valid Unicode" in done.stdout
    assert library20["voices"].read_bytes() == before
    assert len(list(codes.glob("voice*_mel.bin"))) == 20
    checked = cli("verify", *args)
    assert checked.returncode == 0 and "verify: 0 stale or corrupt" in checked.stdout, checked.stdout + checked.stderr
    (codes / "voice02_mel.bin").write_bytes(b"\0" * 100)  # its reason names the folder: shown escaped
    checked = cli("verify", *args)
    assert checked.returncode == 1 and "Traceback" not in checked.stderr, checked.stderr
    assert "corrupt  voice02 v2: " in checked.stdout and "codes-\\udcff" in checked.stdout
    assert "verify: 1 stale or corrupt" in checked.stdout
    listed = cli("list", *args)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr and "20 voices in voices.json" in listed.stdout
    listed = cli("list", "--json", *args)  # the folder's name escaped, as JSON writes a lone surrogate
    assert listed.returncode == 0 and json.loads(listed.stdout)["codes_dir"] == str(codes)


def test_verify_and_list_name_voices_json_collisions(library):
    voices = json.loads(library["voices"].read_text())
    voices["voices"]["Narrator"] = dict(voices["voices"]["aria"], aliases=["Teller"])
    voices["voices"]["narrator"] = dict(voices["voices"]["basil"], aliases=["teller", "Basil"])  # a key wins
    library["voices"].write_text(json.dumps(voices))
    env = {**os.environ, **library["env"]}
    verify = cli("verify", env=env)
    listed = cli("list", env=env)
    as_json = json.loads(cli("list", "--json", env=env).stdout)
    assert "'basil' matches" not in verify.stdout + listed.stdout
    for name in ("'narrator' matches 2 voices", "'teller' matches 2 voices"):
        assert f"ambiguous voice {name}" in verify.stdout, verify.stdout
        assert f"ambiguous name: voice {name}" in listed.stdout, listed.stdout
        assert sum(name in message for message in as_json["collisions"]) == 1


# -- the tool's output, as a user reads it ---------------------------------------------------------------


@pytest.fixture
def named_library(tmp_path):
    """Three voices of real speech: a CJK name with 2.9 s, one of 5 s, one of 10.1 s (GPT-SoVITS wants 3 to 10 s)."""
    speech, rate = soundfile.read(str(SPEECH / "mono_16000.wav"), dtype="int16")
    (tmp_path / "audio").mkdir()
    voices = {}
    for name, seconds in (("志玲", 2.9), ("plain", 5.0), ("long", 10.1)):
        soundfile.write(str(tmp_path / "audio" / f"{name}.wav"), np.resize(speech, int(seconds * rate)), rate)
        voices[name] = {"ref_audio": f"audio/{name}.wav"}
    config = tmp_path / "voices.json"
    config.write_text(json.dumps({"models_base_path": str(tmp_path), "voices": voices}, ensure_ascii=False))
    return {"base": tmp_path, "args": ["--voices", str(config), "--codes-dir", str(tmp_path / "codes")]}


def test_precompute_draws_progress_only_for_work_done_and_no_command_prints_a_bare_timing(named_library):
    first = cli("precompute", *named_library["args"])
    assert first.returncode == 0 and first.stderr.count("computing [") == 3, first.stderr
    second = cli("precompute", *named_library["args"])
    assert second.returncode == 0 and "0 computed, 3 up to date, 0 failed, in " in second.stdout
    assert second.stderr == ""  # nothing about computing: nothing was computed
    for command in (["verify"], ["list"], ["inspect", "plain"]):
        result = cli(*command, *named_library["args"])
        assert result.returncode == 0 and result.stderr == "", result.stderr  # no "(0.0 s)"


@pytest.mark.parametrize("command", [["list", "--json"], ["list"], ["verify"], ["inspect", "plain"], ["precompute"]])
def test_a_closed_pipe_ends_every_command_quietly(named_library, command):
    """`reference-mel ... | head -1`: the reader is gone before the command writes; it ends with the
    status a shell gives a command SIGPIPE ended, and no traceback."""
    tool = subprocess.Popen([str(BIN / "reference-mel"), *command, *named_library["args"]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tool.stdout.close()  # closed at once: the command starts writing a good while later
    stderr = tool.stderr.read()
    assert tool.wait(timeout=600) == 141 and "Traceback" not in stderr and "Error" not in stderr, stderr


def test_a_closed_pipe_in_a_shell_pipeline(named_library):
    out = subprocess.run(["sh", "-c", f"{BIN / 'reference-mel'} list --json \"$@\" | head -1", "sh",
                          *named_library["args"]], capture_output=True, text=True, timeout=600)
    assert out.stdout == "{\n" and out.stderr == "", out.stderr


def test_list_aligns_cjk_names_by_display_width(named_library):
    import unicodedata

    assert cli("precompute", *named_library["args"]).returncode == 0
    rows = [line for line in cli("list", *named_library["args"]).stdout.splitlines() if " voices.json " in line]
    assert [row.split()[0] for row in rows] == ["志玲", "plain", "long"]
    columns = {sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in row[:row.index(" voices.json")])
               for row in rows}
    assert columns == {24}  # the second column starts at the same place on a terminal


def test_names_are_printed_as_written(named_library):
    assert cli("precompute", *named_library["args"]).returncode == 0
    (named_library["base"] / "audio/志玲.wav").unlink()  # its error names its audio file, CJK and all
    for result in (cli("verify", *named_library["args"]), cli("precompute", *named_library["args"])):
        assert result.returncode == 1 and "志玲 v2" in result.stdout and "audio/志玲.wav does not exist" in result.stdout
        assert "\\u5fd7" not in result.stdout


def test_every_command_warns_of_a_duration_gpt_sovits_refuses(named_library):
    def warned(text):
        return [n for n, s in (("志玲", "2.9"), ("long", "10.1")) if f"duration {s}" in text and n in text] == \
            ["志玲", "long"] and text.count("outside GPT-SoVITS's 3 to 10 s reference range") == 2

    done = cli("precompute", *named_library["args"], "--preset", "v2", "v4")
    assert done.returncode == 0 and warned(done.stdout), done.stdout  # once a voice, whatever its presets
    assert "  warning    志玲: duration 2.90 s is outside" in done.stdout
    checked = cli("verify", *named_library["args"])
    assert checked.returncode == 0 and warned(checked.stdout) and "warning  long: duration 10.10 s" in checked.stdout
    listed = cli("list", *named_library["args"])  # from the stored frames: no audio read
    assert warned(listed.stdout), listed.stdout
    document = json.loads(cli("list", "--json", *named_library["args"]).stdout)
    assert [bool(v["warnings"]) for v in document["voices"]] == [True, False, True]
    for name, seconds in (("志玲", "2.90"), ("long", "10.10"), ("plain", None)):
        out = cli("inspect", name, *named_library["args"]).stdout
        assert (f"warning    duration {seconds} s is outside" in out) if seconds else "warning" not in out, out
