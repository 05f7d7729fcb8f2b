"""Train a depth network on curated manifests: one process, or one per GPU under torchrun (DDP).

A linear script: set up, build the data stream, build the networks, loop, checkpoint, evaluate.
The loop counts optimiser steps; a resumed run restores weights, optimiser, scheduler, RNG and the
data position (batches consumed), so it continues exactly where the killed run stopped.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pipeline.io.storage import write_bytes_atomic
from pipeline.torch_compat import resolve_device
from trainer.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from trainer.collapse import CollapseMonitor
from trainer.config import TrainConfig
from trainer.data import GroundTruth, ShardStream, make_loader
from trainer.evaluate import evaluate_model, open_ground_truth, references
from trainer.integrity import BadSample, BadSampleCounts, BadSampleLedger, ShardVerifier, all_bad
from trainer.manifest import ManifestError, check_shards, load_manifests
from trainer.objective import DepthTraining
from trainer.plan import EpochPlan

LAST = "last.pt"


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: rank 0 of 1 without torchrun."""

    rank: int
    world_size: int
    device: torch.device


@dataclass(frozen=True)
class Fetched:
    """What one rank's batch reported: the bad samples left out of it, and whether nothing else was left."""

    bad: list[BadSample]
    empty: bool


@dataclass(frozen=True)
class HeldOut:
    """What fit evaluates on, checked before any training."""

    rows: pd.DataFrame | str  # the val split's rows, or why there are none
    truth: GroundTruth | None  # rendered depth to score video frames against (eval.ground_truth)


