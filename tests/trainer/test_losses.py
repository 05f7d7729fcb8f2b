"""Photometric, smoothness and scale-and-shift-invariant losses."""

from __future__ import annotations

import pytest
import torch

from trainer.losses import (
    align_scale_shift,
    disp_to_depth,
    gradient_matching_loss,
    normalize_median_mad,
    photometric_error,
    reprojection_loss,
    smoothness_loss,
    ssi_loss,
    ssim_distance,
    trimmed_mae_loss,
)

H, W = 32, 48


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _disparity(batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Smooth positive disparity with structure: a ramp plus a blob, plus a little noise."""
    v, u = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    base = 0.2 + 0.6 * v + 0.5 * torch.exp(-((u - 0.6) ** 2 + (v - 0.4) ** 2) / 0.02)
    return base.expand(batch, 1, H, W) + 0.05 * _rand(batch, 1, H, W, seed=seed)


def _mask(batch: int = 2, seed: int = 1, keep: float = 0.8) -> torch.Tensor:
    return _rand(batch, 1, H, W, seed=seed) < keep


# ---------------------------------------------------------------- photometric


def test_ssim_distance_is_zero_for_equal_images_and_bounded():
    x, y = _rand(2, 3, H, W), _rand(2, 3, H, W, seed=1)
    d = ssim_distance(x, x)
    assert d.shape == (2, 3, H, W) and d.abs().max() < 1e-4
    d = ssim_distance(x, y)
    assert (d >= 0).all() and (d <= 1).all() and d.mean() > 0.2
    assert ssim_distance(x, 1 - x).mean() > d.mean()  # anticorrelated is the worst


def test_photometric_error_mixes_ssim_and_l1_per_pixel():
    x, y = _rand(2, 3, H, W), _rand(2, 3, H, W, seed=1)
    e = photometric_error(x, y)
    assert e.shape == (2, 1, H, W)
    expected = 0.85 * ssim_distance(x, y).mean(1, keepdim=True) + 0.15 * (x - y).abs().mean(1, keepdim=True)
    torch.testing.assert_close(e, expected)
    assert photometric_error(x, x).abs().max() < 1e-4


def test_automask_drops_static_pixels():
    """Source == target (no motion): identity wins against any warp, so almost nothing is used."""
    target = _rand(2, 3, H, W)
    source = target.clone()
    warped = [torch.roll(source, 1, dims=3), torch.roll(source, -1, dims=2)]  # a wrong motion estimate
    loss, mask = reprojection_loss(target, warped, [source, source])
    assert mask.shape == (2, 1, H, W) and mask.dtype == torch.bool
    assert mask.float().mean() < 0.02
    assert torch.isfinite(loss)
    _, unmasked = reprojection_loss(target, warped, [source, source], automask=False)
    assert unmasked.all()


def test_automask_keeps_pixels_a_correct_warp_explains():
    target = _rand(1, 3, H, W)
    source = torch.roll(target, 3, dims=3)  # the camera moved: the source is shifted by 3 px
    warped = torch.roll(source, -3, dims=3)  # the right warp undoes it exactly
    loss, mask = reprojection_loss(target, [warped], [source])
    assert mask.float().mean() > 0.9
    assert loss < 1e-3


def test_reprojection_takes_the_per_pixel_minimum_over_supports():
    target = _rand(1, 3, H, W)
    noise = _rand(1, 3, H, W, seed=5)
    left_good = target.clone()
    left_good[..., W // 2 :] = noise[..., W // 2 :]
    right_good = target.clone()
    right_good[..., : W // 2] = noise[..., : W // 2]
    both, _ = reprojection_loss(target, [left_good, right_good], [noise, noise], automask=False)
    one, _ = reprojection_loss(target, [left_good], [noise], automask=False)
    assert both < 0.05 and one > 4 * both  # only the 3x3 SSIM windows at the seam disagree


def test_identity_winners_count_at_their_identity_error():
    target = _rand(1, 3, H, W)
    source = torch.roll(target, 3, dims=3)
    warped = torch.roll(source, -3, dims=3)
    warped[..., W // 2 :] = _rand(1, 3, H, W - W // 2, seed=7)  # explains the left half only
    loss, mask = reprojection_loss(target, [warped], [source])
    expected = torch.minimum(photometric_error(warped, target), photometric_error(source, target)).mean()
    torch.testing.assert_close(loss, expected, atol=1e-4, rtol=0)
    # Dividing by the trained pixels alone would score this near zero, as if the right half were explained.
    assert mask.float().mean() < 0.75 and loss > 0.25 * photometric_error(source, target).mean()


def test_reprojection_ignores_invalid_warps_and_never_returns_nan():
    target = _rand(1, 3, H, W)
    warped = torch.zeros(1, 3, H, W, requires_grad=True)
    valid = torch.zeros(1, 1, H, W, dtype=torch.bool)
    source = _rand(1, 3, H, W, seed=2)
    loss, mask = reprojection_loss(target, [warped], [source], valid=[valid])
    assert not mask.any()  # the identity wins everywhere: it scores, but trains nothing
    torch.testing.assert_close(loss, photometric_error(source, target).mean(), atol=1e-4, rtol=0)
    loss.backward()
    assert torch.isfinite(warped.grad).all() and not warped.grad.any()
    valid[..., :10] = True
    loss, mask = reprojection_loss(target, [warped], [target], valid=[valid], automask=False)
    assert mask.sum() == H * 10
    torch.testing.assert_close(loss, photometric_error(warped, target)[..., :10].mean())


def test_smoothness_is_zero_on_constant_disparity_and_scale_invariant():
    image = _rand(2, 3, H, W)
    assert smoothness_loss(torch.full((2, 1, H, W), 0.3), image) == 0
    disp = _disparity()
    torch.testing.assert_close(smoothness_loss(disp, image), smoothness_loss(7.5 * disp, image))
    assert smoothness_loss(disp, image) > 0


def test_smoothness_forgives_disparity_edges_at_image_edges():
    disp = torch.full((1, 1, H, W), 0.2)
    disp[..., W // 2 :] = 0.8
    flat = torch.full((1, 3, H, W), 0.5)
    edge = flat.clone()
    edge[..., W // 2 :] = 1.0
    assert smoothness_loss(disp, edge) < 0.7 * smoothness_loss(disp, flat)


def test_disp_to_depth_maps_the_sigmoid_range_to_the_depth_range():
    scaled, depth = disp_to_depth(torch.tensor([0.0, 1.0]), 0.1, 100.0)
    torch.testing.assert_close(depth, torch.tensor([100.0, 0.1]))
    torch.testing.assert_close(scaled, 1 / depth)


# ---------------------------------------------------------------- alignment


def test_normalize_median_mad_gives_zero_median_unit_mad_on_valid_pixels():
    x, mask = 5 * _disparity() + 3, _mask()
    n = normalize_median_mad(x, mask)
    for b in range(2):
        values = n[b][mask[b]]
        assert values.median().abs() < 1e-5
        torch.testing.assert_close(values.abs().mean(), torch.tensor(1.0))
    assert (n[~mask] == 0).all()


@pytest.mark.parametrize("method", ["lsq", "median"])
def test_align_scale_shift_maps_an_affine_copy_onto_the_target(method):
    target, mask = _disparity(), _mask()
    pred = 0.25 * target - 4.0
    pred[~mask] = 1e6  # invalid pixels must not influence the fit
    aligned = align_scale_shift(pred, target, mask, method)
    torch.testing.assert_close(aligned[mask], target[mask], atol=1e-4, rtol=1e-4)


def test_align_scale_shift_rejects_unknown_method():
    with pytest.raises(ValueError, match="alignment"):
        align_scale_shift(_disparity(), _disparity(), _mask(), "mean")


# ---------------------------------------------------------------- SSI loss


@pytest.mark.parametrize("alignment", ["median", "lsq"])
def test_ssi_loss_is_invariant_to_positive_scale_and_any_shift(alignment):
    target, mask = _disparity(), _mask()
    pred = _disparity(seed=9) ** 2  # a different, nonlinear structure: the loss is well above zero
    base = ssi_loss(pred, target, mask, alignment=alignment)
    assert base > 0.05
    for scale, shift in [(3.0, 7.0), (0.01, -2.0), (250.0, 0.0)]:
        moved = ssi_loss(scale * pred + shift, target, mask, alignment=alignment)
        torch.testing.assert_close(moved, base, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("alignment", ["median", "lsq"])
def test_ssi_loss_is_zero_for_an_affine_copy_and_positive_otherwise(alignment):
    target, mask = _disparity(), _mask()
    assert ssi_loss(2.5 * target + 0.3, target, mask, alignment=alignment) < 1e-5
    assert ssi_loss(torch.flip(target, dims=[2]), target, mask, alignment=alignment) > 0.1


def test_ssi_loss_ignores_pixels_outside_the_mask():
    target, mask = _disparity(), _mask()
    pred = target.clone()
    pred[~mask] = torch.rand(int((~mask).sum())) * 100
    target_noisy = target.clone()
    target_noisy[~mask] = float("nan")  # e.g. undecodable disparity
    assert ssi_loss(pred, target_noisy, mask) < 1e-5


def test_trimmed_mae_ignores_twenty_percent_outliers():
    target, mask = _disparity(batch=1), torch.ones(1, 1, H, W, dtype=torch.bool)
    pred = target.clone().view(-1)
    # Shuffling 15% of the values keeps the median and MAD but makes those pixels wrong.
    gen = torch.Generator().manual_seed(3)
    idx = torch.randperm(H * W, generator=gen)[: int(0.15 * H * W)]
    pred[idx] = pred[idx[torch.randperm(len(idx), generator=gen)]]
    pred = pred.view(1, 1, H, W)
    assert trimmed_mae_loss(pred, target, mask, trim=0.2) < 1e-6
    assert trimmed_mae_loss(pred, target, mask, trim=0.0) > 0.01


def test_trimmed_mae_is_half_the_mean_absolute_residual_without_trim():
    pred, target = _rand(1, 1, H, W), _rand(1, 1, H, W, seed=4)
    mask = torch.ones_like(pred, dtype=torch.bool)
    expected = (normalize_median_mad(pred, mask) - normalize_median_mad(target, mask)).abs().mean() / 2
    torch.testing.assert_close(trimmed_mae_loss(pred, target, mask, trim=0.0), expected)


def test_gradient_matching_sees_structure_not_offsets():
    target, mask = _disparity(), _mask()
    assert gradient_matching_loss(3 * target + 1, target, mask) < 1e-5
    step = target.clone()
    step[..., W // 2 :] += 0.5  # a false depth edge
    assert gradient_matching_loss(step, target, mask) > 0.01
    # Fewer scales, less loss: every scale adds a non-negative term.
    assert gradient_matching_loss(step, target, mask, scales=1) < gradient_matching_loss(step, target, mask)


def test_ssi_loss_handles_empty_and_nearly_empty_masks():
    pred = _disparity().requires_grad_(True)
    target = _disparity(seed=3)
    empty = torch.zeros(2, 1, H, W, dtype=torch.bool)
    for alignment in ("median", "lsq"):
        loss = ssi_loss(pred, target, empty, alignment=alignment)
        assert loss == 0
        loss.backward()
        assert torch.isfinite(pred.grad).all()
    # One image empty, one with three valid pixels (too few), one good: only the good one counts.
    pred3, target3 = _disparity(3), torch.flip(_disparity(3, seed=3), dims=[3])
    mask = torch.zeros(3, 1, H, W, dtype=torch.bool)
    mask[1, 0, 0, :3] = True
    mask[2] = True
    alone = ssi_loss(pred3[2:], target3[2:], mask[2:])
    torch.testing.assert_close(ssi_loss(pred3, target3, mask), alone)
    assert alone > 0


def test_ssi_loss_gradients_are_finite_and_nonzero():
    pred = _disparity().requires_grad_(True)
    ssi_loss(pred, torch.flip(_disparity(seed=2), dims=[3]), _mask()).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_ssi_loss_rejects_unknown_alignment():
    with pytest.raises(ValueError, match="alignment"):
        ssi_loss(_disparity(), _disparity(), _mask(), alignment="mean")


def test_lsq_alignment_of_a_constant_prediction_is_the_target_mean():
    target, mask = _disparity(), _mask()
    for value in (0.0, 3.0, 1234.5):
        aligned = align_scale_shift(torch.full_like(target, value), target, mask, "lsq")
        for b in range(2):
            torch.testing.assert_close(aligned[b][mask[b]], target[b][mask[b]].mean().expand(int(mask[b].sum())))


def test_ssi_loss_accepts_half_precision_and_computes_in_float32():
    target, mask = _disparity(), _mask()
    pred = torch.flip(target, dims=[3])
    half = ssi_loss(pred.half(), target.half(), mask)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, ssi_loss(pred, target, mask), rtol=1e-2, atol=1e-3)


# ---------------------------------------------------------------- explainability and moving-object masks


def test_explainability_mask_drops_where_a_patch_cannot_be_explained():
    """A free per-pixel mask trained on the weighted error plus its regulariser: low on the bad patch."""
    from trainer.losses import explainability_regulariser

    target = _rand(1, 3, H, W)
    warped = target.clone()
    warped[..., 8:20, 10:30] = _rand(1, 3, 12, 20, seed=5)  # a moving object: no warp explains it
    logits = torch.full((1, 1, H, W), 2.0, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=0.1)
    for _ in range(300):
        mask = torch.sigmoid(logits)
        loss, _ = reprojection_loss(target, [warped], [target], weights=[mask], automask=False)
        loss = loss + 0.05 * explainability_regulariser([mask])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    mask = torch.sigmoid(logits).detach()
    inside = torch.zeros_like(mask, dtype=torch.bool)
    inside[..., 8:20, 10:30] = True
    # The optimum per pixel is min(1, lambda / error): near 1 where the warp is exact, low on the patch.
    assert mask[~inside].mean() > 0.95
    assert mask[inside].mean() < 0.5
    assert mask[inside].mean() < 0.5 * mask[~inside].mean()


def test_explainability_regulariser_is_cross_entropy_towards_one():
    from trainer.losses import explainability_regulariser

    ones = torch.ones(1, 1, 4, 4)
    assert explainability_regulariser([ones]) == 0
    half = torch.full((1, 1, 4, 4), 0.5)
    torch.testing.assert_close(explainability_regulariser([ones, half]), torch.tensor(0.5 * 0.6931472))


def test_reprojection_keep_mask_leaves_pixels_out_of_the_loss():
    target = _rand(1, 3, H, W)
    warped = target.clone()
    warped[..., :, : W // 2] = _rand(1, 3, H, W // 2, seed=3)  # the left half is wrong
    keep = torch.ones(1, 1, H, W, dtype=torch.bool)
    keep[..., :, : W // 2 + 2] = False  # (SSIM windows reach a pixel across the boundary)
    full, _ = reprojection_loss(target, [warped], [target], automask=False)
    kept, used = reprojection_loss(target, [warped], [target], automask=False, keep=keep)
    assert full > 0.05 and kept < 1e-3
    assert not used[~keep].any() and used[keep].all()
    same, _ = reprojection_loss(target, [warped], [target], automask=False, keep=torch.ones_like(keep))
    torch.testing.assert_close(same, full)


def test_spimo_moving_mask_flags_depth_that_follows_the_positional_offset():
    from trainer.losses import moving_mask, positional_variance

    base = 2.0 + _rand(1, 1, H, W)
    depths = base.expand(4, 1, 1, H, W).clone()
    depths += 1e-3 * _rand(4, 1, 1, H, W, seed=2)  # static: the depth ignores the offset
    # A moving object: its depth follows the position it is told it is at (30% either way).
    depths[:, ..., 4:12, 6:18] *= torch.tensor([1.0, 1.3, 0.7, 1.0]).view(4, 1, 1, 1, 1)
    # A borderline patch at 10%: (0.1^2 * 2) / 3 = 0.0067, under gamma = 0.03.
    depths[:, ..., 20:28, 30:40] *= torch.tensor([1.0, 1.1, 0.9, 1.0]).view(4, 1, 1, 1, 1)
    variance = positional_variance(depths)
    torch.testing.assert_close(variance[..., 8, 10], torch.tensor([[0.06]]), rtol=0.05, atol=0)
    torch.testing.assert_close(variance[..., 24, 35], torch.tensor([[0.02 / 3]]), rtol=0.05, atol=0)
    mask = moving_mask(depths, gamma=0.03)
    expected = torch.zeros(1, 1, H, W, dtype=torch.bool)
    expected[..., 4:12, 6:18] = True
    assert torch.equal(mask, expected)
    assert torch.equal(moving_mask(10 * depths, gamma=0.03), mask)  # depth units do not matter


def test_spimo_boost_compares_masked_pixels_after_scaling_on_the_trusted_ones():
    from trainer.losses import masked_log_disparity_loss

    target = _disparity(2)
    moving = torch.zeros(2, 1, H, W, dtype=torch.bool)
    moving[..., 4:12, 6:18] = True
    pred = (3.0 * target).requires_grad_()  # another run's scale, same shape of depth
    zero = masked_log_disparity_loss(pred, target, moving, ~moving)
    assert zero.abs() < 1e-5
    wrong = (3.0 * target).clone()
    wrong[moving] *= 2.0  # the moving object put twice as near
    torch.testing.assert_close(
        masked_log_disparity_loss(wrong, target, moving, ~moving), torch.tensor(0.6931472), rtol=1e-4, atol=0
    )
    outside = wrong.clone()
    outside[..., 30:, :] *= 1.01  # a few static pixels off: the median scale, and so the loss, stay
    torch.testing.assert_close(
        masked_log_disparity_loss(outside, target, moving, ~moving),
        masked_log_disparity_loss(wrong, target, moving, ~moving),
    )
    loss = masked_log_disparity_loss(pred * 1.5, target, moving, ~moving)
    loss.backward()
    assert pred.grad[~moving].abs().max() == 0 and pred.grad[moving].abs().sum() > 0
    assert masked_log_disparity_loss(pred, target, torch.zeros_like(moving), ~moving) == 0
