"""Demo source: sends reference audio and voice events, and makes sure every request is answered.

dora can drop messages under load (dora-rs/dora#3397), so this node does not fire and forget: each
request carries a request_id, at most WINDOW requests are in flight, and a request with no answer
after RESEND_AFTER_S is sent again (up to MAX_SENDS times). The reference-mel node's cache makes a
re-sent request cheap, and consumers drop the duplicate answers by request_id.

Plans (SOURCE_PLAN):
  demo      every voice of voices.json as reference_audio, the first one again (cache hit), then one
            voice event by alias (the store path);
  soak:N    N events as fast as the window allows, good ones mixed with bad ones .
Exits 0 when every request was answered as expected, 1 otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import uuid

import numpy as np
import pyarrow as pa
import soundfile
from dora import Node

from dora_reference_mel.contract import ERROR_OUTPUT, MEL_OUTPUT


@dataclasses.dataclass
class Request:
    request_id: str
    output: str  # reference_audio or voice
    value: pa.Array
    metadata: dict
    expect: str  # "mel" or an error code
    sends: int = 0
    sent_at: float = 0.0
    answers: dict = dataclasses.field(default_factory=dict)  # preset -> output id


def load_voices(voices_json: str) -> list[tuple[str, np.ndarray, int]]:
    config = json.loads(open(voices_json).read())
    base = config.get("models_base_path") or os.environ.get("PRIMESPEECH_MODEL_DIR") or os.path.dirname(voices_json)
    voices = []
    for name, entry in config["voices"].items():
        samples, rate = soundfile.read(os.path.join(base, entry["ref_audio"]), dtype="float32", always_2d=True)
        voices.append((name, samples, rate))
    return voices


def audio_request(voice: str | None, samples: np.ndarray, rate: int, expect: str = "mel", **extra) -> Request:
    metadata = {"sample_rate": rate, "channels": samples.shape[1], **extra}
    if voice is not None:
        metadata["voice"] = voice
    return Request(uuid.uuid4().hex[:12], "reference_audio", pa.array(samples.reshape(-1)), metadata, expect)


def demo_plan(voices) -> list[Request]:
    plan = [audio_request(name, samples, rate) for name, samples, rate in voices]
    name, samples, rate = voices[0]
    plan.append(audio_request(name, samples, rate))  # the same samples again: served from the cache
    plan.append(Request(uuid.uuid4().hex[:12], "voice", pa.array([voices[1][0].title()]), {}, "mel"))
    return plan


def soak_plan(voices, count: int, seed: int = 7) -> list[Request]:
    """Good requests (voices, cropped clips) mixed with bad ones, each with the answer it must get."""
    rng = np.random.default_rng(seed)
    bad = [
        lambda: audio_request(None, np.zeros((0, 1), np.float32), 16000, "empty_audio"),
        lambda: audio_request(None, np.full((8000, 1), np.nan, np.float32), 16000, "non_finite_audio"),
        lambda: audio_request("../../etc/passwd", voices[0][1], voices[0][2], "bad_voice"),
        lambda: audio_request(None, voices[1][1], 0, "bad_sample_rate"),
        lambda: Request(uuid.uuid4().hex[:12], "voice", pa.array(["no-such-voice"]), {}, "unknown_voice"),
        lambda: Request(uuid.uuid4().hex[:12], "reference_audio", pa.array(["text"]), {"sample_rate": 16000},
                        "bad_dtype"),
    ]
    plan = []
    for i in range(count):
        if i % 4 == 3:
            plan.append(bad[int(rng.integers(len(bad)))]())
            continue
        name, samples, rate = voices[int(rng.integers(len(voices)))]
        start = int(rng.integers(0, rate))  # a different crop: a new spectrogram, not only cache hits
        plan.append(audio_request(name if i % 2 else None, samples[start:start + 4 * rate], rate))
    return plan


def main() -> int:
    voices = load_voices(os.environ.get("VOICES_CONFIG", "../models/voices.json"))
    plan_name = os.environ.get("SOURCE_PLAN", "demo")
    if plan_name == "demo":
        plan = demo_plan(voices)
    else:
        plan = soak_plan(voices, int(plan_name.split(":")[1]))
    presets = [p.strip() for p in os.environ.get("MEL_PRESET", "v2").split(",")]
    window = int(os.environ.get("WINDOW", "4"))
    resend_after = float(os.environ.get("RESEND_AFTER_S", "20"))
    max_sends = int(os.environ.get("MAX_SENDS", "5"))

    node = Node()
    by_id = {r.request_id: r for r in plan}
    queue, in_flight, resent, started = list(plan), {}, 0, time.perf_counter()
    while queue or in_flight:
        while queue and len(in_flight) < window:
            request = queue.pop(0)
            send(node, request)
            in_flight[request.request_id] = request
        now = time.monotonic()
        for request in list(in_flight.values()):
            if now - request.sent_at > resend_after:
                if request.sends >= max_sends:
                    print(f"voice-source: {request.request_id} unanswered after {max_sends} sends", file=sys.stderr)
                    return 1
                resent += 1
                send(node, request)
        event = node.next(timeout=0.05)
        if event is None or event["type"] == "STOP":
            break
        if event["type"] != "INPUT" or event["id"] not in (MEL_OUTPUT, ERROR_OUTPUT):
            continue
        request = by_id.get(event["metadata"].get("request_id"))
        if request is None:
            continue
        # An error about the event itself carries no preset: it answers every preset at once.
        for preset in [event["metadata"]["preset"]] if "preset" in event["metadata"] else presets:
            request.answers[preset] = event["metadata"].get("error", event["id"])
        if all(p in request.answers for p in presets):
            in_flight.pop(request.request_id, None)

    wrong = [(r.request_id, r.expect, r.answers) for r in plan if set(r.answers.values()) != {r.expect}]
    seconds = time.perf_counter() - started
    print(f"voice-source: {len(plan)} requests answered in {seconds:.1f} s, {resent} re-sent, "
          f"{len(wrong)} with an unexpected answer")
    for item in wrong[:10]:
        print(f"voice-source: unexpected answer {item}", file=sys.stderr)
    return 1 if wrong or queue or in_flight else 0


def send(node: Node, request: Request) -> None:
    request.sends += 1
    request.sent_at = time.monotonic()
    metadata = dict(request.metadata, request_id=request.request_id, sent_at=time.time())
    node.send_output(request.output, request.value, metadata)


if __name__ == "__main__":
    sys.exit(main())
