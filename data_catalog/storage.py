"""Where a Zarr store lives: a local path or any fsspec URL (s3://, gs://, memory://, file://), resolved once.

The series store and the feature stores both go through StoreLocation, so that listing, reading metadata,
deleting and zarr itself all use the same filesystem object: a memory:// store written and read in one
process is one store, and remote credentials come from wherever fsspec and its backend find them (the
environment, ~/.aws, fsspec's FSSPEC_<PROTOCOL>_<OPTION> variables or config files), never from params files.
"""

from dataclasses import dataclass
from pathlib import Path

import fsspec
import zarr.storage._local as zarr_local
from fsspec.implementations.local import LocalFileSystem
from zarr.abc.store import Store
from zarr.core.buffer.core import default_buffer_prototype
from zarr.storage import FsspecStore, LocalStore


class InlineLocalStore(LocalStore):
    """zarr's LocalStore, but each file operation runs inline in zarr's event loop instead of a worker thread.

    Why: every LocalStore operation hands its file call to a thread pool and back; when another thread (the
    teacher's forward pass) holds the GIL, each handoff waits for it, up to the 5 ms switch interval. Small
    local files are read and written in microseconds, so doing them inline is much cheaper for a writer that
    issues many small operations. Same files, same atomic temp-file-and-rename writes (zarr's own `_put`).
    Local paths only; opt in with StoreLocation.zarr_store(inline_io=True).
    """

    async def get(self, key, prototype=None, byte_range=None):
        if not self._is_open:
            await self._open()
        try:
            return zarr_local._get(self.root / key, prototype or default_buffer_prototype(), byte_range)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    async def get_partial_values(self, prototype, key_ranges):
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def _set(self, key, value, exclusive: bool = False) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        zarr_local._put(self.root / key, value, exclusive=exclusive)  # looked up on the module: test hooks see it

    async def delete(self, key) -> None:
        self._check_writable()
        path = self.root / key
        if path.is_dir():
            await super().delete(key)
        else:
            path.unlink(missing_ok=True)

    async def exists(self, key) -> bool:
        return (self.root / key).is_file()


@dataclass(frozen=True)
class StoreLocation:
    """A store's filesystem and its path there (no protocol, no trailing slash), plus the name to show."""

    shown: str | Path  # as given, for messages: a Path for a plain local path, else the URL
    fs: fsspec.AbstractFileSystem
    path: str

    @classmethod
    def of(cls, location: str | Path) -> "StoreLocation":
        """Resolve a local path or URL. Options (credentials, endpoints) come from fsspec's own configuration."""
        is_url = isinstance(location, str) and "://" in location
        fs, path = fsspec.core.url_to_fs(str(location))
        path = path.rstrip("/")
        # fsspec instances are shared and some (s3fs, gcsfs) cache listings; zarr writes through its own
        # async instance, so a listing cached before those writes would be stale: start from a fresh one.
        fs.invalidate_cache(path)
        return cls(location.rstrip("/") if is_url else Path(location), fs, path)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def join(self, *parts: str) -> str:
        """A path on self.fs below the store."""
        return "/".join((self.path, *parts))

    def relative(self, fs_path: str) -> str:
        """A path on self.fs as a key inside the store ('' for the store itself)."""
        fs_path = fs_path.rstrip("/")
        return fs_path[len(self.path) + 1 :] if fs_path.startswith(self.path + "/") else ""

    def children(self) -> list[str]:
        """Paths on self.fs directly inside the store; [] when there is nothing there yet."""
        try:
            return [p for p in self.fs.ls(self.path, detail=False) if p.rstrip("/") != self.path]
        except FileNotFoundError:
            return []

    def zarr_store(self, read_only: bool = False, inline_io: bool = False) -> Store:
        """The zarr store over this location.

        Local stores use zarr's LocalStore, which writes each file to a temporary name and renames it: the
        atomic replacement that resuming a killed run relies on (fsspec's local writes are not atomic).
        Elsewhere an FsspecStore on the same filesystem object; object stores (S3, GCS) and memory:// put
        each object whole, so they are atomic too.
        inline_io: a local store does its file I/O inline (InlineLocalStore), for the extraction's many small
        reads and writes; ignored elsewhere.
        """
        if self.is_local:
            return (InlineLocalStore if inline_io else LocalStore)(self.path, read_only=read_only)
        return FsspecStore.from_mapper(self.fs.get_mapper(self.path), read_only=read_only)
