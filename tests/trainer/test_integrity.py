"""The trainer checks what it reads: shards against dataset.json, and every JPEG strictly.

The damage is what storage does to a published shard, made in place in a copy of the test dataset: one byte of a
JPEG's entropy-coded data inverted (libjpeg conceals it, returns an image and only prints "Corrupt JPEG data" on
stderr), or a JPEG's header destroyed. The same size means data.verify: size lets such a shard through, so the
per-sample check is what stands between it and training.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from trainer.checkpoint import load_checkpoint
from trainer.cli import main
from trainer.config import TrainConfig, load_train_config
from trainer.data import BatchBuilder, ShardStream, make_loader
from trainer.integrity import BadSampleError, ShardIntegrityError
from trainer.jpeg import CorruptImage, decode_jpeg_rgb8
from trainer.manifest import ManifestError, load_manifests
from trainer.plan import EpochPlan
from trainer.train import fit

TINY = {
    "data": {"height": 64, "width": 96, "batch_size": 2, "num_workers": 1, "shuffle_buffer": 16},
    "model": {"encoder": "test_convnext", "pose_encoder": "test_resnet"},
    "optim": {"warmup_steps": 2, "max_steps": 3, "lr": 1e-3},
    "run": {"log_every": 1, "checkpoint_every": 2, "eval_batches": 1, "tensorboard": False},
}


@dataclass(frozen=True)
class Frame:
    """A planned frame: where its JPEG is stored and which sample it is."""

    shard: Path
    row: int
    sample_id: str


def manifests(root: Path) -> list[str]:
    return [str(root / "manifest" / "mono.parquet"), str(root / "manifest" / "stereo.parquet")]


def config(out_dir: Path, **data) -> TrainConfig:
    overrides = {**TINY, "data": {**TINY["data"], **data}, "run": {**TINY["run"], "out_dir": str(out_dir)}}
    return load_train_config(overrides=overrides)


def set_args(overrides: dict, prefix: str = "") -> list[str]:
    args = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            args += set_args(value, f"{prefix}{key}.")
        else:
            args += ["--set", f"{prefix}{key}={json.dumps(value)}"]
    return args


@pytest.fixture
def root(train_root, tmp_path) -> Path:
    """A copy of the test dataset to damage."""
    return Path(shutil.copytree(train_root, tmp_path / "root"))


def first_targets(root: Path, cfg: TrainConfig, count: int) -> list[Frame]:
    """The first target of each of the first `count` batches fit takes (one loader worker, one rank): a frame
    read at steps 1, 2, ..."""
    plan = EpochPlan(load_manifests(manifests(root), cfg.data.split, cfg.data.filters), cfg.data)
    batches = plan.epoch(0, max(1, cfg.data.num_workers))[0][:count]
    rows = [plan.frame.loc[int(batch.targets[0])] for batch in batches]
    return [Frame(Path(row["root"]) / row["shard"], int(row["row"]), str(row["sample_id"])) for row in rows]


def jpeg_of(frame: Frame) -> bytes:
    return pq.read_table(frame.shard, columns=["image"]).column("image")[frame.row].as_py()


def damage(frame: Frame, damaged: bytes) -> None:
    """Overwrite the frame's JPEG in place in its shard file (its bytes are stored as they are, uncompressed)."""
    data = bytearray(frame.shard.read_bytes())
    jpeg = jpeg_of(frame)
    at = data.find(jpeg)
    assert at >= 0 and data.find(jpeg, at + 1) < 0 and len(damaged) == len(jpeg)
    data[at : at + len(jpeg)] = damaged
    frame.shard.write_bytes(bytes(data))


def entropy_start(jpeg: bytes) -> int:
    """Offset of the entropy-coded data: just past the start-of-scan header."""
    at = 2
    while jpeg[at + 1] != 0xDA:
        at += 2 + int.from_bytes(jpeg[at + 2 : at + 4], "big")
    return at + 2 + int.from_bytes(jpeg[at + 2 : at + 4], "big")


