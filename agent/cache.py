"""Content-addressed artifact cache: verified by sha256, written atomically, capped in size, LRU-evicted.

Layout under the cache directory:
    artifacts/<sha256>      complete, verified artifacts (mtime = last use, so LRU order survives restarts)
    incoming/<sha256>.part  bytes of an upload in progress or interrupted (resumable; counted in the cap)
"""
from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import re
import shutil
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .proto import agent_pb2 as pb

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: The only names the cache's folders hold; anything else found there (lost+found, a user's file) is left alone.
ENTRY_RE = re.compile(r"^[0-9a-f]{64}(\.part)?$")
# Interrupted uploads older than this are dropped: nobody is coming back for them.
PARTIAL_MAX_AGE_S = 3600.0
TFLITE_MAGIC = b"TFL3"
#: How much of an artifact's start tells its format (a torch spec may begin with whitespace).
SNIFF_BYTES = 64 * 1024
#: The largest torch spec accepted. A spec is parsed whole in the agent's own process (json.loads takes ~27
#: bytes of memory per byte of JSON), and real ones are about 1 KB.
MAX_SPEC_BYTES = 1 << 20


class CacheError(Exception):
    """An upload or lookup that must be refused; `code` is the gRPC status name to answer with."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class FolderLock:
    """An exclusive lock on `<folder>/agent.lock` for as long as the agent runs (the system releases it however
    the agent ends): two agents on one folder would each keep the cap for itself, and evict the other's uploads.
    A clean-up that removes the folder takes the locked file with it; the cache then locks the file of the folder
    it makes again (`keep`), or stops using the folder if another agent got to it first."""
    NAME = "agent.lock"

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.NAME
        self._handle = None
        self._guard = threading.Lock()  # two threads locking the file again at once would refuse each other

    @classmethod
    def hold(cls, folder: Path) -> "FolderLock | None":
        """The folder's lock, held; ValueError when another agent holds it; None without advisory locks (not on
        POSIX: one agent per folder is then the user's care)."""
        if importlib.util.find_spec("fcntl") is None:
            return None
        lock = cls(folder)
        if not lock.keep():
            raise ValueError(f"another agent uses the cache folder {folder}; give each agent its own --cache-dir")
        return lock

    def take(self) -> bool:
        """Locks the folder's lock file (made if missing); False when another process holds it."""
        import fcntl

        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        except OSError:  # no locks on this file system (ENOLCK): not a lock held by anyone
            handle.close()
            raise
        if self._handle is not None:
            self._handle.close()
        self._handle = handle
        return True

    def keep(self) -> bool:
        """Whether this agent still holds the folder's lock: locks the file again, making the folder again, where
        the folder was removed; False when another agent holds the new one."""
        with self._guard:
            if self.still_ours():
                return True
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self.take()

    def still_ours(self) -> bool:
        """Whether the file this lock holds is still the folder's (not one removed with the folder)."""
        if self._handle is None:
            return False
        try:
            now, held = os.stat(self.path), os.fstat(self._handle.fileno())
        except FileNotFoundError:
            return False
        return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


@dataclass
class Upload:
    """One upload in progress: appends to the partial file and hashes as it goes."""
    sha256: str
    size_bytes: int
    format: int
    part: Path
    hasher: "hashlib._Hash"
    received: int
    handle: object
    resumed_at: int = 0     # the offset an interrupted upload was resumed from; 0: sent whole
    ended: bool = False


def check_sha256(sha256: str) -> str:
    if not SHA256_RE.match(sha256 or ""):
        raise CacheError("INVALID_ARGUMENT", f"sha256 must be 64 lowercase hex digits, got {sha256!r:.80}")
    return sha256


def sniff_format(head: bytes) -> int:
    """The artifact format from its first bytes (SNIFF_BYTES of them are read; callers may pass more): TFLite has
    a magic tag, a torch spec is a JSON object."""
    if head[4:8] == TFLITE_MAGIC:
        return pb.ARTIFACT_FORMAT_TFLITE
    if head[:SNIFF_BYTES].lstrip()[:1] == b"{":
        return pb.ARTIFACT_FORMAT_TORCH_SPEC
    return pb.ARTIFACT_FORMAT_ONNX


