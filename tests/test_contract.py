"""The consumer helper (dora_reference_mel.contract) on real node outputs, and its validator."""

import json

import numpy as np
import pyarrow as pa
import pytest

from dora_reference_mel.config import Config
from dora_reference_mel.contract import (
    ContractError,
    VoiceSwitch,
    decode_error_event,
    decode_mel_event,
    parse_voice_switch,
)
from dora_reference_mel.node.service import ReferenceMelService
from helpers import speech


@pytest.fixture
def answers(library):
    service = ReferenceMelService(Config.from_env({**library["env"], "MEL_PRESET": "v2,v3,v4"}))
    samples, rate = speech("mono", 48000)
    long_clip = np.tile(samples, 4)  # 10 s: longer than the v3/v4 prompt windows
    outputs = service.handle("reference_audio", pa.array(long_clip), {"sample_rate": rate, "voice": "aria",
                                                                      "request_id": "q1", "question_id": 3})
    error = service.handle("reference_audio", pa.array([], pa.float32()), {"sample_rate": 16000, "request_id": "q2"})
    return {o.metadata["preset"]: {"id": "reference", "value": o.value, "metadata": o.metadata} for o in outputs}, \
        {"id": "error", "value": error[0].value, "metadata": error[0].metadata}


def test_decode_gives_model_ready_tensors(answers):
    mels, _ = answers
    ref = decode_mel_event(mels["v2"])
    assert ref.spectrogram.shape == (1, 704, 500) and ref.spectrogram.dtype == np.float32
    assert ref.codes.shape == (1, 1, 500) and ref.codes.dtype == np.int64
    assert (ref.preset, ref.voice, ref.source, ref.request_id) == ("v2", "aria", "computed", "q1")
    assert ref.metadata["question_id"] == 3
    arrow_buffer = mels["v2"]["value"].buffers()[1]
    assert ref.spectrogram.ctypes.data == arrow_buffer.address  # zero-copy
    assert not ref.spectrogram.flags.writeable


def test_prompt_mel_is_trimmed_like_upstream(answers):
    mels, _ = answers
    v3, v4 = decode_mel_event(mels["v3"]), decode_mel_event(mels["v4"])
    assert v3.spectrogram.shape == (1, 100, 937) and v3.prompt_mel().shape == (1, 100, 468)
    assert v4.spectrogram.shape == (1, 100, 1000) and v4.prompt_mel().shape == (1, 100, 500)
    np.testing.assert_array_equal(v4.prompt_mel(), v4.spectrogram[:, :, -500:])
    with pytest.raises(ContractError, match="only v3 and v4"):
        decode_mel_event(mels["v2"]).prompt_mel()


def test_error_events_decode(answers):
    _, error = answers
    body = decode_error_event(error)
    assert body["error"] == "empty_audio" and body["request_id"] == "q2"


@pytest.mark.parametrize("breakage, message", [
    (lambda e: e["metadata"].pop("shape"), "metadata shape is missing"),
    (lambda e: e["metadata"].update(shape=[704, 500]), "must be [1, n_bins, n_frames]"),
    (lambda e: e["metadata"].update(shape=[1, 704, 499]), "holds 352000 values"),
    (lambda e: e["metadata"].update(source="disk"), "source='disk'"),
    (lambda e: e["metadata"].update(elapsed_ms="fast"), "elapsed_ms='fast' must be float"),
    (lambda e: e["metadata"].update(codes=[1.5, 2.0]), "codes=[1.5, 2.0] must be list[int]"),
    (lambda e: e.update(value=pa.array(np.zeros(352000), pa.float64())), "dense Arrow float32"),
    (lambda e: e.update(value=pa.array(np.full(352000, np.nan, np.float32))), "NaN or Inf"),
])
def test_validator_rejects_broken_events(answers, breakage, message):
    event = dict(answers[0]["v2"], metadata=dict(answers[0]["v2"]["metadata"]))
    breakage(event)
    with pytest.raises(ContractError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        decode_mel_event(event)


def test_contract_survives_dora_metadata_types(answers):
    """Every metadata value is of a type dora carries as such (no dicts, None, numpy scalars)."""
    mels, error = answers
    for metadata in [m["metadata"] for m in mels.values()] + [error["metadata"]]:
        for key, value in metadata.items():
            ok = isinstance(value, (bool, int, float, str)) or (
                isinstance(value, list) and value and len({type(v) for v in value}) == 1
                and type(value[0]) in (int, float, str))
            assert ok, (key, value)
    json.loads(error["value"][0].as_py())


@pytest.mark.parametrize("line, switch", [
    ("VOICE:Luo Xiang |你好", VoiceSwitch("Luo Xiang", "你好")),
    # MoFA's and Moxin-Voice's field order: dora-primespeech's main.py splits CUSTOM into 4, TRAINED into 6
    ("VOICE:CUSTOM|/v/ref.wav||zh|a|b", VoiceSwitch("CUSTOM", "a|b", "/v/ref.wav", "", "zh")),
    ("VOICE:TRAINED|/m/gpt.ckpt|/m/sovits.pth| /v/ref.wav |你好。|zh|a|b",
     VoiceSwitch("TRAINED", "a|b", "/v/ref.wav", "你好。", "zh", sovits_weights="/m/sovits.pth")),
    ('{"prompt": "VOICE:TRAINED|g||r.wav|p|en|t", "speed": 1.2}', VoiceSwitch("TRAINED", "t", "r.wav", "p", "en")),
    ("plain text", None),
])
def test_voice_switches_are_read_in_upstreams_field_order(line, switch):
    assert parse_voice_switch(line) == switch
