"""Runs a node of the node benchmark with its dora Node timed at the two places dora's own work happens:
when an input event is handed over (the end of `next`) and around each `send_output`.

    HOP_NODE=mel          the reference-mel node (dora_reference_mel.node.main.main)
    HOP_NODE=passthrough  benchmarks/nodes/passthrough.py

The real Node does all the work; this only reads CLOCK_MONOTONIC (one clock for every process on the
machine, so the source's and this node's times compare) and, at the end, writes
{request_id: [received, send_start, send_end]} in ns to $BENCH_HOPS/$HOP_NAME.json.
"""

import atexit
import json
import os
import sys
import time
from pathlib import Path

import dora

RealNode = dora.Node


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class TimedNode:
    """dora's Node, with the hand-over of each request and the send of its answer stamped."""

    def __init__(self):
        self._node = RealNode()
        self.hops: dict[str, list[int]] = {}
        atexit.register(self.write)

    def __iter__(self):
        return self

    def __next__(self):
        event = next(self._node)
        received = now_ns()
        request_id = (event.get("metadata") or {}).get("request_id")
        if request_id is not None:
            self.hops[request_id] = [received]
        return event

    def send_output(self, output_id, value, metadata=None):
        start = now_ns()
        self._node.send_output(output_id, value, metadata)
        hop = self.hops.get((metadata or {}).get("request_id"))
        if hop is not None and len(hop) == 1:
            hop += [start, now_ns()]

    def __getattr__(self, name):  # node_config and the rest: the real Node's
        return getattr(self._node, name)

    def write(self) -> None:
        folder = Path(os.environ["BENCH_HOPS"])
        (folder / f"{os.environ['HOP_NAME']}.json").write_text(json.dumps(self.hops))


def main() -> None:
    dora.Node = TimedNode  # both nodes look `Node` up in the dora module when they start
    sys.path.insert(0, str(Path(__file__).parent))
    if os.environ["HOP_NODE"] == "mel":
        from dora_reference_mel.node.main import main as run
    else:
        from passthrough import main as run
    run()


if __name__ == "__main__":
    main()
