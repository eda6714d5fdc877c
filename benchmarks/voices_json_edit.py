"""Time precompute's in-place edit of voices.json (`set_voice_fields`: lock, edit every voice's mel_path,
replace the file), for libraries of 10,000 and 80,000 voices.
    python benchmarks/voices_json_edit.py [--voices 10000 80000] [--out FILE]"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from lib.timing import add_out_argument, metric, out_path, write_result

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", type=int, nargs="+", default=[10_000, 80_000])
    add_out_argument(parser, "voices_json_edit")
    args = parser.parse_args()
    metrics = {}
    for n in args.voices:
        seconds = edit_seconds(n)
        print(f"{n} voices: every mel_path recorded in {seconds:.2f} s")
        metrics[f"edit_{n}_voices_s"] = metric(seconds, "s")
    write_result(out_path(args.out, "voices_json_edit"), "voices_json_edit", metrics)


if __name__ == "__main__":
    main()
