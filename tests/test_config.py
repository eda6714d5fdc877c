"""The configuration (config.py): every variable parsed once, typed and bounded; a bad value is one line
naming the variable and what it must be."""

import os
import subprocess
from pathlib import Path

import pytest

from dora_reference_mel.config import Config
from dora_reference_mel.errors import ReferenceMelError


@pytest.mark.node
def test_node_with_bad_configuration_says_what_to_fix():
    from helpers import BIN

    result = subprocess.run([str(BIN / "dora-reference-mel")], capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "MEL_PRESET": "v9"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("dora-reference-mel: bad configuration [bad_preset]")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("env, fragment", [
    ({"MEL_PRESET": "v9"}, "preset='v9'"), ({"MEL_PRESET": "v2,v2"}, "distinct"),
    ({"MEL_BINS": "abc"}, "MEL_BINS='abc'"), ({"MEL_CACHE_MB": "-1"}, "MEL_CACHE_MB='-1'"),
    ({"MEL_DEVICE": "tpu"}, "MEL_DEVICE='tpu'"), ({"MEL_RESAMPLER": "sinc"}, "resampler='sinc'"),
    ({"MEL_WRITE_BACK": "maybe"}, "MEL_WRITE_BACK='maybe'"), ({"MAX_REF_SECONDS": "nan"}, "MAX_REF_SECONDS"),
    ({"MEL_CACHE_MB": "inf"}, "MEL_CACHE_MB='inf'"), ({"LOG_LEVEL": "bogus"}, "LOG_LEVEL='bogus'"),
])
def test_bad_configuration_names_the_variable(env, fragment):
    with pytest.raises(ReferenceMelError) as err:
        Config.from_env(env)
    assert fragment in err.value.message and err.value.code in ("bad_config", "bad_preset")


def test_default_paths():
    config = Config.from_env({"PRIMESPEECH_MODEL_DIR": "/m"})
    assert str(config.codes_dir) == "/m/gpt-sovits-mlx/codes" and str(config.voices_config) == "/m/voices.json"
    config = Config.from_env({"CODES_DIR": "/c", "VOICES_CONFIG": "/v.json"})
    assert (str(config.codes_dir), str(config.voices_config)) == ("/c", "/v.json")


def test_the_cpu_reuses_freed_memory_where_glibc_runs_it():
    """On the CPU with glibc (cpu_memory): MLX's buffer cache is off once the device is selected, so freed
    buffers go back to glibc's heap, and the features are the same as with MLX's cache."""
    import platform
    import sys

    import mlx.core as mx

    if platform.libc_ver()[0] != "glibc" or mx.is_available(mx.gpu):
        pytest.skip("only glibc has mallopt, and a GPU's allocator serves MLX's CPU arrays too")
    code = ("import numpy as np, mlx.core as mx; from dora_reference_mel import reference_mel; "
            "from dora_reference_mel.features import backend, cpu_memory; "
            "x = np.random.default_rng(0).standard_normal(48000 * 3)"
            ".astype(np.float32) * 0.1; before = reference_mel(x, 48000, preset='v4'); assert mx.get_cache_memory() > 0; "
            "backend.select('cpu'); after = reference_mel(x, 48000, preset='v4'); "
            "print(cpu_memory.keep_freed_memory(), mx.get_cache_memory(), np.array_equal(before, after))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "0", "True"]


def test_blank_path_variables_mean_the_default():
    blank = Config.from_env({"PRIMESPEECH_MODEL_DIR": "/m", "CODES_DIR": " ", "VOICES_CONFIG": "\t",
                             "REF_AUDIO_ROOTS": " : "})
    assert (str(blank.codes_dir), str(blank.voices_config)) == ("/m/gpt-sovits-mlx/codes", "/m/voices.json")
    assert blank.ref_audio_roots == Config.from_env({"PRIMESPEECH_MODEL_DIR": "/m"}).ref_audio_roots
    assert blank.ref_audio_roots[0] == blank.model_dir
    assert Config.from_env({"PRIMESPEECH_MODEL_DIR": "  "}).model_dir == Config.from_env({}).model_dir
    assert Config.from_env({"REF_AUDIO_ROOTS": "/a: :/b"}).ref_audio_roots == (Path("/a"), Path("/b"))


def test_the_tool_with_blank_paths_uses_the_defaults_and_writes_no_blank_folder(library, tmp_path):
    """CODES_DIR=" " once made a folder named " " in the working folder; VOICES_CONFIG=" " hid every voice."""
    from helpers import BIN

    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PRIMESPEECH_MODEL_DIR": str(library["models"]), "CODES_DIR": " ", "VOICES_CONFIG": " ",
           "REF_AUDIO_ROOTS": " "}
    done = subprocess.run([str(BIN / "reference-mel"), "precompute"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 computed" in done.stdout
    assert sorted(p.name for p in (library["models"] / "gpt-sovits-mlx" / "codes").glob("*_mel.bin")) == [
        "aria_mel.bin", "basil_mel.bin", "cleo_mel.bin"]
    assert list(work.iterdir()) == []
