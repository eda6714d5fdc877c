"""Scripted stand-in for the text side of a primespeech dataflow: MoFA's dynamic `mofa-prompt-input`
(output `control`) or the MLX test flow's timer-driven `text-source` (output `text`).

On every `tick` it sends the next line of PROMPTS (a JSON list of strings, each sent as is, in
primespeech's text protocol: `VOICE:<name>|<text>`, `{"prompt": ...}`, `VOICE:CUSTOM|...`, plain text)
on OUTPUT, with a `question_id` in its metadata as MoFA's UI sends it (and the keys of METADATA, a JSON
object: `{"request_id": "answer-1"}` sends every line under one request's id, as MoFA sends the
sentences of one answer); then it stops. With BURST=1 it
sends every line on the first tick and exits at once (a burst that is still queued downstream when
dora delivers the STOP).
"""

import json
import os
import sys

import pyarrow as pa
from dora import Node


def main() -> int:
    prompts = json.loads(os.environ["PROMPTS"])
    output = os.environ.get("OUTPUT", "control")
    burst = os.environ.get("BURST") == "1"
    metadata = json.loads(os.environ.get("METADATA", "{}"))
    node, sent = Node(), 0
    for event in node:
        if event["type"] != "INPUT" or event["id"] != "tick":
            continue
        if sent == len(prompts):
            break
        for _ in range(len(prompts) if burst else 1):
            node.send_output(output, pa.array([prompts[sent]]), {**metadata, "question_id": sent})
            sent += 1
        if burst:
            break
    print(f"prompt-source: sent {sent} texts on {output}")
    return 0 if sent == len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
