"""Where everything lives under the data root, and reading and writing it there.

The data contract, the files under the data root and their columns, is manifests/SCHEMA.md.

The data root is a local directory or an object-store URL (`s3://bucket/prefix`, any fsspec protocol). The layout
methods return local paths either way: under the data root itself on disk, or, for a URL, under a local working
directory that holds the downloads and the work in progress. The I/O methods below take those paths and act on
the data root: on disk they are the plain file operations of before; for a URL they read the object store, and
`upload` / `write_bytes` publish finished files to it atomically (pipeline/io/objectstore.py; ARCHITECTURE.md,
"Object-store data roots").
"""

from __future__ import annotations

import hashlib
import os
import shutil
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from pipeline.io import objectstore, parquet_tables
from pipeline.io.storage import move_if_changed, remove_stale_temps, sha256_file, write_bytes_atomic

WORK_DIR_ENV = "DEPTHCURATE_WORK_DIR"  # where working directories of object-store roots go


@dataclass(frozen=True)
class DataRoot:
    root: Path  # the data root on disk; for an object-store root, the local working directory
    url: str | None = None  # the object-store data root; None when the data lives on local disk

    def __init__(self, root: str | Path, work_dir: str | Path | None = None) -> None:
        if objectstore.is_remote(root):
            url = str(root).rstrip("/")
            objectstore.filesystem(url)  # refuses credentials in the URL, and unknown protocols, right away
            object.__setattr__(self, "url", url)
            object.__setattr__(self, "root", Path(work_dir or default_work_dir(url)).expanduser().resolve())
            return
        if str(root).startswith("file://"):
            root = str(root)[len("file://") :]
        object.__setattr__(self, "url", None)
        object.__setattr__(self, "root", Path(root).expanduser().resolve())

    @property
    def remote(self) -> bool:
        return self.url is not None

    @property
    def name(self) -> str:
        """The data root as a user gave it: the URL, or the local directory."""
        return self.url or str(self.root)

    def videos_dir(self, dataset: str) -> Path:
        return self.root / "videos" / dataset

    def shard_dir(self, dataset: str, video_id: str) -> Path:
        return self.root / "shards" / dataset / video_id

    def video_record(self, dataset: str, video_id: str) -> Path:
        """Per-video result, written last: its presence means the video is finished (ok or failed)."""
        return self.root / "stats" / "videos" / dataset / f"{video_id}.json"

    def video_frames_dir(self, dataset: str, video_id: str) -> Path:
        return self.root / "stats" / "frames" / dataset / video_id

    def video_records(self) -> list[Path]:
        return self.glob(self.root / "stats" / "videos", "*/*.json")

    def embeddings(self, dataset: str, video_id: str) -> Path:
        """CLIP embeddings of a video's shard rows, keyed by sample_id (kept apart so shards stay immutable)."""
        return self.root / "embeddings" / dataset / f"{video_id}.parquet"

    def camera(self, dataset: str, video_id: str) -> Path:
        """A video's estimated intrinsics, or why there are none (pipeline/corpus/intrinsics.py)."""
        return self.root / "stats" / "cameras" / dataset / f"{video_id}.json"

    def preview(self, dataset: str, video_id: str) -> Path:
        return self.root / "previews" / dataset / f"{video_id}.jpg"

    def manifest(self, dataset: str) -> Path:
        """A dataset's manifest: a directory of per-video parts (pipeline/io/parquet_tables.py reads it)."""
        return self.root / "manifest" / f"{dataset}.parquet"

    def manifest_part(self, dataset: str, video_id: str) -> Path:
        return self.manifest(dataset) / f"{video_id}.parquet"

    @property
    def videos_table(self) -> Path:
        return self.root / "stats" / "videos.parquet"

    @property
    def frames_table(self) -> Path:
        """Every decoded frame of every published video: a directory of per-video parts, by dataset."""
        return self.root / "stats" / "frames.parquet"

    def frames_table_part(self, dataset: str, video_id: str) -> Path:
        return self.frames_table / dataset / f"{video_id}.parquet"

    def table_parts(self) -> list[Path]:
        """Every per-video part of the frames table and of the manifests that is there now."""
        return self.glob(self.frames_table, "*/*.parquet") + self.glob(self.root / "manifest", "*.parquet/*.parquet")

    @property
    def cameras_table(self) -> Path:
        return self.root / "stats" / "cameras.parquet"

    @property
    def categories_table(self) -> Path:
        return self.root / "stats" / "categories.parquet"

    def video_lease(self, dataset: str, video_id: str) -> Path | str:
        """Held by the run working on this video (pipeline/io/lease.py)."""
        return self._lease(self.root / "state" / "leases" / dataset / f"{video_id}.lease")

    @property
    def publish_lease(self) -> Path | str:
        return self._lease(self.root / "state" / "leases" / "publish.lease")

    def _lease(self, path: Path) -> Path | str:
        # On S3 the lease is an object beside the data, so runs on different machines see it; stores without
        # conditional writes keep it in the local working directory (one machine's runs only: README, Guarantees).
        if self.url and objectstore.supports_conditional_writes(self.url):
            return self.address(path)
        return path

    def publish_state(self, name: str) -> Path:
        """Publish's own state (cross-video decisions and their index), kept so a rerun redoes only what changed."""
        return self.root / "state" / "publish" / name

    @property
    def dataset_json(self) -> Path:
        return self.root / "dataset.json"

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def relative_paths(self, text: str) -> str:
        """`text` (an error or warning to store) with paths under the data root written relative to it, so stored
        messages read the same wherever the dataset was made or is moved to (and name no one's home directory)."""
        return text.replace(f"{self.root}{os.sep}", "")

    # Reading and writing at the data root: plain file operations on disk, the object store for a URL.

    def address(self, path: Path) -> str:
        """Where a layout path lives: the local path, or its URL under an object-store root."""
        return objectstore.join(self.url, self.relative(path)) if self.url else str(path)

    def uri(self, path: Path) -> str:
        """A link to a layout path (file:// on disk)."""
        return self.address(path) if self.url else path.as_uri()

    def exists(self, path: Path) -> bool:
        return objectstore.exists(self.address(path)) if self.url else path.is_file()

    def read_bytes(self, path: Path) -> bytes:
        return objectstore.read_bytes(self.address(path)) if self.url else path.read_bytes()

    def read_many(self, paths: list[Path]) -> list[bytes]:
        """Several files at once (concurrently on an object store)."""
        if self.url:
            return objectstore.read_many([self.address(p) for p in paths])
        return [p.read_bytes() for p in paths]

    def glob(self, directory: Path, pattern: str) -> list[Path]:
        """Layout paths of the files under `directory` matching `pattern`, sorted."""
        if not self.url:
            return sorted(directory.glob(pattern))
        prefix = self.url + "/"
        found = objectstore.glob(objectstore.join(self.address(directory), pattern))
        return sorted(self.root / u[len(prefix) :] for u in found if u.startswith(prefix))

    def size(self, path: Path) -> int:
        return objectstore.size(self.address(path)) if self.url else path.stat().st_size

    def sha256(self, path: Path) -> str:
        return objectstore.sha256(self.address(path)) if self.url else sha256_file(path)

    def open(self, path: Path) -> AbstractContextManager[str | Path | BinaryIO]:
        """For pyarrow: footers, and streaming reads of whole files."""
        return objectstore.open_input(self.address(path) if self.url else path)

    def open_parquet(
        self, path: Path, columns: list[str] | None = None
    ) -> AbstractContextManager[str | Path | BinaryIO]:
        """For pyarrow reads of some columns: an object store then sends only their byte ranges."""
        return objectstore.open_parquet(self.address(path) if self.url else path, columns=columns)

    def has_table(self, path: Path) -> bool:
        """A published table with at least one Parquet file (a manifest of a dataset none of whose videos got
        through has none)."""
        return bool(parquet_tables.table_files(self.address(path)))

    def read_table(self, path: Path, columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
        """A published table: one Parquet file, or a directory of per-video parts (the frames table, manifests)."""
        return parquet_tables.read_table(self.address(path), columns, schema)

    def write_bytes(self, path: Path, data: bytes) -> bool:
        """Write atomically; False when the file already held exactly these bytes (nothing is touched)."""
        if self.url:
            return objectstore.write_bytes_atomic(self.address(path), data)
        return write_bytes_atomic(path, data)

    def publish_file(self, local: Path, path: Path) -> bool:
        """Put a finished temporary file (written next to `path`) in its place, atomically;
        False, and the temporary deleted, when `path` already held exactly its bytes."""
        if not self.url:
            return move_if_changed(local, path)
        url = self.address(path)
        try:
            same_size = objectstore.exists(url) and objectstore.size(url) == local.stat().st_size
            if same_size and objectstore.sha256(url) == sha256_file(local):
                return False
            objectstore.put_file_atomic(local, url)
            return True
        finally:
            local.unlink(missing_ok=True)

    def upload(self, *paths: Path) -> None:
        """Publish finished files of the working directory to an object-store root, then drop the local copies.

        On disk the files are already where they belong: nothing to do.
        """
        if not self.url:
            return
        for path in paths:
            objectstore.put_file_atomic(path, self.address(path))
            path.unlink()

    def remove(self, path: Path) -> None:
        """Delete a file (absent is fine), and its working copy under an object-store root."""
        path.unlink(missing_ok=True)
        if self.url:
            objectstore.remove(self.address(path))

    def remove_dir(self, directory: Path) -> None:
        shutil.rmtree(directory, ignore_errors=True)
        if self.url:
            objectstore.remove_tree(self.address(directory))

    def remove_stale_temps(self, directory: Path, name: str | None = None) -> int:
        """Temporaries a killed writer left (see storage.remove_stale_temps), locally and at the data root."""
        count = remove_stale_temps(directory, name)
        if self.url:
            count += objectstore.remove_stale_temps(self.address(directory), name)
        return count


def default_work_dir(url: str) -> Path:
    """Working directory of an object-store root: $DEPTHCURATE_WORK_DIR (or ~/.cache/depthcurate/work)/<digest>."""
    base = os.environ.get(WORK_DIR_ENV) or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "depthcurate" / "work"
    return Path(base).expanduser() / hashlib.sha256(url.encode()).hexdigest()[:16]
