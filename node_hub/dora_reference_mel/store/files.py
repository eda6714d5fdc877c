"""Reading and writing files safely: only regular files, opened without blocking, bounded in size,
confined to given folders where the path came from an event; writes by temporary file and rename."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..errors import ReferenceMelError
from ..limits import MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from .names import shown

log = logging.getLogger(__name__)

TEMP_PREFIX = ".rmel-"  # every temporary file this package writes; older ones are crash leftovers
LEFTOVER_AGE_S = 600  # a writer finishes in well under this; older temporaries belong to no one
SETTLED_NS = 2_000_000_000  # coarser than any file system's timestamp tick (FAT: 2 s)
# Decoded samples (frames x channels) a reference file may hold per second of MAX_REF_SECONDS: 48 kHz
# stereo. The header's rate, channels and length are each bounded, but their product is what decoding
# allocates (64 channels at 192 kHz for 59 s would be 5.8 GB of float32 from a 116 KiB OGG).
MAX_DECODED_SAMPLES_PER_SECOND = 96_000
# Why a path from an event is not read, whatever the cause (outside, missing outside, a link out, no
# permission): one wording, so that the answer tells nothing of the files outside the roots.
OUTSIDE_ROOTS = "is not a file inside the folders a CUSTOM path may lead into"


class StoreFileError(Exception):
    """A file the store may not or cannot read; `missing` when it simply is not there."""

    def __init__(self, path, reason: str, *, missing: bool = False):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.missing = path, reason, missing


@dataclasses.dataclass(frozen=True)
class FileStamp:
    """What fstat says of a file; equal stamps mean the same, unchanged file."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of_stat(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)

    @classmethod
    def of(cls, path: Path | None) -> FileStamp | None:
        try:
            return cls.of_stat(os.stat(path)) if path is not None else None
        except (OSError, ValueError):
            return None

    @classmethod
    def from_json(cls, value) -> FileStamp | None:
        if value is None:
            return None
        fields = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(value, dict) or sorted(value) != sorted(fields) or not all(is_int(v) for v in value.values()):
            raise ValueError(f"source_audio={str(value)[:80]} is not a stamp of {fields}")
        return cls(**value)


def settled(stamp: FileStamp) -> bool:
    """Whether a file's stamp is old enough to identify its content. A write within the file system's
    timestamp granularity of the last stat can leave size, mtime and ctime as they were (git's "racy
    timestamp" problem), so a stamp younger than SETTLED_NS is not trusted to say "unchanged"."""
    return time.time_ns() - max(stamp.mtime_ns, stamp.ctime_ns) > SETTLED_NS


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolved(path) -> str:
    """os.path.realpath of `path`, or StoreFileError when a link on the way cannot be read (a folder
    without search permission, /proc/<pid>/cwd of another user's process): the one path resolution."""
    try:
        return os.path.realpath(path)
    except (OSError, ValueError) as err:
        raise StoreFileError(path, f"cannot be resolved ({getattr(err, 'strerror', None) or err})") from None


def real_inside(real: str, roots: Iterable[Path]) -> bool:
    """Whether the resolved path `real` lies in one of `roots` (resolved too; one that cannot be is no root)."""
    for root in roots:
        with contextlib.suppress(StoreFileError):
            root = resolved(root)
            if os.path.commonpath([real, root]) == root:
                return True
    return False


def descriptor_path(fd: int) -> str | None:
    """Where the kernel says the file open on `fd` lies (Linux: /proc/self/fd, macOS: F_GETPATH), or
    None where the system cannot say."""
    try:
        if hasattr(fcntl, "F_GETPATH"):
            return os.fsdecode(fcntl.fcntl(fd, fcntl.F_GETPATH, bytes(1024)).split(b"\0", 1)[0])
        where = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return where if where.startswith("/") else None


def opened_inside(fd: int, st: os.stat_result, real: str, roots: Sequence[Path]) -> bool:
    """Whether the file open on `fd` (fstat `st`, opened as `real`) lies in one of `roots`, judged on the
    descriptor: a link or folder swapped in between the check of the path and its open cannot lead the
    read elsewhere. Where the system cannot name a descriptor's file, `real` is resolved again after the
    open and must still lead into the roots, to this very file (device and inode)."""
    where = descriptor_path(fd)
    if where is None:
        try:
            where = resolved(real)
            now = os.stat(where)
        except (StoreFileError, OSError):
            return False
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False
    return real_inside(where, roots)


@contextlib.contextmanager
def open_regular(path: Path, roots: Sequence[Path] | None, max_bytes: int):
    """An open binary file object for `path` and its FileStamp, or StoreFileError.

    Opened with O_NONBLOCK, so a FIFO cannot block; then fstat of the descriptor must say regular file
    and at most max_bytes. With `roots` (a path from an event), the path must resolve inside one of
    them; the resolved path is opened without following a link in its last part, and the descriptor's
    own file must lie inside the roots too: the file read is the file judged (OUTSIDE_ROOTS otherwise)."""
    path = Path(path)
    target, no_follow = path, 0
    if roots is not None:
        try:
            target = resolved(path)
        except StoreFileError:
            raise StoreFileError(path, OUTSIDE_ROOTS) from None
        if not real_inside(target, roots):
            raise StoreFileError(path, OUTSIDE_ROOTS)
        no_follow = getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | no_follow)
    except FileNotFoundError:
        raise StoreFileError(path, "does not exist", missing=True) from None
    except OSError as err:
        if no_follow and err.errno == errno.ELOOP:  # a link put in place since the path was resolved
            raise StoreFileError(path, OUTSIDE_ROOTS) from None
        raise StoreFileError(path, f"cannot be opened ({err.strerror})") from None
    except ValueError as err:
        raise StoreFileError(path, f"cannot be opened ({err})") from None
    try:
        st = os.fstat(fd)
        if roots is not None and not opened_inside(fd, st, target, roots):
            raise StoreFileError(path, OUTSIDE_ROOTS)
        if not stat.S_ISREG(st.st_mode):
            raise StoreFileError(path, "is not a regular file (a FIFO, device or folder); not read")
        if st.st_size > max_bytes:
            raise StoreFileError(path, f"holds {st.st_size} bytes, more than the {max_bytes} this file may hold")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        yield f, FileStamp.of_stat(st)


