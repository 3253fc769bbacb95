"""The receiver's disk: partial files in the destination, verified, then renamed into place.

Blocking code for one worker thread per transfer. Every path is opened relative to
a folder descriptor, one part at a time, with ``O_NOFOLLOW``: a symbolic link in the
destination (planted, or made by the user) is never followed, so nothing is written
outside the folder the user chose. A file's bytes go into a hidden partial file
(`partial_name`) next to where it will end; only a file whose every chunk hashes
right on disk is renamed to its final name, and never over an existing file
(``report (1).pdf`` instead).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import mmap
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import blake3

from sidedoor.errors import DiskFull, TransferError
from sidedoor.proto.file_names import PathChecker, check_path, numbered
from sidedoor.proto.transfer import FileEntry, Manifest, chunk_span
from sidedoor.services.direct_writes import (
    ALIGN,
    DIRECT_FLAG,
    STAGE_SIZE,
    DirectChunk,
    pwrite_all,
)
from sidedoor.services.file_hashing import READ_SIZE, hash_chunks

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_TMPFILE_FLAGS = getattr(os, "O_TMPFILE", 0) | os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
MAX_OPEN_FILES = 32
MAX_OPEN_DIRS = 64
MIN_SPLIT_RUN = 16  # a run of fewer files is written by one thread (write_run)
MAX_SPLIT_FOLDERS = 8  # ...and so is a run spread over more folders than this
MAX_NUMBERED = 1000
DIRECT_MIN = 64 << 20  # files this big are written around the page cache (direct_writes)
DISK_THREADS = 2  # direct writes of whole chunks in flight at once...
MAX_LANDING = 8  # ...and waiting for them (each holds a stage of STAGE_SIZE)
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_RENAME_NOREPLACE = 1


def _load_renameat2() -> Callable[..., int] | None:
    """Linux's renameat2 (glibc >= 2.28): a rename that never replaces, in one call."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    renameat2: Callable[..., int] = fn
    return renameat2


_renameat2 = _load_renameat2()


def _read_umask() -> int | None:
    """This process's umask, read without changing it (Linux 4.7+); None if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None



class FileDamaged(TransferError):
    """A file's bytes on disk do not hash as its manifest says (fetched again)."""


def partial_name(transfer: bytes, file: int) -> str:
    """Hidden, fixed-length, unique per transfer and file: any final name fits beside it."""
    return f".sidedoor-{transfer.hex()[:16]}-{file}.part"


def _os_error(exc: OSError, what: str, dest: Path) -> TransferError:
    if exc.errno in _FULL:
        return DiskFull(f"the disk holding {dest} is full ({what}); free some space and "
                        "retry the transfer")
    if exc.errno == errno.ELOOP:
        return TransferError(f"{what}: a symbolic link is in the way in {dest}; "
                             "sidedoor does not follow links out of the destination")
    return TransferError(f"{what} in {dest}: {exc.strerror}")


@dataclass(frozen=True, slots=True)
class _FileJob:
    """One whole small file of a run, for `IncomingFiles._write_jobs`."""
    index: int          # its place in the run
    file: int
    entry: FileEntry
    data: memoryview
    folder: tuple[str, ...]  # as offered (before the top folder's renaming)
    name: str
    digest: bytes


