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


def main():
    samples, rate = soundfile.read(str(VOICE), dtype="float32")
    node = Node()

    def ask(output, clip, **metadata):
        request_id = uuid.uuid4().hex
        start = time.perf_counter()
        node.send_output(output, pa.array(clip), {"sample_rate": rate, "request_id": request_id, **metadata})
        while True:
            event = node.next(timeout=120)
            if event is None or event["type"] != "INPUT":
                raise SystemExit(f"no answer to {output}: {event}")
            if event["metadata"].get("request_id") == request_id:
                assert event["id"] != "error", event["value"]
                return (time.perf_counter() - start) * 1e3, event["metadata"].get("source")

    first_transport = ask("to_passthrough", samples)[0]  # the transport's own first message, for comparison
    time.sleep(3.0)  # and the mel nodes have finished their warm-up (they log "ready")
    rows, floor = [], []
    first, source = ask("to_cached", np.roll(samples, 1))
    assert source == "computed"
    phases = [("computed", "to_cached", lambda i: np.roll(samples, 1000 + i), {}),
              ("cache", "to_cached", lambda i: samples, {}),
              ("precomputed", "to_nocache", lambda i: samples, {"voice": "aria"})]
    for name, output, clip, metadata in phases:
        if name == "cache":
            ask(output, clip(0))  # put the clip in the cache (the computed phase filled it with others)
        latencies = []
        for i in range(N):
            latency, source = ask(output, clip(i), **metadata)
            assert source == name, (name, source)
            latencies.append(latency)
            floor.append(ask("to_passthrough", clip(i))[0])
        rows.append({"part": "node", "source": name, "n": N, "p50_ms": float(np.percentile(latencies, 50)),
                     "p99_ms": float(np.percentile(latencies, 99))})
    transport = {"p50_ms": float(np.percentile(floor, 50)), "p99_ms": float(np.percentile(floor, 99))}
    for row in rows:
        row["transport_p50_ms"], row["transport_p99_ms"] = transport["p50_ms"], transport["p99_ms"]
        row["over_transport_p50_ms"] = row["p50_ms"] - transport["p50_ms"]
    computed = next(r for r in rows if r["source"] == "computed")
    rows.append({"part": "first_event", "first_ms": first, "steady_computed_p50_ms": computed["p50_ms"],
                 "ratio": first / computed["p50_ms"], "first_transport_ms": first_transport})
    rows.append({"part": "transport", "n": len(floor), "payload_in_mb": samples.nbytes / 2**20,
                 "payload_out_mb": 704 * 500 * 4 / 2**20, **transport})
    Path(os.environ["BENCH_RESULT"]).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
