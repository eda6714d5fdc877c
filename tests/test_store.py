"""Spectrogram files, sidecars and the one lookup (store.py), on real files."""

import json
import os

import numpy as np
import pytest
import xxhash

from dora_reference_mel import get_preset
from dora_reference_mel.store import ABSENT, CORRUPT, FRESH, STALE
from dora_reference_mel.store.library import Voice

V2, V4 = get_preset("v2"), get_preset("v4")


def test_mel_round_trip_with_sidecar(store, library):
    data = np.random.default_rng(0).random((704, 37), dtype=np.float32)
    voice = store.voice("aria")
    path = store.save(voice, V2, data, source_digest="abc", source_sample_rate=48000)
    assert path == library["codes_dir"] / "aria_mel.bin"
    assert path.stat().st_size == 704 * 37 * 4
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["shape"] == [704, 37] and sidecar["preset"] == "v2" and sidecar["fingerprint"] == V2.fingerprint
    assert sidecar["source_digest"] == "abc" and sidecar["recipe"]["magnitude_eps"] == 1e-8
    stored = store.lookup(voice, V2, digest="abc")
    assert stored.state == FRESH
    np.testing.assert_array_equal(stored.data, data)
    assert not stored.data.flags.writeable
    assert store.lookup(voice, V2, digest="other").state == STALE
    assert store.lookup(voice, V4, digest="abc").state == ABSENT
    v4 = store.save(voice, V4, data[:100], source_digest="abc", source_sample_rate=48000)
    assert v4.name == "aria_mel_v4.bin"
    assert not [f for f in os.listdir(library["codes_dir"]) if f.endswith(".tmp")]


def test_legacy_bin_without_sidecar(store, library):
    """Served only where there is no audio to compute from: nothing says which clip it was made from."""
    voice = store.voice("stranger")  # no voices.json entry, no ref_audio
    data = np.arange(704 * 3, dtype="<f4").reshape(704, 3)
    (library["codes_dir"] / "stranger_mel.bin").write_bytes(data.tobytes())
    found = store.lookup(voice, V2)
    assert found.state == FRESH and found.sidecar is None
    np.testing.assert_array_equal(found.data, data)
    assert store.lookup(voice, V2, digest="abc").state == STALE  # audio in hand: recompute, never guess
    (library["codes_dir"] / "stranger_mel.bin").write_bytes(data.tobytes()[:-4])
    found = store.lookup(voice, V2)
    assert found.state == CORRUPT and "multiple of 704" in found.reason


@pytest.mark.parametrize("damage", ["truncate", "flip", "nan", "sidecar"])
def test_corrupt_files_are_refused(store, library, damage):
    voice = store.voice("aria")
    data = np.ones((704, 10), np.float32)
    path = store.save(voice, V2, data, source_digest="x", source_sample_rate=48000)
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(blob[:-100])
    elif damage == "flip":
        blob[10] ^= 0xFF
        path.write_bytes(blob)
    elif damage == "nan":
        bad = data.copy()
        bad[3, 3] = np.nan
        path.write_bytes(bad.tobytes())
        sidecar = json.loads(path.with_suffix(".json").read_text())
        sidecar["data_digest"] = xxhash.xxh3_128_hexdigest(bad.tobytes())
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    else:
        path.with_suffix(".json").write_text("{not json")
    assert store.lookup(voice, V2, digest="x").state == CORRUPT


def test_symlink_out_of_the_codes_dir_is_read_and_never_written_through(store, library, tmp_path):
    """The codes directory is the owner's: a link the owner put there is read wherever it leads (a
    library kept on another disk); a write replaces the link itself, never the file it points to."""
    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(np.ones(704 * 2, "<f4").tobytes())
    codes = tmp_path / "codes.bin"
    codes.write_bytes(np.array([1, 2, 3], "<i4").tobytes())
    (library["codes_dir"] / "linked_mel.bin").symlink_to(elsewhere)
    (library["codes_dir"] / "linked_codes.bin").symlink_to(codes)
    found = store.lookup(store.voice("linked"), V2)
    assert found.fresh and found.data.shape == (704, 2)  # a legacy file (no sidecar), no audio to check it by
    assert store.load_codes(store.voice("linked")).tolist() == [1, 2, 3]
    store.save(Voice("linked"), V2, np.zeros((704, 1), np.float32), source_digest="x", source_sample_rate=1)
    assert elsewhere.read_bytes() == np.ones(704 * 2, "<f4").tobytes()
    assert not (library["codes_dir"] / "linked_mel.bin").is_symlink()


