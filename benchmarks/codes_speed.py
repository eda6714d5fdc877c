"""Prompt codes of one reference clip (models/voices/aria.wav: 10 s, the longest upstream takes), three ways,
on chinese-hubert-base's architecture with seeded random weights (speed does not depend on the values):

- mlx:   dora_reference_mel.models on MLX's ops (the path of GPUs and macOS);
- numpy: the same model on NumPy, products through its BLAS (the path where MLX computes on a Linux CPU);
- torch: transformers' HubertModel, ssl_proj and the upstream quantizer (tests/oracle_codes.py), at each
         thread count from 1 to the CPU count, the best one reported.

Each backend's stages are timed alone too (`stages`). Then the node's service answering a repeated
`reference_audio` of the clip from its cache, with the codes model (the mel and the codes both cache hits)
and without (the mel alone), medians over 200 calls.

Prints the median seconds of each (after one warm-up run) and the codes' agreement with torch, and writes
them in the one result format to --out (default benchmarks/results/<machine>/codes_speed.json). Needs the
test extra (torch, transformers, einops) and the package index once (the wheel
that carries GPT-SoVITS's quantizer). python benchmarks/codes_speed.py [--repeats 3] [--skip mlx] [--out f]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np
import soundfile as sf
from lib.timing import ROOT, add_out_argument, median_ms, metric, out_path, write_result

sys.path.insert(0, str(ROOT / "tests"))

from oracle_codes import UpstreamCodes, unpack_upstream  # noqa: E402

from dora_reference_mel.models import load_codes_model, to_16k_mono  # noqa: E402


def median_seconds(run, repeats: int) -> tuple[float, object]:
    """The median seconds of `run()` after a warm-up call (first-call allocations, thread pools), and its result."""
    results = []
    return median_ms(lambda: results.append(run()), repeats) / 1e3, results[-1]


def cache_hits(hubert: Path, sovits: Path, samples: np.ndarray, rate: int, tmp: Path) -> dict:
    """Milliseconds of a repeated reference_audio answered from the node's cache, with and without codes."""
    import pyarrow as pa

    from dora_reference_mel.config import Config
    from dora_reference_mel.node.service import ReferenceMelService

    env = {"PRIMESPEECH_MODEL_DIR": str(ROOT / "models"), "VOICES_CONFIG": str(ROOT / "models" / "voices.json"),
           "CODES_DIR": str(tmp / "codes"), "MEL_WRITE_BACK": "0", "MEL_CACHE_MB": "64"}
    clip, figures = pa.array(samples.reshape(-1)), {}
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    for name, extra in (("with_codes", {"HUBERT_WEIGHTS": str(hubert), "SOVITS_WEIGHTS": str(sovits)}),
                        ("without_codes", {"MEL_CODES": "off"})):
        service = ReferenceMelService(Config.from_env({**env, **extra}))
        answer = service.handle("reference_audio", clip, {"sample_rate": rate, "channels": channels})[0].metadata
        assert answer["source"] == "computed", answer
        figures[f"cache_hit_{name}_ms"] = median_ms(
            lambda service=service: service.handle("reference_audio", clip, {"sample_rate": rate, "channels": channels}),
            200)
        repeat = service.handle("reference_audio", clip, {"sample_rate": rate, "channels": channels})[0].metadata
        assert repeat["source"] == "cache" and repeat.get("codes_status") in ("cache", None), repeat
    print(f"cache hit, 10 s at 48 kHz: {figures['cache_hit_with_codes_ms']:.3f} ms with codes, "
          f"{figures['cache_hit_without_codes_ms']:.3f} ms without", flush=True)
    return figures


