"""A generated dataflow of two nodes that answer each other, run by the dora CLI of this interpreter's
environment (either dora line). Each node runs `script` with ROLE set to its id; the measuring node
writes its result to $RESULT."""

import json
import os
import subprocess
import sys
from pathlib import Path

FLOW = """nodes:
  - id: {a}
    path: {script}
    inputs:
      {b_out}: {{source: {b}/{b_out}, queue_policy: backpressure}}
    outputs: [{a_out}]
    {pool}
    env: {{ROLE: {a}}}
  - id: {b}
    path: {script}
    inputs:
      {a_out}: {{source: {a}/{a_out}, queue_policy: backpressure}}
    outputs: [{b_outputs}]
    {pool}
    env: {{ROLE: {b}}}
"""


def play_role(roles: dict) -> bool:
    """In a node of the flow (ROLE set): run that role's function and say so."""
    role = os.environ.get("ROLE")
    if role:
        roles[role]()
    return bool(role)


def run(script: Path, a: tuple[str, str], b: tuple[str, str], work: Path, name: str, *, b_extra=(),
        timeout: int = 300, **env) -> object:
    """a, b: (node id, its output). b_extra: more outputs of b, left unconnected. env: for both nodes.
    Returns what the nodes wrote to $RESULT (JSON)."""
    import dora

    one_one = not getattr(dora, "__version__", "1").startswith("0.")  # 0.4 has no per-node pool setting
    flow = FLOW.format(script=script.resolve(), a=a[0], a_out=a[1], b=b[0], b_out=b[1],
                       b_outputs=", ".join((b[1], *b_extra)), pool="shared_memory_pool_size: 64MB" if one_one else "")
    (work / f"{name}.yml").write_text(flow)
    result = work / f"{name}.json"
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run([str(bin_dir / "dora"), "run", f"{name}.yml"], cwd=work, capture_output=True, text=True,
                          env=dict(os.environ, RESULT=str(result), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                                   **env), timeout=timeout)
    if not result.exists():
        raise SystemExit(f"{name} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(result.read_text())
