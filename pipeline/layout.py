"""Where everything lives under the data root (the data contract of DESIGN.md)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataRoot:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root).expanduser().resolve())

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
        return sorted((self.root / "stats" / "videos").glob("*/*.json"))

    def embeddings(self, dataset: str, video_id: str) -> Path:
        """CLIP embeddings of a video's shard rows, keyed by sample_id (kept apart so shards stay immutable)."""
        return self.root / "embeddings" / dataset / f"{video_id}.parquet"

    def preview(self, dataset: str, video_id: str) -> Path:
        return self.root / "previews" / dataset / f"{video_id}.jpg"

    def manifest(self, dataset: str) -> Path:
        return self.root / "manifest" / f"{dataset}.parquet"

    @property
    def videos_table(self) -> Path:
        return self.root / "stats" / "videos.parquet"

    @property
    def frames_table(self) -> Path:
        return self.root / "stats" / "frames.parquet"

    @property
    def categories_table(self) -> Path:
        return self.root / "stats" / "categories.parquet"

    @property
    def dataset_json(self) -> Path:
        return self.root / "dataset.json"

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()