def flipped(jpeg: bytes, capfd) -> bytes:
    """`jpeg` with one entropy-coded byte inverted where libjpeg notices: OpenCV still returns an image and libjpeg
    says "Corrupt JPEG data" on stderr only (what the issue saw). Found with OpenCV and the real stderr alone."""
    start, end = entropy_start(jpeg), len(jpeg) - 2
    capfd.readouterr()
    for position in range(start + (end - start) // 3, end, 97):
        candidate = bytearray(jpeg)
        candidate[position] ^= 0xFF
        image = cv2.imdecode(np.frombuffer(bytes(candidate), np.uint8), cv2.IMREAD_COLOR)
        if image is not None and "Corrupt JPEG data" in capfd.readouterr().err:
            return bytes(candidate)
    raise AssertionError("no inverted byte that libjpeg notices")


def header_destroyed(jpeg: bytes) -> bytes:
    """`jpeg` with everything before its entropy-coded data (tables, frame and scan headers) zeroed."""
    start = entropy_start(jpeg)
    return bytes(start) + jpeg[start:]


def damaged(how: str, frame: Frame, capfd) -> bytes:
    return flipped(jpeg_of(frame), capfd) if how == "flipped" else header_destroyed(jpeg_of(frame))


def log_rows(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def test_strict_decoding_turns_libjpeg_complaints_into_errors(train_root, capfd):
    frame = first_targets(train_root, config(Path("unused")), 1)[0]
    jpeg = jpeg_of(frame)
    assert np.array_equal(
        decode_jpeg_rgb8(jpeg), cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), 1), cv2.COLOR_BGR2RGB)
    )
    bad = flipped(jpeg, capfd)
    with pytest.raises(CorruptImage, match="libjpeg: Corrupt JPEG data"):
        decode_jpeg_rgb8(bad)
    with pytest.raises(CorruptImage, match="undecodable JPEG"):
        decode_jpeg_rgb8(header_destroyed(jpeg))
    assert "Corrupt JPEG" not in capfd.readouterr().err  # reported as an error, not as noise on stderr
    print("stderr still reaches its reader", file=sys.stderr)
    assert "still reaches" in capfd.readouterr().err


@pytest.mark.parametrize(("how", "workers"), [("flipped", 1), ("header", 0)])
def test_a_damaged_jpeg_is_skipped_counted_and_logged_and_training_finishes(
    root, tmp_path, capfd, caplog, how, workers
):
    # verify: size, as the damage keeps the shard's size: the shard check lets it through. With a loader worker,
    # the report crosses from the worker to the training process with its batch.
    cfg = config(tmp_path / "run", verify="size", num_workers=workers)
    frame = first_targets(root, cfg, 1)[0]  # a target of the first step's batch
    damage(frame, damaged(how, frame, capfd))
    with caplog.at_level(logging.WARNING, logger="trainer.integrity"):
        result = fit(manifests(root), cfg)
    assert result["step"] == 3
    rows = log_rows(tmp_path / "run")
    reported = [r["bad_sample"] for r in rows if "bad_sample" in r]
    assert [(r["shard"], r["row"], r["sample_id"]) for r in reported] == [
        (str(frame.shard), frame.row, frame.sample_id)
    ]
    reason = "libjpeg: Corrupt JPEG data" if how == "flipped" else "undecodable JPEG"
    assert reason in reported[0]["reason"] and reported[0]["target"] == frame.sample_id
    assert [r for r in rows if "loss" in r][-1]["bad_samples"] == 1
    warned = [r.getMessage() for r in caplog.records if "skipped bad sample" in r.getMessage()]
    assert len(warned) == 1 and f"shard {frame.shard} row {frame.row} sample {frame.sample_id}" in warned[0]
    state = load_checkpoint(result["checkpoint"])
    assert state["bad_samples"]["frames"] == [[str(frame.shard), frame.row]]
    assert state["bad_samples"]["skipped"] >= 1
    assert "Corrupt JPEG" not in capfd.readouterr().err


