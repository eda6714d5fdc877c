"""What an answer's metadata costs in dora, on the sending and on the receiving side.

    python benchmarks/metadata_cost.py [--messages 200] [--out FILE]   (dora 1.1: .venv)
    .venv-dora04/bin/python benchmarks/metadata_cost.py                (dora 0.4.1: metadata_cost-dora04.json)

A sender sends a 10 s v2 spectrogram's bytes (1.4 MB) to a receiver, one message at a time, with
three metadata variants, in a new random order each round: only a request_id (what
benchmarks/nodes/passthrough.py sends), the node's real answer to a `voice` event without its `codes`, and
that whole answer (16 keys with the voice's 500 semantic codes as a list of int). The sender times
its `send_output`; the receiver stamps CLOCK_MONOTONIC when dora hands it the event (one clock for
both processes) and acknowledges with a small message, so the delivery (sender's send done ->
receiver holds the event as Python objects) is timed too. Medians per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from lib import two_nodes
from lib.timing import ROOT, add_out_argument, dora_line_name, metric, out_path, write_result

VARIANT_KEYS = {"request_id only": "request_id_only", "node's answer without codes": "answer_without_codes",
                "node's answer": "answer"}


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def sender() -> None:
    import numpy as np
    import pyarrow as pa
    from dora import Node

    node = Node()
    answer = pa.array(np.random.default_rng(0).random(704 * 500, dtype=np.float32))
    full = json.loads(Path(os.environ["VOICE_ANSWER"]).read_text())
    variants = {"request_id only": {}, "node's answer without codes": {k: v for k, v in full.items() if k != "codes"},
                "node's answer": full}
    times = {name: {"send_ms": [], "delivery_ms": []} for name in variants}
    rng = random.Random(0)
    for i in range(int(os.environ["MESSAGES"]) + 1):
        # a new order each round: in a fixed order, a message's place changed its cost
        for name in rng.sample(list(variants), len(variants)):
            metadata = variants[name]
            start = now_ns()
            node.send_output("answer", answer, {**metadata, "request_id": f"{i}"})
            sent = now_ns()
            ack = node.next(timeout=30)
            if i:  # the first round is a warm-up (dora's first large message is dearer)
                times[name]["send_ms"].append((sent - start) / 1e6)
                times[name]["delivery_ms"].append((ack["metadata"]["received_ns"] - sent) / 1e6)
    Path(os.environ["RESULT"]).write_text(json.dumps(times))


def receiver() -> None:
    import pyarrow as pa
    from dora import Node

    node = Node()
    while True:
        event = node.next(timeout=60)
        if event is None or event["type"] != "INPUT":
            break
        received = now_ns()
        node.send_output("ack", pa.array([0]), {"received_ns": received})


def main() -> None:
    if two_nodes.play_role({"sender": sender, "receiver": receiver}):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    add_out_argument(parser, "metadata_cost[-dora04]")
    args = parser.parse_args()
    import dora
    from bench import voice_answer_metadata

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        metadata = voice_answer_metadata(ROOT / "models/voices.json", ROOT / "models/codes")
        (work / "voice_answer.json").write_text(json.dumps(metadata))
        times = two_nodes.run(Path(__file__), ("sender", "answer"), ("receiver", "ack"), work, "metadata",
                              timeout=600, VOICE_ANSWER=str(work / "voice_answer.json"), MESSAGES=str(args.messages))
    print(f"dora-rs {getattr(dora, '__version__', '?')}; 1.4 MB per message, {args.messages} of each variant, "
          f"interleaved; the node's answer has {len(metadata)} keys, {len(metadata['codes'])} codes")
    print(f"  {'metadata':30s} {'send p50':>10s} {'delivery p50':>14s}")
    metrics = {}
    for name, values in times.items():
        send, delivery = (statistics.median(values[key]) for key in ("send_ms", "delivery_ms"))
        print(f"  {name:30s} {send:8.3f} ms {delivery:11.3f} ms")
        metrics |= {f"{VARIANT_KEYS[name]}_send_ms": metric(send, "ms"),
                    f"{VARIANT_KEYS[name]}_delivery_ms": metric(delivery, "ms")}
    name = dora_line_name("metadata_cost")
    write_result(out_path(args.out, name), name, metrics, messages=args.messages)


if __name__ == "__main__":
    main()
