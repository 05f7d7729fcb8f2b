"""Stereo branch: disparity accuracy against ground truth (vs OpenCV StereoSGBM) and speed. Prints JSON.

    python -m benchmarks.bench_stereo [--scenes 6] [--speed-pairs 10] [--repeats 3] [--out FILE]

Real pairs (pipeline/synthetic/real_pairs.py): Middlebury's motorcycle as scikit-image ships it (741x500,
disparities up to 8.1% of the width), and its left view re-rendered with the ground truth scaled to 16% of the
width ("large") and to a 3D movie's 3.0% ("movie"). Per method: density (kept / pixels with ground truth),
bad-1, bad-3 and EPE on the kept pixels, and for the pipeline's methods the frame-level decision. Methods:
the pipeline (DIS medium both ways, confidence mask) under each profile; the same flows with only the MiDaS
left-right and vertical limits (the method before confidence); StereoSGBM with its own left-right check.

Accuracy: synthetic canyon pairs at 940x400 (baseline 0.1 m, 4 px convergence shift, so disparities of both
signs; sensor noise and JPEG q90 on both views). On the pixels each method keeps: mean end-point error, the
fraction off by more than 1 and 3 px, density (kept / all non-sky pixels), and sky IoU of the sky detector.
StereoSGBM runs with its own left-right check (right disparity from the flipped pair); both methods are also
compared at the same density, each keeping its most confident pixels; `flow_checks_only` is the flow's mask
from the left-right and vertical limits alone (the method before per-pixel confidence).
Speed: pairs per second at 940x400 and 1880x800 for the two bare flow calls, and for the whole per-pair
stage (flows, checks, sky, disparity, mask and confidence PNGs, JPEG, Parquet row), in the same run; each pair
timed as the best of `--repeats` (the machine is shared), and the per-stage split of one pair the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import tempfile

import cv2
import numpy as np

from benchmarks.common import add_out_argument, best_of, emit, meta
from pipeline.config import StereoConfig, load_config
from pipeline.io.parquet_writer import PartWriter
from pipeline.media.codecs import encode_confidence_png, encode_disparity_png, encode_jpeg, encode_mask_png
from pipeline.schema import SHARD_SCHEMA
from pipeline.stereo.disparity import check_stereo, pixel_checks, rejection_reason, summarize
from pipeline.stereo.optical_flow import make_flow_backend, stereo_flows
from pipeline.stereo.processor import StereoProcessor
from pipeline.stereo.sky import make_sky_detector
from pipeline.synthetic.real_pairs import GroundTruthPair, motorcycle, score, with_parallax
from pipeline.synthetic.renderer import SceneSpec, render_stereo_frames

REAL_PAIRS = {"native": 1.0, "large": 2.0, "movie": 0.37}  # ground-truth scale: max disparity 8.1%, 16%, 3.0%
# The confidence cues switched off: the per-pixel mask of MiDaS's two checks alone, the method before them.
CHECKS_ONLY = {"max_disparity_gradient": 1e6, "min_match_ncc": -0.999}


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


def sgbm(
    left: np.ndarray, right: np.ndarray, lr_max_px: float, min_disparity: int = -16, num_disparities: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disparity (x_right = x_left - d), valid mask from SGBM's own LR check, and the LR error."""
    matcher = cv2.StereoSGBM_create(
        minDisparity=min_disparity,
        numDisparities=num_disparities,
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
    missing = min_disparity - 1
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
    rows = {"flow": [], "flow_checks_only": [], "sgbm": [], "flow_matched": [], "sgbm_matched": [], "sky_iou": []}
    for frame, left, right in stereo_pairs(n_scenes, 940, 400):
        (lr,), (rl,) = stereo_flows(flow, [left], [right])
        checks = pixel_checks(lr, rl, cfg, left, right)
        sky_mask = sky(left, checks.disparity, checks.valid) if cfg.sky.use_disparity else sky(left)
        result = summarize(checks, sky_mask)
        scored = ~frame.sky_mask  # every non-sky pixel counts for density; errors only where kept
        truth = frame.disparity
        flow_kept = result.valid
        d_sgbm, sgbm_kept, sgbm_err = sgbm(left, right, cfg.lr_max_px)
        rows["flow"].append(metrics(result.disparity, truth, flow_kept, scored))
        old = check_stereo(lr, rl, cfg.model_copy(update=CHECKS_ONLY), sky_mask)
        rows["flow_checks_only"].append(metrics(result.disparity, truth, old.valid, scored))
        rows["sgbm"].append(metrics(d_sgbm, truth, sgbm_kept, scored))
        density = min(rows["flow"][-1]["density"], rows["sgbm"][-1]["density"])
        conf_flow = checks.confidence - 1e-3 * np.minimum(checks.lr_error, 100)  # lr error breaks ties
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


def real_pairs() -> dict:
    """Each method on the motorcycle pair at each parallax: quality on kept pixels and the frame decision."""
    base = motorcycle()
    flow = make_flow_backend(load_config().stereo.flow)
    configs = {
        "pipeline_midas": StereoConfig(profile="midas"),
        "pipeline_stereo4d": StereoConfig(profile="stereo4d"),
        "dis_checks_only_midas": StereoConfig(profile="midas", **CHECKS_ONLY),
        "dis_checks_only_stereo4d": StereoConfig(profile="stereo4d", **CHECKS_ONLY),
    }
    out = {}
    for name, scale in REAL_PAIRS.items():
        pair = base if scale == 1.0 else with_parallax(base, scale)
        (lr,), (rl,) = stereo_flows(flow, [pair.left], [pair.right])
        rows: dict = {
            "max_disparity_fraction": round(
                float(np.nanmax(pair.disparity[np.isfinite(pair.disparity)]) / pair.disparity.shape[1]), 4
            )
        }
        for method, cfg in configs.items():
            result = check_stereo(lr, rl, cfg, None, pair.left, pair.right)
            rows[method] = {
                **_rounded(score(result.disparity, result.valid, pair.disparity)),
                "decision": rejection_reason(result, cfg) or "kept",
                "lr_pass_fraction": round(result.lr_pass_fraction, 4),
                "vertical_fail_fraction": round(result.vertical_fail_fraction, 4),
            }
        # The frame rule as it was: the vertical check's failures over all non-sky pixels, not the matched ones.
        checks = pixel_checks(lr, rl, configs["pipeline_midas"])
        everywhere = float((~checks.vertical_ok).mean())
        before = dataclasses.replace(
            check_stereo(lr, rl, configs["dis_checks_only_midas"]), vertical_fail_fraction=everywhere
        )
        rows["dis_checks_only_midas"]["vertical_fail_all_pixels"] = round(everywhere, 4)
        rows["dis_checks_only_midas"]["decision_before"] = (
            rejection_reason(before, configs["dis_checks_only_midas"]) or "kept"
        )
        rows["sgbm"] = _sgbm_real(pair)
        out[name] = rows
    return out


def _sgbm_real(pair: GroundTruthPair) -> dict:
    """SGBM over the pair's whole disparity range (0 to the ground truth's maximum + 8, in steps of 16)."""
    top = float(np.max(pair.disparity[np.isfinite(pair.disparity)])) + 8
    disparity, valid, _ = sgbm(pair.left, pair.right, 2.0, 0, int(np.ceil(top / 16)) * 16)
    return _rounded(score(disparity, valid, pair.disparity))


def _rounded(kept) -> dict:
    return {key: round(value, 4) for key, value in dataclasses.asdict(kept).items()}


def speed(width: int, height: int, n_pairs: int, repeats: int) -> dict:
    cfg = load_config().stereo
    pairs = [(left, right) for _, left, right in stereo_pairs(n_pairs, width, height, seed0=300)]
    flow = make_flow_backend(cfg.flow)
    processor = StereoProcessor(cfg)
    processor.process([pairs[0][0]], [pairs[0][1]])  # warm-up
    bare = sum(best_of(functools.partial(flow, [left, right], [right, left]), repeats) for left, right in pairs)
    with tempfile.TemporaryDirectory() as tmp:
        writer = PartWriter(tmp, SHARD_SCHEMA)
        full = sum(
            best_of(functools.partial(_one_row, processor, writer, i, left, right), repeats)
            for i, (left, right) in enumerate(pairs)
        )
        writer.close()
    return {
        "size": f"{width}x{height}",
        "pairs": n_pairs,
        "repeats": repeats,
        "flow_pairs_per_s": round(n_pairs / bare, 2),
        "pipeline_pairs_per_s": round(n_pairs / full, 2),
        "pipeline_over_flow": round(full / bare, 3),
        "stages_ms": stages(cfg, flow, *pairs[0], repeats),
    }


def _one_row(processor: StereoProcessor, writer: PartWriter, i: int, left: np.ndarray, right: np.ndarray) -> None:
    (outcome,) = processor.process([left], [right])
    height, width = left.shape[:2]
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
            "image": encode_jpeg(left),
            **outcome.columns,
        }
    )


