"""Where a Zarr store lives: a local path or any fsspec URL (s3://, gs://, memory://, file://), resolved once.

The series store and the feature stores both go through StoreLocation, so that listing, reading metadata,
deleting and zarr itself all use the same filesystem object: a memory:// store written and read in one
process is one store, and remote credentials come from wherever fsspec and its backend find them (the
environment, ~/.aws, fsspec's FSSPEC_<PROTOCOL>_<OPTION> variables or config files), never from params files.
"""

from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore


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

    def zarr_store(self, read_only: bool = False) -> Store:
        """The zarr store over this location.

        Local stores use zarr's LocalStore, which writes each file to a temporary name and renames it: the
        atomic replacement that resuming a killed run relies on (fsspec's local writes are not atomic).
        Elsewhere an FsspecStore on the same filesystem object; object stores (S3, GCS) and memory:// put
        each object whole, so they are atomic too.
        """
        if self.is_local:
            return LocalStore(self.path, read_only=read_only)
        return FsspecStore.from_mapper(self.fs.get_mapper(self.path), read_only=read_only)
