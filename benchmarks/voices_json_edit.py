"""Time precompute's in-place edit of voices.json (`set_voice_fields`: lock, edit every voice's mel_path,
replace the file), for libraries of 10,000 and 80,000 voices.  python benchmarks/voices_json_edit.py"""

import json
import sys
import tempfile
import time
from pathlib import Path

from dora_reference_mel.store.library import VoiceLibrary


def edit_seconds(n_voices: int) -> float:
    voices = {f"voice{i}": {"ref_audio": f"audio/voice{i}.wav", "ref_text": "x", "aliases": [f"Voice {i}"]}
              for i in range(n_voices)}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "voices.json"
        path.write_text(json.dumps({"voices": voices}, indent=2))
        updates = {name: {"mel_path": f"gpt-sovits-mlx/codes/{name}_mel.bin"} for name in voices}
        started = time.perf_counter()
        VoiceLibrary(path).set_voice_fields(updates)
        return time.perf_counter() - started


if __name__ == "__main__":
    for n in map(int, sys.argv[1:] or ["10000", "80000"]):
        print(f"{n} voices: every mel_path recorded in {edit_seconds(n):.2f} s")
