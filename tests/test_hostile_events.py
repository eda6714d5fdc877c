"""Hostile events and voices.json entries never stop, stall or silently drop the node's work.

One real node (`dora-reference-mel`, dora's integration-test mode) replays every case in order; each
case is checked on its own answers, and the good events between and after them prove the node kept
serving. Outputs come back without metadata in that mode: what only metadata shows (request ids) is
checked through the service, the node's one handler."""

import collections
import json
import os
import re
import shutil
import struct
import subprocess

import numpy as np
import pyarrow as pa
import pytest
import soundfile

from dora_reference_mel.config import Config
from dora_reference_mel.contract import REFERENCE_KEY, decode_mel_event
from dora_reference_mel.node.main import send_outputs
from dora_reference_mel.node.service import ReferenceMelService
from helpers import BIN, ROOT, copy_library, huge_sparse_wav, node_run_env, replay_cases, run_node

GOOD, RATE = soundfile.read(str(ROOT / "models/voices/basil.wav"), dtype="float32")
LONG_PATH = "a/" * 1_000_000 + "x.wav"  # 2 MB: path resolution would take minutes


def text(value: str) -> dict:
    return {"type": "Input", "id": "text", "data": [value], "data_type": "Utf8"}


def custom(path: str, prompt: str = "Hello there.", lang: str = "en", wrapped: bool = False) -> dict:
    line = f"VOICE:CUSTOM|{path}|{prompt}|{lang}|A text after a custom switch."
    return text(json.dumps({"prompt": line}) if wrapped else line)


def voice(name: str) -> dict:
    return {"type": "Input", "id": "voice", "data": [name], "data_type": "Utf8"}


def audio(samples, rate: int, **metadata) -> dict:
    tagged = {"sample_rate": {"Integer": rate}}
    tagged.update({k: {"Integer": v} if isinstance(v, int) else {"String": v} for k, v in metadata.items()})
    return {"type": "Input", "id": "reference_audio", "data": list(map(float, samples)), "data_type": "Float32",
            "metadata": tagged}


def sparse_wav(path, rate: int) -> None:
    """A WAV header that declares `rate` Hz, on a 4 KiB file."""
    header = b"RIFF" + struct.pack("<I", 36 + 4052) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate,
                                                                                    rate * 2, 2, 16)
    path.write_bytes(header + b"data" + struct.pack("<I", 4052) + bytes(4052))


def hostile_library(library) -> None:
    """voices.json entries a user may write by mistake, spelled as raw JSON (numbers beyond int64 and float)."""
    soundfile.write(str(library["models"] / "voices/long.wav"), np.zeros(16000 * 61, np.float32), 16000)
    sparse_wav(library["models"] / "voices/fast.wav", 2_000_000_000)
    (library["models"] / "voices/clip.m4a").write_bytes(b"\0\0\0\x18ftypM4A \0\0\0\0M4A mp42" + bytes(4000))
    text_ = library["voices"].read_text()
    extra = ('"fast": {"ref_audio": "voices/aria.wav", "speed_factor": 10000000000000000000000}, '
             '"huge": {"ref_audio": "voices/aria.wav", "speed_factor": 1e400}, '
             f'"bigint": {{"ref_audio": "voices/aria.wav", "speed_factor": {"9" * 400}}}, '
             '"nul": {"ref_audio": "voices/aria.wav\\u0000x"}, '
             '"longref": {"ref_audio": "voices/long.wav"}, ')
    library["voices"].write_text(text_.replace('"voices": {', '"voices": {' + extra, 1))


