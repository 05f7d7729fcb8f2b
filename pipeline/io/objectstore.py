"""Files on an object store (any fsspec URL: s3://, gs://, az://), with the guarantees storage.py gives on disk.

Writes go to a hidden temporary key next to the final one (the same `.<name>.tmp-<id>` names as on disk), are
checked for their size and then moved onto the final key, so a reader lists and opens only whole objects and a
killed writer leaves only hidden temporaries, which the next writer of that directory removes. Credentials come
from the environment and the usual config files (boto: AWS_* variables, ~/.aws; fsspec: FSSPEC_* variables),
never from the URL, so a URL can be logged and stored in dataset.json.

Plain local paths pass through `exists`, `open_input` and `open_parquet` untouched, so callers (the trainer's
reader) use one code path for both. Filesystems are looked up per call: fsspec caches them per process and drops
its cache after a fork, so nothing opened in a parent process is used in a DataLoader worker.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.io.storage import TMP_MARK

_LOCAL_PROTOCOLS = ("file", "local")


def is_remote(location: str | Path) -> bool:
    """True for the URL of a filesystem other than the local disk."""
    if isinstance(location, Path):
        return False
    protocol, sep, _ = str(location).partition("://")
    return bool(sep) and protocol not in _LOCAL_PROTOCOLS


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of `url` and the path inside it; refuses credentials written into the URL."""
    import fsspec.core

    netloc = url.partition("://")[2].partition("/")[0]
    if "@" in netloc:  # user:secret@bucket would end up in logs and dataset.json
        raise ValueError(
            f"{url.partition('://')[0]}:// URL with credentials in it: give credentials through the "
            "environment or the storage's config file, not the data root"
        )
    return fsspec.core.url_to_fs(url)


def join(root: str, relative: str) -> str:
    """`root/relative` for a URL or a local directory."""
    return f"{root.rstrip('/')}/{relative}" if is_remote(root) else str(Path(root) / relative)


def exists(location: str | Path) -> bool:
    """True when a file exists at a local path or URL."""
    if not is_remote(location):
        return Path(location).is_file()
    fs, path = filesystem(str(location))
    fs.invalidate_cache(path)  # another process may have written it since this one listed the directory
    return fs.isfile(path)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def read_many(urls: list[str]) -> list[bytes]:
    """The contents of several objects, fetched concurrently where the filesystem can."""
    if not urls:
        return []
    fs, _ = filesystem(urls[0])
    paths = [filesystem(u)[1] for u in urls]
    found = fs.cat(paths, on_error="raise")
    return [found[p] for p in paths]


def glob(pattern: str) -> list[str]:
    """URLs of the objects matching a glob pattern URL, sorted."""
    fs, path = filesystem(pattern)
    fs.invalidate_cache()  # listings are cached per filesystem; other writers may have added objects since
    found = fs.glob(path, detail=True)
    return sorted(fs.unstrip_protocol(p) for p, info in found.items() if info.get("type") == "file")


def size(url: str) -> int:
    fs, path = filesystem(url)
    return int(fs.size(path))


def sha256(url: str, chunk: int = 8 << 20) -> str:
    fs, path = filesystem(url)
    digest = hashlib.sha256()
    with fs.open(path, "rb", block_size=chunk) as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def temp_key_for(path: str) -> str:
    """A hidden sibling key, named like storage.temp_path_for's temporaries (ignored by `*.parquet` listings)."""
    parent, _, name = path.rpartition("/")
    return f"{parent}/.{name}{TMP_MARK}{uuid.uuid4().hex[:8]}"


def put_file_atomic(local: str | Path, url: str) -> None:
    """Upload a finished local file to a temporary key, check its size, then move it onto `url`."""
    fs, path = filesystem(url)
    expected = Path(local).stat().st_size
    with _published(fs, path) as tmp:
        fs.put_file(str(local), tmp)
        _check_size(fs, tmp, expected)


def write_bytes_atomic(url: str, data: bytes, *, skip_if_same: bool = True) -> bool:
    """Write `data` to `url` through a temporary key; False when the object already held exactly these bytes."""
    fs, path = filesystem(url)
    if skip_if_same and _holds(fs, path, data):
        return False
    with _published(fs, path) as tmp:
        fs.pipe_file(tmp, data)
        _check_size(fs, tmp, len(data))
    return True


def remove(url: str) -> None:
    """Delete an object; absent is fine."""
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)
    fs.invalidate_cache(path)


def remove_tree(url: str) -> None:
    """Delete every object under a directory URL; absent is fine."""
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    with contextlib.suppress(FileNotFoundError):
        if fs.exists(path):
            fs.rm(path, recursive=True)
    fs.invalidate_cache(path)


def remove_stale_temps(directory: str, name: str | None = None) -> int:
    """Delete temporaries a killed writer left under a directory URL (only those of `name` if given)."""
    fs, path = filesystem(directory)
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return 0
    start = f".{name}{TMP_MARK}" if name else "."
    stale = [p for p in entries if p.rpartition("/")[2].startswith(start) and TMP_MARK in p.rpartition("/")[2]]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(p)
    fs.invalidate_cache(path)
    return len(stale)