def fit(manifests: list[str], cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train, checkpoint and evaluate; returns {checkpoint, step, metrics} (on every rank)."""
    proc = _setup_distributed(cfg.run.device)
    rank, world_size, device = proc.rank, proc.world_size, proc.device
    out_dir = Path(cfg.run.out_dir)
    checkpoint_path = out_dir / "checkpoints" / LAST
    torch.manual_seed(cfg.data.seed)  # identical initial weights on every rank

    frame = load_manifests(manifests, cfg.data.split, cfg.data.filters)
    check_shards(frame)
    plan = EpochPlan(frame, cfg.data)
    held_out = _held_out(manifests, cfg)  # before any training: a bad ground truth fails at once

    core = DepthTraining(cfg.model, cfg.loss).to(device)
    collapse = CollapseMonitor(core, cfg.run.collapse)  # flat disparity, translations the views do not fix
    optimizer = torch.optim.AdamW(core.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
    step = batches = 0
    state = load_checkpoint(checkpoint_path, map_location=device) if resume and checkpoint_path.is_file() else None
    ledger = BadSampleLedger(cfg.data)
    if state is not None:
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, batches = state["step"], state["batches"]
        ledger = BadSampleLedger(cfg.data, BadSampleCounts.from_state(state.get("bad_samples")))
    model: torch.nn.Module = core  # what the loop calls: core, or DDP around it
    if world_size > 1:
        # Stereo batches leave the pose network unused; every rank gets the same kind at each step.
        model = DistributedDataParallel(
            core, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )

    stream = ShardStream(plan, cfg.data, rank=rank, world_size=world_size, start_batch=batches)
    batch_iter = iter(make_loader(stream))  # draws the loader's base seed from the global RNG
    if state is not None:
        restore_rng(state)  # after that draw, so the resumed RNG stream matches the uninterrupted one
    log = RunLog(out_dir, enabled=rank == 0, tensorboard=cfg.run.tensorboard, start_step=step)
    if rank == 0:
        (out_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
    autocast = _autocast(cfg.optim.precision, device)
    metrics: dict[str, Any] = {}
    model.train()
    first_step, loop_started = step, time.perf_counter()  # for the progress line's rate and ETA
    while step < cfg.optim.max_steps:
        started = time.perf_counter()
        waited = 0.0
        totals: dict[str, float] = {}
        kinds = []
        for micro in range(cfg.optim.grad_accum):
            fetch = time.perf_counter()
            batch = _to_device(_counted(next(batch_iter), ledger, log, step + 1, world_size), device)
            waited += time.perf_counter() - fetch
            kinds.append(batch["kind"])
            sync = (
                model.no_sync()
                if isinstance(model, DistributedDataParallel) and micro < cfg.optim.grad_accum - 1
                else contextlib.nullcontext()
            )
            with sync, autocast:
                losses = model(batch)
            (losses["loss"] / cfg.optim.grad_accum).backward()
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach()) / cfg.optim.grad_accum
        batches += cfg.optim.grad_accum
        if not math.isfinite(totals["loss"]):
            raise FloatingPointError(f"loss is {totals['loss']} at step {step + 1} ({kinds}); stopping")
        if cfg.optim.clip_grad_norm:
            totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad_norm))
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        elapsed = time.perf_counter() - started
        if rank == 0 and (step % cfg.run.log_every == 0 or step == 1 or step == cfg.optim.max_steps):
            with autocast:
                observed = collapse.observe(step, batch)  # the last micro-batch's forward
            log.write(
                step,
                {
                    **totals,
                    "lr": lr,
                    "step_s": elapsed,
                    "data_wait_s": waited,
                    "samples_per_s": cfg.data.batch_size * cfg.optim.grad_accum * world_size / elapsed,
                    "kind": kinds[0],
                    "bad_samples": ledger.distinct,  # distinct bad frames met so far, on every rank together
                    "skipped_samples": ledger.counts.skipped,  # targets left out of their batches
                    **observed.stats.columns(),
                },
            )
            for warning in observed.warnings:
                log.write(step, {"collapse_warning": asdict(warning)})
                print(f"warning: {warning.message}", file=sys.stderr, flush=True)
            taken = time.perf_counter() - loop_started  # evaluations included: they are part of the wait
            rate = (step - first_step) * cfg.data.batch_size * cfg.optim.grad_accum * world_size / taken
            eta_s = taken / (step - first_step) * (cfg.optim.max_steps - step)
            print(progress_line(step, cfg.optim.max_steps, totals["loss"], rate, eta_s), file=sys.stderr, flush=True)
        last = step == cfg.optim.max_steps
        if cfg.run.eval_every and step % cfg.run.eval_every == 0 and not last:
            metrics = _evaluate(core, held_out, cfg, proc, log, step, stream.verifier)
            model.train()
        if rank == 0 and step % cfg.run.checkpoint_every == 0 and not last:  # the last one is saved below
            save_checkpoint(
                checkpoint_path,
                model=core,
                optimizer=optimizer,
                scheduler=scheduler,
                step=step,
                batches=batches,
                cfg=cfg,
                metrics=metrics,
                bad_samples=ledger.counts,
            )
    metrics = _evaluate(core, held_out, cfg, proc, log, step, stream.verifier)
    # A resumed run with nothing left to train keeps its checkpoint as it is: no rewrite of hundreds of MB.
    if rank == 0 and (state is None or step > state["step"]):
        save_checkpoint(
            checkpoint_path,
            model=core,
            optimizer=optimizer,
            scheduler=scheduler,
            step=step,
            batches=batches,
            cfg=cfg,
            metrics=metrics,
            bad_samples=ledger.counts,
        )
        summary = {
            "step": step,
            "metrics": metrics,
            "evaluated_against": references(metrics),
            "ground_truth": str(held_out.truth.directory) if held_out.truth is not None else None,
            "collapse": collapse.detector.summary(),  # this process's warnings; a resumed run's start afresh
        }
        write_bytes_atomic(out_dir / "metrics.json", json.dumps(summary, indent=2).encode())
    log.close()
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"checkpoint": str(checkpoint_path), "step": step, "metrics": metrics}


def progress_line(step: int, max_steps: int, loss: float, samples_per_s: float, eta_s: float) -> str:
    """What rank 0 prints to stderr every `run.log_every` steps (stdout stays for the result's JSON)."""
    eta = datetime.timedelta(seconds=round(eta_s))
    return f"step {step}/{max_steps}  loss {loss:.4f}  {samples_per_s:.1f} samples/s  ETA {eta}"


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then multiplied by decay_gamma at each decay step."""
    warmup = cfg.optim.warmup_steps
    factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return factor * cfg.optim.decay_gamma ** sum(step >= s for s in cfg.optim.decay_steps)


def _held_out(manifests: list[str], cfg: TrainConfig) -> HeldOut:
    """The held-out rows (or why there are none) and the checked `eval.ground_truth`, on every rank alike."""
    try:
        val: pd.DataFrame | str = load_manifests(manifests, cfg.data.val_split, cfg.data.filters)
    except ManifestError as exc:
        val = str(exc)
    truth = open_ground_truth(cfg.eval.ground_truth, manifests, val if isinstance(val, pd.DataFrame) else None)
    return HeldOut(val, truth)


def _evaluate(
    model: DepthTraining,
    held_out: HeldOut,
    cfg: TrainConfig,
    proc: Distributed,
    log: RunLog,
    step: int,
    verifier: ShardVerifier,
) -> dict[str, Any]:
    """`trainer evaluate`'s metrics on at most run.eval_batches batches per source (rank 0 only)."""
    metrics: dict[str, Any] = {}
    if proc.rank == 0:  # a bounded pass on one rank; the others wait at the barrier
        if isinstance(held_out.rows, str):
            metrics = {"skipped": held_out.rows}
        else:
            plan = EpochPlan(held_out.rows, cfg.data)
            metrics = evaluate_model(
                model, plan, cfg, proc.device, held_out.truth, max_batches=cfg.run.eval_batches, verifier=verifier
            )
            log.write(
                step,
                {
                    f"eval/{source}/{name}": value
                    for source, values in metrics.items()
                    for name, value in values.items()
                },
            )
    if dist.is_initialized():
        dist.barrier()
    return metrics


def _counted(batch: dict[str, Any], ledger: BadSampleLedger, log: RunLog, step: int, world_size: int) -> dict[str, Any]:
    """The batch less its bad-sample reports, once every rank's reports are counted: all ranks count the same ones,
    so they go on or stop together. A frame met for the first time is logged (log.jsonl) under `step`."""
    mine = Fetched(batch.pop("bad_samples"), not batch["sample_id"])
    reports = [mine]
    if world_size > 1:
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, mine)
        reports = gathered
    for report in reports:
        for bad in ledger.record(report.bad):
            log.write(step, {"bad_sample": asdict(bad)})
    ledger.check_limit()
    for report in reports:
        if report.empty:
            raise all_bad(report.bad)
    return batch


def _setup_distributed(device_name: str) -> Distributed:
    """One process (no torchrun, or a world of 1), or this rank of a process group it joins here."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Distributed(0, 1, torch.device(resolve_device(device_name)))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and device_name in ("auto", "cuda"):
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        device = torch.device("cuda", local_rank)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    return Distributed(dist.get_rank(), dist.get_world_size(), device)


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _logged_step(line: str) -> float:
    """The step of a log row; a torn last line (killed mid-write) counts as past any step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class RunLog:
    """JSON lines (always) and TensorBoard scalars (when enabled), written by rank 0 only."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool, start_step: int = 0):
        """start_step: the step training resumes after; rows logged past it are dropped (they are redone)."""
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "log.jsonl"
        kept = (
            [line for line in path.read_text(encoding="utf-8").splitlines() if _logged_step(line) <= start_step]
            if start_step and path.is_file()
            else []
        )
        write_bytes_atomic(path, "".join(line + "\n" for line in kept).encode())
        self.jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the run; close() closes it)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when wanted

            self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()