def read_regular(path: Path, roots: Sequence[Path] | None, max_bytes: int) -> tuple[bytes, FileStamp]:
    with open_regular(path, roots, max_bytes) as (f, stamp):
        try:  # the size fstat gave, plus one byte to see growth: asking for max_bytes would allocate it all
            blob = f.read(stamp.size + 1)
        except OSError as err:
            raise StoreFileError(path, f"cannot be read ({err})") from None
    if len(blob) != stamp.size:
        raise StoreFileError(path, f"changed while being read ({len(blob)} of {stamp.size} bytes)")
    return blob, stamp


def read_audio(path: Path, roots: Sequence[Path] | None, max_seconds: float, *,
               fix: str = "fix the path") -> tuple[np.ndarray, int, FileStamp]:
    """A reference audio file as float32 [n, channels], its rate and stamp; `bad_ref_audio` (or
    `too_long`) when it cannot serve, the message ending with `fix`. The header is checked before any
    sample is decoded: rate, channels, length and the decoded size they make (at most
    MAX_DECODED_SAMPLES_PER_SECOND x max_seconds samples) bound what decoding may allocate. Decoded from
    the descriptor open_regular checked, never reopened by name."""
    import soundfile

    def refuse(why: str, code: str = "bad_ref_audio"):
        return ReferenceMelError(code, f"ref_audio {shown(str(path))} {why}; {fix}")

    try:
        with open_regular(path, roots, max_bytes=1 << 40) as (f, stamp):
            try:
                info = soundfile.info(f)
                f.seek(0)
            except (RuntimeError, OSError, ValueError, TypeError) as err:  # LibsndfileError is a RuntimeError
                # its str() names the file object (<_io.BufferedReader name=49>), not the file
                why = (getattr(err, "error_string", None) or type(err).__name__)[:200]
                raise refuse(f"is not readable audio: not in a format libsndfile reads ({why}); convert it to one "
                             f"it reads: {audio_formats()}") from None
            if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
                raise refuse(f"declares {info.samplerate} Hz, outside {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz; "
                             "resample it to a standard rate such as 16000, 24000, 32000 or 48000 Hz", "bad_sample_rate")
            if info.frames <= 0 or not 0 < info.channels <= MAX_CHANNELS:
                raise refuse(f"declares {info.frames} frames of {info.channels} channels (at most {MAX_CHANNELS}); "
                             "use 3 to 10 s of mono or stereo speech")
            if info.frames > max_seconds * info.samplerate:
                raise refuse(f"is {info.frames / info.samplerate:.1f} s, over MAX_REF_SECONDS={max_seconds:g} "
                             "(use 3 to 10 s of speech, or raise MAX_REF_SECONDS)", "too_long")
            budget = int(max_seconds * MAX_DECODED_SAMPLES_PER_SECOND)
            if info.frames * info.channels > budget:
                raise refuse(
                    f"declares {info.channels} channels at {info.samplerate} Hz for {info.frames / info.samplerate:.1f} s: "
                    f"{info.frames * info.channels} samples, over the {budget} that MAX_REF_SECONDS={max_seconds:g} "
                    f"allows ({max_seconds:g} s of 48 kHz stereo); downmix it to mono or stereo and resample it "
                    "to 48 kHz or less (or raise MAX_REF_SECONDS)")
            try:
                samples, sample_rate = soundfile.read(f, dtype="float32", always_2d=True)
            except (RuntimeError, OSError, ValueError, TypeError, MemoryError) as err:
                raise refuse(f"is not readable audio ({str(err)[:200]}); convert it to WAV or FLAC") from None
    except StoreFileError as err:
        raise refuse(err.reason) from None
    if samples.shape[0] == 0:
        raise refuse("holds no samples")
    return samples, int(sample_rate), stamp


def audio_formats() -> str:
    """The formats the installed libsndfile reads, as a message lists them."""
    import soundfile

    return ", ".join(name for name in soundfile.available_formats() if name != "RAW")  # RAW has no header


def atomic_write(path: Path, data: bytes, *, like: os.stat_result | None = None) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one. The
    rename replaces whatever `path` named (a link, a FIFO): it never writes through it. `like`: the
    stat of the file being replaced, whose permission bits the new file keeps, and its owner where this
    process may give it (root, or the owner itself)."""
    path = Path(path)
    tmp = path.parent / f"{TEMP_PREFIX}{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            if like is not None:
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), like.st_uid, like.st_gid)
                os.fchmod(f.fileno(), stat.S_IMODE(like.st_mode))  # after chown, which may clear setuid bits
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_leftovers(folder: Path) -> int:
    """Remove temporary files that crashed writers left in `folder`: only ours, only regular files,
    only ones older than any live write. Returns how many."""
    removed, now = 0, time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not (entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(".tmp")):
            continue
        with contextlib.suppress(OSError):
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime > LEFTOVER_AGE_S:
                os.unlink(entry.path)
                removed += 1
    if removed:
        log.info("removed %d temporary files left by interrupted writes in %s", removed, folder)
    return removed
