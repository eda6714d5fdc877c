"""What dora's first large message costs on each side, and what a warm-up output saves.

    python benchmarks/first_message.py [--runs 5] [--out FILE]   (dora 1.1: .venv)
    .venv-dora04/bin/python benchmarks/first_message.py          (dora 0.4.1: first_message-dora04.json)

A requester sends 10 s of 48 kHz audio (1.9 MB) six times, one at a time; a peer reads each request
and answers with a 10 s v2 spectrogram's size (1.4 MB). Each message's costs are timed where they
happen: the requester's send and round trip, the peer's read of the request and its send. The
dataflow runs `--runs` times as is and `--runs` times with the peer declaring an unconnected `warmup`
output that it sends one answer-sized message on before any request, as dora-reference-mel does.
Medians per message index over the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from lib import two_nodes
from lib.timing import add_out_argument, dora_line_name, metric, out_path, write_result

REQUESTS = 6


def requester() -> None:
    import numpy as np
    import pyarrow as pa
    from dora import Node

    node = Node()
    audio = pa.array(np.random.default_rng(1).random(480_000, dtype=np.float32))
    time.sleep(2.0)  # the peer is up and has sent its warm-up
    rows = []
    for i in range(REQUESTS):
        start = time.perf_counter()
        node.send_output("request", audio, {"i": i})
        sent = time.perf_counter()
        event = node.next(timeout=30)
        rows.append({"send_ms": (sent - start) * 1e3, "round_trip_ms": (time.perf_counter() - start) * 1e3,
                     "peer_read_ms": event["metadata"]["read_ms"], "peer_send_ms": event["metadata"]["last_send_ms"]})
        del event
        time.sleep(0.05)
    Path(os.environ["RESULT"]).write_text(json.dumps(rows))


def peer() -> None:
    import numpy as np
    import pyarrow as pa
    import xxhash
    from dora import Node

    node = Node()
    answer = pa.array(np.random.default_rng(0).random(704 * 500, dtype=np.float32))
    if "warmup" in node.node_config().get("outputs", []):
        node.send_output("warmup", pa.array(np.zeros(704 * 500, np.float32)), {})
    last_send_ms = 0.0  # the send of answer i is reported with answer i + 1
    for event in node:
        if event["type"] != "INPUT":
            continue
        start = time.perf_counter()
        xxhash.xxh3_128_hexdigest(event["value"].buffers()[1])
        read = time.perf_counter()
        node.send_output("answer", answer, {"read_ms": (read - start) * 1e3, "last_send_ms": last_send_ms})
        last_send_ms = (time.perf_counter() - read) * 1e3


def run(warmup: bool, work: Path, index: int) -> list[dict]:
    return two_nodes.run(Path(__file__), ("requester", "request"), ("peer", "answer"), work, f"run-{index}",
                         b_extra=("warmup",) if warmup else ())


def main() -> None:
    if two_nodes.play_role({"requester": requester, "peer": peer}):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    add_out_argument(parser, "first_message[-dora04]")
    args = parser.parse_args()
    import dora

    print(f"dora-rs {getattr(dora, '__version__', '?')}, {args.runs} runs each, medians per message")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {False: [], True: []}
        for _ in range(args.runs):  # alternated: both variants see the same machine
            for warmup in (False, True):
                runs[warmup].append(run(warmup, Path(tmp), len(runs[False]) + len(runs[True])))
    keys = ("send_ms", "round_trip_ms", "peer_read_ms", "peer_send_ms")
    metrics, rows = {}, []
    for warmup, results in runs.items():
        print(f"peer {'with' if warmup else 'without'} a warm-up output:")
        print("  message  " + "  ".join(f"{k:>14s}" for k in keys))
        for i in range(REQUESTS):
            values = {k: statistics.median(r[i][k] for r in results) for k in keys[:3]}
            # the peer's send of answer i is reported with answer i + 1
            values["peer_send_ms"] = (statistics.median(r[i + 1]["peer_send_ms"] for r in results)
                                      if i + 1 < REQUESTS else float("nan"))
            print(f"  {i:7d}  " + "  ".join(f"{values[k]:14.2f}" for k in keys))
            rows.append({"warmup": warmup, "message": i, **values})
        variant = "warmup" if warmup else "no_warmup"
        first = rows[-REQUESTS]  # message 0 of this variant
        later = sorted(row["round_trip_ms"] for row in rows[-REQUESTS + 1:])
        metrics |= {f"{variant}_first_send_ms": metric(first["send_ms"], "ms"),
                    f"{variant}_first_peer_send_ms": metric(first["peer_send_ms"], "ms"),
                    f"{variant}_first_round_trip_ms": metric(first["round_trip_ms"], "ms"),
                    f"{variant}_later_round_trip_min_ms": metric(later[0], "ms"),
                    f"{variant}_later_round_trip_max_ms": metric(later[-1], "ms")}
    name = dora_line_name("first_message")
    write_result(out_path(args.out, name), name, metrics, runs=args.runs, rows=[
        {k: (None if v != v else v) for k, v in row.items()} for row in rows])  # JSON has no NaN


if __name__ == "__main__":
    main()