def test_stored_files_count_spectrograms_without_sidecar(store, library):
    codes = library["codes_dir"]
    store.save(store.voice("visitor"), V2, np.ones((704, 3), np.float32), source_digest="d", source_sample_rate=1)
    (codes / "legacy_mel.bin").write_bytes(np.ones((704, 2), "<f4").tobytes())  # the Rust port's layout
    (codes / "legacy_codes.bin").write_bytes(np.arange(4, dtype="<i4").tobytes())
    assert store.stored_files() == [("legacy", "v2", codes / "legacy_mel.bin"), ("visitor", "v2", codes / "visitor_mel.bin")]


def test_inspect_finds_the_voices_the_node_serves_from_the_codes_dir(library):
    """A voice written back for a reference_audio event, and a sidecar-less <voice>_mel.bin: the node serves
    both by name, so inspect shows both; a name with neither is unknown to both."""
    import subprocess

    import pyarrow as pa
    import soundfile

    from dora_reference_mel.config import Config
    from dora_reference_mel.node.service import ReferenceMelService
    from helpers import BIN, ROOT

    service = ReferenceMelService(Config.from_env(library["env"]))
    samples, rate = soundfile.read(str(ROOT / "models/voices/basil.wav"), dtype="float32")
    out = service.handle("reference_audio", pa.array(samples), {"sample_rate": rate, "voice": "visitor"})
    assert out[0].metadata["write_back"] == "written"
    (library["codes_dir"] / "legacy_mel.bin").write_bytes(np.ones((704, 20), "<f4").tobytes())
    for name in ("visitor", "legacy", "nobody"):
        served = service.handle("text", pa.array([f"VOICE:{name}|Hi."]), {})[0]
        inspected = subprocess.run([str(BIN / "reference-mel"), "inspect", name], capture_output=True, text=True,
                                   timeout=300, env={**os.environ, **library["env"]})
        if name == "nobody":
            assert served.output_id == "error" and json.loads(served.value[0].as_py())["error"] == "unknown_voice"
            assert inspected.returncode == 2 and "neither an audio file nor a voice" in inspected.stderr
        else:
            assert served.output_id == "mel" and served.metadata["source"] in ("precomputed", "cache")
            assert inspected.returncode == 0, inspected.stderr
            assert f"source     precomputed file {library['codes_dir'] / name}_mel.bin" in inspected.stdout


def _unlisted_writer(args):
    """One node process: reference_audio events for `count` new voices voices.json does not list."""
    import pyarrow as pa
    import soundfile

    from dora_reference_mel.config import Config
    from dora_reference_mel.node.service import ReferenceMelService
    from helpers import ROOT

    env, worker, count = args
    service = ReferenceMelService(Config.from_env(env))
    samples, rate = soundfile.read(str(ROOT / "models/voices/basil.wav"), dtype="float32", frames=16000)
    states = []
    for i in range(count):  # other samples each time: no cache hit
        out = service.handle("reference_audio", pa.array(samples * (1 - (2 * i + worker) / 1e4)),
                             {"sample_rate": rate, "voice": f"w{worker}v{i}"})
        states.append(out[0].metadata["write_back"])
    return states


