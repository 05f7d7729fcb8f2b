"""Stereo branch: disparity accuracy against ground truth (vs OpenCV StereoSGBM) and speed. Prints JSON.

    python -m benchmarks.bench_stereo [--scenes 6] [--speed-pairs 10] [--out FILE]

Accuracy: synthetic canyon pairs at 940x400 (baseline 0.1 m, 4 px convergence shift, so disparities of both
signs; sensor noise and JPEG q90 on both views). On the pixels each method keeps: mean end-point error, the
fraction off by more than 1 and 3 px, density (kept / all non-sky pixels), and sky IoU of the sky detector.
StereoSGBM runs with its own left-right check (right disparity from the flipped pair); both methods are also
compared at the same density, each keeping its most left-right-consistent pixels.
Speed: pairs per second at 940x400 and 1880x800 for the two bare flow calls, and for the whole per-pair
stage (flows, checks, sky, disparity and mask PNGs, JPEG, Parquet row), in the same run.
"""

from __future__ import annotations

import argparse
import tempfile

import cv2
import numpy as np

from benchmarks.common import Stopwatch, add_out_argument, emit, meta
from pipeline.config import load_config
from pipeline.io.parquet_writer import PartWriter
from pipeline.media.codecs import encode_jpeg
from pipeline.schema import SHARD_SCHEMA
from pipeline.stereo.disparity import pixel_checks, summarize
from pipeline.stereo.optical_flow import make_flow_backend, stereo_flows
from pipeline.stereo.processor import StereoProcessor
from pipeline.stereo.sky import make_sky_detector
from pipeline.synthetic.renderer import SceneSpec, render_stereo_frames


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise and JPEG compression, as a movie encode would leave them."""
    noisy = np.clip(image + rng.normal(0, 2.0, image.shape), 0, 255).astype(np.uint8)
    _, data = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def stereo_pairs(n: int, width: int, height: int, seed0: int = 100):
    rng = np.random.default_rng(0)
    for seed in range(seed0, seed0 + n):
        spec = SceneSpec(width=width, height=height, fps=10.0, duration_s=0.1, seed=seed, baseline_m=0.1)
        frame = next(iter(render_stereo_frames(spec, convergence_px=4.0)))
        yield frame, degrade(frame.left, rng), degrade(frame.right, rng)


def sgbm(left: np.ndarray, right: np.ndarray, lr_max_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disparity (x_right = x_left - d), valid mask from SGBM's own LR check, and the LR error."""
    matcher = cv2.StereoSGBM_create(
        minDisparity=-16,
        numDisparities=64,
        blockSize=5,
        P1=8 * 3 * 25,
        P2=32 * 3 * 25,
        uniquenessRatio=5,
        mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY,
    )
    d_left = matcher.compute(left, right).astype(np.float32) / 16
    # Right-view disparity from the mirrored pair: d_R(x) with x_left = x_right + d_R.
    d_right = np.fliplr(matcher.compute(np.fliplr(right).copy(), np.fliplr(left).copy()).astype(np.float32) / 16)
    h, w = d_left.shape
    missing = -16 - 1
    map_x = np.arange(w, dtype=np.float32)[None, :] - d_left
    back = cv2.remap(
        d_right,
        map_x,
        np.repeat(np.arange(h, dtype=np.float32)[:, None], w, 1),
        cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=1e6,
    )
    error = np.abs(d_left - back)
    valid = (d_left > missing) & (back > missing) & (error <= lr_max_px)
    return d_left, valid, error


def metrics(estimate: np.ndarray, truth: np.ndarray, kept: np.ndarray, scored: np.ndarray) -> dict:
    error = np.abs(estimate - truth)[kept & scored]
    return {
        "epe_px": round(float(error.mean()), 3) if error.size else None,
        "over_1px": round(float((error > 1).mean()), 4) if error.size else None,
        "over_3px": round(float((error > 3).mean()), 4) if error.size else None,
        "density": round(float((kept & scored).sum() / scored.sum()), 4),
    }


def top_fraction(valid: np.ndarray, confidence: np.ndarray, scored: np.ndarray, density: float) -> np.ndarray:
    """The `density` share of scored pixels with the highest confidence among the valid ones."""
    k = int(density * scored.sum())
    candidates = np.flatnonzero((valid & scored).ravel())
    order = candidates[np.argsort(-confidence.ravel()[candidates], kind="stable")][:k]
    mask = np.zeros(valid.size, bool)
    mask[order] = True
    return mask.reshape(valid.shape)


