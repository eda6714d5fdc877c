"""The transport floor: answers each request at once with a payload of the size the mel node sends."""

import numpy as np
import pyarrow as pa
from dora import Node

REPLY = pa.array(np.zeros(704 * 500, np.float32))  # the size of a 10 s v2 spectrogram


def main():
    node = Node()
    for event in node:
        if event["type"] == "INPUT":
            node.send_output("reply", REPLY, {"request_id": event["metadata"]["request_id"]})


if __name__ == "__main__":
    main()