def stages(cfg: StereoConfig, flow, left: np.ndarray, right: np.ndarray, repeats: int) -> dict:
    """Milliseconds per stage of one pair (best of repeats): where the time beyond the flows goes."""
    sky = make_sky_detector(cfg.sky)
    (lr,), (rl,) = stereo_flows(flow, [left], [right])
    checks = pixel_checks(lr, rl, cfg, left, right)
    result = summarize(checks, sky(left) if sky is not None else None)
    steps = {
        "flows": lambda: stereo_flows(flow, [left], [right]),
        "checks_and_confidence": lambda: pixel_checks(lr, rl, cfg, left, right),
        "sky": lambda: sky(left) if sky is not None else None,
        "summarize": lambda: summarize(checks, result.sky_mask),
        "disparity_png": lambda: encode_disparity_png(result.disparity, result.valid),
        "mask_pngs": lambda: (encode_mask_png(result.valid), encode_mask_png(result.sky_mask)),
        "confidence_png": lambda: encode_confidence_png(result.confidence),
        "jpeg": lambda: encode_jpeg(left),
    }
    return {name: round(1000 * best_of(step, repeats), 2) for name, step in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--speed-pairs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    add_out_argument(parser)
    args = parser.parse_args()
    run_meta = meta()
    emit(
        {
            "accuracy_940x400": accuracy(args.scenes),
            "real_pairs": real_pairs(),
            "speed": [
                speed(940, 400, args.speed_pairs, args.repeats),
                speed(1880, 800, max(3, args.speed_pairs // 3), args.repeats),
            ],
        },
        args.out,
        run_meta,
    )


if __name__ == "__main__":
    main()