def accuracy(n_scenes: int) -> dict:
    cfg = load_config().stereo
    flow = make_flow_backend(cfg.flow)
    sky = make_sky_detector(cfg.sky)
    rows = {"flow": [], "sgbm": [], "flow_matched": [], "sgbm_matched": [], "sky_iou": []}
    for frame, left, right in stereo_pairs(n_scenes, 940, 400):
        (lr,), (rl,) = stereo_flows(flow, [left], [right])
        checks = pixel_checks(lr, rl, cfg)
        sky_mask = sky(left, checks.disparity, checks.valid) if cfg.sky.use_disparity else sky(left)
        result = summarize(checks, sky_mask)
        scored = ~frame.sky_mask  # every non-sky pixel counts for density; errors only where kept
        truth = frame.disparity
        flow_kept = result.valid
        d_sgbm, sgbm_kept, sgbm_err = sgbm(left, right, cfg.lr_max_px)
        rows["flow"].append(metrics(result.disparity, truth, flow_kept, scored))
        rows["sgbm"].append(metrics(d_sgbm, truth, sgbm_kept, scored))
        density = min(rows["flow"][-1]["density"], rows["sgbm"][-1]["density"])
        conf_flow = -checks.lr_error
        rows["flow_matched"].append(
            metrics(result.disparity, truth, top_fraction(flow_kept, conf_flow, scored, density), scored)
        )
        rows["sgbm_matched"].append(metrics(d_sgbm, truth, top_fraction(sgbm_kept, -sgbm_err, scored, density), scored))
        inter = (sky_mask & frame.sky_mask).sum()
        union = (sky_mask | frame.sky_mask).sum()
        rows["sky_iou"].append(float(inter / union) if union else 1.0)
    mean = {
        key: {m: round(float(np.mean([r[m] for r in values if r[m] is not None])), 4) for m in values[0]}
        for key, values in rows.items()
        if key != "sky_iou"
    }
    mean["sky_iou"] = round(float(np.mean(rows["sky_iou"])), 4)
    mean["sky_iou_min"] = round(float(np.min(rows["sky_iou"])), 4)
    mean["scenes"] = n_scenes
    return mean


def speed(width: int, height: int, n_pairs: int) -> dict:
    cfg = load_config().stereo
    pairs = [(left, right) for _, left, right in stereo_pairs(n_pairs, width, height, seed0=300)]
    flow = make_flow_backend(cfg.flow)
    processor = StereoProcessor(cfg)
    processor.process([pairs[0][0]], [pairs[0][1]])  # warm-up
    with Stopwatch() as watch:
        for left, right in pairs:
            flow([left, right], [right, left])
    bare = watch.s
    with tempfile.TemporaryDirectory() as tmp:
        writer = PartWriter(tmp, SHARD_SCHEMA)
        watch = Stopwatch()
        for i, (left, right) in enumerate(pairs):
            (outcome,) = processor.process([left], [right])
            jpeg = encode_jpeg(left)
            writer.add(
                {
                    "sample_id": f"b/{i}",
                    "dataset": "b",
                    "video_id": "b",
                    "category": "natural",
                    "clip_id": 0,
                    "frame_index": i,
                    "timestamp_s": 0.0,
                    "split": "train",
                    "width": width,
                    "height": height,
                    "image": jpeg,
                    **outcome.columns,
                }
            )
        writer.close()
        full = watch.s
    return {
        "size": f"{width}x{height}",
        "pairs": n_pairs,
        "flow_pairs_per_s": round(n_pairs / bare, 2),
        "pipeline_pairs_per_s": round(n_pairs / full, 2),
        "overhead_over_flow": round(full / bare - 1, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--speed-pairs", type=int, default=10)
    add_out_argument(parser)
    args = parser.parse_args()
    run_meta = meta()
    emit(
        {
            "accuracy_940x400": accuracy(args.scenes),
            "speed": [speed(940, 400, args.speed_pairs), speed(1880, 800, max(3, args.speed_pairs // 3))],
        },
        args.out,
        run_meta,
    )


if __name__ == "__main__":
    main()
