"""Example GPT-SoVITS-side consumer: what a TTS node does with the reference-mel node's events.

It decodes each `mel` event with the contract helper (one import), prepares exactly what GPT-SoVITS
feeds its models at that boundary (`refer` [1, 704, T] for v2, the prompt codes int64 [1, 1, N],
the v3/v4 prompt mel trimmed to its last 468 / 500 frames), prints one line per event, writes a PNG
of each voice's spectrogram into OUT_DIR (`<voice>_<preset>.png`, replaced by a rerun), drops
duplicate answers (re-sent requests), and prints per-voice timing statistics at the end. Replace
the body of `feed_model` with your GPT-SoVITS call.
"""

from __future__ import annotations

import collections
import os
import sys
import time
import zlib

import numpy as np
from dora import Node

from dora_reference_mel.contract import (
    ERROR_OUTPUT,
    MEL_OUTPUT,
    ContractError,
    ReferenceMel,
    decode_error_event,
    decode_mel_event,
)


def feed_model(ref: ReferenceMel) -> dict[str, np.ndarray]:
    """The tensors GPT-SoVITS takes for this reference (here: returned, not fed)."""
    tensors = {"refer" if ref.preset == "v2" else "prompt_mel": (
        ref.spectrogram if ref.preset == "v2" else ref.prompt_mel())}
    if ref.codes is not None:
        tensors["prompt"] = ref.codes
    return tensors


def main() -> int:
    out_dir = os.environ.get("OUT_DIR", "../out/demo")
    write_png = os.environ.get("WRITE_PNG", "1") == "1"
    quiet = os.environ.get("QUIET", "0") == "1"  # soak runs: totals only
    seen: set[tuple[str, str]] = set()
    timings: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    counts = collections.Counter()
    received: list[ReferenceMel] = []
    node = Node()
    for event in node:
        if event["type"] != "INPUT":
            continue
        try:
            if event["id"] == ERROR_OUTPUT:
                body = decode_error_event(event)
                key = (body["request_id"], body.get("preset", "*"))
                counts["duplicate" if key in seen else "error"] += 1
                if key not in seen and not quiet:
                    print(f"consumer: error {body['error']}: {body['message']}")
                seen.add(key)
                continue
            if event["id"] not in (MEL_OUTPUT, "reference"):
                continue
            ref = decode_mel_event(event)
        except ContractError as err:
            counts["contract_violation"] += 1
            print(f"consumer: CONTRACT VIOLATION: {err}", file=sys.stderr)
            continue
        if (ref.request_id, ref.preset) in seen:
            counts["duplicate"] += 1
            continue
        seen.add((ref.request_id, ref.preset))
        counts["mel"] += 1
        latency_ms = (time.time() - ref.metadata["sent_at"]) * 1e3 if "sent_at" in ref.metadata else float("nan")
        timings[(ref.voice or "-", ref.source)].append(latency_ms)
        tensors = feed_model(ref)
        if quiet:
            continue
        shapes = " ".join(f"{k}{list(v.shape)}" for k, v in tensors.items())
        crc = zlib.crc32(ref.spectrogram.tobytes())
        end_to_end = f" end-to-end={latency_ms:.1f}ms" if "sent_at" in ref.metadata else ""  # the demo source stamps it
        print(f"consumer: voice={ref.voice or '-'} preset={ref.preset} source={ref.source} {shapes} crc={crc:08x} "
              f"node={ref.metadata['elapsed_ms']:.1f}ms{end_to_end}"
              + (f" warnings={list(ref.warnings)}" if ref.warnings else ""))
        if write_png:  # drawn after the stream ends (drawing here would delay the next events), from a copy:
            # holding dora's shared memory until then would keep the sender waiting for it at the end
            received.append((np.array(ref.spectrogram), ref.voice, ref.preset, ref.source, ref.layout, ref.metadata))
    event = ref = None  # the last event's value is dora's memory: give it back before drawing (seconds)
    print("consumer: per-voice end-to-end latency (ms): voice source count p50 p99")
    for (voice, source), values in sorted(timings.items()):
        print(f"consumer:   {voice:8s} {source:11s} {len(values):5d} {np.median(values):8.2f} "
              f"{np.percentile(values, 99):8.2f}")
    print(f"consumer: totals {dict(counts)}")
    if received:
        from dora_reference_mel.plot import save_spectrogram_png

        written = set()
        for spectrogram, voice, preset, source, layout, metadata in received:
            path = os.path.join(out_dir, f"{voice or 'unnamed'}_{preset}.png")  # one per voice: a rerun replaces it
            save_spectrogram_png(
                spectrogram, path, title=f"{voice or 'unnamed'} {preset} ({source})", preset=preset,
                sample_rate=metadata["sample_rate"], hop_length=metadata["hop_length"], n_fft=metadata["n_fft"],
                layout=layout)
            written.add(path)
        print(f"consumer: wrote {len(written)} PNGs to {out_dir}")
    return 1 if counts["contract_violation"] else 0


if __name__ == "__main__":
    sys.exit(main())
