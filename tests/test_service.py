"""The node's behaviour in-process (the same ReferenceMelService the node and operator run)."""

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest
import soundfile

import oracle
from dora_reference_mel.config import Config
from dora_reference_mel.contract import REFERENCE_KEY, decode_mel_event
from dora_reference_mel.node.service import ReferenceMelService
from helpers import ROOT, run_node, speech


def service(library, **env):
    return ReferenceMelService(Config.from_env({**library["env"], **{k: str(v) for k, v in env.items()}}))


def audio_event(samples, rate, **metadata):
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    return pa.array(samples.reshape(-1)), {"sample_rate": rate, "channels": channels, **metadata}


def aria(library):
    samples, rate = soundfile.read(str(library["models"] / "voices/aria.wav"), dtype="float32")
    return samples, rate


def answers(outputs):
    return [o for o in outputs if o.output_id != "log"]


def only(outputs, output_id="mel"):
    """The one answer among the outputs; every error and warning also has its MoFA `log` line."""
    logs = [json.loads(o.value[0].as_py()) for o in outputs if o.output_id == "log"]
    outputs = [o for o in outputs if o.output_id != "log"]
    assert len(outputs) == 1, outputs
    if output_id == "error":
        assert [line["level"] for line in logs][:1] == ["ERROR"] and outputs[0].metadata["error"] in logs[0]["message"]
    assert outputs[0].output_id == output_id, outputs[0].value
    return outputs[0]


def test_computed_then_cache_then_precomputed_after_restart(library):
    samples, rate = aria(library)
    node = service(library)
    first = only(node.handle("reference_audio", *audio_event(samples, rate, voice="aria", request_id="r1",
                                                              question_id=7, session_status="started")))
    meta = first.metadata
    assert meta["source"] == "computed" and meta["shape"] == [1, 704, 500] and meta["write_back"] == "written"
    assert meta["request_id"] == "r1" and meta["question_id"] == 7 and meta["session_status"] == "started"
    assert meta["voice"] == "aria" and len(meta["codes"]) == 500 and meta["dtype"] == "float32"
    assert (meta["preset"], meta["sample_rate"], meta["n_fft"], meta["hop_length"]) == ("v2", 32000, 2048, 640)
    spectrogram = first.value.to_numpy().reshape(meta["shape"])
    assert np.abs(spectrogram - oracle.reference_feature(samples, rate)).max() <= 1e-3
    assert (library["codes_dir"] / "aria_mel.bin").stat().st_size == 704 * 500 * 4

    again = only(node.handle("reference_audio", *audio_event(samples, rate, voice="aria")))
    assert again.metadata["source"] == "cache"
    np.testing.assert_array_equal(again.value.to_numpy(), first.value.to_numpy())

    restarted = service(library)
    third = only(restarted.handle("reference_audio", *audio_event(samples, rate, voice="aria")))
    assert third.metadata["source"] == "precomputed"
    np.testing.assert_array_equal(third.value.to_numpy(), first.value.to_numpy())


def test_request_id_generated_when_absent(library):
    samples, rate = speech("mono", 16000)
    meta = only(service(library).handle("reference_audio", *audio_event(samples, rate))).metadata
    assert meta["request_id_generated"] is True and len(meta["request_id"]) == 32
    assert "voice" not in meta and "codes" not in meta


def test_int16_and_float_of_the_same_audio_share_the_cache(library):
    as_int, rate = speech("stereo", 22050, dtype="int16")
    node = service(library)
    assert only(node.handle("reference_audio", *audio_event(as_int, rate))).metadata["source"] == "computed"
    as_float = as_int.astype(np.float32) / 32768
    assert only(node.handle("reference_audio", *audio_event(as_float, rate))).metadata["source"] == "cache"


