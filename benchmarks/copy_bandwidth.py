"""Host<->device copies of one 10 s clip (1.9 MB in) and one v2 spectrogram (1.4 MB out): MLX as it copies
(managed pages faulted in by the first read), MLX with the DMA copies of cuda_kernels.copy_to_device /
copy_to_host, and torch. Also what a 12-byte table made on the host costs a kernel that reads it.

    python benchmarks/copy_bandwidth.py      (on a machine with a GPU for MLX and torch)
"""

import mlx.core as mx
import numpy as np
import torch

from dora_reference_mel.features import cuda_kernels
from timing import median_ms

clip = np.random.default_rng(0).standard_normal(480_000).astype(np.float32)
spec = np.zeros((704, 500), np.float32)
small = np.array([3, 2, 1], np.int32)

mx.set_default_device(mx.gpu)
device_spec = mx.array(spec) + 1
mx.eval(device_spec)
torch_spec = torch.from_numpy(spec).cuda() + 1
resident_small = mx.array(small)
mx.eval(resident_small + 1)


def out_copied():
    result = device_spec + 0  # a fresh result on the GPU each time, as a graph's output is
    return cuda_kernels.copy_to_host(result)


rows = {
    "MLX   host->device 1.9 MB": (1.9, lambda: mx.eval(mx.array(clip) * 1)),
    "MLX   host->device 1.9 MB, DMA copy": (1.9, lambda: mx.eval(cuda_kernels.copy_to_device(clip) * 1)),
    "MLX   device->host 1.4 MB": (1.4, lambda: np.array(device_spec + 0)),
    "MLX   device->host 1.4 MB, DMA copy": (1.4, out_copied),
    "torch host->device 1.9 MB": (1.9, lambda: (torch.from_numpy(clip).cuda() * 1).sum().item()),
    "torch device->host 1.4 MB": (1.4, lambda: (torch_spec + 0).cpu().numpy()),
    "MLX   12 B table made on the host, read by a kernel": (None, lambda: mx.eval(mx.array(small) + 1)),
    "MLX   the same table kept on the device": (None, lambda: mx.eval(resident_small + 1)),
}
for name, (size, fn) in rows.items():
    ms = median_ms(fn, 50)
    print(f"{name}: {ms:.3f} ms" + (f" ({size / ms:.2f} GB/s)" if size else ""), flush=True)