def stages(model, wav16k: np.ndarray, repeats: int) -> dict:
    """Seconds of each stage of the model alone (its input evaluated before, its output after): the
    convolutional features, the projection with the positional convolution, the transformer layers, and
    ssl_proj with the codebook search."""
    from dora_reference_mel.models.codes_model import prompt_samples

    hubert = model.hubert
    samples = hubert.ops.array(prompt_samples(wav16k, model.sovits_rate))
    features = hubert.features(samples)
    encoder_input = hubert.encoder_input(features)
    hidden = hubert.encoder(encoder_input)
    hubert.ops.evaluate(features, encoder_input, hidden)
    timed = {"features": lambda: hubert.features(samples), "positional": lambda: hubert.encoder_input(features),
             "layers": lambda: hubert.encoder(encoder_input), "codebook": lambda: model.codes_of_hidden(hidden)}
    return {name: median_ms(run, repeats) / 1e3 for name, run in timed.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", action="append", default=[], choices=["mlx", "numpy", "torch"])
    add_out_argument(parser, "codes_speed")
    parser.add_argument("--upstream", type=Path, help="GPT_SoVITS folder already unpacked by oracle_codes.unpack_upstream "
                        "(where the package index is out of reach)")
    args = parser.parse_args()

    import torch
    from transformers import HubertConfig

    samples, rate = sf.read(ROOT / "models" / "voices" / "aria.wav", dtype="float32")
    wav16k = to_16k_mono(samples, rate)
    with tempfile.TemporaryDirectory() as tmp:
        upstream = args.upstream or unpack_upstream(Path(tmp))
        if upstream is None:
            sys.exit("codes_speed: cannot download gpt-sovits-cpufast (its quantizer is the torch peer's)")
        reference = UpstreamCodes(HubertConfig(), upstream)
        hubert, sovits = reference.save(Path(tmp) / "weights")
        results = {"clip_seconds": len(wav16k) / 16000, "mlx_device": str(mx.default_device()),
                   "MLX_ENABLE_TF32": os.environ.get("MLX_ENABLE_TF32", "unset (on)")}
        torch_hidden, torch_codes = reference.hidden_and_codes(wav16k)
        results.update(cache_hits(hubert, sovits, samples, rate, Path(tmp)))
        for backend in ("mlx", "numpy"):
            if backend in args.skip:
                continue
            model = load_codes_model(hubert, sovits, backend=backend)
            seconds, codes = median_seconds(lambda model=model: model.codes(wav16k), args.repeats)
            results[f"{backend}_s"] = round(seconds, 4)
            for stage, stage_seconds in stages(model, wav16k, args.repeats).items():
                results[f"{backend}_{stage}_s"] = round(stage_seconds, 4)
            agree = results[f"{backend}_codes_equal_to_torch"] = float(np.mean(codes == torch_codes))
            hidden = np.array(model.hidden_states(wav16k))
            diff = results[f"{backend}_hidden_max_diff"] = float(np.abs(hidden - torch_hidden).max())
            print(f"{backend}: {seconds:.2f} s median, {agree:.1%} of codes equal to torch's, hidden states "
                  f"within {diff:.1e}", flush=True)
        if "torch" not in args.skip:
            by_threads = {}
            for threads in range(1, (os.cpu_count() or 1) + 1):
                torch.set_num_threads(threads)
                by_threads[threads], _ = median_seconds(lambda: reference.hidden_and_codes(wav16k), args.repeats)
                print(f"torch, {threads} threads: {by_threads[threads]:.2f} s median", flush=True)
            best = min(by_threads, key=by_threads.get)
            results.update(torch_s=round(by_threads[best], 4), torch_threads=best)
            if torch.cuda.is_available():  # the same model in float32 on the GPU

                def on_gpu():
                    out = reference.hidden_and_codes(wav16k)
                    torch.cuda.synchronize()
                    return out

                reference.to("cuda")
                seconds, (_, codes) = median_seconds(on_gpu, args.repeats)
                results.update(torch_cuda_s=round(seconds, 4), torch_cuda_codes_equal=float(np.mean(codes == torch_codes)))
                print(f"torch, cuda: {seconds:.3f} s median", flush=True)
    print(json.dumps(results))
    units = {"_s": ("s", "lower"), "_equal_to_torch": ("fraction", "higher"), "_codes_equal": ("fraction", "higher"),
             "_max_diff": ("abs", "lower"), "_ms": ("ms", "lower")}
    metrics = {key: metric(value, *unit) for key, value in results.items()
               for end, unit in units.items() if key.endswith(end) and key != "clip_seconds"}
    write_result(out_path(args.out, "codes_speed"), "codes_speed", metrics,
                 **{k: v for k, v in results.items() if k not in metrics})


if __name__ == "__main__":
    main()
