"""Writes placeholder semantic codes for the demo voices (models/codes/).

Real codes come from HuBERT and the SoVITS quantizer, whose weights cannot be downloaded here, so
these are seeded stand-ins with the real layout: one code per 20 ms of audio, values 0..1023, as
headerless little-endian int32 `.bin` files, the layout the Rust MLX reader expects (it reads every
value as 4 bytes). cleo gets none, so the demo shows codes_status "missing".
    python models/make_demo_codes.py
"""

from pathlib import Path

import numpy as np
import soundfile

here = Path(__file__).parent
(here / "codes").mkdir(exist_ok=True)
for seed, voice in enumerate(["aria", "basil"]):
    info = soundfile.info(str(here / "voices" / f"{voice}.wav"))
    codes = np.random.default_rng(seed).integers(0, 1024, size=int(info.duration * 50))
    path = here / "codes" / f"{voice}_codes.bin"
    path.write_bytes(codes.astype("<i4").tobytes())
    print(path, codes.size, "codes")
