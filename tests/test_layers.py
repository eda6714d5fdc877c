"""The package's layers, as its sub-packages show them: imports point down the list, never up, and the
library API loads neither the wire format (pyarrow) nor dora."""

import ast
import subprocess
import sys

from helpers import ROOT

PACKAGE = ROOT / "node_hub/dora_reference_mel"
# Lowest first: a module may import its own layer and the ones before it.
LAYERS = [
    {"limits", "errors", "cache"},
    {"features"},
    {"models"},
    {"config"},
    {"store"},
    {"resolve"},
    {"node", "contract", "dora_operator", "__main__"},
    {"cli", "precompute", "plot"},
]
MAX_LINES = 450


def layer_of(module: str) -> int:
    return next(rank for rank, names in enumerate(LAYERS) if module.split(".")[0] in names)


def package_imports(path):
    """The package's modules `path` imports (dotted, relative to the package), at any depth of the file."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[:len(parts) - node.level])
            elif (node.module or "").startswith("dora_reference_mel"):
                base, node.module = [], node.module.removeprefix("dora_reference_mel").lstrip(".") or None
            else:
                continue
            target = [*base, *(node.module.split(".") if node.module else [])]
            yield from (".".join([*target, a.name]) if not target else ".".join(target) for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name.removeprefix("dora_reference_mel.") for a in node.names
                        if a.name.startswith("dora_reference_mel."))


def test_imports_point_down_the_layers():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if module == "__init__":  # the package's face: the public API, loaded lazily
            continue
        for target in package_imports(path):
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} imports {target}")
    assert not upward, upward


def test_every_module_is_in_a_layer_and_small():
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if module != "__init__":
            layer_of(module)  # StopIteration: a module no layer names
        assert len(path.read_text().splitlines()) <= MAX_LINES, f"{module} is over {MAX_LINES} lines: split it"


def test_the_library_api_loads_neither_pyarrow_nor_dora():
    code = ("import sys; import dora_reference_mel; dora_reference_mel.reference_mel; "
            "dora_reference_mel.reference_mel_batch; print(sorted(m for m in ('pyarrow', 'dora') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_the_consumer_helper_loads_no_mlx():
    code = ("import sys; from dora_reference_mel.contract import decode_mel_event; "
            "print('mlx' in sys.modules, decode_mel_event.__module__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "dora_reference_mel.node.contract"]
