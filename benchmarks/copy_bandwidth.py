"""Host<->device copies of one 10 s clip (1.9 MB in) and one v2 spectrogram (1.4 MB out): MLX as it copies
(managed pages faulted in by the first read), MLX with the DMA copies of cuda_kernels.copy_to_device /
copy_to_host, and torch. Also what a 12-byte table made on the host costs a kernel that reads it.

    python benchmarks/copy_bandwidth.py [--out FILE]     (on a machine with a GPU for MLX and torch)
"""

import argparse

import numpy as np
from lib.timing import add_out_argument, median_ms, metric, out_path, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_out_argument(parser, "copies")
    args = parser.parse_args()
    import mlx.core as mx
    import torch

    from dora_reference_mel.features import cuda_kernels

    clip = np.random.default_rng(0).standard_normal(480_000).astype(np.float32)
    spec = np.zeros((704, 500), np.float32)
    small = np.array([3, 2, 1], np.int32)
    mx.set_default_device(mx.gpu)
    device_spec = mx.array(spec) + 1
    mx.eval(device_spec)
    torch_spec = torch.from_numpy(spec).cuda() + 1
    resident_small = mx.array(small)
    mx.eval(resident_small + 1)
    rows = {  # `device_spec + 0`: a fresh result on the GPU each time, as a graph's output is
        "mlx_in_ms": ("MLX   host->device 1.9 MB", lambda: mx.eval(mx.array(clip) * 1)),
        "mlx_in_dma_ms": ("MLX   host->device 1.9 MB, DMA copy",
                          lambda: mx.eval(cuda_kernels.copy_to_device([clip]) * 1)),
        "mlx_out_ms": ("MLX   device->host 1.4 MB", lambda: np.array(device_spec + 0)),
        "mlx_out_dma_ms": ("MLX   device->host 1.4 MB, DMA copy", lambda: cuda_kernels.copy_to_host(device_spec + 0)),
        "torch_in_ms": ("torch host->device 1.9 MB", lambda: (torch.from_numpy(clip).cuda() * 1).sum().item()),
        "torch_out_ms": ("torch device->host 1.4 MB", lambda: (torch_spec + 0).cpu().numpy()),
        "host_table_ms": ("MLX   12 B table made on the host, read by a kernel", lambda: mx.eval(mx.array(small) + 1)),
        "device_table_ms": ("MLX   the same table kept on the device", lambda: mx.eval(resident_small + 1)),
    }
    metrics = {}
    for key, (label, fn) in rows.items():
        metrics[key] = metric(median_ms(fn, 50), "ms")
        print(f"{label}: {metrics[key]['value']:.3f} ms", flush=True)
    write_result(out_path(args.out, "copies"), "copies", metrics, repeats=50)


if __name__ == "__main__":
    main()