class ArtifactCache:
    def __init__(self, root: Path, max_bytes: int, max_artifact_bytes: int, folder_lock: FolderLock | None = None):
        self.root = Path(root)
        self.folder_lock = folder_lock
        self.max_bytes = max_bytes
        # An artifact larger than the whole cache could never be stored: that is its real limit.
        self.max_artifact_bytes = min(max_artifact_bytes, max_bytes)
        self.done_dir = self.root / "artifacts"
        self.part_dir = self.root / "incoming"
        self._make_dirs()
        self._lock = threading.Lock()
        # Uploads in progress, by sha256, with the bytes each will take once complete (its declared size).
        self._uploading: dict[str, int] = {}
        self._pins: dict[str, int] = {}
        for stray in self.done_dir.glob(".*.tmp"):  # a crash between write and rename
            stray.unlink(missing_ok=True)

    # ----- queries -------------------------------------------------------------------------------
    def path(self, sha256: str) -> Path:
        return self.done_dir / check_sha256(sha256)

    def has(self, sha256: str) -> pb.HasArtifactResponse:
        check_sha256(sha256)  # before it names a file
        self._hold_folder()
        # Without the lock, files come and go while we look: the partial is looked at first, so that one
        # committed meanwhile is then found in place, and a file gone between two looks counts as absent.
        offset = _size(self.part_dir / f"{sha256}.part") or 0
        size = _size(self.path(sha256))
        if size is not None:
            return pb.HasArtifactResponse(present=True, size_bytes=size)
        return pb.HasArtifactResponse(resume_offset_bytes=offset)

    def used_bytes(self) -> int:
        return sum(size for _, size, _ in self._stats())

    def _make_dirs(self) -> None:
        """The cache's folders, made again where they went (a clean-up that removed the cache directory while
        the agent ran): uploads then go on instead of failing until the agent is restarted."""
        self._hold_folder()  # first: nothing is made in a folder another agent took
        try:
            self.done_dir.mkdir(parents=True, exist_ok=True)
            self.part_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _storage_error(exc, "cannot make the cache's folders") from exc

    def _hold_folder(self) -> None:
        """UNAVAILABLE where another agent took the cache folder over after it was removed (`FolderLock`): what
        it holds is that agent's to evict, so this one neither reads nor writes there any more."""
        if self.folder_lock is None:
            return
        try:
            kept = self.folder_lock.keep()
        except OSError as exc:
            raise _storage_error(exc, "cannot lock the cache folder") from exc
        if not kept:
            raise CacheError("UNAVAILABLE", f"another agent took the cache folder {self.root} over after it was "
                                            "removed: this agent no longer uses it; restart it with a --cache-dir "
                                            "of its own")

    # ----- upload --------------------------------------------------------------------------------
    def begin(self, header: pb.ArtifactHeader) -> Upload | None:
        """Starts (or resumes) an upload; None when the artifact is already cached."""
        sha = check_sha256(header.sha256)
        if header.format not in pb.ArtifactFormat.values():
            raise CacheError("INVALID_ARGUMENT", f"unknown artifact format {header.format}")
        if header.size_bytes == 0:
            raise CacheError("INVALID_ARGUMENT", "size_bytes must be positive: an empty artifact is not a model")
        if header.size_bytes > self.max_artifact_bytes:
            raise CacheError("INVALID_ARGUMENT", f"artifact of {header.size_bytes} bytes exceeds this agent's "
                                                 f"limit of {self.max_artifact_bytes} bytes")
        if header.format == pb.ARTIFACT_FORMAT_TORCH_SPEC:  # refused before a byte is sent
            _check_spec_size(header.size_bytes)
        part = self.part_dir / f"{sha}.part"
        with self._lock:
            self._make_dirs()
            # One look: another upload of the same artifact may be moving it into place right now.
            found = _lstat(self.path(sha))
            if found is not None and not stat.S_ISREG(found.st_mode):
                raise CacheError("FAILED_PRECONDITION", f"the agent's cache holds {self.path(sha)}, which is not an "
                                                        "artifact file (a folder or a link): remove it on the device")
            if found is not None:
                self._touch(self.path(sha))
                return None
            if sha in self._uploading:
                raise CacheError("ABORTED", f"another upload of {sha} is in progress; retry when it ends")
            have = _size(part) or 0
            if header.offset_bytes not in (0, have):
                raise CacheError("ABORTED", f"resume offset {header.offset_bytes} does not match the "
                                                        f"{have} bytes received so far; ask HasArtifact again")
            # Room for the whole artifact is taken now, before its bytes arrive, so that uploads running side
            # by side cannot together overshoot the cap.
            self._make_room(header.size_bytes, keep=sha)
            self._uploading[sha] = header.size_bytes
        try:
            return self._open_part(sha, header, part)
        except BaseException:
            with self._lock:
                self._uploading.pop(sha, None)
            raise

    def _open_part(self, sha: str, header: pb.ArtifactHeader, part: Path) -> Upload:
        hasher = hashlib.sha256()
        try:
            if header.offset_bytes:
                with part.open("rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        hasher.update(block)
            # Unbuffered: what has arrived is on disk, so HasArtifact reports the true resume offset.
            handle = part.open("ab" if header.offset_bytes else "wb", buffering=0)
        except OSError as exc:
            raise _storage_error(exc, "cannot write the artifact") from exc
        return Upload(sha, header.size_bytes, header.format, part, hasher, header.offset_bytes, handle,
                      resumed_at=header.offset_bytes)

    def write(self, upload: Upload, data: bytes) -> None:
        if upload.received + len(data) > upload.size_bytes:
            self.abort(upload, keep_partial=False)
            raise CacheError("INVALID_ARGUMENT", f"upload sent more than the declared {upload.size_bytes} bytes")
        try:
            view = memoryview(data)
            while view:  # an unbuffered write may take fewer bytes than given (a disk filling up): go on
                view = view[upload.handle.write(view):]
        except OSError as exc:
            self.abort(upload, keep_partial=False)
            raise _storage_error(exc, "cannot write the artifact") from exc
        upload.hasher.update(data)
        upload.received += len(data)

    def commit(self, upload: Upload) -> None:
        """Verifies the upload and moves it into the cache atomically, or removes it."""
        try:
            if upload.received != upload.size_bytes:
                raise CacheError("INVALID_ARGUMENT", f"upload ended after {upload.received} of "
                                                     f"{upload.size_bytes} declared bytes")
            digest = upload.hasher.hexdigest()
            if digest != upload.sha256 and upload.resumed_at:
                # The bytes kept from an earlier upload may be the wrong ones (another host's bad upload, a file
                # torn by a power cut): they are dropped, and a retry sends the whole artifact.
                raise CacheError("ABORTED", f"sha256 mismatch after resuming at byte {upload.resumed_at}: the bytes "
                                            "kept from an earlier upload were dropped; upload it again from the start")
            if digest != upload.sha256:
                raise CacheError("INVALID_ARGUMENT", f"sha256 mismatch: declared {upload.sha256}, received {digest}")
            os.fsync(upload.handle.fileno())
            on_disk = os.fstat(upload.handle.fileno()).st_size
            if on_disk != upload.size_bytes:
                raise CacheError("INTERNAL", f"the artifact's file holds {on_disk} of {upload.size_bytes} bytes")
            upload.handle.close()
            with upload.part.open("rb") as f:
                self._check_format(upload, f.read(SNIFF_BYTES))
            os.replace(upload.part, self.path(upload.sha256))
            _fsync_dir(self.done_dir)
        except OSError as exc:
            self.abort(upload, keep_partial=False)
            raise _storage_error(exc, "cannot store the artifact") from exc
        except CacheError:
            self.abort(upload, keep_partial=False)
            raise
        self._finish(upload)

    def abort(self, upload: Upload, keep_partial: bool) -> None:
        """Ends an upload that will not complete; an interrupted one keeps its bytes for a resume."""
        if upload.ended:
            return
        upload.handle.close()
        if not keep_partial or upload.received == 0:
            upload.part.unlink(missing_ok=True)
        self._finish(upload)

    def _finish(self, upload: Upload) -> None:
        upload.ended = True
        with self._lock:
            self._uploading.pop(upload.sha256, None)

    @staticmethod
    def _check_format(upload: Upload, head: bytes) -> None:
        found = sniff_format(head)
        if upload.format not in (pb.ARTIFACT_FORMAT_UNSPECIFIED, found):
            raise CacheError("INVALID_ARGUMENT", f"declared format {pb.ArtifactFormat.Name(upload.format)} but the "
                                                 f"content looks like {pb.ArtifactFormat.Name(found)}")
        if found == pb.ARTIFACT_FORMAT_TORCH_SPEC:
            _check_spec_size(upload.size_bytes)  # before it is read: parsing a large one could exhaust memory
            try:
                spec = json.loads(upload.part.read_text())
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
                raise CacheError("INVALID_ARGUMENT", f"a torch spec must be JSON: {exc}") from exc
            if not isinstance(spec, dict) or not {"space", "config"} <= spec.keys():
                raise CacheError("INVALID_ARGUMENT", 'a torch spec is a JSON object with "space" and "config"')

    # ----- use and eviction ----------------------------------------------------------------------
    @contextmanager
    def pinned(self, sha256: str) -> Iterator[Path]:
        """The artifact's path, protected from eviction while in use."""
        path = self.path(sha256)
        with self._lock:
            self._hold_folder()
            if _size(path) is None:
                raise CacheError("NOT_FOUND", f"artifact {sha256} is not in this agent's cache; upload it first")
            self._pins[sha256] = self._pins.get(sha256, 0) + 1
            self._touch(path)
        try:
            yield path
        finally:
            with self._lock:
                self._pins[sha256] -= 1
                if not self._pins[sha256]:
                    del self._pins[sha256]

    def _make_room(self, needed: int, keep: str) -> None:
        """Evicts stale partial uploads, then least recently used artifacts, until `needed` bytes fit: within
        the cap, and on the disk. A disk that fills up (other files on it, a cap above its size) evicts as the
        cap does; it refused every new upload while holding artifacts it could have let go.

        Uploads in progress count at their full declared size; `keep`'s own partial file is part of
        `needed`. Call with self._lock held.
        """
        now = time.time()
        stats = sorted(self._stats(), key=lambda f: f[2])  # LRU first
        own = {keep, *self._uploading}
        files = [f for f in stats if not (f[0].parent == self.part_dir and f[0].name[:64] in own)]
        written = sum(size for path, size, _ in stats if path.parent == self.part_dir and path.name[:64] in own)
        evictable = sum(size for _, size, _ in files)
        uploading = sum(self._uploading.values())
        used = uploading + evictable
        free = _free_bytes(self.done_dir)
        # The disk holds what the cache's files take now (the partial files of `keep` and of uploads in
        # progress included: their bytes are already off `free`) plus what is free.
        disk = None if free is None else evictable + written + free
        room = self.max_bytes if disk is None else min(self.max_bytes, disk)  # what evictions can make
        in_use = sum(size for path, size, _ in files if path.name[:64] in self._pins)
        if uploading + in_use + needed > room:  # no eviction would do: keep all
            if room < self.max_bytes:
                raise CacheError("RESOURCE_EXHAUSTED", f"the agent's cache disk is full: {needed} bytes needed, "
                                                       f"{free} free, and what it holds in use")
            raise CacheError("RESOURCE_EXHAUSTED", f"no room for {needed} bytes: the cache is capped at "
                                                   f"{self.max_bytes} bytes and the rest is in use")
        for path, size, mtime in files:
            stale_part = path.parent == self.part_dir and now - mtime > PARTIAL_MAX_AGE_S
            if not stale_part and used + needed <= room:
                continue
            if path.name[:64] in self._pins:
                continue
            path.unlink(missing_ok=True)
            used -= size

    def _stats(self) -> list[tuple[Path, int, float]]:
        """(path, size, last use) of every cached file; files that vanish meanwhile are skipped, and so is
        whatever is not the cache's own (a folder, a link, another name): it is never counted or evicted."""
        found = []
        for directory in (self.done_dir, self.part_dir):
            try:
                entries = list(directory.iterdir())
            except FileNotFoundError:  # removed while the agent runs: empty, and made again by the next upload
                continue
            for path in entries:
                st = _lstat(path) if ENTRY_RE.match(path.name) else None
                if st is not None and stat.S_ISREG(st.st_mode):
                    found.append((path, st.st_size, st.st_mtime))
        return found

    @staticmethod
    def _touch(path: Path) -> None:
        """Marks a use for the LRU order: a hint, so a cache that can be read but not written (mounted read-only)
        still serves what it holds."""
        try:
            os.utime(path)
        except OSError:
            pass


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:  # removed meanwhile: made again by the upload, whose write then says if the disk is full
        return None


def _storage_error(exc: OSError, what: str) -> CacheError:
    """The status for the cache's own storage failing: a full disk passes (RESOURCE_EXHAUSTED, retried); any
    other failure (a read-only or removed folder, an I/O error) is the device's, not the artifact's
    (UNAVAILABLE: retried on a peer and counted against this agent)."""
    if exc.errno == errno.ENOSPC:
        return CacheError("RESOURCE_EXHAUSTED", "the agent's cache disk is full")
    return CacheError("UNAVAILABLE", f"the agent's cache storage failed, {what}: {exc}")


def _check_spec_size(size_bytes: int) -> None:
    if size_bytes > MAX_SPEC_BYTES:
        raise CacheError("INVALID_ARGUMENT", f"a torch spec of {size_bytes} bytes exceeds the limit of "
                                             f"{MAX_SPEC_BYTES} bytes for specs (they are about 1 KB)")


def _lstat(path: Path) -> os.stat_result | None:
    """What is at `path` itself (a link is not followed); None when nothing is, or it has just gone."""
    try:
        return path.lstat()
    except FileNotFoundError:
        return None


def _size(path: Path) -> int | None:
    """The size of a regular file at `path`; None when there is none (nothing, or a folder or link there)."""
    st = _lstat(path)
    return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
