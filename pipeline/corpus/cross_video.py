"""Cross-video near-duplicates, decided incrementally with their index kept under the data root.

The rule: videos are taken in (dataset, video_id) order; a frame that ingest kept is a `duplicate_cross_video`
of the nearest (then earliest) frame within `dedup.max_hamming` among the frames earlier videos still keep,
and the earlier copy stays. A video's decisions therefore depend on it and on every video before it, so each
ok video gets a chain key: a digest of the previous key, its name and its frame parts' sha256 (and the
distance). `state/publish/cross_video.npz` holds, per video, that key, its duplicates and the hashes it added
to the index (8 bytes each, plus 8 for where the frame is). A publish reuses the longest prefix whose keys
match and decides only the videos after it: nothing when nothing changed, one video when one is appended.
The state is written atomically and checked when read (zip CRC, format, keys); anything off is thrown away
and the decisions are made again from the frame parts, which gives exactly the same result.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq

from pipeline.config import DedupConfig
from pipeline.io.data_root import DataRoot
from pipeline.video.phash import HammingIndex
from pipeline.video.record import VideoRecord
from pipeline.video.sampling import sample_id

STATE_FORMAT = 1
STATE_NAME = "cross_video.npz"
_COLUMNS = ["kept", "phash", "frame_index"]


@dataclass
class VideoDuplicates:
    """One video's cross-video duplicates: rows of its frame table and the sample ids they repeat."""

    rows: np.ndarray  # int64, ascending
    duplicate_of: list[str] = field(default_factory=list)


@dataclass
class _Entries:
    """The index's contents in insertion order: each kept frame's hash and where it lives."""

    hashes: np.ndarray  # uint64
    video: np.ndarray  # int32: ordinal of the video among the ok videos
    frame_index: np.ndarray  # int32


@dataclass
class _State:
    names: list[str]
    keys: list[str]
    added: list[int]  # per video: index entries it added
    dup_rows: list[np.ndarray]  # per video: duplicate rows
    dup_match: list[np.ndarray]  # per video: the index entry each duplicate repeats
    chunks: list[_Entries]  # the index entries, a chunk per decision run (joined once, not per video)

    def entries(self) -> _Entries:
        """All index entries in insertion order; the chunks are joined on the first call, then kept joined."""
        if len(self.chunks) != 1:
            empty = _Entries(np.empty(0, np.uint64), np.empty(0, np.int32), np.empty(0, np.int32))
            chunks = self.chunks or [empty]
            self.chunks = [
                _Entries(
                    np.concatenate([c.hashes for c in chunks]),
                    np.concatenate([c.video for c in chunks]),
                    np.concatenate([c.frame_index for c in chunks]),
                )
            ]
        return self.chunks[0]


def cross_video_duplicates(
    root: DataRoot, records: list[VideoRecord], cfg: DedupConfig
) -> dict[tuple[str, str], VideoDuplicates]:
    """Each ok video's cross-video duplicates, reusing the decisions of the unchanged prefix of the corpus."""
    videos = [r for r in records if r.ok]
    keys = _chain_keys(videos, cfg.max_hamming)
    previous = _load_state(root)
    reuse = _matching_prefix(previous, keys)
    state = _resume(previous, reuse) if previous is not None and reuse else _empty_state()
    index = HammingIndex()
    index.add(state.entries().hashes)
    for ordinal in range(reuse, len(videos)):
        _decide(root, videos[ordinal], ordinal, index, state, cfg.max_hamming)
        state.names.append(videos[ordinal].name)
        state.keys.append(keys[ordinal])
    if reuse < len(videos) or previous is None or len(previous.keys) != len(keys):
        _save_state(root, state)
    entries = state.entries()
    return {
        (video.dataset, video.video_id): VideoDuplicates(
            state.dup_rows[i], [_sample_id(videos, entries, int(e)) for e in state.dup_match[i]]
        )
        for i, video in enumerate(videos)
    }


def _chain_keys(videos: list[VideoRecord], max_hamming: int) -> list[str]:
    keys, previous = [], f"format {STATE_FORMAT}, max_hamming {max_hamming}"
    for video in videos:
        parts = ",".join(part.sha256 for part in video.frame_parts)
        previous = hashlib.sha256(f"{previous}\n{video.name}\n{parts}".encode()).hexdigest()[:32]
        keys.append(previous)
    return keys


def _matching_prefix(state: _State | None, keys: list[str]) -> int:
    if state is None:
        return 0
    n = 0
    while n < min(len(keys), len(state.keys)) and keys[n] == state.keys[n]:
        n += 1
    return n


