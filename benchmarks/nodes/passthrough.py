"""The transport floor: answers each request at once with a payload of the size the mel node sends.
With READ_INPUT=1 it first reads the whole request (xxh3 of its bytes), as any node that must know
which audio it got has to: the floor for a node that looks at its input. With REPLY_METADATA (a JSON
file) its answers carry that metadata too: the floor for an answer of the same bytes and metadata."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import xxhash
from dora import Node

REPLY = pa.array(np.random.default_rng(0).random(704 * 500, dtype=np.float32))  # a 10 s v2 spectrogram's size
READ_INPUT = os.environ.get("READ_INPUT") == "1"
METADATA = json.loads(Path(os.environ["REPLY_METADATA"]).read_text()) if os.environ.get("REPLY_METADATA") else {}


def main():
    node = Node()
    for event in node:
        if event["type"] == "INPUT":
            if READ_INPUT:
                xxhash.xxh3_128_hexdigest(event["value"].buffers()[1])
            node.send_output("reply", REPLY, {**METADATA, "request_id": event["metadata"]["request_id"]})


if __name__ == "__main__":
    main()
