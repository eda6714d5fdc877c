"""Writes placeholder semantic codes for the demo voices (models/codes/).

Real codes come from HuBERT and the SoVITS quantizer, whose weights cannot be downloaded here, so
these are seeded stand-ins with the real layout: one code per 20 ms of audio, values 0..1023.
aria gets the headerless int32 .bin, basil an int64 .npy (the dtype readers must honour), and
cleo none at all, so the demo shows codes_status "missing".
    python models/make_demo_codes.py
"""

from pathlib import Path

import numpy as np
import soundfile

here = Path(__file__).parent
(here / "codes").mkdir(exist_ok=True)
for seed, (voice, suffix) in enumerate([("aria", ".bin"), ("basil", ".npy")]):
    info = soundfile.info(str(here / "voices" / f"{voice}.wav"))
    codes = np.random.default_rng(seed).integers(0, 1024, size=int(info.duration * 50))
    path = here / "codes" / f"{voice}_codes{suffix}"
    if suffix == ".bin":
        path.write_bytes(codes.astype("<i4").tobytes())
    else:
        np.save(path, codes.astype(np.int64))
    print(path, codes.size, "codes")