# name -> (event, the ids of its outputs, the error code expected first, or None)
CASES = {
    "surrogate_prompt_text": (custom("voices/basil.wav", prompt="bad \ud800 text", wrapped=True),
                              ["error", "text"], "bad_text"),
    "surrogate_language": (custom("voices/basil.wav", lang="\ud800", wrapped=True), ["error", "text"], "bad_text"),
    "speed_factor_past_int64_by_audio": (audio(GOOD, RATE, voice="fast"), ["mel"], None),
    "speed_factor_past_float": (voice("huge"), ["error"], "bad_voices_config"),
    "speed_factor_400_digits": (voice("bigint"), ["error"], "bad_voices_config"),
    "custom_path_2mb": (custom(LONG_PATH), ["error", "text"], "bad_ref_audio"),
    "custom_path_unknown_user": (custom("~nosuchuser/voice.wav"), ["error", "text"], "bad_ref_audio"),
    "custom_path_nul": (custom("voices/basil.wav\x00x", wrapped=True), ["error", "text"], "bad_ref_audio"),
    "custom_path_surrogate": (custom("voices/\udc80.wav", wrapped=True), ["error", "text"], "bad_ref_audio"),
    "voices_json_nul_path": (voice("nul"), ["error"], "bad_voices_config"),
    "audio_huge_channels": (audio([0.1, 0.2], 16000, channels=2**62), ["error"], "bad_channels"),
    "ref_audio_over_max_seconds": (voice("longref"), ["error"], "too_long"),
    "rate_7_hz": (audio([0.1] * 256, 7), ["error"], "bad_sample_rate"),
    "wav_header_2_ghz": (custom("MODELS/voices/fast.wav"), ["error", "text"], "bad_sample_rate"),
    "custom_m4a": (custom("MODELS/voices/clip.m4a"), ["error", "text"], "bad_ref_audio"),
    "good_text_at_the_end": (text("VOICE:aria|Still serving."), ["mel", "text"], None),
}


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile-events")
    library = copy_library(tmp)
    hostile_library(library)
    events = {name: json.loads(json.dumps(event).replace("MODELS", str(library["models"])))
              for name, (event, _, _) in CASES.items()}
    answers = {name: len(outputs) for name, (_, outputs, _) in CASES.items()}
    run = replay_cases(tmp, events, {**library["env"], "MAX_REF_SECONDS": "60"}, answers)
    return {**run, "library": library}


@pytest.mark.node
def test_every_case_is_answered_in_order_and_the_node_ends_cleanly(replay):
    expected = [output for _, outputs, _ in CASES.values() for output in outputs]
    assert [o["id"] for o in replay["outputs"]] == expected, replay["log"][-3000:]
    assert "Traceback" not in replay["log"] and "internal" not in replay["log"]


def first_output(replay, case: str) -> dict:
    return replay["cases"][case][0]


@pytest.mark.parametrize("case", [name for name, (_, _, code) in CASES.items() if code])
@pytest.mark.node
def test_case_answers_its_error(replay, case):
    body = json.loads(first_output(replay, case)["data"][0])
    assert body["error"] == CASES[case][2], body
    assert 20 < len(body["message"]) < 1000, body["message"][:2000]  # a long path is shown cut, once


@pytest.mark.node
def test_messages_name_the_fix(replay):
    messages = {name: json.loads(first_output(replay, name)["data"][0])["message"]
                for name, (_, _, code) in CASES.items() if code}
    assert "speed_factor" in messages["speed_factor_past_float"] and "VOICES_CONFIG" in messages["speed_factor_past_float"]
    assert "MAX_REF_SECONDS" in messages["ref_audio_over_max_seconds"]
    assert "NUL" in messages["custom_path_nul"] and "NUL" in messages["voices_json_nul_path"]
    assert "2000000000 Hz" in messages["wav_header_2_ghz"]
    assert "4000" in messages["rate_7_hz"]
    m4a = messages["custom_m4a"]
    assert "voices/clip.m4a" in m4a and "not in a format libsndfile reads" in m4a, m4a
    assert all(name in m4a for name in ("WAV", "FLAC", "OGG", "MP3")) and "BufferedReader" not in m4a, m4a


@pytest.mark.node
def test_a_2_ghz_header_allocates_nothing_big(replay):
    peak = float(re.search(r"peak RSS (\d+) MB", replay["log"]).group(1))
    assert peak < 1500, peak  # decoding and resampling that clip took 7.5 GiB


