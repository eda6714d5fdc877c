"""The `dora-reference-mel` custom node: a thin event loop over ReferenceMelService."""

from __future__ import annotations

import collections
import importlib.metadata
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..config import ENV_VARS, Config
from ..errors import ReferenceMelError
from ..features import backend, resample, spectrogram
from ..resolve import UPSTREAM_SECONDS
from ..store.names import shown
from .contract import (
    ERROR_OUTPUT,
    INPUTS,
    LOG_OUTPUT,
    MEL_OUTPUT,
    OUTPUTS,
    TEXT_OUTPUT,
    WARMUP_OUTPUT,
    error_value,
    log_value,
)
from .last_voice import dora_run
from .service import Output, ReferenceMelService

log = logging.getLogger("dora_reference_mel")


def build_service(config: Config) -> ReferenceMelService:
    """Configure logging and MLX, build the service and warm MLX up (shared with the operator);
    `bad_config` when MEL_DEVICE asks for a device MLX does not have."""
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    device = backend.select(config.device).device
    service = ReferenceMelService(config, run=dora_run())  # under dora: keeps the last voice for a restart
    start = time.perf_counter()
    kernels_before = mlx_cpu_kernels()
    if device == "cpu" and resample.compiler_works() and not kernels_before:
        log.info("building MLX's CPU kernels for presets %s: MLX's kernel cache %s is empty, so this first start on "
                 "the machine compiles them; later starts load them from there",
                 ",".join(p.name for p in config.presets), mlx_cpu_kernel_dir())
    elif device == "gpu" and backend.cuda_available():
        log.info("compiling the CUDA resampling and framing kernels (about 3 s each on an H200, once per start; "
                 "they serve every rate and clip length)")
    # No event waits for a kernel build: clips at rates not warmed here resample uncompiled (same output).
    spectrogram.warm_up(config.presets)  # the backend now compiles the rate pairs it built
    built = len(mlx_cpu_kernels() - kernels_before)
    log.info("ready on %s: presets %s, codes %s, warm-up %.0f ms%s, idle RSS %.0f MB", device,
             ",".join(p.name for p in config.presets), config.codes_dir, (time.perf_counter() - start) * 1e3,
             f" ({built} MLX CPU kernels built into {mlx_cpu_kernel_dir()})" if built else "", peak_rss_mb())
    return service


def mlx_cpu_kernel_dir() -> Path:
    """Where MLX keeps the CPU kernels it compiles, one shared library each (mlx/backend/cpu/compiled.cpp:
    the temporary folder, then mlx/<version>/cpu), and loads them from on later starts."""
    import mlx.core as mx

    return Path(tempfile.gettempdir()) / "mlx" / mx.__version__ / "cpu"


def mlx_cpu_kernels() -> set[str]:
    try:
        return {name for name in os.listdir(mlx_cpu_kernel_dir()) if name.startswith("lib")}
    except OSError:
        return set()


def configured_service(config_source=Config.from_env) -> ReferenceMelService:
    """The service built from the environment, or exit with one line naming the bad setting (no traceback)."""
    return checked(lambda: build_service(config_source()))


