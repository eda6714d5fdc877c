"""Host<->device copy of one 10 s clip (1.9 MB in) and one v2 spectrogram (1.4 MB out): MLX vs torch.

    python benchmarks/copy_bandwidth.py      (on a machine with a GPU for MLX and torch)
"""

import mlx.core as mx
import numpy as np
import torch

from timing import median_ms

clip = np.random.default_rng(0).standard_normal(480_000).astype(np.float32)
spec = np.zeros((704, 500), np.float32)

mx.set_default_device(mx.gpu)
device_spec = mx.array(spec) + 1
mx.eval(device_spec)
torch_spec = torch.from_numpy(spec).cuda() + 1
rows = {
    "MLX   host->device 1.9 MB": median_ms(lambda: mx.eval(mx.array(clip) * 1), 50),
    "MLX   device->host 1.4 MB": median_ms(lambda: np.array(device_spec), 50),
    "torch host->device 1.9 MB": median_ms(lambda: (torch.from_numpy(clip).cuda() * 1).sum().item(), 50),
    "torch device->host 1.4 MB": median_ms(lambda: torch_spec.cpu().numpy(), 50),
}
for name, ms in rows.items():
    size = 1.9 if "host->device" in name else 1.4
    print(f"{name}: {ms:.3f} ms ({size / ms:.2f} GB/s)")