class IncomingFiles:
    """The files of one incoming transfer, under ``dest``."""

    def __init__(self, dest: Path, transfer: bytes, manifest: Manifest,
                 roots: dict[str, str], durable: bool = False, direct: bool = True) -> None:
        self.dest = dest
        # Each file reaches the disk (fsync) before it gets its name, and every folder
        # when the transfer ends; otherwise a power cut soon after can leave a file
        # empty under its final name (as after cp, scp or rsync).
        self.durable = durable
        self.transfer = transfer
        self.manifest = manifest
        self.roots = dict(roots)  # offered top-level folder name -> name used in dest
        try:
            self._dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise TransferError(f"cannot open the destination {dest}: {exc.strerror}") from exc
        self._dirs: OrderedDict[tuple[str, ...], int] = OrderedDict()
        self._files: OrderedDict[int, int] = OrderedDict()
        self._hashers: dict[tuple[int, int], blake3.blake3] = {}
        check = PathChecker()
        self._parts = [check(f.path) for f in manifest.files]
        self._buffer = bytearray(READ_SIZE)  # for re-reading files: allocated once
        # Chunks hashed here from the bytes as they were written (this run).
        self._hashed: dict[int, set[int]] = {}
        # Whole small files are written as unnamed files (O_TMPFILE) and linked under
        # their final name; False once this filesystem (or a missing /proc) says no.
        self._unnamed = hasattr(os, "O_TMPFILE")
        # A file created with its final mode needs no chmod when the umask lets that
        # mode through (typically 0o644 under 022): one system call less per small file.
        self._umask = _read_umask()
        self._helper: ThreadPoolExecutor | None = None  # write_run's second thread
        # Large files: chunks staged and written with O_DIRECT (`direct_writes`), on a
        # descriptor of their own per file; False once this filesystem refuses.
        self._direct = direct and DIRECT_FLAG != 0
        self._direct_fds: dict[int, int] = {}
        self._staged: dict[tuple[int, int], DirectChunk] = {}
        self._stages: list[mmap.mmap] = []  # spare ones
        # A whole chunk's direct write runs on a disk thread while this one goes on
        # with the next chunks; the chunk counts as received once it has landed
        # (`write_piece`), so a slow moment of the disk does not stall the transfer.
        self._disk: ThreadPoolExecutor | None = None
        # (future, file) of each, oldest first; only this thread touches the list.
        self._landing: list[tuple[Future[None], int]] = []

    # -------------------------------------------------------------- folders
    def claim_roots(self) -> dict[str, str]:
        """Make each top-level folder of the offer, under a free name; returns the mapping."""
        folder_roots = {parts[0] for parts in self._parts if len(parts) > 1}
        folder_roots |= {check_path(d.path)[0] for d in self.manifest.dirs}
        for root in sorted(folder_roots):
            if root in self.roots:
                continue
            for n in range(MAX_NUMBERED):
                name = root if n == 0 else numbered(root, n, is_dir=True)
                try:
                    os.mkdir(name, 0o700, dir_fd=self._dest_fd)
                except FileExistsError:
                    continue
                except OSError as exc:
                    raise _os_error(exc, f"cannot create the folder {name!r}", self.dest) \
                        from exc
                self.roots[root] = name
                break
            else:
                raise TransferError(f"too many folders named like {root!r} in {self.dest}")
        return dict(self.roots)

    def _mapped(self, parts: tuple[str, ...]) -> tuple[str, ...]:
        if parts and parts[0] in self.roots:
            return (self.roots[parts[0]], *parts[1:])
        return parts

    def _dir_fd(self, parts: tuple[str, ...]) -> int:
        """The folder ``parts`` (already mapped) below dest, made if missing, never via a link."""
        if not parts:
            return self._dest_fd
        fd = self._dirs.get(parts)
        if fd is not None:
            self._dirs.move_to_end(parts)
            return fd
        parent = self._dir_fd(parts[:-1])
        name = parts[-1]
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=parent)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise _os_error(exc, f"cannot open the folder {'/'.join(parts)!r}", self.dest) \
                from exc
        self._dirs[parts] = fd
        while len(self._dirs) > MAX_OPEN_DIRS:
            # The oldest: never the parent just used (it was moved to the end).
            _, old_fd = self._dirs.popitem(last=False)
            os.close(old_fd)
        return fd

    def make_dirs(self) -> None:
        for directory in self.manifest.dirs:
            self._dir_fd(self._mapped(check_path(directory.path)))

    # ---------------------------------------------------------------- files
    def _location(self, file: int) -> tuple[int, str]:
        parts = self._mapped(self._parts[file])
        return self._dir_fd(parts[:-1]), parts[-1]

    def _file_fd(self, file: int) -> int:
        fd = self._files.get(file)
        if fd is not None:
            self._files.move_to_end(file)
            return fd
        dir_fd, _ = self._location(file)
        try:
            fd = os.open(partial_name(self.transfer, file), _FILE_FLAGS, 0o600, dir_fd=dir_fd)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise TransferError("a partial file is not a regular file")
        except OSError as exc:
            raise _os_error(exc, f"cannot create {self.manifest.files[file].path!r}",
                            self.dest) from exc
        self._files[file] = fd
        while len(self._files) > MAX_OPEN_FILES:
            _, old_fd = self._files.popitem(last=False)
            os.close(old_fd)
        return fd

    def write(self, file: int, chunk: int, offset: int, pieces: list[memoryview],
              last: bool) -> bytes | None:
        """Write ``pieces`` at ``offset`` within the chunk; on its ``last`` piece, its digest
        (the chunk is then written: on the disk, or in the page cache)."""
        digest, landing = self.write_piece(file, chunk, offset, pieces, last)
        if landing is not None:
            landing.result()
        return digest

    def write_piece(self, file: int, chunk: int, offset: int, pieces: list[memoryview],
                    last: bool) -> tuple[bytes | None, Future[None] | None]:
        """`write`, except that a large file's chunk may still be on its way to the disk
        when this returns: then the future (second) says when it has landed, or raises
        the `TransferError` that stopped it. Only then does the chunk count as received."""
        fd = self._file_fd(file)
        start, _ = chunk_span(self.manifest.files[file].size, chunk)
        hasher = self._hashers.get((file, chunk))
        if hasher is None:
            hasher = self._hashers[(file, chunk)] = blake3.blake3()
        for piece in pieces:
            hasher.update(piece)
        landing: Future[None] | None = None
        try:
            staged = self._stage(file, chunk, start + offset)
            if staged is None:
                pwrite_all(fd, pieces, start + offset)
            else:
                staged.add(pieces)
                if last:
                    landing = self._land(file, chunk)
        except OSError as exc:
            raise self._write_error(exc, file) from exc
        if not last:
            return None, None
        self._hashed.setdefault(file, set()).add(chunk)
        return self._hashers.pop((file, chunk)).digest(), landing

    def _write_error(self, exc: OSError, file: int) -> TransferError:
        return _os_error(exc, f"cannot write {self.manifest.files[file].path!r}", self.dest)

    def _stage(self, file: int, chunk: int, position: int) -> DirectChunk | None:
        """The stage of a large file's chunk, for its pieces from ``position`` on; None
        when they go through the page cache."""
        key = (file, chunk)
        staged = self._staged.get(key)
        if staged is None:
            if (not self._direct or position % ALIGN
                    or self.manifest.files[file].size < DIRECT_MIN):
                return None
            fd = self._direct_fd(file)
            if fd is None:
                return None
            staged = self._staged[key] = DirectChunk(
                self._stages.pop() if self._stages else mmap.mmap(-1, STAGE_SIZE),
                position, fd)
        elif staged.at != position:
            raise TransferError("a chunk's pieces came out of order")  # a bug, not the peer
        return staged

    def _land(self, file: int, chunk: int) -> Future[None]:
        """Write the rest of a whole chunk's stage on a disk thread."""
        staged = self._staged.pop((file, chunk))
        self._landing = [(f, of) for f, of in self._landing if not f.done()]
        while len(self._landing) >= MAX_LANDING:
            wait([self._landing.pop(0)[0]])

        def land() -> None:
            try:
                staged.end()
            except OSError as exc:
                raise self._write_error(exc, file) from exc
            finally:
                self._stages.append(staged.release())  # taken only by the writer's thread
            if staged.refused:
                self._direct = False

        if self._disk is None:
            self._disk = ThreadPoolExecutor(DISK_THREADS, thread_name_prefix="sidedoor-disk")
        landing = self._disk.submit(land)
        self._landing.append((landing, file))
        return landing

    def _wait_landing(self, file: int) -> None:
        """Until the direct writes in flight of ``file`` are done (their errors go to
        whoever waits on their futures)."""
        wait([f for f, of in self._landing if of == file])

    def _direct_fd(self, file: int) -> int | None:
        """A second descriptor on the file's partial file, for direct writes; None when
        this filesystem cannot (all writes then go through the page cache)."""
        fd = self._direct_fds.get(file)
        if fd is not None:
            return fd
        dir_fd, _ = self._location(file)
        buffered = self._file_fd(file)
        try:
            fd = os.open(partial_name(self.transfer, file),
                         os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | DIRECT_FLAG, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                self._direct = False
                return None
            raise
        mine, theirs = os.fstat(buffered), os.fstat(fd)
        if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
            os.close(fd)
            raise TransferError(f"the partial file of {self.manifest.files[file].path!r} "
                                "was replaced while being written")
        self._direct_fds[file] = fd
        return fd

    def _unstage(self, key: tuple[int, int]) -> None:
        staged = self._staged.pop(key, None)
        if staged is not None:
            self._stages.append(staged.release())

    def _close_direct(self, file: int) -> None:
        self._wait_landing(file)
        for key in [k for k in self._staged if k[0] == file]:
            self._unstage(key)
        fd = self._direct_fds.pop(file, None)
        if fd is not None:
            os.close(fd)

    def write_last(self, file: int, chunk: int, offset: int, pieces: list[memoryview],
                   expected: bytes) -> tuple[bytes, str | None]:
        """The last piece of a file's last missing chunk: written, and if its digest is
        ``expected``, the file finished (`finish`) in the same trip to this thread.

        Returns the digest and the final path (None when the digest is wrong). Raises
        `FileDamaged` when the chunk was right but the file on disk is not.
        """
        digest = self.write(file, chunk, offset, pieces, True)
        assert digest is not None
        if digest != expected:
            return digest, None
        return digest, self.finish(file)

    def write_files(self, items: list[tuple[int, int, list[memoryview], bytes]]
                    ) -> list[tuple[bytes, str | None] | FileDamaged]:
        """Small files, each arriving whole in one piece: `write_last` for every one of
        (file, chunk, pieces, expected), in one trip to this thread."""
        results: list[tuple[bytes, str | None] | FileDamaged] = []
        for file, chunk, pieces, expected in items:
            try:
                if self.manifest.files[file].chunks == 1:
                    results.append(self._write_whole(file, pieces, expected))
                else:
                    results.append(self.write_last(file, chunk, 0, pieces, expected))
            except FileDamaged as exc:
                results.append(exc)
        return results

    def write_run(self, first: int, sizes: list[int], data: memoryview,
                  digests: list[bytes]) -> list[tuple[bytes, str | None]]:
        """Whole files ``first`` on, of ``sizes``, their bytes one after another in
        ``data`` (the answer to a `FilesRequest`), ``digests`` their hashes as computed
        by the caller from these very bytes (`hash_files`): each file whose digest is
        its manifest entry's is written and named (`_write_whole`), in one trip to this
        thread. Returns each file's digest and final path (None: the bytes were wrong and
        nothing was written).

        A run of many files is written by two threads, sharing it: creating a file is
        almost all kernel work (allocating the inode is most of it, and slow on a
        filesystem where many files were just deleted), done without the GIL, so two
        threads create files nearly twice as fast when a core is free. The folders are
        opened first, here: the second thread never touches the folder cache.
        (Runs over many folders, where files are few per folder, stay on one thread.)
        """
        files = self.manifest.files
        results: list[tuple[bytes, str | None]] = [(b"", None)] * len(sizes)
        jobs: list[_FileJob] = []
        folders: dict[tuple[str, ...], None] = {}  # the run's folders, in order
        at = 0
        for index, size in enumerate(sizes):
            file = first + index
            part = data[at:at + size]
            at += size
            entry = files[file]
            digest = digests[index]
            if digest != entry.hashes:
                results[index] = (digest, None)
                continue
            parts = self._parts[file]
            folders[parts[:-1]] = None
            jobs.append(_FileJob(index, file, entry, part, parts[:-1], parts[-1], digest))
        if len(jobs) < MIN_SPLIT_RUN or len(folders) > MAX_SPLIT_FOLDERS:
            # One thread, each folder looked up when the files reach it (the cache may
            # close a folder opened earlier: only the current one is in use).
            self._write_jobs(jobs, results, self._folder_lookup())
            return results
        # Two threads: each folder is opened once, by a descriptor of the run's own
        # (the cache may close its own ones while the other thread writes).
        opened: dict[tuple[str, ...], tuple[int, str]] = {}
        try:
            for folder in folders:
                fd, prefix = self._folder(folder)
                opened[folder] = (os.dup(fd), prefix)
            if self._helper is None:
                self._helper = ThreadPoolExecutor(1, thread_name_prefix="sidedoor-receive-2")
            # Both threads take the next file from one iterator (next() on it is atomic
            # under the GIL), so they finish within a file of each other; fixed halves
            # left one thread idle for a fifth of the run, files take unequal time.
            pending = iter(jobs)

            def share() -> None:
                try:
                    self._write_jobs(pending, results, opened.__getitem__)
                except BaseException:
                    for _ in pending:  # the other thread stops after its current file
                        pass
                    raise

            other = self._helper.submit(share)
            try:
                share()
            finally:
                wait([other])  # never close the folders while the other thread writes
            other.result()  # its error, if it had one
        finally:
            for fd, _ in opened.values():
                os.close(fd)
        return results

    def _folder_lookup(self) -> Callable[[tuple[str, ...]], tuple[int, str]]:
        """A folder's descriptor and path prefix through the cache, for one thread
        going through files in order (a folder is looked up again when it changes)."""
        last: list[tuple[tuple[str, ...], tuple[int, str]]] = []

        def lookup(folder: tuple[str, ...]) -> tuple[int, str]:
            if not last or last[0][0] != folder:
                last[:] = [(folder, self._folder(folder))]
            return last[0][1]
        return lookup

    def _folder(self, folder: tuple[str, ...]) -> tuple[int, str]:
        """An offered folder's descriptor (from the cache) and its path in dest + "/"."""
        mapped = self._mapped(folder)
        return self._dir_fd(mapped), "".join(f"{name}/" for name in mapped)

    def _write_jobs(self, jobs: Iterable[_FileJob], results: list[tuple[bytes, str | None]],
                    folder_of: Callable[[tuple[str, ...]], tuple[int, str]]) -> None:
        for job in jobs:
            dir_fd, prefix = folder_of(job.folder)
            final = self._place(dir_fd, job.file, job.entry, job.data, job.name)
            results[job.index] = (job.digest, prefix + final)

    def _write_whole(self, file: int, pieces: list[memoryview], expected: bytes
                     ) -> tuple[bytes, str | None]:
        """A one-chunk file, all of it in ``pieces``: hashed, written, finished, named.

        The short way for small files (`write_last` + `finish` do the same through the
        caches that large files need). Bytes that do not hash as ``expected`` are not
        written at all. Where the filesystem can, the file is written unnamed
        (``O_TMPFILE``) and linked under its final name once whole: the folder is
        touched once per file instead of three times (create the partial name, rename
        it, remove it), and a crash leaves nothing behind. Elsewhere: a partial file,
        renamed into place.
        """
        hasher = blake3.blake3()
        for piece in pieces:
            hasher.update(piece)
        digest = hasher.digest()
        if digest != expected:
            return digest, None
        entry = self.manifest.files[file]
        parts = self._mapped(self._parts[file])
        dir_fd = self._dir_fd(parts[:-1])
        data = pieces[0] if len(pieces) == 1 else memoryview(b"".join(pieces))
        final = self._place(dir_fd, file, entry, data, parts[-1])
        return digest, "/".join((*parts[:-1], final))

    def _place(self, dir_fd: int, file: int, entry: FileEntry, data: memoryview,
               name: str) -> str:
        """Write a whole file into the folder ``dir_fd`` under a free name like ``name``:
        unnamed then linked where the filesystem can, else a partial file renamed."""
        final = self._write_unnamed(dir_fd, entry, data, name) if self._unnamed else None
        if final is None:
            final = self._write_partial(dir_fd, file, entry, data, name)
        return final

    def _creation_mode(self, entry: FileEntry) -> tuple[int, bool]:
        """The mode to create a file with, and whether it still needs a chmod."""
        if self._umask is not None and not entry.mode & self._umask:
            return entry.mode, False
        return 0o600, True

    def _write_unnamed(self, dir_fd: int, entry: FileEntry, data: memoryview,
                       name: str) -> str | None:
        """Write an unnamed file in the folder and link it under a free name; None when
        this filesystem cannot (the caller falls back to a partial file)."""
        mode, chmod = self._creation_mode(entry)
        try:
            fd = os.open(".", _TMPFILE_FLAGS, mode, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                self._unnamed = False
                return None
            raise _os_error(exc, f"cannot create {entry.path!r}", self.dest) from exc
        try:
            try:
                written = os.pwrite(fd, data, 0)
                if written < len(data):
                    pwrite_all(fd, [data[written:]], written)
                self._finish(fd, entry, chmod)
            except OSError as exc:
                raise _os_error(exc, f"cannot write {entry.path!r}", self.dest) from exc
            # linkat() of the descriptor's /proc entry: the documented way to name an
            # O_TMPFILE file without privileges; like link(), it never replaces a name.
            source = f"/proc/self/fd/{fd}"
            for n in range(MAX_NUMBERED):
                candidate = name if n == 0 else numbered(name, n)
                try:
                    os.link(source, candidate, dst_dir_fd=dir_fd, follow_symlinks=True)
                except FileExistsError:
                    continue
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.EPERM, errno.EOPNOTSUPP,
                                     errno.EXDEV):
                        self._unnamed = False  # no /proc, or no links here
                        return None
                    raise _os_error(exc, f"cannot name {entry.path!r}", self.dest) from exc
                return candidate
            raise TransferError(f"too many files named like {name!r} in the destination")
        finally:
            os.close(fd)

    def _write_partial(self, dir_fd: int, file: int, entry: FileEntry,
                       data: memoryview, name: str) -> str:
        partial = partial_name(self.transfer, file)
        mode, _ = self._creation_mode(entry)
        try:
            # O_TRUNC: what an earlier run left in the partial file was never verified.
            fd = os.open(partial, _FILE_FLAGS | os.O_TRUNC, mode, dir_fd=dir_fd)
        except OSError as exc:
            raise _os_error(exc, f"cannot create {entry.path!r}", self.dest) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise TransferError("a partial file is not a regular file")
            pwrite_all(fd, [data], 0)
            # (An old partial file kept its old mode.)
            self._finish(fd, entry, stat.S_IMODE(st.st_mode) != entry.mode)
        except OSError as exc:
            raise _os_error(exc, f"cannot write {entry.path!r}", self.dest) from exc
        finally:
            os.close(fd)
        return self._rename_into_place(dir_fd, partial, name, entry.path)

    def _finish(self, fd: int, entry: FileEntry, chmod: bool = True) -> None:
        """The sender's mode and time on a written file, and to the disk if asked."""
        if chmod:
            os.fchmod(fd, entry.mode)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        if self.durable:
            os.fsync(fd)

    def abort_chunks(self) -> None:
        """The sender went away mid-chunk: what arrived of unfinished chunks is discarded.

        Writes still on their way to the disk finish first: a chunk fetched again must
        not race an older write of the same bytes' place."""
        self._hashers.clear()
        for key in list(self._staged):
            self._unstage(key)
        wait([f for f, _ in self._landing])
        self._landing.clear()

    def recover(self, file: int, chunks: list[int]) -> list[int]:
        """Of ``chunks`` (not recorded as verified), those whose bytes are on disk and hash right.

        A restart can lose the last few records of verified chunks; their bytes are
        usually in the partial file already, so they need not be fetched again.
        """
        entry = self.manifest.files[file]
        dir_fd, _ = self._location(file)
        try:
            fd = os.open(partial_name(self.transfer, file), os.O_RDONLY | os.O_NOFOLLOW,
                         dir_fd=dir_fd)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _os_error(exc, f"cannot read {entry.path!r}", self.dest) from exc
        found: list[int] = []
        try:
            length = os.fstat(fd).st_size
            buf = bytearray(READ_SIZE)
            view = memoryview(buf)
            for chunk in chunks:
                start, size = chunk_span(entry.size, chunk)
                if start + size > length:
                    continue
                hasher = blake3.blake3()
                got = 0
                while got < size:
                    n = os.preadv(fd, [view[:min(READ_SIZE, size - got)]], start + got)
                    if n == 0:
                        break
                    hasher.update(view[:n])
                    got += n
                if got == size and hasher.digest() == entry.hash_of(chunk):
                    found.append(chunk)
        finally:
            os.close(fd)
        return found

    def leftovers(self, files: list[int]) -> tuple[set[int], set[int]]:
        """Of ``files``, those with a partial file, and those whose final name is taken.

        One listing per folder instead of two failed lookups per file: a fresh transfer
        of 10,000 files starts without 20,000 system calls that find nothing.
        """
        listings: dict[tuple[str, ...], set[str]] = {}
        partial, named = set(), set()
        for file in files:
            parts = self._mapped(self._parts[file])
            folder = parts[:-1]
            names = listings.get(folder)
            if names is None:
                try:
                    names = set(os.listdir(self._dir_fd(folder)))
                except OSError as exc:
                    raise _os_error(exc, f"cannot list {'/'.join(folder) or '.'!r}",
                                    self.dest) from exc
                listings[folder] = names
            if partial_name(self.transfer, file) in names:
                partial.add(file)
            if parts[-1] in names:
                named.add(file)
        return partial, named

    def placed(self, file: int) -> str | None:
        """The file's path if it is already in place, whole (renamed just before a crash,
        before that was recorded): no partial file, and the final name holds a regular
        file of the offered size, time and hashes. None otherwise."""
        entry = self.manifest.files[file]
        dir_fd, name = self._location(file)
        try:
            os.lstat(partial_name(self.transfer, file), dir_fd=dir_fd)
            return None
        except FileNotFoundError:
            pass
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or st.st_size != entry.size
                    or st.st_mtime_ns != entry.mtime_ns
                    or hash_chunks(fd, entry.size, self._buffer) != entry.hashes):
                return None
        finally:
            os.close(fd)
        parts = self._mapped(self._parts[file])
        return "/".join(parts)

    def finish(self, file: int) -> str:
        """Verify the whole file on disk, set its mode and time, rename it into place.

        Returns the path it got, relative to dest. `FileDamaged` if the bytes on disk
        do not hash right (its chunks are fetched again). A file whose every chunk was
        hashed here from the very bytes written, in this run, is not read back: its
        size is checked and its chunks are already proven. A file with chunks from an
        earlier run (a resume) is read back and hashed whole.
        """
        entry = self.manifest.files[file]
        self._close_direct(file)
        fd = self._files.pop(file, None)
        if fd is None:
            fd = self._file_fd(file)
            self._files.pop(file)
        dir_fd, name = self._location(file)
        try:
            st = os.fstat(fd)
            if st.st_size > entry.size:
                os.ftruncate(fd, entry.size)
            elif st.st_size < entry.size:
                raise FileDamaged(f"{entry.path!r} is shorter on disk than it should be")
            proven = len(self._hashed.pop(file, ())) == entry.chunks
            if not proven and hash_chunks(fd, entry.size, self._buffer) != entry.hashes:
                raise FileDamaged(f"{entry.path!r} did not verify on disk; fetching it again")
            self._finish(fd, entry)
        except OSError as exc:
            raise _os_error(exc, f"cannot finish {entry.path!r}", self.dest) from exc
        finally:
            os.close(fd)
        final = self._rename_into_place(dir_fd, partial_name(self.transfer, file), name,
                                        entry.path)
        parts = self._mapped(self._parts[file])
        return "/".join((*parts[:-1], final))

    def _rename_into_place(self, dir_fd: int, partial: str, name: str, shown: str) -> str:
        for n in range(MAX_NUMBERED):
            candidate = name if n == 0 else numbered(name, n)
            if _renameat2 is not None:
                result = _renameat2(dir_fd, os.fsencode(partial), dir_fd,
                                    os.fsencode(candidate), _RENAME_NOREPLACE)
                if result == 0:
                    return candidate
                err = ctypes.get_errno()
                if err == errno.EEXIST:
                    continue
                if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise _os_error(OSError(err, os.strerror(err)),
                                    f"cannot rename {shown!r} into place", self.dest)
                # This filesystem cannot do it: the link/unlink way below.
            try:
                # link() never replaces an existing name: the no-clobber rename.
                os.link(partial, candidate, src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
                        follow_symlinks=False)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                    raise _os_error(exc, f"cannot rename {shown!r} into place", self.dest) \
                        from exc
                # No hard links here (FAT, some network shares): check, then rename.
                try:
                    os.lstat(candidate, dir_fd=dir_fd)
                    continue
                except FileNotFoundError:
                    os.rename(partial, candidate, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    return candidate
            os.unlink(partial, dir_fd=dir_fd)
            return candidate
        raise TransferError(f"too many files named like {name!r} in the destination")

    def finish_dirs(self) -> None:
        """Folder modes and times, deepest first (writing files changed their times);
        when `durable`, the folders' entries (the files' final names) reach the disk."""
        for directory in sorted(self.manifest.dirs, key=lambda d: -d.path.count("/")):
            parts = self._mapped(check_path(directory.path))
            parent = self._dir_fd(parts[:-1])
            try:
                fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
            except OSError:
                continue
            try:
                os.fchmod(fd, directory.mode | 0o700)  # we must still be able to use it
                os.utime(fd, ns=(directory.mtime_ns, directory.mtime_ns))
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        if self.durable:
            try:
                os.fsync(self._dest_fd)
            except OSError as exc:
                raise _os_error(exc, "cannot flush the folder", self.dest) from exc

    def discard(self) -> None:
        """Remove every partial file of this transfer (finished files stay)."""
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
        self._hashers.clear()
        for file in list(self._direct_fds):
            self._close_direct(file)
        for file in range(len(self.manifest.files)):
            try:
                dir_fd, _ = self._location(file)
            except TransferError:
                continue
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                os.unlink(partial_name(self.transfer, file), dir_fd=dir_fd)
        # Folders we made that stayed empty are junk too.
        for parts in sorted(self._dirs, key=len, reverse=True):
            parent = self._dirs.get(parts[:-1]) if len(parts) > 1 else self._dest_fd
            if parent is not None:
                with contextlib.suppress(OSError):
                    os.rmdir(parts[-1], dir_fd=parent)

    def close(self) -> None:
        if self._disk is not None:
            self._disk.shutdown(wait=True)
            self._disk = None
        if self._helper is not None:
            self._helper.shutdown(wait=True)
            self._helper = None
        for file in list(self._direct_fds):
            with contextlib.suppress(OSError):
                self._close_direct(file)
        for fd in (*self._files.values(), *self._dirs.values()):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._files.clear()
        self._dirs.clear()
        # Dropped, not closed: an error's traceback may still hold a view of one.
        self._stages.clear()
        with contextlib.suppress(OSError):
            os.close(self._dest_fd)
