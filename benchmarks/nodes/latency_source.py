"""Measures event-to-output latency (send to answer, in this process) for each way the node serves,
interleaved with the pass-through node as the transport floor. Writes rows to $BENCH_RESULT."""

import json
import os
import random
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import soundfile
from dora import Node

VOICE = Path(os.environ.get("BENCH_VOICE", "aria.wav"))
N = int(os.environ.get("BENCH_REQUESTS", "60"))


def answer_bytes(metadata: dict) -> int:
    return int(np.prod(metadata["shape"])) * (2 if metadata["dtype"] == "float16" else 4)


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # the clock benchmarks/nodes/hop_timer.py stamps with


def main():
    samples, rate = soundfile.read(str(VOICE), dtype="float32")
    node = Node()
    stamps = {}  # request_id -> [row, send_start, send_end, answer received] in ns, for the hop breakdown

    def ask(output, value, row=None, **metadata):
        request_id = uuid.uuid4().hex
        value = pa.array(value)
        start = now_ns()
        node.send_output(output, value, {"sample_rate": rate, "request_id": request_id, **metadata})
        sent = now_ns()
        while True:
            event = node.next(timeout=120)
            if event is None or event["type"] != "INPUT":
                raise SystemExit(f"no answer to {output}: {event}")
            if event["metadata"].get("request_id") == request_id:
                received = now_ns()
                assert event["id"] != "error", event["value"]
                if row is not None:
                    stamps[request_id] = [row, start, sent, received]
                return (received - start) / 1e6, event["metadata"]

    first_transport = ask("to_passthrough", samples)[0]  # the transport's own first message, for comparison
    time.sleep(3.0)  # and the mel nodes have finished their warm-up (they log "ready")
    rows, floor, dtype_out = [], {"audio": [], "voice": [], "audio, read": [], "voice, same answer": []}, {}
    first, answer = ask("to_cached", np.roll(samples, 1))
    assert answer["source"] == "computed"
    first_node_ms = answer["elapsed_ms"]  # the node's own share of the first event
    voice = ["aria"]
    # (row, output, value per request, metadata, source expected, floor: a request of the same size in)
    phases = [("computed", "to_cached", lambda i: np.roll(samples, 1000 + i), {}, "computed", "audio"),
              ("cache", "to_cached", lambda i: samples, {}, "cache", "audio"),
              ("precomputed", "to_nocache", lambda i: samples, {"voice": "aria"}, "precomputed", "audio"),
              ("voice, cache", "to_cached_voice", lambda i: voice, {}, "cache", "voice"),
              ("voice, store", "to_nocache_voice", lambda i: voice, {}, "precomputed", "voice"),
              ("cache, float16", "to_half", lambda i: samples, {}, "cache", "audio")]
    for _, output, value, metadata, _, _ in phases:
        ask(output, value(-1), **metadata)  # a first request of each kind (cache phases: fills the cache)
    latencies = {name: [] for name, *_ in phases}
    in_node = {name: [] for name, *_ in phases}
    floor_asks = {"audio": ("to_passthrough", samples), "audio, read": ("to_passthrough_read", samples),
                  "voice": ("to_passthrough", voice),
                  # the same answer: the node's bytes and a named voice's metadata (codes, ref_text, ...)
                  "voice, same answer": ("to_passthrough_voice", voice)}
    round_asks = [("node", phase) for phase in phases]
    for *_, kind in phases:  # each request's floors: the plain one and its peer (reading, same answer)
        round_asks += [("floor", kind), ("floor", "audio, read" if kind == "audio" else "voice, same answer")]
    rng = random.Random(0)
    for i in range(N):
        # Rounds: every kind and its floors once per round, so all share the machine's noise, in a new
        # order each round: in a fixed order, a message's place changed its cost.
        for what, item in rng.sample(round_asks, len(round_asks)):
            if what == "floor":
                output, value = floor_asks[item]
                floor[item].append(ask(output, value, f"floor: {item}")[0])
                continue
            name, output, value, metadata, expected, _ = item
            latency, answer = ask(output, value(i), name, **metadata)
            assert answer["source"] == expected, (name, answer["source"])
            latencies[name].append(latency)
            in_node[name].append(answer["elapsed_ms"])
            dtype_out[name] = (answer["dtype"], answer_bytes(answer))
    for name, *_, kind in phases:
        rows.append({"part": "node", "source": name, "n": N, "p50_ms": float(np.percentile(latencies[name], 50)),
                     "p99_ms": float(np.percentile(latencies[name], 99)), "floor": kind,
                     "in_node_p50_ms": float(np.percentile(in_node[name], 50)),
                     "dtype": dtype_out[name][0], "payload_out_mb": dtype_out[name][1] / 2**20})
    transport = {kind: {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99)), "n": len(v)}
                 for kind, v in floor.items()}
    for row in rows:
        row["transport_p50_ms"] = transport[row["floor"]]["p50_ms"]
        row["over_transport_p50_ms"] = row["p50_ms"] - row["transport_p50_ms"]
        if row["floor"] == "audio":
            row["over_reading_transport_p50_ms"] = row["p50_ms"] - transport["audio, read"]["p50_ms"]
        else:
            row["over_same_answer_p50_ms"] = row["p50_ms"] - transport["voice, same answer"]["p50_ms"]
    computed = next(r for r in rows if r["source"] == "computed")
    rows.append({"part": "first_event", "first_ms": first, "first_node_ms": first_node_ms,
                 "steady_computed_p50_ms": computed["p50_ms"], "ratio": first / computed["p50_ms"],
                 "first_transport_ms": first_transport})
    rows.append({"part": "transport", "payload_in_mb": samples.nbytes / 2**20,
                 "payload_out_mb": 704 * 500 * 4 / 2**20, **transport})
    Path(os.environ["BENCH_RESULT"]).write_text(json.dumps(rows, indent=1))
    (Path(os.environ["BENCH_HOPS"]) / "source.json").write_text(json.dumps(stamps))


if __name__ == "__main__":
    main()
