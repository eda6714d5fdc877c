"""Measures event-to-output latency (send to answer, in this process) for each way the node serves,
interleaved with the pass-through node as the transport floor. Writes rows to $BENCH_RESULT."""

import json
import os
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


def main():
    samples, rate = soundfile.read(str(VOICE), dtype="float32")
    node = Node()

    def ask(output, value, **metadata):
        request_id = uuid.uuid4().hex
        start = time.perf_counter()
        node.send_output(output, pa.array(value), {"sample_rate": rate, "request_id": request_id, **metadata})
        while True:
            event = node.next(timeout=120)
            if event is None or event["type"] != "INPUT":
                raise SystemExit(f"no answer to {output}: {event}")
            if event["metadata"].get("request_id") == request_id:
                assert event["id"] != "error", event["value"]
                return (time.perf_counter() - start) * 1e3, event["metadata"]

    first_transport = ask("to_passthrough", samples)[0]  # the transport's own first message, for comparison
    time.sleep(3.0)  # and the mel nodes have finished their warm-up (they log "ready")
    rows, floor, dtype_out = [], {"audio": [], "voice": [], "audio, read": []}, {}
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
    for i in range(N):  # rounds: every kind and its floor once per round, so all share the machine's noise
        for name, output, value, metadata, expected, kind in phases:
            latency, answer = ask(output, value(i), **metadata)
            assert answer["source"] == expected, (name, answer["source"])
            latencies[name].append(latency)
            in_node[name].append(answer["elapsed_ms"])
            floor[kind].append(ask("to_passthrough", value(i))[0])
            if kind == "audio":
                floor["audio, read"].append(ask("to_passthrough_read", value(i))[0])
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
    computed = next(r for r in rows if r["source"] == "computed")
    rows.append({"part": "first_event", "first_ms": first, "first_node_ms": first_node_ms,
                 "steady_computed_p50_ms": computed["p50_ms"], "ratio": first / computed["p50_ms"],
                 "first_transport_ms": first_transport})
    rows.append({"part": "transport", "payload_in_mb": samples.nbytes / 2**20,
                 "payload_out_mb": 704 * 500 * 4 / 2**20, **transport})
    Path(os.environ["BENCH_RESULT"]).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
