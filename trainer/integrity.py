"""What the trainer checks in the data it reads: shards against dataset.json, and the bad samples it skips.

A shard is checked the first time a process opens it (data.verify): its size, and with sha256 its digest, must be
the ones dataset.json published. A mismatch fails the run whatever data.on_bad_sample says: the file is no longer
the one the manifest indexes, so no row of it can be trusted, and skipping them all would silently drop a shard.

A sample whose bytes do not decode cleanly is a `BadSample`: the batch builder (in a loader worker) leaves its
target out and reports it with the batch; `BadSampleLedger` (in the training process) counts the distinct bad
frames, logs each once, and stops the run per data.on_bad_sample and data.max_bad_samples. The decision sits in the
training process so that every rank sees every rank's reports and all stop together (no DDP hang), and so that
its count goes into checkpoints: a resumed run skips, logs and stops exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.io import objectstore
from pipeline.io.storage import sha256_file
from pipeline.schema import SchemaVersionError, check_version_string
from trainer.config import DataConfig, VerifyMode
from trainer.manifest import ManifestError

logger = logging.getLogger(__name__)


class ShardIntegrityError(ManifestError):
    """A shard that is not the file dataset.json describes, or that cannot be read: never skipped."""


class BadSampleError(ValueError):
    """A bad sample under data.on_bad_sample: fail, more than data.max_bad_samples of them, or a batch of nothing
    but bad samples."""


@dataclass(frozen=True)
class PublishedShard:
    """A shard as dataset.json describes it."""

    bytes: int
    sha256: str


@dataclass(frozen=True)
class BadSample:
    """A frame that could not be used, and the target left out of its batch because of it."""

    shard: str  # where it was read: <data root>/<shard>
    row: int  # row in the shard
    sample_id: str
    reason: str
    target: str  # sample id of the target left out: the frame itself, or the target it is a support of
    fatal: bool = False  # the shard itself is bad: the run stops whatever data.on_bad_sample says

    @property
    def key(self) -> tuple[str, int]:
        return self.shard, self.row

    def describe(self) -> str:
        support = f" (a support of {self.target})" if self.target != self.sample_id else ""
        return f"shard {self.shard} row {self.row} sample {self.sample_id}{support}: {self.reason}"


def shard_location(root: str, shard: str) -> str:
    """Where the trainer reads a manifest's shard; the key verdicts are cached under."""
    return f"{root}/{shard}"


class ShardVerifier:
    """Checks each shard against its data root's dataset.json the first time this process opens it.

    A DataLoader worker gets its own copy (and cache), so each pays for a shard once per run."""

    def __init__(self, mode: VerifyMode, published: dict[str, PublishedShard]):
        self.mode = mode
        self.published = published  # by shard_location
        self._problems: dict[str, str] = {}  # by shard_location: "" for a shard that matched

    @classmethod
    def for_frame(cls, frame: pd.DataFrame, mode: VerifyMode) -> ShardVerifier:
        """What dataset.json publishes for every data root of `frame`; fails now if a shard of it is not listed."""
        if mode == "none":
            return cls(mode, {})
        published: dict[str, PublishedShard] = {}
        for root in sorted(frame["root"].unique()):
            published.update(read_published(str(root), mode))
        for root, shard in frame[["root", "shard"]].drop_duplicates().itertuples(index=False):
            if shard_location(root, shard) not in published:
                raise ShardIntegrityError(
                    f"shard {shard} is in the manifest but not in {root}/dataset.json (data.verify: {mode})"
                )
        return cls(mode, published)

    def check(self, path: str) -> None:
        """Raise ShardIntegrityError, naming the shard and what differs, unless it matches dataset.json."""
        if self.mode == "none":
            return
        if path not in self._problems:
            self._problems[path] = self._problem(path)
        if self._problems[path]:
            raise ShardIntegrityError(f"shard {path} {self._problems[path]}")

    def _problem(self, path: str) -> str:
        expected = self.published.get(path)
        if expected is None:
            return "is not listed in its data root's dataset.json"
        found = objectstore.size(path) if objectstore.is_remote(path) else Path(path).stat().st_size
        if found != expected.bytes:
            return f"is {found} bytes, dataset.json says {expected.bytes} (changed or truncated since publishing)"
        if self.mode == "sha256":
            digest = objectstore.sha256(path) if objectstore.is_remote(path) else sha256_file(path)
            if digest != expected.sha256:
                return (
                    f"has sha256 {digest}, dataset.json says {expected.sha256} (changed or corrupted since publishing)"
                )
        return ""