@pytest.mark.slow
def test_two_node_processes_keep_one_bound_on_unlisted_voices(library):
    """The bound is the store's: two processes on one CODES_DIR together write files of at most 256
    voices voices.json does not list, sidecar-less .bin files already there counted."""
    import multiprocessing

    from dora_reference_mel.store.reference_store import MAX_UNLISTED_VOICES

    for i in range(56):
        (library["codes_dir"] / f"old{i}_mel.bin").write_bytes(np.ones((704, 2), "<f4").tobytes())
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_unlisted_writer, [(library["env"], w, 120) for w in range(2)])
    assert sum(states.count("written") for states in results) == MAX_UNLISTED_VOICES - 56
    assert all(set(states) == {"written", "skipped"} for states in results)
    names = {p.name.rsplit("_mel", 1)[0] for p in library["codes_dir"].iterdir()}
    assert len(names) == MAX_UNLISTED_VOICES


def test_a_second_kind_goes_through_the_resolver_and_the_store_unchanged(store, library):
    """A kind of artifact shaped like the semantic codes (int32 LE `<voice>_<suffix>.bin` with a sidecar, a
    fingerprint of its own) is computed, written back, then served from the store and the cache: the
    resolver and the store use only what ArtifactKind declares."""
    from dora_reference_mel.resolve import Request, Resolver
    from dora_reference_mel.store.kinds import ArtifactKind

    class FrameEnergy(ArtifactKind):  # one int32 per 40 ms of audio: the codes' rate and dtype
        name, fingerprint, file_suffix, dtype, what, layout = "energy", "energy-1", "_energy", "<i4", "energy", "[n]"

        def voice_path_key(self):
            return "energy_path"

        def recipe(self):
            return {"frame_seconds": 0.04}

        def max_bytes(self, max_ref_seconds):
            return int(max_ref_seconds * 25 + 1) * 4

        def shape_problem(self, shape, max_ref_seconds):
            return None if isinstance(shape, list) and len(shape) == 1 else f"shape={shape} is not [n]"

        def legacy(self, blob):
            return "has no sidecar"

        def check_length(self, n_samples, sample_rate):
            pass

        def compute(self, samples, sample_rate):
            frames = samples[: len(samples) // (sample_rate // 25) * (sample_rate // 25), 0].reshape(-1, sample_rate // 25)
            return (np.abs(frames).mean(axis=1) * 1000).astype(np.int32)

        def compute_batch(self, clips, sample_rates):
            return [self.compute(c, r) for c, r in zip(clips, sample_rates, strict=True)]

        def problem(self, data):
            return None

    kind, aria = FrameEnergy(), store.voice("aria")
    first = Resolver(store, cache_bytes=1 << 20).resolve(Request(aria, audio_path=aria.ref_audio), kind)
    assert (first.source, first.write_back) == ("computed", "written") and first.served.data.dtype == np.int32
    assert first.path == library["codes_dir"] / "aria_energy.bin" and first.path.stat().st_size == 250 * 4  # 10 s
    resolver = Resolver(store, cache_bytes=1 << 20)
    again = resolver.resolve(Request(aria, audio_path=aria.ref_audio), kind)
    assert again.source == "precomputed"
    np.testing.assert_array_equal(again.served.data, first.served.data)
    assert resolver.resolve(Request(aria, audio_path=aria.ref_audio), kind).source == "cache"
    assert store.lookup(aria, get_preset("v2")).state == ABSENT  # kinds keep to their own files


def test_a_file_of_another_recipe_is_recomputed_once_its_audio_is_read(library):
    """A v2 file made with MEL_RESAMPLER=torchaudio, from the very audio in hand, does not serve a node set to
    soxr_hq: matching samples do not make a file of another recipe fresh."""
    from dora_reference_mel.config import Config
    from dora_reference_mel.resolve import Request, Resolver
    from dora_reference_mel.store import ReferenceStore
    from dora_reference_mel.store.kinds import kind_of

    def resolved(resampler):
        config = Config.from_env({**library["env"], "MEL_RESAMPLER": resampler})
        store = ReferenceStore.from_config(config)
        voice = store.voice("cleo")
        return Resolver(store).resolve(Request(voice, audio_path=voice.ref_audio), kind_of(config.presets[0]))

    assert resolved("torchaudio").source == "computed"
    assert resolved("torchaudio").source == "precomputed"
    assert resolved("soxr_hq").source == "computed"
    assert resolved("soxr_hq").source == "precomputed"