def checked(build):
    """build(), or exit with one line naming the bad setting (no traceback)."""
    try:
        return build()
    except ReferenceMelError as err:  # before any event: say what to fix and stop
        # One line on stderr, on its own: the operator's runtime wraps the exit in a traceback of its own.
        print(f"dora-reference-mel: bad configuration [{err.code}]: {err.message}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def usage() -> str:
    """What `dora-reference-mel --help` prints: the node, its inputs and outputs, and its variables."""
    def rows(table: dict[str, str]) -> str:
        return "\n".join(f"  {name:<16} {what}" for name, what in table.items())

    variables = "\n".join(f"  {name} ({kind}, default {default or 'unset'}): {meaning}"
                          for name, (kind, default, meaning) in ENV_VARS.items())
    return f"""usage: dora-reference-mel [--help | --version]

A dora node ({package_version()}) that serves GPT-SoVITS reference tensors (spectrograms, semantic codes,
prompt text) to a TTS node: dora starts it from a dataflow (`dora run flow.yml`, with
`path: dora-reference-mel`); it takes no arguments and reads its settings from the environment.

inputs:
{rows(INPUTS)}

outputs:
{rows(OUTPUTS)}

environment (the dataflow's `env:`):
{variables}

Precompute, verify and inspect a voice library offline: reference-mel --help
"""


def package_version() -> str:
    try:
        return f"dora-reference-mel {importlib.metadata.version('dora-reference-mel')}"
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "dora-reference-mel, not installed"


def check_arguments(args: list[str]) -> None:
    """--help and --version print and exit 0; any other argument is an error (exit 2): the node is
    configured by its environment, so an argument is a mistake to name before the warm-up."""
    if args in (["--help"], ["-h"]):
        print(usage(), end="")
        raise SystemExit(0)
    if args == ["--version"]:
        print(package_version())
        raise SystemExit(0)
    if args:
        print(usage(), file=sys.stderr)
        print(f"dora-reference-mel: unexpected arguments {' '.join(args)!r}: the node takes none (see above)",
              file=sys.stderr)
        raise SystemExit(2)


def started_by_dora(env=os.environ) -> bool:
    """Whether dora started this process: its daemon sets DORA_NODE_CONFIG, its test mode DORA_TEST_WITH_INPUTS."""
    return any(env.get(name) for name in ("DORA_NODE_CONFIG", "DORA_TEST_WITH_INPUTS"))


def main(argv: list[str] | None = None) -> None:
    check_arguments(sys.argv[1:] if argv is None else argv)
    config = checked(Config.from_env)  # a bad setting is named first: the dataflow would meet it too
    if not started_by_dora():
        print("dora-reference-mel: this is a dora node; start it from a dataflow (`dora run flow.yml`, "
              "`path: dora-reference-mel`), not by hand (usage: dora-reference-mel --help)", file=sys.stderr)
        raise SystemExit(1)
    from dora import Node

    service = configured_service(lambda: config)
    node = Node()
    sent = collections.Counter()
    prewarm_transport(node, service)
    send_outputs(node.send_output, start_warnings(node, service), sent)
    send_outputs(node.send_output, service.startup(), sent)  # the startup voice's mel, before any event
    # STOP is not the end of the inputs: dora still delivers the inputs queued before it (a source that
    # sends a burst and exits). The loop runs until dora ends the stream, so none of them is dropped.
    for event in node:
        kind = event["type"]
        if kind == "INPUT":
            send_outputs(node.send_output, service.answer(event), sent)
        elif kind == "STOP":
            log.info("stop requested: answering the inputs dora still delivers")
        elif kind == "ERROR":
            log.warning("dora error event: %s", event.get("error"))
    log_stop(service, sent)


def start_warnings(node, service: ReferenceMelService) -> list[Output]:
    """What the dataflow and voices.json get wrong, found at start: logged once, and sent on `log`."""
    messages = inputs_without_backpressure(node)
    try:
        messages += service.store.library.collisions()
    except ReferenceMelError:  # an unusable voices.json: the library has logged it, and every event says it
        pass
    for message in messages:
        log.warning("%s", message)
    return [Output(LOG_OUTPUT, log_value("WARNING", message, service.node_name), {}) for message in messages]


def inputs_without_backpressure(node) -> list[str]:
    """A message for each of this node's inputs wired without `queue_policy: backpressure`: dora 1.1's
    default policy drops the oldest message of a full queue without a word (docs/delivery.md), and a
    lost text is never spoken. dora 0.4 has no queue policy, so there is nothing to say there."""
    import dora

    if not getattr(dora, "__version__", "0").startswith("1."):
        return []
    try:
        inputs = node.node_config().get("inputs") or {}
    except (RuntimeError, AttributeError):  # dora's test mode has no dataflow configuration
        return []
    messages = []
    for name, spec in inputs.items():
        spec = spec if isinstance(spec, dict) else {"source": spec}
        if name in INPUTS and spec.get("queue_policy") != "backpressure":
            messages.append(
                f"input {name} (from {spec.get('source')}) has no queue_policy: backpressure, so dora drops its "
                f"messages when its queue is full and a lost {name} is never answered; wire it as `{name}: "
                f"{{source: {spec.get('source')}, queue_size: {spec.get('queue_size', 100)}, queue_policy: "
                "backpressure}` in the dataflow")
    return messages


def prewarm_transport(node, service: ReferenceMelService) -> None:
    """dora 1.1 maps a new shared-memory region for a node's first large output: 5 to 10 ms for a 10 s
    v2 answer, against 1.5 ms once mapped (benchmarks/first_message.py). When the dataflow declares the
    optional `warmup` output (left unconnected), one message of the largest answer's size pays that now."""
    try:
        declared = node.node_config().get("outputs", [])
    except (RuntimeError, AttributeError):  # dora's test mode has no dataflow configuration
        declared = []
    if WARMUP_OUTPUT in declared:
        start = time.perf_counter()
        try:
            node.send_output(WARMUP_OUTPUT, largest_answer(service.config), {})
        except Exception as err:  # an optimisation only: the node serves without it
            log.warning("warm-up output not sent: %s", err)
            return
        log.info("warm-up output sent in %.1f ms", (time.perf_counter() - start) * 1e3)


def log_stop(service: ReferenceMelService, sent: collections.Counter) -> None:
    log.info("stopping: sent %d mel, %d error and %d text events; cache %d entries, %.1f MB; peak RSS %.0f MB",
             sent[MEL_OUTPUT], sent[ERROR_OUTPUT], sent[TEXT_OUTPUT], len(service.resolver.cache),
             service.resolver.cache.nbytes / 2**20, peak_rss_mb())


def peak_rss_mb() -> float:
    """Peak resident memory of this process. On Linux, VmHWM of its own memory since exec: ru_maxrss keeps
    the high-water mark of the process that spawned it (a 2.6 GB test runner reads as a 2.6 GB node).
    Elsewhere ru_maxrss (bytes on macOS)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 2**10  # kB
    except (OSError, StopIteration, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def largest_answer(config: Config) -> pa.Array:
    """Zeros the size of the largest `mel` the node sends for a reference of upstream's longest length."""
    elements = max(p.n_bins * p.n_frames(int(UPSTREAM_SECONDS[1] * p.sample_rate)) for p in config.presets)
    return pa.array(np.zeros(elements, dtype=config.mel_dtype))


def send_outputs(send, outputs: list[Output], sent: collections.Counter) -> None:
    """Send each output with dora's `send(output_id, value, metadata)` (the node's and the operator's),
    counting what went out. Sending never ends the loop: an output dora refuses (metadata it cannot
    encode, say) is logged and answered by an `internal` error with only its request_id, and a refused
    text is forwarded with its value and request_id alone, so every event still gets its answer and
    every text goes on."""
    for out in outputs:
        try:
            send(out.output_id, out.value, out.metadata)
        except Exception as err:
            log.exception("dora refused the %s output (%s)", out.output_id, shown(str(err), 200))
            if out.output_id == LOG_OUTPUT:
                continue
            request_id = out.metadata.get("request_id")
            minimal = {"request_id": request_id} if isinstance(request_id, str) and request_id.isascii() else {}
            if out.output_id == TEXT_OUTPUT:
                fallback = (TEXT_OUTPUT, out.value, minimal)
            else:
                message = f"the node could not send its {out.output_id} answer ({shown(str(err), 200)}); see its log"
                fallback = (ERROR_OUTPUT, error_value("internal", message, None), {**minimal, "error": "internal"})
            try:
                send(*fallback)
            except Exception:
                log.exception("dora refused the fallback %s output too", fallback[0])
                continue
            sent[fallback[0]] += 1
            continue
        out.sent()
        sent[out.output_id] += 1


if __name__ == "__main__":
    main()
