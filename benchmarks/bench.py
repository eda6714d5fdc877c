"""Benchmarks for BENCHMARKS.md: one process per part, interleaved with the peer, medians and ratios.

    python benchmarks/bench.py compute [--device cpu|gpu] [--settle-ms 50 | --block 10] [--compile]
                                                            MLX reference_mel vs the torch recipe
    python benchmarks/bench.py resident [--device cpu|gpu]  the device graph alone: samples already on the
                                                            device, the result left there (both sides)
    python benchmarks/bench.py batch   [--device cpu|gpu] [--frames-per-graph N] [--compile]
                                                            64 ten-second clips: read + reference_mel_batch
                                                            --compile (compute, batch): after the node's
                                                            warm-up, which builds the CPU's resampling kernels
                                                            (the library and `precompute` compile nothing)
    python benchmarks/bench.py node [--runs N]              real dataflow: latency per source vs transport
                                                            (.venv-dora04/bin/python ...: the same under dora 0.4)
    python benchmarks/bench.py all                          the three, as BENCHMARKS.md reports them

Needs the `bench` extra (torch: `pip install torch==2.13.0` is the CPU build here). Prints a table and
writes the one result format to --out (default benchmarks/results/<machine>/<part>.json; node under dora
0.4: node-dora04.json): each row's figures as metrics, the rows themselves under "rows". Timings include
the host copies both ways, for MLX and for torch.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
from lib.timing import ROOT, add_out_argument, dora_line_name, environment, median_of, metric, out_path, write_result

VOICE = ROOT / "models" / "voices" / "aria.wav"  # 10 s of speech at 48 kHz


def machine() -> str:
    """One line for the printed header: the machine and versions of timing.environment()."""
    env = environment()
    gpu = f", GPU {env['machine']['gpu']}" if env["machine"]["gpu"] else ""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    return f"{env['machine']['cpu']}, {env['machine']['cores']} cores{gpu}; {versions}; commit {env['commit']}"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def use_device(device: str, compile_kernels: bool = False):
    """Select MLX's device as the node does (features.backend.select: on the CPU, cpu_memory's allocator
    settings, which torch in this process shares) and return torch's device string for the same hardware.
    compile_kernels: then warm up as the node does (spectrogram.warm_up of v2, v3 and v4), so the rate pairs
    it builds resample through compiled kernels on a CPU, as in the node; without it the library's default,
    which compiles nothing (features/backend.py)."""
    import torch

    from dora_reference_mel import get_preset
    from dora_reference_mel.features import backend, spectrogram

    backend.select(device)
    if compile_kernels:
        spectrogram.warm_up([get_preset(name) for name in ("v2", "v3", "v4")])
    if device == "gpu":
        # A fair peer gives the recipe's numbers too: no TF32 in torch's convolutions and matmuls.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        return "cuda"
    return "cpu"


def bench_compute(device: str, repeats: int, settle_s: float = 0.0, block: int = 1,
                  compile_kernels: bool = False) -> list[dict]:
    """settle_s: a pause before each timed call, so neither side runs while the other's threads still
    spin (torch's OpenMP threads keep spinning for a while after a call, libgomp's default wait
    policy); each call then starts from an idle machine, as a voice switch does in a node.
    block: calls of one side in a row, the first of each block not counted, so each side is timed hot,
    right after its own previous call and not the other's (precompute's case: clip after clip).
    compile_kernels: see use_device."""
    import torch
    from lib import torch_recipe

    from dora_reference_mel import reference_mel

    torch_device = use_device(device, compile_kernels)
    samples, rate = soundfile.read(str(VOICE), dtype="float32")
    rows = []
    for preset in ("v2", "v3", "v4"):
        for seconds in (3, 10):
            clip = samples[: seconds * rate]

            def ours(clip=clip, preset=preset):
                return reference_mel(clip, rate, preset=preset)

            def peer(clip=clip, preset=preset):
                out = torch_recipe.reference_feature(torch.from_numpy(clip).to(torch_device), rate, preset)
                return out.cpu().numpy()

            diff = float(np.abs(ours() - peer()).max())
            for _ in range(3):  # warm-up: kernels, caches, allocator
                ours(), peer()
            # torch at its best: on the CPU its time with 1 and with 2 threads, the faster counts
            thread_counts = (1, 2) if device == "cpu" else (torch.get_num_threads(),)
            mlx_times, torch_times = [], {n: [] for n in thread_counts}
            for _ in range(max(1, repeats // block)):  # interleaved: all see the same machine noise
                calls = [(time.sleep(settle_s), timed(ours))[1] for _ in range(block)]
                mlx_times += calls[1:] if block > 1 else calls
                for n in thread_counts:
                    torch.set_num_threads(n)
                    calls = [(time.sleep(settle_s), timed(peer))[1] for _ in range(block)]
                    torch_times[n] += calls[1:] if block > 1 else calls
            best = min(thread_counts, key=lambda n: median_of(torch_times[n]))
            rows.append({"part": "compute", "device": device, "preset": preset, "seconds": seconds,
                         "mlx_ms": median_of(mlx_times), "torch_ms": median_of(torch_times[best]),
                         "ratio": median_of(mlx_times) / median_of(torch_times[best]), "max_abs_diff": diff,
                         "torch_threads": best, "torch_ms_by_threads": {n: median_of(t) for n, t in torch_times.items()},
                         "repeats": repeats, "settle_ms": settle_s * 1e3, "block": block})
            print(f"compute {device} {preset} {seconds:2d} s: MLX {rows[-1]['mlx_ms']:8.3f} ms  torch "
                  f"{rows[-1]['torch_ms']:8.3f} ms ({best} thr)  ratio {rows[-1]['ratio']:.2f}  |diff| {diff:.1e}",
                  flush=True)
    return rows


def bench_resident(device: str, repeats: int) -> list[dict]:
    """The graph alone: mono samples already on the device (and touched there once), the features left on
    it. MLX: `spectrogram.features_mx` and `mx.eval`; torch: the recipe and `torch.cuda.synchronize`."""
    import mlx.core as mx
    import torch
    from lib import torch_recipe

    from dora_reference_mel import get_preset
    from dora_reference_mel.features.spectrogram import features_mx

    torch_device = use_device(device)
    samples, rate = soundfile.read(str(VOICE), dtype="float32")
    rows = []
    for preset in ("v2", "v3", "v4"):
        for seconds in (3, 10):
            ours_in = mx.array(samples[: seconds * rate])
            mx.eval(ours_in * 1)  # the first touch moves the pages onto the device
            peer_in = torch.from_numpy(samples[: seconds * rate]).to(torch_device)
            recipe = get_preset(preset)

            def ours(x=ours_in, p=recipe):
                mx.eval(features_mx([x], [rate], p)[0])

            def peer(x=peer_in, p=preset):
                torch_recipe.reference_feature(x, rate, p)
                if torch_device == "cuda":
                    torch.cuda.synchronize()

            for _ in range(5):
                ours(), peer()
            mlx_times, torch_times = [], []
            for _ in range(repeats):  # interleaved
                mlx_times.append(timed(ours))
                torch_times.append(timed(peer))
            rows.append({"part": "resident", "device": device, "preset": preset, "seconds": seconds,
                         "mlx_ms": median_of(mlx_times), "torch_ms": median_of(torch_times),
                         "ratio": median_of(mlx_times) / median_of(torch_times), "repeats": repeats})
            print(f"resident {device} {preset} {seconds:2d} s: MLX {rows[-1]['mlx_ms']:7.3f} ms  torch "
                  f"{rows[-1]['torch_ms']:7.3f} ms  ratio {rows[-1]['ratio']:.2f}", flush=True)
    return rows


def bench_batch(device: str, clips: int, repeats: int, frames_per_graph: int | None = None,
                compile_kernels: bool = False) -> list[dict]:
    """frames_per_graph: the most frames reference_mel_batch puts in one MLX graph (default: the
    library's); smaller graphs let one graph's copies overlap the next one's compute. compile_kernels: see
    use_device."""
    import torch
    from lib import torch_recipe

    from dora_reference_mel import reference_mel_batch
    from dora_reference_mel.features import backend, spectrogram

    if frames_per_graph:
        spectrogram.CPU_FRAMES_PER_GRAPH = spectrogram.GPU_FRAMES_PER_GRAPH = frames_per_graph

    torch_device = use_device(device, compile_kernels)
    samples, rate = soundfile.read(str(VOICE), dtype="float32")
    folder = Path(tempfile.mkdtemp(prefix="bench-clips-"))
    try:
        paths = []
        for i in range(clips):  # distinct 10 s clips: shifted and scaled copies of the voice
            path = folder / f"clip{i:03d}.wav"
            soundfile.write(str(path), np.roll(samples, i * 4801) * (0.5 + i / (2 * clips)), rate, subtype="PCM_16")
            paths.append(path)

        def read_one(path):  # the files' own PCM: int16 halves what crosses to the device
            return soundfile.read(str(path), dtype="int16")[0]

        def read_all():  # in threads, as `reference-mel precompute --jobs` reads a library
            with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
                return list(pool.map(read_one, paths))

        def ours(dtype="float32"):
            return reference_mel_batch(read_all(), rate, preset="v2", dtype=dtype)

        def ours_half():  # float16 out: half the bytes back from the device
            return ours("float16")

        in_memory = read_all()

        def ours_in_memory():  # the clips already read: the copies and the compute alone
            return reference_mel_batch(in_memory, rate, preset="v2", dtype="float16")

        def ours_overlapped(dtype="float16", per_chunk=16):  # as `precompute` does: read chunk k + 1 meanwhile
            chunks = [paths[i:i + per_chunk] for i in range(0, len(paths), per_chunk)]
            out = []
            with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
                reading = [pool.submit(read_one, path) for path in chunks[0]]
                for k in range(len(chunks)):
                    clips = [future.result() for future in reading]
                    reading = [pool.submit(read_one, path) for path in chunks[k + 1]] if k + 1 < len(chunks) else []
                    out += reference_mel_batch(clips, rate, preset="v2", dtype=dtype)
            return out

        def ours_overlapped_float32():
            return ours_overlapped("float32")

        def peer():
            return [torch_recipe.reference_feature(torch.from_numpy(x).to(torch_device).float() / 32768, rate,
                                                   "v2").cpu().numpy() for x in read_all()]

        ours(), ours_half(), ours_overlapped(), ours_overlapped_float32(), ours_in_memory(), peer()
        mlx_times, half_times, overlapped_times, overlapped32_times, in_memory_times, torch_times = [], [], [], [], [], []
        for _ in range(repeats):
            mlx_times.append(timed(ours))
            half_times.append(timed(ours_half))
            overlapped_times.append(timed(ours_overlapped))
            overlapped32_times.append(timed(ours_overlapped_float32))
            in_memory_times.append(timed(ours_in_memory))
            torch_times.append(timed(peer))
        budget = spectrogram.CPU_FRAMES_PER_GRAPH if device == "cpu" else spectrogram.GPU_FRAMES_PER_GRAPH
        row = {"part": "batch", "device": device, "clips": clips, "clip_seconds": 10, "repeats": repeats,
               "frames_per_graph": budget, "compiled_pairs": sorted(backend.current().compiled_pairs),
               "mlx_clips_per_s": clips / statistics.median(mlx_times),
               "mlx_float16_clips_per_s": clips / statistics.median(half_times),
               "mlx_float16_overlapped_clips_per_s": clips / statistics.median(overlapped_times),
               "mlx_overlapped_clips_per_s": clips / statistics.median(overlapped32_times),
               "mlx_float16_in_memory_clips_per_s": clips / statistics.median(in_memory_times),
               "torch_clips_per_s": clips / statistics.median(torch_times),
               "read_only_clips_per_s": clips / statistics.median([timed(read_all) for _ in range(3)])}
        print(f"batch {device}: {clips} clips of 10 s, at most {budget} frames per graph, files read included: "
              f"MLX {row['mlx_clips_per_s']:.0f}/s, chunks of 16 read while the previous computes "
              f"{row['mlx_overlapped_clips_per_s']:.0f}/s "
              f"(float16 out {row['mlx_float16_clips_per_s']:.0f}/s; float16, chunks of 16 read while the previous "
              f"computes {row['mlx_float16_overlapped_clips_per_s']:.0f}/s; float16, clips already read "
              f"{row['mlx_float16_in_memory_clips_per_s']:.0f}/s), "
              f"torch one by one {row['torch_clips_per_s']:.0f}/s (reading alone {row['read_only_clips_per_s']:.0f}/s)",
              flush=True)
        return [row]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def voice_answer_metadata(voices: Path, codes_dir: Path) -> dict:
    """The metadata of the node's answer to the `voice` event "aria" (codes, ref_text, shape, ...), from
    the service itself (nothing written), for floors that answer with the node's bytes and metadata."""
    import pyarrow as pa

    from dora_reference_mel.config import Config
    from dora_reference_mel.node.service import ReferenceMelService

    service = ReferenceMelService(Config.from_env({"VOICES_CONFIG": str(voices), "CODES_DIR": str(codes_dir),
                                                   "PRIMESPEECH_MODEL_DIR": str(ROOT / "models"),
                                                   "MEL_WRITE_BACK": "0"}))
    (answer,) = (out for out in service.handle("voice", pa.array(["aria"]), {}) if out.output_id == "mel")
    return {k: v for k, v in answer.metadata.items() if k != "request_id"}


def bench_node(requests: int, log_level: str | None = None) -> list[dict]:
    """benchmarks/nodes/node_bench.yml with the real dora CLI; the source node does the measuring. log_level:
    LOG_LEVEL for the mel nodes (WARNING drops their per-event INFO line)."""
    work = Path(tempfile.mkdtemp(prefix="bench-node-"))
    try:
        (work / "hops").mkdir()
        env = dict(os.environ, BENCH_REQUESTS=str(requests), BENCH_STORE=str(work / "codes"),
                   BENCH_RESULT=str(work / "result.json"), BENCH_HOPS=str(work / "hops"),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        # A copy of the library: precompute records mel paths in voices.json, and the repo's must not change.
        voices = json.loads((ROOT / "models/voices.json").read_text())
        voices["models_base_path"] = str(ROOT / "models")
        (work / "voices.json").write_text(json.dumps(voices))
        subprocess.run([sys.executable, "-m", "dora_reference_mel.cli", "precompute", "--voices",
                        str(work / "voices.json"), "--codes-dir", str(work / "codes")],
                       env=env, check=True, capture_output=True)
        flow = (ROOT / "benchmarks/nodes/node_bench.yml").read_text()
        flow = flow.replace("VOICES_CONFIG: BENCH_ROOT/models/voices.json", f"VOICES_CONFIG: {work / 'voices.json'}")
        (work / "voice_answer.json").write_text(json.dumps(voice_answer_metadata(work / "voices.json", work / "codes")))
        flow = flow.replace("BENCH_VOICE_METADATA", str(work / "voice_answer.json"))
        flow = flow.replace("BENCH_ROOT", str(ROOT))
        flow = flow.replace("VOICES_CONFIG:", f"CODES_DIR: {work / 'codes'}\n      VOICES_CONFIG:")
        if log_level:
            flow = flow.replace("VOICES_CONFIG:", f"LOG_LEVEL: {log_level}\n      VOICES_CONFIG:")
        import dora

        if getattr(dora, "__version__", "1").startswith("0."):  # dora 0.4 has no per-node pool setting
            flow = "\n".join(line for line in flow.splitlines() if "shared_memory_pool_size" not in line) + "\n"
        (work / "node_bench.yml").write_text(flow)
        result = subprocess.run([str(Path(sys.executable).parent / "dora"), "run", "node_bench.yml"], cwd=work,
                                env=env, capture_output=True, text=True, timeout=1200)
        log = result.stdout + result.stderr
        if result.returncode != 0 or not (work / "result.json").exists():
            raise SystemExit(f"node benchmark failed:\n{log[-5000:]}")
        rows = json.loads((work / "result.json").read_text()) + hop_rows(work / "hops")
        for node in ("mel-cached", "mel-nocache", "mel-half"):
            ready = re.search(rf"{node}: .*ready on \w+: .*idle RSS (\d+) MB", log)
            stop = re.search(rf"{node}: .*stopping: .*cache (\d+) entries, ([\d.]+) MB; peak RSS (\d+) MB", log)
            if ready and stop:
                rows.append({"part": "memory", "node": node, "idle_rss_mb": int(ready.group(1)),
                             "cache_entries": int(stop.group(1)), "cache_mb": float(stop.group(2)),
                             "peak_rss_mb": int(stop.group(3))})
        for row in rows:
            print("node", json.dumps(row), flush=True)
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def median_over_runs(runs: list[list[dict]]) -> list[dict]:
    """One row per (part, source, node) of the node benchmark: every number the median over the runs,
    with each run's latency over its floor kept as `over_transport_runs_ms` (the run-to-run spread)."""
    if len(runs) == 1:
        return runs[0]
    merged = {}
    for rows in runs:
        for row in rows:
            merged.setdefault((row["part"], row.get("source"), row.get("node")), []).append(row)
    out = []
    for group in merged.values():
        row = dict(group[0], runs=len(group))
        for key, value in group[0].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = float(np.median([r[key] for r in group]))
            elif isinstance(value, dict):  # the transport row: a floor's p50, p99, n
                row[key] = {k: float(np.median([r[key][k] for r in group])) for k in value}
        if "over_transport_p50_ms" in row:
            row["over_transport_runs_ms"] = [r["over_transport_p50_ms"] for r in group]
        out.append(row)
    return out


HOPS = ("source's send", "to the node", "in the node", "node's send", "back to the source")


def hop_rows(folder: Path) -> list[dict]:
    """Each request's round trip cut where a process stamped it (CLOCK_MONOTONIC, one clock for all):
    the source around its send and at the answer, the answering node (hop_timer.py) at the hand-over
    and around its send. Medians per row of the latency table, for the node and its floor alike."""
    source = json.loads((folder / "source.json").read_text())
    nodes = {}
    for path in folder.glob("*.json"):
        if path.name != "source.json":
            nodes.update(json.loads(path.read_text()))
    cuts = {}
    for request_id, (row, start, sent, received) in source.items():
        stamps = nodes.get(request_id)
        if stamps is None or len(stamps) != 3:  # an answer that was not a timed send (none expected)
            continue
        handed, send_start, send_end = stamps
        edges = (start, sent, handed, send_start, send_end, received)
        cuts.setdefault(row, []).append([(b - a) / 1e6 for a, b in zip(edges, edges[1:], strict=False)])
    rows = []
    for row, values in cuts.items():
        medians = np.median(np.array(values), axis=0)
        rows.append({"part": "hops", "source": row, "n": len(values),
                     **{f"{hop}_p50_ms": float(m) for hop, m in zip(HOPS, medians, strict=True)}})
    return rows


IDENTITY = ("part", "preset", "seconds", "source", "node")  # the fields that say what a row measured
UNITS = {"_ms": ("ms", "lower"), "_per_s": ("clips/s", "higher"), "_mb": ("MB", "lower"), "ratio": ("x", "lower")}
SETTINGS = ("settle_ms", "payload_in_mb", "payload_out_mb")  # what a row was run with, not what it measured


def slug(value) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(value).lower()).strip("_")


def metrics_of_rows(rows: list[dict]) -> dict:
    """Each row's numbers as metrics, named by what the row measured: `compute_v2_3s_mlx_ms`,
    `node_cache_over_transport_p50_ms`, `hops_cache_in_the_node_p50_ms`, ..."""
    metrics = {}
    for row in rows:
        name = "_".join(slug(f"{row[k]}s" if k == "seconds" else row[k]) for k in IDENTITY if k in row)
        for key, value in row.items():
            unit = next((u for end, u in UNITS.items() if key.endswith(end)), None)
            if unit and key not in SETTINGS and isinstance(value, (int, float)):
                metrics[f"{name}_{slug(key)}"] = metric(value, *unit)
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("compute", "resident", "batch", "node", "all"))
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--frames-per-graph", type=int, help="batch: at most this many frames per MLX graph")
    parser.add_argument("--compile", action="store_true",
                        help="compute, batch: after the node's warm-up, which builds the CPU's resampling kernels")
    parser.add_argument("--settle-ms", type=float, default=0.0, help="compute: pause before each timed call")
    parser.add_argument("--block", type=int, default=1, help="compute: calls of one side in a row (first not counted)")
    parser.add_argument("--runs", type=int, default=1, help="node: dataflow runs; each row the median over runs")
    parser.add_argument("--log-level", help="node: LOG_LEVEL of the mel nodes (default: theirs, INFO)")
    add_out_argument(parser, "<part>")
    args = parser.parse_args(argv)
    try:
        import torch

        peer = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:  # the node benchmark has no torch peer: it runs in either dora line's venv
        peer = "no torch"
    try:
        import dora

        line = f"dora-rs {getattr(dora, '__version__', '?')}"
    except ImportError:  # compute and batch need no dora (the GPU machine has none)
        line = "no dora"
    print(f"machine: {machine()}; {peer}; {line}")
    rows = []
    if args.part in ("compute", "all"):
        rows += bench_compute(args.device, args.repeats, args.settle_ms / 1e3, args.block, args.compile)
    if args.part == "resident":
        rows += bench_resident(args.device, args.repeats)
    if args.part in ("batch", "all"):
        rows += bench_batch(args.device, args.clips, max(3, args.repeats // 6), args.frames_per_graph, args.compile)
    if args.part in ("node", "all"):
        rows += median_over_runs([bench_node(args.requests, args.log_level) for _ in range(args.runs)])
    name = dora_line_name(args.part) if args.part in ("node", "all") else args.part
    if args.compile and args.part in ("compute", "batch"):
        name += "-compiled"
    path = out_path(args.out, name)  # a result is named by its file (compute-idle.json: "compute-idle")
    write_result(path, path.stem, metrics_of_rows(rows), peer=peer, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