@pytest.mark.slow
@pytest.mark.node
def test_files_that_decode_large_are_refused_before_decoding(tmp_path, library):
    """Each of these took 520 MB to 1.1 GB of the node's memory (with MAX_REF_SECONDS=10; 5.9 GB at 60):
    rate, channels and length pass one by one, their product does not."""
    voices = library["models"] / "voices"
    with soundfile.SoundFile(str(voices / "wide.ogg"), "w", 192000, 64, format="OGG") as f:  # 9 KiB
        for _ in range(3):
            f.write(np.zeros((192000, 64), np.float32))
    with soundfile.SoundFile(str(voices / "deep.flac"), "w", 384000, 8, format="FLAC") as f:  # 29 KiB
        for _ in range(9):
            f.write(np.zeros((384000, 8), np.float32))
    huge_sparse_wav(voices / "sparse.wav", 9)  # 9 s of 32 channels at 384 kHz, 16 bits: 211 MiB
    env = {**library["env"], "MAX_REF_SECONDS": "10"}
    _, alone = run_node(tmp_path, [text("VOICE:aria|Still serving.")], env, name="alone")
    names = ["wide.ogg", "deep.flac", "sparse.wav"]
    events = [custom(str(voices / name)) for name in names] + [text("VOICE:aria|Still serving.")]
    outputs, log = run_node(tmp_path, events, env)
    assert [o["id"] for o in outputs] == ["error", "text"] * 3 + ["mel", "text"], log[-3000:]
    for name, error in zip(names, outputs[0:6:2], strict=True):
        body = json.loads(error["data"][0])
        assert body["error"] == "bad_ref_audio" and name in body["message"], body
        assert "channels at" in body["message"] and "MAX_REF_SECONDS=10" in body["message"], body
    peak = lambda text_: float(re.search(r"peak RSS (\d+) MB", text_).group(1))  # noqa: E731
    assert peak(log) < peak(alone) + 100, (peak(log), peak(alone))


@pytest.mark.node
def test_float16_overflow_is_an_error_not_inf(tmp_path, library):
    """float PCM at int16 scale: its float32 spectrogram is finite, its float16 one is not."""
    loud = (GOOD * 30000).astype(np.float32)
    events = [audio(loud, RATE), audio(loud, RATE), audio(GOOD, RATE)]
    outputs, _ = run_node(tmp_path, events, {**library["env"], "MEL_DTYPE": "float16"})
    assert [o["id"] for o in outputs] == ["error", "error", "mel"]  # the second is not served from the cache
    body = json.loads(outputs[0]["data"][0])
    assert body["error"] == "non_finite_audio" and "MEL_DTYPE=float32" in body["message"]


@pytest.mark.parametrize("startup", ["nul", "huge", "bigint"])
@pytest.mark.node
def test_a_broken_startup_voice_answers_an_error_and_the_node_serves_on(tmp_path, library, startup):
    hostile_library(library)
    outputs, log = run_node(tmp_path, [text("VOICE:aria|Hello.")], {**library["env"], "VOICE_CHARACTER": startup})
    assert [o["id"] for o in outputs] == ["error", "mel", "text"], log[-2000:]
    assert json.loads(outputs[0]["data"][0])["error"] == "bad_voices_config"


