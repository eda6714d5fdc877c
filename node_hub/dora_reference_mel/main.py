"""The `dora-reference-mel` custom node: a thin event loop over ReferenceMelService."""

from __future__ import annotations

import collections
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import cuda_kernels, resample, signal
from .config import Config, select_device
from .contract import ERROR_OUTPUT, LOG_OUTPUT, MEL_OUTPUT, TEXT_OUTPUT, WARMUP_OUTPUT, error_value
from .errors import ReferenceMelError
from .last_voice import dora_run
from .names import shown
from .service import UPSTREAM_SECONDS, Output, ReferenceMelService

log = logging.getLogger("dora_reference_mel")


def build_service(config: Config) -> ReferenceMelService:
    """Configure logging and MLX, build the service and warm MLX up (shared with the operator);
    `bad_config` when MEL_DEVICE asks for a device MLX does not have."""
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    device = select_device(config.device)
    service = ReferenceMelService(config, run=dora_run())  # under dora: keeps the last voice for a restart
    start = time.perf_counter()
    if device == "cpu" and resample.compiler_works():
        log.info("building MLX's CPU kernels for presets %s: the first start on a machine compiles them (about 15 s "
                 "on 2 cores), later starts load them from MLX's cache in %s (under a second)",
                 ",".join(p.name for p in config.presets), Path(tempfile.gettempdir()) / "mlx")
    elif device == "gpu" and cuda_kernels.available():
        log.info("compiling the CUDA resampling and framing kernels (about 3 s each on an H200, once per start; "
                 "they serve every rate and clip length)")
    # No event waits for a kernel build: clips at rates not warmed here resample uncompiled (same output).
    resample.compile_only(signal.warm_up(config.presets))
    log.info("ready on %s: presets %s, codes %s, warm-up %.0f ms, idle RSS %.0f MB", device,
             ",".join(p.name for p in config.presets), config.codes_dir, (time.perf_counter() - start) * 1e3,
             peak_rss_mb())
    return service


def configured_service(config_source=Config.from_env) -> ReferenceMelService:
    """The service built from the environment, or exit with one line naming the bad setting (no traceback)."""
    try:
        return build_service(config_source())
    except ReferenceMelError as err:  # before any event: say what to fix and stop
        # One line on stderr, on its own: the operator's runtime wraps the exit in a traceback of its own.
        print(f"dora-reference-mel: bad configuration [{err.code}]: {err.message}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def main() -> None:
    from dora import Node

    service = configured_service()
    node = Node()
    sent = collections.Counter()
    prewarm_transport(node, service)
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
             sent[MEL_OUTPUT], sent[ERROR_OUTPUT], sent[TEXT_OUTPUT], len(service.cache),
             service.cache.nbytes / 2**20, peak_rss_mb())


def peak_rss_mb() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
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