def test_voice_event_paths(library):
    node = service(library)
    first = only(node.handle("voice", pa.array(["Aria Demo"]), {"request_id": "v1"}))
    assert first.metadata["source"] == "computed" and first.metadata["voice"] == "aria"
    assert only(node.handle("voice", pa.array(["aria"]), {})).metadata["source"] == "cache"
    restarted = service(library)
    assert only(restarted.handle("voice", pa.array(["aria"]), {})).metadata["source"] == "precomputed"
    cleo = only(restarted.handle("voice", pa.array(["cleo"]), {})).metadata
    assert cleo["codes_status"] == "missing" and "codes" not in cleo


def test_voice_event_and_its_audio_share_the_cache_in_either_order(library):
    """dora may deliver the `voice` and `reference_audio` inputs in either order: the second of the two
    is a cache hit both ways, also when the stored file is proven by the audio file's stamp."""
    samples, rate = aria(library)
    only(service(library).handle("voice", pa.array(["aria"]), {}))  # stores aria with its file's stamp
    for order in (("reference_audio", "voice"), ("voice", "reference_audio")):
        restarted = service(library)
        events = {"reference_audio": audio_event(samples, rate, voice="aria"), "voice": (pa.array(["aria"]), {})}
        sources = [only(restarted.handle(kind, *events[kind])).metadata["source"] for kind in order]
        assert sources == ["precomputed", "cache"], order