def test_no_batch_carries_a_bad_frame_and_a_resume_skips_the_same(root, capfd):
    cfg = config(Path("unused"), verify="size", num_workers=0)
    frame = first_targets(root, cfg, 1)[0]
    damage(frame, damaged("flipped", frame, capfd))
    plan = EpochPlan(load_manifests(manifests(root), "train", cfg.data.filters), cfg.data)
    per_epoch = len(plan.epoch(0, 1)[0])
    batches = list(itertools.islice(iter(ShardStream(plan, cfg.data)), per_epoch))
    assert all(frame.sample_id not in b["sample_id"] for b in batches)
    reports = [bad for b in batches for bad in b["bad_samples"]]
    assert {(bad.shard, bad.row, bad.sample_id) for bad in reports} == {(str(frame.shard), frame.row, frame.sample_id)}
    assert any(bad.target != bad.sample_id for bad in reports)  # a target whose support it is was left out too
    assert sum(len(b["sample_id"]) for b in batches) + len(reports) == per_epoch * cfg.data.batch_size
    start = 3
    resumed = list(itertools.islice(iter(ShardStream(plan, cfg.data, start_batch=start)), per_epoch - start))
    for a, b in zip(batches[start:], resumed, strict=True):
        assert a["sample_id"] == b["sample_id"] and a["bad_samples"] == b["bad_samples"]
        assert all(np.array_equal(a[k], b[k]) for k in a if k not in ("kind", "source", "sample_id", "bad_samples"))


def test_a_resumed_fit_counts_and_logs_bad_samples_as_an_uninterrupted_one(root, tmp_path, capfd):
    cfg = config(tmp_path / "whole", verify="size", num_workers=0)
    frames = first_targets(root, cfg, 3)
    for frame in (frames[0], frames[2]):  # met at steps 1 and 3, on either side of the resume
        damage(frame, damaged("flipped", frame, capfd))
    whole = fit(manifests(root), cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"max_steps": 4})}))
    parts = tmp_path / "parts"
    first = cfg.model_copy(update={"run": cfg.run.model_copy(update={"out_dir": str(parts)})})
    fit(manifests(root), first.model_copy(update={"optim": cfg.optim.model_copy(update={"max_steps": 2})}))
    resumed = fit(
        manifests(root),
        first.model_copy(update={"optim": cfg.optim.model_copy(update={"max_steps": 4})}),
        resume=True,
    )

    def bookkeeping(out_dir: Path) -> list[tuple]:
        rows = log_rows(out_dir)  # evaluation rows left out: the first part evaluated at its end, step 2
        return [
            (r["step"], r.get("bad_sample"), r.get("bad_samples")) for r in rows if "loss" in r or "bad_sample" in r
        ]

    assert bookkeeping(parts) == bookkeeping(tmp_path / "whole")
    assert [r["bad_sample"]["sample_id"] for r in log_rows(parts) if "bad_sample" in r] == [
        frames[0].sample_id,
        frames[2].sample_id,
    ]
    assert load_checkpoint(resumed["checkpoint"])["bad_samples"] == load_checkpoint(whole["checkpoint"])["bad_samples"]


def test_on_bad_sample_fail_stops_naming_shard_row_and_sample(root, tmp_path, capfd):
    cfg = config(tmp_path / "run")
    frame = first_targets(root, cfg, 1)[0]
    damage(frame, damaged("flipped", frame, capfd))
    overrides = {**TINY, "data": {**TINY["data"], "verify": "size", "on_bad_sample": "fail"}}
    code = main(
        ["fit", *sum((["--manifest", m] for m in manifests(root)), []), "--out-dir", str(tmp_path / "run")]
        + set_args(overrides)
    )
    error = capfd.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert error.startswith("trainer: bad sample (data.on_bad_sample: fail)")
    assert f"shard {frame.shard} row {frame.row} sample {frame.sample_id}" in error and "Corrupt JPEG data" in error
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_more_bad_samples_than_the_limit_stops_the_run(root, tmp_path, capfd):
    cfg = config(tmp_path / "run", verify="size", max_bad_samples=1)
    frames = first_targets(root, cfg, 2)
    for frame in frames:
        damage(frame, damaged("header", frame, capfd))
    with pytest.raises(BadSampleError, match="2 bad samples, more than data.max_bad_samples=1") as raised:
        fit(manifests(root), cfg)
    assert f"shard {frames[1].shard} row {frames[1].row} sample {frames[1].sample_id}" in str(raised.value)
    rows = log_rows(tmp_path / "run")
    assert [r["step"] for r in rows if "loss" in r] == [1]  # the first was skipped; the second stopped step 2
    assert [r["bad_sample"]["sample_id"] for r in rows if "bad_sample" in r] == [f.sample_id for f in frames]