def test_precompute_writes_the_good_voices_beside_broken_entries(library):
    hostile_library(library)
    result = subprocess.run([str(BIN / "reference-mel"), "precompute"], env={**os.environ, **library["env"]},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert {p.name for p in library["codes_dir"].glob("*_mel.bin")} == {"aria_mel.bin", "basil_mel.bin",
                                                                        "cleo_mel.bin"}
    assert "too_long" in result.stdout and "speed_factor" in result.stdout


# -- through the service: what only metadata shows --------------------------------------------------


def answers(service, value: str, metadata: dict):
    return [o for o in service.handle("text", pa.array([value]), metadata) if o.output_id != "log"]


@pytest.mark.parametrize("request_id", [42, "", True])
def test_an_unusable_request_id_is_replaced_and_said_so_on_both(library, request_id):
    service = ReferenceMelService(Config.from_env(library["env"]))
    mel, forwarded = answers(service, "VOICE:aria|Hi.", {"request_id": request_id})
    assert mel.metadata["request_id"] == forwarded.metadata["request_id"] != request_id
    assert mel.metadata["request_id_generated"] is True and forwarded.metadata["request_id_generated"] is True


def test_an_internal_error_on_a_text_carries_the_texts_request_id(library, monkeypatch):
    service = ReferenceMelService(Config.from_env(library["env"]))
    monkeypatch.setattr(service, "_voice_request", lambda name: 1 / 0)  # a bug, wherever it may be
    error, forwarded = [o for o in service.answer({"id": "text", "value": pa.array(["VOICE:aria|Hi."]),
                                                   "metadata": {}}) if o.output_id != "log"]
    assert json.loads(error.value[0].as_py())["error"] == "internal"
    assert error.metadata["request_id"] == forwarded.metadata["request_id"]


def test_a_refused_text_carries_the_request_id_of_its_error(library):
    service = ReferenceMelService(Config.from_env(library["env"]))
    error, forwarded = answers(service, "VOICE:a broken switch without its bar", {})
    assert json.loads(error.value[0].as_py())["error"] == "bad_text"
    assert error.metadata["request_id"] == forwarded.metadata["request_id"]
    assert forwarded.metadata["request_id_generated"] is True


def test_custom_path_spellings_share_one_remembered_file(library):
    service = ReferenceMelService(Config.from_env(library["env"]))
    models = library["models"]
    for i in range(50):
        path = models / ("voices/../" * i + "voices/basil.wav")
        mel, _ = answers(service, f"VOICE:CUSTOM|{path}|Hello.|en|Hi.", {})
        assert mel.output_id == "mel"
    assert len(service.store._audio_digests) == 1


def test_unlisted_voices_written_back_are_bounded(library, monkeypatch):
    import dora_reference_mel.store.reference_store as store_module

    monkeypatch.setattr(store_module, "MAX_UNLISTED_VOICES", 3)
    service = ReferenceMelService(Config.from_env(library["env"]))
    clip = pa.array(GOOD[: RATE])
    states = []
    for i in range(5):
        samples = pa.array(np.asarray(clip) * (1 - i / 100))  # other samples each time: no cache hit
        out = service.handle("reference_audio", samples, {"sample_rate": RATE, "voice": f"new{i}"})
        states.append(out[0].metadata["write_back"])
    assert states == ["written"] * 3 + ["skipped"] * 2
    assert len({p.name.split("_")[0] for p in library["codes_dir"].glob("*_mel.json")}) == 3
    listed = service.handle("voice", pa.array(["cleo"]), {})  # a voice of voices.json is always written back
    assert listed[0].metadata["write_back"] == "written"


def test_float64_beyond_float32_is_named(library):
    service = ReferenceMelService(Config.from_env(library["env"]))
    out = service.handle("reference_audio", pa.array(np.full(16000, 1e300)), {"sample_rate": 16000})
    body = json.loads(out[0].value[0].as_py())
    assert body["error"] == "non_finite_audio" and "beyond float32's range" in body["message"]


def test_a_send_dora_refuses_becomes_an_error_and_the_text_still_goes(library):
    """Whatever makes dora's send raise, the outputs after it are still sent."""
    service = ReferenceMelService(Config.from_env(library["env"]))
    outputs = service.handle("text", pa.array(["VOICE:aria|Hi."]), {"request_id": "r1", "odd": "x"})
    calls = []

    def send(output_id, value, metadata):
        calls.append((output_id, dict(metadata)))
        if output_id == "mel" or "odd" in metadata:
            raise RuntimeError("could not convert metadata")

    counter = collections.Counter()
    send_outputs(send, outputs, counter)
    sent = [(output_id, metadata.get("error")) for output_id, metadata in calls]
    assert sent == [("mel", None), ("error", "internal"), ("text", None), ("text", None)]
    assert calls[-1][1] == {"request_id": "r1"} and counter == {"error": 1, "text": 1}


def test_texts_name_the_reference_to_speak_them_with(library):
    service = ReferenceMelService(Config.from_env({**library["env"], "VOICE_CHARACTER": "basil"}))
    startup = service.startup()[0].metadata["reference_id"]
    plain = answers(service, "Hello.", {})[-1]
    assert plain.metadata[REFERENCE_KEY] == startup
    mel, switched = answers(service, "VOICE:cleo|Hi.", {"request_id": "q1"})
    assert switched.metadata[REFERENCE_KEY] == mel.metadata["reference_id"] and mel.metadata["request_id"] == "q1"
    failed = answers(service, "VOICE:Nobody|Still Cleo.", {"request_id": "q2"})
    assert [o.output_id for o in failed] == ["error", "text"]
    assert failed[-1].metadata[REFERENCE_KEY] == mel.metadata["reference_id"]
    none = ReferenceMelService(Config.from_env(library["env"]))
    assert REFERENCE_KEY not in answers(none, "Hello.", {})[-1].metadata  # no reference yet: the TTS's own voice


def test_the_startup_reference_goes_again_before_the_first_text_spoken_with_it(library):
    """dora delivers a message sent before a receiver on another daemon has connected to no one, so the
    startup mel goes again, once, just before the first text that names it: the same events, the same
    reference_id. A first text that switches voice needs its own mel only; one whose switch fails is spoken
    with the startup reference, which goes again after the error."""
    env = {**library["env"], "VOICE_CHARACTER": "basil", "MEL_PRESET": "v2,v4"}
    service = ReferenceMelService(Config.from_env(env))
    startup = service.startup()
    first = answers(service, "Hello.", {"request_id": "t1"})
    assert [o.output_id for o in first] == ["mel", "mel", "text"]
    for again, sent in zip(first, startup, strict=False):
        assert again.metadata == sent.metadata and again.value.equals(sent.value)
    assert first[-1].metadata[REFERENCE_KEY] == startup[0].metadata["reference_id"]
    assert [o.output_id for o in answers(service, "Again.", {})] == ["text"]

    switching = ReferenceMelService(Config.from_env(env))
    switching.startup()
    own = answers(switching, "VOICE:cleo|Hi.", {"request_id": "t2"})
    assert [(o.output_id, o.metadata.get("voice")) for o in own] == [("mel", "cleo"), ("mel", "cleo"), ("text", None)]
    assert [o.output_id for o in answers(switching, "Hello.", {})] == ["text"]

    failing = ReferenceMelService(Config.from_env(env))
    startup = failing.startup()
    refused = answers(failing, "VOICE:Nobody|Hi.", {"request_id": "t3"})
    assert [o.output_id for o in refused] == ["error", "mel", "mel", "text"]
    assert refused[1].metadata["reference_id"] == startup[0].metadata["reference_id"] == refused[-1].metadata[REFERENCE_KEY]


def test_texts_sharing_one_request_id_each_name_their_own_switchs_reference(library):
    """One answer split into sentences under its request's id (as MoFA sends it), switching voices: each
    text names a reference of its own switch's voice, as a consumer keys them (decode_mel_event)."""
    service = ReferenceMelService(Config.from_env({**library["env"], "MEL_PRESET": "v2,v4"}))
    outputs = []
    for line in ("VOICE:basil|One.", "VOICE:cleo|Two.", "Three.", "VOICE:basil|Four.", "VOICE:Nobody|Five."):
        outputs += answers(service, line, {"request_id": "answer-1"})
    references = {}
    for out in outputs:
        if out.output_id == "mel":
            ref = decode_mel_event({"value": out.value, "metadata": out.metadata})
            assert ref.request_id == "answer-1"
            references.setdefault(ref.reference_id, set()).add(ref.voice)
    spoken = [references[o.metadata[REFERENCE_KEY]] for o in outputs if o.output_id == "text"]
    assert spoken == [{"basil"}, {"cleo"}, {"cleo"}, {"basil"}, {"basil"}]
    assert len(references) == 3  # one reference per served switch, both presets under it


def test_a_reference_request_id_a_text_arrives_with_is_never_forwarded(library):
    """Only this node names references: a key a text arrives with (from an upstream node, say) is removed
    while this node has sent none, and replaced once it has."""
    service = ReferenceMelService(Config.from_env(library["env"]))
    stale = {REFERENCE_KEY: "upstream-reference", "question_id": 4}
    [plain] = answers(service, "Hello.", stale)
    assert REFERENCE_KEY not in plain.metadata and plain.metadata["question_id"] == 4
    mel, switched = answers(service, "VOICE:basil|Hi.", stale)
    assert REFERENCE_KEY not in mel.metadata and switched.metadata[REFERENCE_KEY] == mel.metadata["reference_id"]
    assert answers(service, "Again.", stale)[-1].metadata[REFERENCE_KEY] == mel.metadata["reference_id"]


def test_a_restarted_node_comes_back_with_the_voice_it_last_switched_to(library, tmp_path, caplog):
    """What dora 1.1's restart_policy does to the node, through its service: the same node id and dataflow
    id come back with the last switched voice (named or CUSTOM); a new dataflow with the startup voice;
    a read-only store and MEL_WRITE_BACK=false with the startup voice and one log line."""
    env = {**library["env"], "VOICE_NAME": "aria"}
    run = ("reference-mel", "dataflow-1")

    def started(run=run, **extra):
        mel = ReferenceMelService(Config.from_env({**env, **extra}), run=run).startup()[0]
        assert mel.metadata["startup"] is True
        return mel.metadata.get("voice")

    first = ReferenceMelService(Config.from_env(env), run=run)
    first.startup()
    answers(first, "VOICE:basil|Hi.", {})
    answers(first, "VOICE:Nobody|A failed switch changes nothing.", {})
    answers(first, "Plain text too.", {})
    assert started() == "basil"
    assert started(run=("reference-mel", "dataflow-2")) == "aria" and started(run=("other-node", "dataflow-1")) == "aria"
    assert started(MEL_WRITE_BACK="0") == "aria"
    clip = library["models"] / "voices/cleo.wav"
    answers(first, f"VOICE:CUSTOM|{clip}|Custom prompt.|en|Hi.", {})
    assert started() == "CUSTOM"
    state = library["codes_dir"] / ".last-voice-reference-mel.state"
    assert [p for p in library["codes_dir"].iterdir() if p.name.startswith(".")] == [state]  # no temporary left
    state.unlink()
    state.mkdir()  # a store the node cannot write its state to (as root, permissions would not stop it)
    caplog.clear()
    answers(first, "VOICE:cleo|Not kept.", {})
    answers(first, "VOICE:basil|Not kept either.", {})
    assert sum("cannot keep the last voice" in r.message for r in caplog.records) == 1
    assert started() == "aria"


@pytest.mark.parametrize("setting, value", [("MAX_REF_SECONDS", "1e307"), ("MEL_CACHE_MB", "1e303"),
                                            ("MEL_DEVICE", "gpu")])
@pytest.mark.node
def test_an_absurd_setting_is_one_line_naming_it(tmp_path, library, setting, value):
    import mlx.core as mx

    if setting == "MEL_DEVICE" and mx.is_available(mx.gpu):
        pytest.skip("this machine has a GPU")
    env, _ = node_run_env(tmp_path, [], {**library["env"], setting: value})
    proc = subprocess.run([str(BIN / "dora-reference-mel")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"bad configuration [bad_config]: {setting}=" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.node
def test_the_node_forwards_the_texts_of_a_long_replay(tmp_path, library):
    """100 texts and a Stop: every text is forwarded, the ones after the switches too."""
    events = [text(f"VOICE:aria|t{i}" if i % 10 == 0 else f"t{i}") for i in range(100)]
    outputs, _ = run_node(tmp_path, events, library["env"])
    assert [o["data"][0] for o in outputs if o["id"] == "text"] == [e["data"][0] for e in events]


def test_every_custom_path_outside_the_roots_gets_one_answer(tmp_path, library):
    """Missing, outside, a link out, unresolvable: one refusal that says nothing of the machine's files."""
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(library["models"] / "voices/basil.wav", outside / "clip.wav")
    (library["models"] / "voices/out.wav").symlink_to(outside / "clip.wav")
    # Another process's folder: readlink is refused even to root here, so realpath raises PermissionError
    # (where this machine lets it be read, it is an outside path like the others)
    paths = [outside / "clip.wav", outside / "missing.wav", library["models"] / "voices/out.wav",
             "/proc/1/cwd/clip.wav"]
    service = ReferenceMelService(Config.from_env(library["env"]))
    messages = set()
    for path in paths:
        error = answers(service, f"VOICE:CUSTOM|{path}|Hello.|en|Hi.", {})[0]
        body = json.loads(error.value[0].as_py())
        assert body["error"] == "bad_ref_audio", body
        assert str(outside) not in body["message"].replace(str(path), "PATH"), body  # never where a link leads
        messages.add(body["message"].replace(str(path), "PATH"))
    assert len(messages) == 1, messages
    assert "REF_AUDIO_ROOTS" in messages.pop()
