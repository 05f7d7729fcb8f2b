"""How a curate run ended, read from what it published: the exit code, the flow run's message, the summary.

Everything here comes from `stats/videos.parquet` after publish (one row per video, catalog errors included), so
the command line's exit code, the flow run's state message and the `curate-summary` artifact give the numbers
`depthcurate stats` gives. Prefect-free: the command line's driver path imports it without importing Prefect.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from pipeline.io.data_root import DataRoot
from pipeline.video.record import NEVER_FINAL

# Exit codes of `depthcurate curate` and `depthcurate demo` (their --help epilog documents them).
EXIT_OK = 0  # every video ok, or (without --strict) the only failures are permanent ones
EXIT_USAGE = 2  # bad arguments or config; nothing ran
EXIT_RETRYABLE = 3  # some video failed in a way that may go away (takes precedence over EXIT_STRICT)
EXIT_STRICT = 4  # --strict: some video failed, permanently (catalog errors included)

EXIT_CODES_HELP = f"""exit status:
  {EXIT_OK}  every video is ok, or (without --strict) the only failures are permanent ones:
     HTTP 404, not a video, too short, a catalog error, ...
  1  the run itself failed (a traceback says why)
  {EXIT_USAGE}  bad arguments or config: nothing ran
  {EXIT_RETRYABLE}  some video failed in a way that may go away: internal_error (a bug), disk_full,
     transient download errors (timeouts, HTTP 5xx, 429, 403, refused connections); their
     errors are in `depthcurate stats`; or publish ran out of disk space. Takes precedence over {EXIT_STRICT}.
  {EXIT_STRICT}  with --strict: some video failed (any status but ok, catalog errors included)
The codes are computed from the published stats/videos.parquet, whichever way the run went
(the Prefect-free driver or the Prefect flow)."""

OK = "ok"
CATALOG_ERROR = "catalog_error"
_COLUMNS = ("dataset", "video_id", "status", "error", "frames_decoded", "frames_kept")


def is_retryable(status: str, flagged: bool | None) -> bool:
    """Whether a video that ended with `status` may succeed another time; `flagged`: its record's `retryable`."""
    if status in (OK, CATALOG_ERROR):
        return False
    return status in NEVER_FINAL or bool(flagged)


@dataclass(frozen=True)
class RunOutcome:
    """The published videos table, one dict per row (catalog order of publish), with `retryable` per row."""

    videos: list[dict[str, Any]]

    @property
    def ok(self) -> int:
        return sum(v["status"] == OK for v in self.videos)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [v for v in self.videos if v["status"] != OK]

    @property
    def retryable(self) -> list[dict[str, Any]]:
        return [v for v in self.videos if v["retryable"]]

    @property
    def catalog_errors(self) -> list[dict[str, Any]]:
        return [v for v in self.videos if v["status"] == CATALOG_ERROR]

    def exit_code(self, strict: bool = False) -> int:
        if self.retryable:
            return EXIT_RETRYABLE
        if strict and self.failures:
            return EXIT_STRICT
        return EXIT_OK

    @property
    def message(self) -> str:
        """One line: "12 ok, 3 failed (1 retryable, 1 catalog error)"."""
        text = f"{self.ok} ok, {len(self.failures)} failed"
        if not self.failures:
            return text
        details = [f"{len(self.retryable)} retryable"]
        if self.catalog_errors:
            n = len(self.catalog_errors)
            details.append(f"{n} catalog error{'s' if n != 1 else ''}")
        return f"{text} ({', '.join(details)})"

    def explain(self, strict: bool = False) -> str | None:
        """Why the exit code is not 0, for the end of the command's output (None when it is 0)."""
        code = self.exit_code(strict)
        if code == EXIT_RETRYABLE:
            names = ", ".join(f"{_name(v)} ({v['status']})" for v in self.retryable)
            return f"exit code {code}: {len(self.retryable)} video(s) failed in a way that may go away: {names}"
        if code == EXIT_STRICT:
            return f"exit code {code} (--strict): {len(self.failures)} video(s) or catalog row(s) failed"
        return None

    def table(self, skipped: dict[tuple[str, str], bool] | None = None) -> list[dict[str, Any]]:
        """Rows for the `curate-summary` table artifact; `skipped`: (dataset, video_id) -> finished earlier."""
        skipped = skipped or {}
        return [
            {
                "dataset": v["dataset"],
                "video_id": v["video_id"],
                "status": v["status"],
                "retryable": v["retryable"],
                "frames_decoded": v["frames_decoded"] or 0,
                "frames_kept": v["frames_kept"] or 0,
                "skipped": skipped.get((v["dataset"], v["video_id"])),
                "error": v["error"],
            }
            for v in self.videos
        ]

    def markdown(self, counts: dict[str, Any] | None = None) -> str:
        """A readable summary: totals, videos by status, frames, samples per dataset (`counts`: dataset.json's)."""
        decoded = sum(v["frames_decoded"] or 0 for v in self.videos)
        kept = sum(v["frames_kept"] or 0 for v in self.videos)
        lines = [
            f"**{len(self.videos)} videos: {self.message}**",
            "",
            f"Frames: {decoded} decoded, {kept} kept (after publish's corpus-level drops).",
        ]
        if counts and counts.get("samples"):
            samples = sorted(counts["samples"].items())
            lines.append("Samples per dataset: " + ", ".join(f"{dataset} = {n}" for dataset, n in samples))
        by_status = collections.Counter(v["status"] for v in self.videos)
        retryable = collections.Counter(v["status"] for v in self.retryable)
        lines += ["", "| status | videos | retryable |", "|---|---:|---:|"]
        lines += [f"| {s} | {n} | {retryable[s]} |" for s, n in sorted(by_status.items(), key=_status_order)]
        if self.retryable:
            lines += [
                "",
                "Retryable failures may go away (a bug fixed, disk space freed, a server back): see their errors.",
            ]
        return "\n".join(lines)


def run_outcome(root: DataRoot) -> RunOutcome:
    """The outcome of the last publish into `root`, from its stats/videos.parquet."""
    with root.open_parquet(root.videos_table) as source:
        rows = pq.read_table(source, columns=[*_COLUMNS, "retryable"]).to_pylist()
    return RunOutcome([{**row, "retryable": is_retryable(row["status"], row["retryable"])} for row in rows])


def _name(video: dict[str, Any]) -> str:
    return f"{video['dataset'] or '-'}/{video['video_id'] or '-'}"


def _status_order(item: tuple[str, int]) -> tuple[int, str]:
    status = item[0]
    return (0 if status == OK else 2 if status == CATALOG_ERROR else 1, status)
