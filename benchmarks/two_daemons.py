"""A voice switch's 1.4 MB mel across two dora daemons against the same on one daemon, in interleaved
rounds on one loopback cluster (a coordinator and daemons `a` and `b`, as tests/test_deployment.py
starts them).

    python benchmarks/two_daemons.py [--rounds 5] [--requests 100]           (dora 1.1, .venv)
    .venv-dora04/bin/python benchmarks/two_daemons.py ...                    (dora 0.4.1)

Each round runs the same dataflow twice, in a new order each round: the requester on `a` and
reference-mel on `b`, then both on `a`. The requester sends a `voice` event, waits for its mel (a cache
hit after the first: 10 s of v2, 1.34 MB float32) and times the round trip; the figure is the median
over rounds of each run's median. Prints one line and writes the one result format to --out.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from lib.timing import ROOT, add_out_argument, dora_line_name, metric, out_path, write_result

from helpers import DORA_LINES, cluster  # noqa: E402  (the tests' loopback cluster: one way to start it)

REQUESTER = """
import json, os, sys, time
import pyarrow as pa
from dora import Node
node, times = Node(), []
for i in range(int(os.environ["REQUESTS"]) + 1):
    start = time.perf_counter()
    node.send_output("voice", pa.array(["aria"]), {"request_id": str(i)})
    while True:
        event = node.next(timeout=60)
        if event["type"] == "INPUT" and event["id"] == "mel" and event["metadata"].get("request_id") == str(i):
            break
        if event["type"] != "INPUT":
            sys.exit(f"no answer to request {i}: {event['type']}")
    if i:  # the first computes; the rest are cache hits
        times.append(time.perf_counter() - start)
open(os.environ["RESULT"], "w").write(json.dumps(times))
"""


def flow(folder: Path, line: str, node_machine: str, requests: int, result: Path) -> Path:
    key = "deploy" if line == "1.1" else "_unstable_deploy"
    (folder / "requester.py").write_text(REQUESTER)
    nodes = [
        {"id": "requester", "path": str(folder / "requester.py"), key: {"machine": "a"},
         "inputs": {"mel": {"source": "reference-mel/mel", "queue_size": 10, "queue_policy": "backpressure"}},
         "outputs": ["voice"], "env": {"REQUESTS": str(requests), "RESULT": str(result)}},
        {"id": "reference-mel", "path": "dora-reference-mel", key: {"machine": node_machine},
         "inputs": {"voice": {"source": "requester/voice", "queue_size": 10, "queue_policy": "backpressure"}},
         "outputs": ["mel"], "env": {"PRIMESPEECH_MODEL_DIR": str(ROOT / "models"), "MEL_WRITE_BACK": "0",
                                     "CODES_DIR": str(folder / "codes"), "LOG_LEVEL": "WARNING"}},
    ]
    path = folder / f"flow-{node_machine}-{result.stem}.yml"
    path.write_text(yaml.safe_dump({"nodes": nodes}))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=100)
    add_out_argument(parser, "two_daemons[-dora04]")
    args = parser.parse_args(argv)
    import dora

    line = "0.4" if getattr(dora, "__version__", "1").startswith("0.") else "1.1"
    assert (DORA_LINES[line] / "bin" / "dora").exists()
    folder = Path(tempfile.mkdtemp(prefix="two-daemons-"))
    medians = {"b": [], "a": []}
    rng = random.Random(0)
    with cluster(line, folder / "cluster") as start:
        for index in range(args.rounds):
            for machine in rng.sample(["b", "a"], 2):
                result = folder / f"times-{machine}-{index}.json"
                done = start(flow(folder, line, machine, args.requests, result))
                if done.returncode != 0 or not result.exists():
                    raise SystemExit(f"run failed:\n{(done.stdout + done.stderr)[-4000:]}")
                medians[machine].append(float(np.median(json.loads(result.read_text()))) * 1e3)
    across, same = float(np.median(medians["b"])), float(np.median(medians["a"]))
    print(f"dora {dora.__version__ if hasattr(dora, '__version__') else line}: `voice` hit, 1.34 MB mel, round trip: "
          f"across two daemons {across:.2f} ms, on one daemon {same:.2f} ms (+{across - same:.2f} ms); per round "
          f"across {[round(m, 2) for m in medians['b']]}, one {[round(m, 2) for m in medians['a']]}")
    name = dora_line_name("two_daemons")
    write_result(out_path(args.out, name), name,
                 {"across_daemons_ms": metric(across, "ms"), "one_daemon_ms": metric(same, "ms"),
                  "across_over_one": metric(across / same, "x")},
                 rounds=args.rounds, requests=args.requests, per_round_ms=medians)
    return 0


if __name__ == "__main__":
    sys.exit(main())
