"""Stand-in for MoFA's `mofa-system-log`: prints every `log` line it receives, checking its shape
({"level", "message", "timestamp", "node"}, one JSON string). Exits 1 on a malformed line."""

import json
import sys

from dora import Node


def main() -> int:
    malformed = 0
    for event in Node():
        if event["type"] != "INPUT":
            continue
        line = json.loads(event["value"][0].as_py())
        if set(line) != {"level", "message", "timestamp", "node"} or line["level"] not in ("WARNING", "ERROR"):
            malformed += 1
        print(f"system-log: {line['level']} {line['node']}: {line['message'][:200]}")
    return 1 if malformed else 0


if __name__ == "__main__":
    sys.exit(main())