def rewritten(frame: Frame) -> None:
    """The shard written again with other row groups: the same rows, other bytes and another size."""
    table = pq.read_table(frame.shard)
    pq.write_table(table, frame.shard, row_group_size=7, compression="none")


@pytest.mark.parametrize(
    ("verify", "change", "expected"),
    [
        ("sha256", "flipped", r"has sha256 [0-9a-f]{64}, dataset\.json says [0-9a-f]{64}"),
        ("size", "rewritten", r"is \d+ bytes, dataset\.json says \d+"),
        ("none", "rewritten", None),
    ],
)
def test_a_shard_that_differs_from_dataset_json(root, tmp_path, capfd, verify, change, expected):
    cfg = config(tmp_path / "run", verify=verify)
    frame = first_targets(root, cfg, 1)[0]
    if change == "flipped":
        damage(frame, damaged("flipped", frame, capfd))
    else:
        rewritten(frame)
    if expected is None:  # not checked: trained on, every row still readable and whole
        result = fit(manifests(root), cfg)
        assert result["step"] == 3 and not [r for r in log_rows(tmp_path / "run") if "bad_sample" in r]
        return
    code = main(
        ["fit", *sum((["--manifest", m] for m in manifests(root)), []), "--out-dir", str(tmp_path / "run")]
        + set_args({**TINY, "data": {**TINY["data"], "verify": verify}})
    )
    error = capfd.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and error.startswith(f"trainer: shard {frame.shard} ")
    assert re.search(expected, error), error
    assert f"row {frame.row}, sample {frame.sample_id}" in error


def test_each_shard_is_hashed_once_per_process(train_root, monkeypatch):
    import trainer.integrity

    hashed: list[str] = []
    real = trainer.integrity.sha256_file
    monkeypatch.setattr(trainer.integrity, "sha256_file", lambda path: hashed.append(str(path)) or real(path))
    cfg = config(Path("unused"), num_workers=0)
    plan = EpochPlan(load_manifests(manifests(train_root), "train", cfg.data.filters), cfg.data)
    stream = ShardStream(plan, cfg.data)
    list(itertools.islice(make_loader(stream), 2 * len(plan.epoch(0, 1)[0])))  # two epochs
    builder = BatchBuilder(plan, cfg.data, train=False, verifier=stream.verifier)  # an evaluation pass's
    builder(plan.epoch(0, 1)[0][0])
    assert (
        sorted(hashed) == sorted(set(hashed))
        and len(hashed) == plan.frame[["root", "shard"]].drop_duplicates().shape[0]
    )


def test_verifying_needs_dataset_json_unless_told_not_to(root):
    (root / "dataset.json").unlink()
    cfg = config(Path("unused"), num_workers=0)
    plan = EpochPlan(load_manifests(manifests(root), "train", cfg.data.filters), cfg.data)
    with pytest.raises(ManifestError, match=r"no dataset\.json at data root .* set data\.verify: none"):
        ShardStream(plan, cfg.data)
    unchecked = config(Path("unused"), num_workers=0, verify="none")
    assert next(iter(ShardStream(plan, unchecked.data)))["sample_id"]


def test_a_shard_missing_from_dataset_json_fails_before_training(root):
    description = json.loads((root / "dataset.json").read_text())
    description["shards"] = [s for s in description["shards"] if not s["path"].startswith("shards/stereo")]
    (root / "dataset.json").write_text(json.dumps(description))
    cfg = config(Path("unused"), num_workers=0)
    plan = EpochPlan(load_manifests(manifests(root), "train", cfg.data.filters), cfg.data)
    with pytest.raises(
        ShardIntegrityError, match=r"shard shards/stereo/.* is in the manifest but not in .*dataset\.json"
    ):
        ShardStream(plan, cfg.data)
