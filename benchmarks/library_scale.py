"""A library of many voices: precompute throughput and memory, a precompute killed and resumed, the
node's start, and voice switches to random voices (first touches included), in one run.

    python benchmarks/library_scale.py [--voices 10000] [--switches 2000] [--kill-after 20]
                                       [--out benchmarks/results/<machine>/library_scale.json]

The first precompute is killed after --kill-after seconds; the second resumes it, and its throughput
is the figure (the voices it computes over its time).

Each voice is its own 1 s clip at 16 kHz (seeded noise, so every clip differs) with one alias and its
codes; the library is built in a temporary folder and removed afterwards.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import resource
import shutil
import signal as signals
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import soundfile
from lib.timing import add_out_argument, metric, out_path, write_result

TOOL = Path(sys.executable).parent / "reference-mel"


def build_library(folder: Path, n: int) -> dict:
    audio, codes = folder / "audio", folder / "codes"
    audio.mkdir(parents=True)
    codes.mkdir()
    rng = np.random.default_rng(0)
    voices = {}
    for i in range(n):
        name = f"voice{i:05d}"
        soundfile.write(str(audio / f"{name}.wav"), (rng.standard_normal(16000) * 0.1).astype(np.float32), 16000,
                        subtype="PCM_16")
        (codes / f"{name}_codes.bin").write_bytes(rng.integers(0, 1024, 50).astype("<i4").tobytes())
        voices[name] = {"ref_audio": f"audio/{name}.wav", "ref_text": "x", "aliases": [f"Voice {i}"]}
    (folder / "voices.json").write_text(json.dumps({"models_base_path": str(folder), "voices": voices}, indent=1))
    return {"PRIMESPEECH_MODEL_DIR": str(folder), "VOICES_CONFIG": str(folder / "voices.json"),
            "CODES_DIR": str(codes)}


def precompute(env: dict, kill_after: float | None = None) -> tuple[float, str, int]:
    """(seconds, stdout, peak RSS MB of the run); killed with SIGKILL after kill_after seconds when given."""
    start = time.perf_counter()
    proc = subprocess.Popen([str(TOOL), "precompute"], env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    if kill_after is not None:
        time.sleep(kill_after)
        os.kill(proc.pid, signals.SIGKILL)  # not proc.kill(): its poll() would reap the child before wait4
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (KiB on Linux)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, out, int(usage.ru_maxrss / 1024)


def node_start_and_switches(env: dict, n: int, switches: int) -> dict:
    """In-process, as the node starts: configuration, service, warm-up, the library's first load; then
    `voice` events by alias to random voices (most of them first touches of their stored files)."""
    import mlx.core as mx

    from dora_reference_mel.config import Config
    from dora_reference_mel.node.main import build_service

    os.environ.update(env)
    mx.set_default_device(mx.cpu)
    start = time.perf_counter()
    service = build_service(Config.from_env())
    first = service.handle("voice", pa.array(["Voice 0"]), {})
    started = time.perf_counter() - start
    assert first[0].metadata["source"] == "precomputed", first[0].metadata
    rng = random.Random(0)
    times, sources = [], collections.Counter()
    for _ in range(switches):
        name = f"Voice {rng.randrange(n)}"
        t = time.perf_counter()
        out = service.handle("voice", pa.array([name]), {})
        times.append(time.perf_counter() - t)
        sources[out[0].metadata.get("source", out[0].output_id)] += 1  # an error counts by its output id
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"start_s": started, "switch_p50_ms": float(np.median(times)) * 1e3,
            "switch_p99_ms": float(np.percentile(times, 99)) * 1e3, "sources": dict(sources), "rss_mb": rss}


def node_process_s(env: dict, folder: Path) -> float:
    """Seconds the real `dora-reference-mel` process takes, in dora's test mode, from its spawn to its exit
    after answering one `voice` event: Python's imports, configuration, warm-up and the library's first load."""
    inputs, outputs = folder / "inputs.json", folder / "outputs.jsonl"
    inputs.write_text(json.dumps({"id": "reference-mel", "events": [
        {"type": "Input", "id": "voice", "data": ["Voice 1"], "data_type": "Utf8", "time_offset_secs": 0.0},
        {"type": "Stop", "time_offset_secs": 0.0}]}))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DORA_")}
    full_env.update(env, DORA_TEST_WITH_INPUTS=str(inputs), DORA_TEST_WRITE_OUTPUTS_TO=str(outputs))
    start = time.perf_counter()
    subprocess.run([str(TOOL.parent / "dora-reference-mel")], env=full_env, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    assert json.loads(outputs.read_text().splitlines()[0])["id"] == "mel"
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", type=int, default=10_000)
    parser.add_argument("--switches", type=int, default=2000)
    parser.add_argument("--kill-after", type=float, default=20.0, help="seconds before the first precompute is killed")
    add_out_argument(parser, "library_scale")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="library-scale-"))
    try:
        env = build_library(folder, args.voices)
        seconds, out, peak = precompute(env)  # the whole library, uninterrupted: throughput and memory
        full = int(re.search(r"precompute: (\d+) computed", out).group(1))
        for stored in Path(env["CODES_DIR"]).glob("*_mel*"):  # an empty store again (the codes stay)
            stored.unlink()
        killed_after = args.kill_after
        precompute(env, kill_after=killed_after)  # killed part way: files are written voice by voice
        done_before = len(list(Path(env["CODES_DIR"]).glob("*_mel.json")))
        _, out, _ = precompute(env)
        summary = re.search(r"precompute: (\d+) computed, (\d+) up to date, (\d+) failed", out)
        computed, up_to_date, failed = map(int, summary.groups())
        print(f"precompute of {args.voices} voices: {full} computed in {seconds:.1f} s ({full / seconds:.0f} voices/s), "
              f"peak RSS {peak} MB; again from an empty store, killed after {killed_after:.0f} s with {done_before} "
              f"written, then resumed: {computed} computed, {up_to_date} up to date, {failed} failed")
        process_s = node_process_s(env, folder)
        node = node_start_and_switches(env, args.voices, args.switches)
        print(f"node process, spawn to exit after one answer: {process_s:.2f} s")
        print(f"node start (config, warm-up, first switch): {node['start_s']:.2f} s; {args.switches} switches to "
              f"random voices of {args.voices}: p50 {node['switch_p50_ms']:.2f} ms, p99 {node['switch_p99_ms']:.2f} "
              f"ms, sources {node['sources']}; RSS {node['rss_mb']:.0f} MB")
        write_result(out_path(args.out, "library_scale"), "library_scale", {
            "precompute_voices_per_s": metric(full / seconds, "voices/s", "higher"),
            "precompute_peak_rss_mb": metric(peak, "MB"),
            "node_start_s": metric(node["start_s"], "s"),
            "node_process_s": metric(process_s, "s"),
            "switch_p50_ms": metric(node["switch_p50_ms"], "ms"),
            "switch_p99_ms": metric(node["switch_p99_ms"], "ms"),
            "node_rss_mb": metric(node["rss_mb"], "MB"),
        }, voices=args.voices, switches=args.switches, resumed={"written_before_kill": done_before,
                                                                "computed": computed, "up_to_date": up_to_date,
                                                                "failed": failed}, sources=node["sources"])
        return 0 if failed == 0 and computed + up_to_date == args.voices else 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