@contextlib.contextmanager
def open_input(location: str | Path) -> Iterator[str | Path | BinaryIO]:
    """Something pyarrow reads from: a local path as it is, or a random-access file on the object store.

    For footers (schemas, row counts) and for streaming reads of large files.
    """
    if not is_remote(location):
        yield location
        return
    fs, path = filesystem(str(location))
    with fs.open(path, "rb") as fh:
        yield fh


@contextlib.contextmanager
def open_parquet(
    location: str | Path, columns: list[str] | None = None, row_groups: list[int] | None = None
) -> Iterator[str | Path | BinaryIO]:
    """Like open_input, but on an object store the footer and the byte ranges of the wanted columns and row
    groups are fetched up front (fsspec.parquet), in a few requests, and nothing else: no pixels for a
    metadata column, one row group for the trainer."""
    if not is_remote(location):
        yield location
        return
    import fsspec.parquet

    fs, path = filesystem(str(location))
    with fsspec.parquet.open_parquet_file(path, fs=fs, columns=columns, row_groups=row_groups, engine="pyarrow") as fh:
        yield fh


@contextlib.contextmanager
def _published(fs: Any, path: str) -> Iterator[str]:
    """Yield a temporary key to write; on success move it onto `path`, on failure delete it."""
    tmp = temp_key_for(path)
    try:
        yield tmp
        # On S3 a move is a server-side copy then a delete: the final key appears whole, in one step.
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm_file(tmp)
        raise
    finally:
        fs.invalidate_cache(path)


def _check_size(fs: Any, path: str, expected: int) -> None:
    fs.invalidate_cache(path)
    found = int(fs.size(path))
    if found != expected:
        raise OSError(f"upload of {fs.unstrip_protocol(path)} stored {found} bytes, not {expected}")


def _holds(fs: Any, path: str, data: bytes) -> bool:
    """True when the object at `path` has exactly `data`: size first, an MD5 ETag as a quick yes, then the bytes."""
    fs.invalidate_cache(path)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return False
    if info.get("type") != "file" or int(info.get("size", -1)) != len(data):
        return False
    etag = str(info.get("ETag", "")).strip('"')
    if len(etag) == 32 and etag == hashlib.md5(data, usedforsecurity=False).hexdigest():
        return True  # a single-part S3 upload's ETag is its MD5; any other ETag proves nothing either way
    return fs.cat_file(path) == data


# ---------------------------------------------------------------- conditional writes (leases across machines)

_CONDITIONAL_PROTOCOLS = ("s3", "s3a")  # S3 and compatible stores: If-None-Match / If-Match on PutObject


def supports_conditional_writes(url: str) -> bool:
    """True where the store can create an object only if absent and replace it only if unchanged."""
    return is_remote(url) and url.partition("://")[0] in _CONDITIONAL_PROTOCOLS


@dataclass(frozen=True)
class ObjectVersion:
    """One version of an object, as its store saw it."""

    etag: str
    age_s: float  # since it was last written, by the store's own clock (its Date header): no skew between hosts;
    # at most the true age
    body: bytes


def create_exclusive(url: str, data: bytes) -> str | None:
    """Write `data` to `url` only if no object is there; its ETag, or None when one already was."""
    try:
        reply = _s3_call(url, "put_object", Body=data, IfNoneMatch="*")
    except FileExistsError:
        return None
    return str(reply["ETag"])


def replace_if(url: str, data: bytes, etag: str) -> str | None:
    """Replace the object at `url` with `data` only while it is still at `etag`; the new ETag, or None when it
    changed or vanished since."""
    try:
        reply = _s3_call(url, "put_object", Body=data, IfMatch=etag)
    except OSError as exc:  # gone (FileNotFoundError), or s3fs's 412 PreconditionFailed (EINVAL)
        if isinstance(exc, FileNotFoundError) or exc.errno == errno.EINVAL:
            return None
        raise
    return str(reply["ETag"])


def read_version(url: str) -> ObjectVersion | None:
    """The object's bytes, ETag and age, or None when there is none."""
    try:
        reply = _s3_call(url, "get_object")
    except FileNotFoundError:
        return None
    data = _read_body(filesystem(url)[0], reply["Body"])  # fsspec caches the filesystem: no second client
    served = email.utils.parsedate_to_datetime(reply["ResponseMetadata"]["HTTPHeaders"]["date"])
    # Both times have whole seconds: one second less, so a version never reads older than it is.
    age = (served - reply["LastModified"]).total_seconds() - 1.0
    return ObjectVersion(str(reply["ETag"]), max(age, 0.0), data)


def _s3_call(url: str, method: str, **kwargs: Any) -> Any:
    fs, path = filesystem(url)
    bucket, key, _ = fs.split_path(path)
    try:
        return fs.call_s3(method, Bucket=bucket, Key=key, **kwargs)
    finally:
        fs.invalidate_cache(path)


def _read_body(fs: Any, body: Any) -> bytes:
    """Read a GetObject body: s3fs's client is asynchronous (aiobotocore), so it is read on s3fs's loop."""
    from fsspec.asyn import sync

    async def read() -> bytes:
        async with body as stream:
            return bytes(await stream.read())

    return bytes(sync(fs.loop, read))