def _resume(state: _State, videos: int) -> _State:
    """The state of the first `videos` videos: their decisions and the index entries they added."""
    n = sum(state.added[:videos])
    entries = state.entries()
    return _State(
        names=state.names[:videos],
        keys=state.keys[:videos],
        added=state.added[:videos],
        dup_rows=state.dup_rows[:videos],
        dup_match=state.dup_match[:videos],
        chunks=[_Entries(entries.hashes[:n], entries.video[:n], entries.frame_index[:n])],
    )


def _empty_state() -> _State:
    return _State([], [], [], [], [], [])


def _decide(root: DataRoot, video: VideoRecord, ordinal: int, index: HammingIndex, state: _State, d: int) -> None:
    """Query the video's kept frames against the index, then add the ones that are not duplicates."""
    kept, hashes, frame_index = _read_kept(root, video)
    match = index.nearest(hashes, d)
    hit = match >= 0
    fresh = ~hit
    state.dup_rows.append(kept[hit])
    state.dup_match.append(match[hit])
    state.added.append(int(fresh.sum()))
    state.chunks.append(_Entries(hashes[fresh], np.full(int(fresh.sum()), ordinal, np.int32), frame_index[fresh]))
    index.add(hashes[fresh])


def _read_kept(root: DataRoot, video: VideoRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (in the video's frame table), pHashes and frame indexes of the frames ingest kept."""
    rows, hashes, frame_index, offset = [], [], [], 0
    for part in video.frame_parts:
        with root.open_parquet(root.root / part.path, _COLUMNS) as source:
            table = pq.read_table(source, columns=_COLUMNS)
        kept = np.flatnonzero(table["kept"].to_numpy(zero_copy_only=False))
        rows.append(offset + kept)
        hashes.append(table["phash"].fill_null(0).to_numpy()[kept].astype(np.uint64))
        frame_index.append(table["frame_index"].to_numpy()[kept].astype(np.int32))
        offset += table.num_rows
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0, np.int32)
    return np.concatenate(rows).astype(np.int64), np.concatenate(hashes), np.concatenate(frame_index)


def _sample_id(videos: list[VideoRecord], entries: _Entries, entry: int) -> str:
    video = videos[int(entries.video[entry])]
    return sample_id(video.dataset, video.video_id, int(entries.frame_index[entry]))


def _save_state(root: DataRoot, state: _State) -> None:
    bounds = np.concatenate([[0], np.cumsum([len(rows) for rows in state.dup_rows])]).astype(np.int64)
    entries = state.entries()
    sink = io.BytesIO()
    np.savez(
        sink,
        format=np.array([STATE_FORMAT]),
        names=np.array(state.names, dtype=str),
        keys=np.array(state.keys, dtype=str),
        added=np.array(state.added, np.int64),
        dup_bounds=bounds,
        dup_rows=np.concatenate([np.empty(0, np.int64), *state.dup_rows]),
        dup_match=np.concatenate([np.empty(0, np.int64), *state.dup_match]),
        hashes=entries.hashes,
        video=entries.video,
        frame_index=entries.frame_index,
    )
    root.write_bytes(root.publish_state(STATE_NAME), sink.getvalue())


def _load_state(root: DataRoot) -> _State | None:
    """The saved state, or None when there is none or it cannot be trusted (then everything is decided anew)."""
    path = root.publish_state(STATE_NAME)
    try:
        with np.load(io.BytesIO(root.read_bytes(path)), allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}  # reading every member checks its CRC
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    try:
        return _parse_state(arrays)
    except (KeyError, ValueError, IndexError):
        return None


def _parse_state(arrays: dict[str, np.ndarray]) -> _State | None:
    if int(arrays["format"][0]) != STATE_FORMAT:
        return None
    names, keys, added, bounds = list(arrays["names"]), list(arrays["keys"]), arrays["added"], arrays["dup_bounds"]
    entries = _Entries(arrays["hashes"], arrays["video"], arrays["frame_index"])
    consistent = (
        len(names) == len(keys) == len(added) == len(bounds) - 1
        and int(added.sum()) == len(entries.hashes) == len(entries.video) == len(entries.frame_index)
        and int(bounds[-1]) == len(arrays["dup_rows"]) == len(arrays["dup_match"])
    )
    if not consistent:
        return None
    rows = [arrays["dup_rows"][a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    match = [arrays["dup_match"][a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return _State([str(n) for n in names], [str(k) for k in keys], [int(a) for a in added], rows, match, [entries])