def read_published(root: str, mode: VerifyMode) -> dict[str, PublishedShard]:
    """The shards <root>/dataset.json lists, by shard_location."""
    location = shard_location(root, "dataset.json")
    if not objectstore.exists(location):
        raise ManifestError(
            f"no dataset.json at data root {root} to check its shards against (data.verify: {mode}); "
            "publish the dataset, or set data.verify: none"
        )
    data = objectstore.read_bytes(location) if objectstore.is_remote(location) else Path(location).read_bytes()
    try:
        description = json.loads(data)
        check_version_string(str(description.get("schema_version", "none")), location)
        return {
            shard_location(root, entry["path"]): PublishedShard(int(entry["bytes"]), str(entry["sha256"]))
            for entry in description["shards"]
        }
    except SchemaVersionError as exc:
        raise ManifestError(str(exc)) from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(f"{location} is not a dataset description with a shard list ({exc!r})") from exc


@dataclass(frozen=True)
class BadSampleCounts:
    """What a checkpoint keeps of the ledger: the distinct bad frames met so far and the targets left out."""

    frames: tuple[tuple[str, int], ...] = ()
    skipped: int = 0

    def to_state(self) -> dict[str, object]:
        return {"frames": [list(frame) for frame in self.frames], "skipped": self.skipped}

    @classmethod
    def from_state(cls, state: object) -> BadSampleCounts:
        """From to_state's dict; a checkpoint from before bad samples were counted has none."""
        if not isinstance(state, dict):
            return cls()
        return cls(tuple((str(s), int(r)) for s, r in state.get("frames", [])), int(state.get("skipped", 0)))


@dataclass
class BadSampleLedger:
    """The bad samples a run has met, checked against data.on_bad_sample and data.max_bad_samples."""

    cfg: DataConfig
    counts: BadSampleCounts = BadSampleCounts()
    _seen: set[tuple[str, int]] = field(default_factory=set, init=False)
    _latest: BadSample | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._seen = set(self.counts.frames)

    @property
    def distinct(self) -> int:
        return len(self._seen)

    def record(self, reports: Iterable[BadSample]) -> list[BadSample]:
        """Count `reports`; returns the frames met for the first time, for the caller to log. A shard fault, or
        any bad sample under data.on_bad_sample: fail, raises at once; past the limit, `check_limit` raises."""
        reports = list(reports)
        for bad in reports:
            if bad.fatal:
                raise ShardIntegrityError(f"{bad.reason} (met reading row {bad.row}, sample {bad.sample_id})")
            if self.cfg.on_bad_sample == "fail":
                raise BadSampleError(f"bad sample (data.on_bad_sample: fail): {bad.describe()}")
        first = []
        for bad in reports:
            if bad.key in self._seen:  # met again (a support of another target, a later epoch): counted, not news
                logger.debug("skipped again: %s", bad.describe())
                continue
            self._seen.add(bad.key)
            self._latest = bad
            first.append(bad)
            logger.warning("skipped bad sample %d: %s", len(self._seen), bad.describe())
        frames = self.counts.frames + tuple(bad.key for bad in first)
        self.counts = BadSampleCounts(frames, self.counts.skipped + len(reports))
        return first

    def check_limit(self) -> None:
        """Raise BadSampleError once more distinct bad frames were met than data.max_bad_samples allows."""
        if self.distinct > self.cfg.max_bad_samples:
            latest = self._latest.describe() if self._latest is not None else "(met before the resume)"
            raise BadSampleError(
                f"{self.distinct} bad samples, more than data.max_bad_samples={self.cfg.max_bad_samples}; "
                f"the latest: {latest}"
            )


def all_bad(reports: list[BadSample]) -> BadSampleError:
    """The error for a batch whose every target was bad: it cannot be trained on, and none can be made up in its
    place without leaving the plan that resuming and the other ranks rely on."""
    return BadSampleError("every target of a batch was a bad sample: " + "; ".join(b.describe() for b in reports))