def test_voice_audio_changed_is_recomputed(library):
    node = service(library)
    only(node.handle("voice", pa.array(["basil"]), {}))
    wav = library["models"] / "voices/basil.wav"
    samples, rate = soundfile.read(str(wav), dtype="float32")
    soundfile.write(str(wav), samples[: rate * 4], rate)  # the user replaced the reference clip
    for fresh in (node, service(library)):
        out = only(fresh.handle("voice", pa.array(["basil"]), {}))
        assert out.metadata["source"] in ("computed", "precomputed")
        assert out.metadata["shape"] == [1, 704, 4 * 32000 // 640]


def test_stale_sidecar_is_recomputed_and_rewritten(library):
    samples, rate = aria(library)
    only(service(library).handle("reference_audio", *audio_event(samples, rate, voice="aria")))
    sidecar_path = library["codes_dir"] / "aria_mel.json"
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["fingerprint"] = "0000000000000000"  # made by another recipe
    sidecar_path.write_text(json.dumps(sidecar))
    out = only(service(library).handle("reference_audio", *audio_event(samples, rate, voice="aria")))
    assert out.metadata["source"] == "computed" and out.metadata["write_back"] == "written"
    assert json.loads(sidecar_path.read_text())["fingerprint"] == out.metadata["fingerprint"]


def test_truncated_file_is_recomputed_served_and_repaired(library, caplog):
    samples, rate = aria(library)
    first = only(service(library).handle("reference_audio", *audio_event(samples, rate, voice="aria")))
    path = library["codes_dir"] / "aria_mel.bin"
    path.write_bytes(path.read_bytes()[:1000])
    out = only(service(library).handle("voice", pa.array(["aria"]), {}))
    assert out.metadata["source"] == "computed"
    np.testing.assert_array_equal(out.value.to_numpy(), first.value.to_numpy())
    assert path.stat().st_size == 704 * 500 * 4
    assert "bytes" in caplog.text and "recomputing" in caplog.text
    assert only(service(library).handle("voice", pa.array(["aria"]), {})).metadata["source"] == "precomputed"


def test_unwritable_store_still_serves(library, caplog):
    """A codes dir that cannot be created or written (as root, chmod would not stop writes)."""
    blocker = library["codes_dir"].parent / "not-a-dir"
    blocker.write_text("x")
    node = service(library, CODES_DIR=blocker / "codes")
    samples, rate = speech("mono", 48000)
    for i in range(2):
        out = only(node.handle("reference_audio", *audio_event(samples[i:], rate, voice="aria")))
        assert out.metadata["write_back"] == "failed" and out.metadata["source"] == "computed"
    assert caplog.text.count("cannot write precomputed spectrograms") == 1  # logged once, not per event


def test_write_back_off(library):
    samples, rate = speech("mono", 48000)
    out = only(service(library, MEL_WRITE_BACK=0).handle("reference_audio", *audio_event(samples, rate, voice="x")))
    assert out.metadata["write_back"] == "off" and os.listdir(library["codes_dir"]) == []


def test_error_then_next_event_is_served(library):
    node = service(library)
    bad = only(node.handle("reference_audio", pa.array([], pa.float32()), {"sample_rate": 16000, "request_id": "b"}),
               "error")
    body = json.loads(bad.value[0].as_py())
    assert body["error"] == "empty_audio" and "3 to 10 s" in body["message"]
    assert bad.metadata["request_id"] == "b" and bad.metadata["error"] == "empty_audio"
    samples, rate = speech("mono", 24000)
    assert only(node.handle("reference_audio", *audio_event(samples, rate))).metadata["source"] == "computed"


def test_several_presets_answer_each_input(library):
    node = service(library, MEL_PRESET="v2,v4")
    samples, rate = speech("stereo", 44100)
    first = answers(node.handle("reference_audio", *audio_event(samples, rate, voice="cleo")))
    assert [o.metadata["preset"] for o in first] == ["v2", "v4"]
    assert first[1].metadata["n_mels"] == 100 and first[1].metadata["shape"][1] == 100
    assert (library["codes_dir"] / "cleo_mel_v4.bin").exists() and (library["codes_dir"] / "cleo_mel.bin").exists()
    again = answers(node.handle("reference_audio", *audio_event(samples, rate, voice="cleo")))
    assert [o.metadata["source"] for o in again] == ["cache", "cache"]


def event_of(output) -> dict:
    """An Output as the consumer's dora event: what decode_mel_event reads."""
    return {"id": output.output_id, "value": output.value, "metadata": output.metadata}


def test_v2pro_gets_v2_and_sv_per_switch_stored_and_served_again(library):
    """MEL_PRESET=v2,sv: v2Pro's two reference inputs per voice switch; sv frames first, stored as such."""
    node = service(library, MEL_PRESET="v2,sv")
    samples, rate = soundfile.read(str(library["models"] / "voices/cleo.wav"), dtype="float32")  # its ref_audio
    first = answers(node.handle("reference_audio", *audio_event(samples, rate, voice="cleo")))
    assert [o.metadata["preset"] for o in first] == ["v2", "sv"]
    assert [o.metadata["layout"] for o in first] == ["bins_frames", "frames_bins"]
    sv = decode_mel_event(event_of(first[1]))
    n_frames = 1 + (-(-samples.shape[0] * 16000 // rate) - 400) // 160
    assert sv.layout == "frames_bins" and sv.spectrogram.shape == (1, n_frames, 80)
    assert (sv.metadata["sample_rate"], sv.metadata["n_fft"], sv.metadata["hop_length"], sv.metadata["n_mels"]) == \
        (16000, 512, 160, 80)
    assert np.abs(sv.spectrogram - oracle.reference_feature(samples, rate, "sv")).max() <= 2e-3
    sidecar = json.loads((library["codes_dir"] / "cleo_mel_sv.json").read_text())
    assert sidecar["shape"] == [n_frames, 80] and sidecar["layout"] == "C-order frames_bins, little-endian"
    assert (library["codes_dir"] / "cleo_mel_sv.bin").stat().st_size == n_frames * 80 * 4
    again = answers(service(library, MEL_PRESET="v2,sv").handle("voice", pa.array(["cleo"]), {}))
    assert [o.metadata["source"] for o in again] == ["precomputed", "precomputed"]
    np.testing.assert_array_equal(decode_mel_event(event_of(again[1])).spectrogram, sv.spectrogram)


def test_float16_output_is_float32_rounded_once(library):
    """MEL_DTYPE=float16 sends what GPT-SoVITS's half-precision path would cast: the float32 result, rounded."""
    samples, rate = aria(library)
    wide = answers(service(library, MEL_PRESET="v2,v4,sv").handle("reference_audio", *audio_event(samples, rate)))
    half_node = service(library, MEL_PRESET="v2,v4,sv", MEL_DTYPE="float16")
    for source in ("computed", "cache"):
        half = answers(half_node.handle("reference_audio", *audio_event(samples, rate)))
        assert [h.metadata["source"] for h in half] == [source] * 3
        for h, w in zip(half, wide, strict=True):
            decoded = decode_mel_event(event_of(h))
            assert h.metadata["dtype"] == "float16" and decoded.spectrogram.dtype == np.float16
            assert h.value.nbytes * 2 == w.value.nbytes
            expected = decode_mel_event(event_of(w)).spectrogram
            np.testing.assert_array_equal(decoded.spectrogram, expected.astype(np.float16))


def test_missing_voices_json_and_codes_dir(library, tmp_path):
    shutil.rmtree(library["codes_dir"])
    node = service(library, VOICES_CONFIG=tmp_path / "absent.json")
    samples, rate = speech("mono", 16000)
    out = only(node.handle("reference_audio", *audio_event(samples, rate, voice="newvoice")))
    assert out.metadata["write_back"] == "written" and (library["codes_dir"] / "newvoice_mel.bin").exists()
    err = only(node.handle("voice", pa.array(["nobody"]), {}), "error")
    assert json.loads(err.value[0].as_py())["error"] == "unknown_voice"


def test_hand_edited_sidecar_stamp_is_not_an_internal_error(library):
    """A sidecar whose source_audio someone edited is not one this package wrote: refused, recomputed, repaired."""
    only(service(library).handle("voice", pa.array(["basil"]), {}))
    sidecar_path = library["codes_dir"] / "basil_mel.json"
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["source_audio"] = {"bogus": 1}
    sidecar_path.write_text(json.dumps(sidecar))
    out = only(service(library).handle("voice", pa.array(["basil"]), {}))
    assert out.metadata["source"] == "computed" and out.metadata["write_back"] == "written"
    assert only(service(library).handle("voice", pa.array(["basil"]), {})).metadata["source"] == "precomputed"


def test_audio_sent_again_keeps_its_warnings_and_bad_audio_is_never_remembered(library):
    """The same float32 samples sent again are hashed, not scanned again: their warnings still come
    with every answer, cached or computed; samples that failed a check fail every time."""
    samples, rate = speech("mono", 16000)
    loud = (samples[: rate * 2] * 4.0).astype(np.float32)  # 2 s (outside 3..10 s), peak far above 1
    for cache_mb in (64, 0):
        node = service(library, MEL_CACHE_MB=cache_mb)
        answers_ = [only(node.handle("reference_audio", *audio_event(loud, rate))) for _ in range(2)]
        assert [a.metadata["source"] for a in answers_] == ["computed", "cache" if cache_mb else "computed"]
        assert answers_[0].metadata["warnings"] == answers_[1].metadata["warnings"]
        assert len(answers_[0].metadata["warnings"]) == 2
        np.testing.assert_array_equal(answers_[0].value.to_numpy(), answers_[1].value.to_numpy())
    bad = loud.copy()
    bad[5] = np.nan
    node = service(library)
    for _ in range(2):
        assert only(node.handle("reference_audio", *audio_event(bad, rate)), "error").metadata["error"] == "non_finite_audio"


# -- MoFA's and Moxin-Voice's VOICE:CUSTOM and VOICE:TRAINED texts -----------------------------------------

SOVITS = "models/sovits_final.safetensors"
TRAINED_PROMPT = "大家好，我是你的新声音。"


def moxin_home(tmp_path) -> dict:
    """$HOME as Moxin-Voice leaves it: a recorded voice in ~/.dora/primespeech/custom_voices/<id>/ref.wav
    (apps/moxin-voice/src/voice_persistence.rs), a trained one in ~/.dora/primespeech/trained_models/<id>/
    with its reference_32k.wav beside models/ (node-hub/dora-primespeech-mlx/src/fewshot_trainer.rs)."""
    home = tmp_path / "home"
    recorded = home / ".dora/primespeech/custom_voices/my_voice_1712345678_ab12/ref.wav"
    trained = home / ".dora/primespeech/trained_models/pro_voice_1712345999_cd34"
    recorded.parent.mkdir(parents=True)
    (trained / "models").mkdir(parents=True)
    shutil.copy(ROOT / "models/voices/basil.wav", recorded)
    shutil.copy(ROOT / "models/voices/aria.wav", trained / "reference_32k.wav")
    (trained / SOVITS).write_bytes(b"trained weights: the TTS node reads them, this node never does")
    return {"home": home, "recorded": recorded, "trained": trained}


def trained_line(moxin, ref_audio=None, tail="|zh|今天天气很好。") -> str:
    """Moxin-Voice's VOICE:TRAINED|<gpt>|<sovits>|<ref_audio>|<prompt_text>|<lang>|<text> (screen.rs)."""
    gpt = moxin["home"] / ".OminiX/models/gpt-sovits-mlx/voices/Doubao/gpt.safetensors"
    ref_audio = ref_audio or moxin["trained"] / "reference_32k.wav"
    return f"VOICE:TRAINED|{gpt}|{moxin['trained'] / SOVITS}|{ref_audio}|{TRAINED_PROMPT}{tail}"


def test_custom_and_trained_texts_are_served_from_moxin_voices_folders_by_default(tmp_path, library, monkeypatch):
    moxin = moxin_home(tmp_path)
    monkeypatch.setenv("HOME", str(moxin["home"]))
    node = service(library)  # REF_AUDIO_ROOTS unset: its default
    custom = answers(node.handle("text", pa.array([f"VOICE:CUSTOM|{moxin['recorded']}|Hello there.|en|Hi."]), {}))
    assert [o.output_id for o in custom] == ["mel", "text"], custom[0].value
    meta = custom[0].metadata
    assert (meta["voice"], meta["ref_text"], meta["prompt_lang"], meta["shape"]) == ("CUSTOM", "Hello there.", "en",
                                                                                     [1, 704, 295])
    line = trained_line(moxin, tail="|zh|今天天气很好。|第二句")  # the text to speak may hold '|'
    trained = answers(node.handle("text", pa.array([line]), {"request_id": "t1", "question_id": 4}))
    assert [o.output_id for o in trained] == ["mel", "text"], trained[0].value
    meta = trained[0].metadata
    assert (meta["voice"], meta["ref_text"], meta["prompt_lang"]) == ("TRAINED", TRAINED_PROMPT, "zh")
    assert meta["sovits_weights"] == str(moxin["trained"] / SOVITS) and meta["question_id"] == 4
    assert meta["codes_status"] == "missing" and "codes" not in meta and meta["request_id"] == "t1"
    samples, rate = aria(library)
    spectrogram = decode_mel_event({"value": trained[0].value, "metadata": meta}).spectrogram
    assert np.abs(spectrogram - oracle.reference_feature(samples, rate)).max() <= 1e-3
    assert trained[1].value.to_pylist() == [line] and trained[1].metadata[REFERENCE_KEY] == meta["reference_id"]


@pytest.mark.parametrize("kind, code, message", [
    ("five fields", "bad_text", "is not VOICE:TRAINED|<gpt_weights>|<sovits_weights>|<ref_audio>|<prompt_text>|<lang>|"
                                "<text> (6 fields, ref_audio not empty)"),
    ("blank ref_audio", "bad_text", "(6 fields, ref_audio not empty)"),
    ("lone surrogate", "bad_text", "the VOICE:TRAINED prompt text '\\ud800' is not valid Unicode"),
    ("outside the roots", "bad_ref_audio", "REF_AUDIO_ROOTS"),
    ("missing clip", "bad_ref_audio", "does not exist"),
])
def test_a_broken_trained_text_answers_why_and_goes_on_with_the_voice_before(tmp_path, library, monkeypatch, kind,
                                                                             code, message):
    moxin = moxin_home(tmp_path)
    monkeypatch.setenv("HOME", str(moxin["home"]))
    outside = tmp_path / "elsewhere.wav"
    shutil.copy(ROOT / "models/voices/basil.wav", outside)
    line = {"five fields": trained_line(moxin, tail="|zh"),
            "blank ref_audio": trained_line(moxin, ref_audio=" "),
            "lone surrogate": json.dumps({"prompt": trained_line(moxin).replace(TRAINED_PROMPT, "\ud800")}),
            "outside the roots": trained_line(moxin, ref_audio=outside),
            "missing clip": trained_line(moxin, ref_audio=moxin["trained"] / "reference_48k.wav")}[kind]
    node = service(library)
    good = answers(node.handle("text", pa.array([trained_line(moxin)]), {"request_id": "good"}))
    assert [o.output_id for o in good] == ["mel", "text"]
    error, forwarded = answers(node.handle("text", pa.array([line]), {"request_id": "bad"}))
    body = json.loads(error.value[0].as_py())
    assert (error.output_id, body["error"]) == ("error", code) and message in body["message"], body
    assert forwarded.value.to_pylist() == [line] and forwarded.metadata["request_id"] == "bad"
    assert forwarded.metadata[REFERENCE_KEY] == good[0].metadata["reference_id"]  # the voice before, as upstream


@pytest.mark.slow
@pytest.mark.node
def test_the_node_process_serves_moxin_voices_texts_with_its_default_folders(tmp_path, monkeypatch):
    """The real node in dora's test mode, configured by nothing but $HOME, as Moxin-Voice's users run it."""
    moxin = moxin_home(tmp_path)
    for name in ("PRIMESPEECH_MODEL_DIR", "CODES_DIR", "VOICES_CONFIG", "REF_AUDIO_ROOTS", "VOICE_CHARACTER",
                 "VOICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    lines = [f"VOICE:CUSTOM|{moxin['recorded']}|Hello there.|en|Hi.",
             json.dumps({"prompt": trained_line(moxin), "speed": 1.1, "pitch": 0.0, "volume": 100.0},
                        ensure_ascii=False)]  # as screen.rs sends it
    events = [{"type": "Input", "id": "text", "data": [line], "data_type": "Utf8"} for line in lines]
    outputs, log = run_node(tmp_path, events, {"HOME": str(moxin["home"])})
    assert [o["id"] for o in outputs] == ["mel", "text", "mel", "text"], log[-3000:]
    assert [o["data"] for o in outputs[1::2]] == [[line] for line in lines]
    assert "mel voice=CUSTOM preset=v2 source=computed shape=[1, 704, 295]" in log
    assert "mel voice=TRAINED preset=v2 source=computed shape=[1, 704, 500]" in log


def test_a_short_references_warning_comes_with_every_serving(library):
    """Computed, then from the cache, then (a restart) from the store, then its samples sent as audio:
    each `mel` carries the reference's duration warning, and each answer says it on `log`."""
    samples, rate = aria(library)
    soundfile.write(str(library["models"] / "voices/short.wav"), samples[:int(2.9 * rate)], rate)
    voices = json.loads(library["voices"].read_text())
    voices["voices"]["short"] = {"ref_audio": "voices/short.wav", "ref_text": "Short."}
    library["voices"].write_text(json.dumps(voices))
    wanted = "duration 2.90 s is outside GPT-SoVITS's 3 to 10 s reference range"

    def told(outputs):
        (mel,) = [o for o in outputs if o.output_id == "mel"]
        logs = [json.loads(o.value[0].as_py())["message"] for o in outputs if o.output_id == "log"]
        assert mel.metadata.get("warnings") == [wanted] and logs == [wanted], (mel.metadata, logs)
        return mel.metadata["source"]

    first, restarted = service(library), service(library)
    assert [told(first.handle("voice", pa.array(["short"]), {})) for _ in range(2)] == ["computed", "cache"]
    assert told(restarted.handle("voice", pa.array(["short"]), {})) == "precomputed"
    short, _ = soundfile.read(str(library["models"] / "voices/short.wav"), dtype="float32")
    assert told(restarted.handle("reference_audio", *audio_event(short, rate))) == "cache"
