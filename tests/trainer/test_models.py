"""Encoders from local checkpoints, and the depth and pose networks on tiny timm models."""

from __future__ import annotations

import pytest
import torch

# timm as trainer.models imports it: after the torchvision fix a CPU torch needs (pipeline/torch_compat.py).
from trainer.models import DepthNet, PoseNet, build_encoder, timm

H, W = 64, 96


def _image(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, H, W, generator=torch.Generator().manual_seed(seed))


def _reference_features(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """What a full timm model computes at its feature stages."""
    model.eval()
    with torch.no_grad():
        return model.forward_intermediates(x, intermediates_only=True)


@pytest.mark.parametrize("name, reductions", [("test_convnext", [4, 8, 16, 32]), ("test_resnet", [2, 4, 8, 16, 32])])
def test_build_encoder_exposes_feature_info(name, reductions):
    encoder = build_encoder(name)
    assert encoder.feature_info.reduction() == reductions
    feats = encoder(_image(1))
    assert [f.shape[1] for f in feats] == encoder.feature_info.channels()
    assert [H // f.shape[2] for f in feats] == reductions


@pytest.mark.parametrize("name", ["test_convnext", "test_resnet"])
def test_checkpoint_of_a_full_timm_model_gives_identical_features(name, tmp_path):
    torch.manual_seed(0)
    source = timm.create_model(name)
    path = tmp_path / "encoder.pth"
    torch.save(source.state_dict(), path)
    encoder = build_encoder(name, checkpoint=str(path)).eval()
    x = _image(1)
    with torch.no_grad():
        got = encoder(x)
        fresh = build_encoder(name).eval()(x)
    expected = _reference_features(source, x)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(fresh[-1], expected[-1])  # random init differs: the load did something


def test_checkpoint_wrappers_prefixes_safetensors_and_headless(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = timm.create_model("test_resnet")
    x = _image(1)
    expected = _reference_features(source, x)[-1]
    state = source.state_dict()
    wrapped = {"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "wrapped.ckpt")
    torch.save({"model": state}, tmp_path / "model.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "enc.safetensors"))
    headless = {k: v for k, v in state.items() if not k.startswith("fc.")}
    torch.save(headless, tmp_path / "headless.pth")
    ten_classes = timm.create_model("test_resnet", num_classes=10).state_dict()
    ten_classes.update(headless)  # same trunk, a head of another size
    torch.save(ten_classes, tmp_path / "ten.pth")
    for name in ("wrapped.ckpt", "model.pth", "enc.safetensors", "headless.pth", "ten.pth"):
        encoder = build_encoder("test_resnet", checkpoint=str(tmp_path / name)).eval()
        with torch.no_grad():
            torch.testing.assert_close(encoder(x)[-1], expected, msg=name)


def test_checkpoint_of_a_features_only_encoder_loads(tmp_path):
    torch.manual_seed(2)
    source = build_encoder("test_convnext").eval()
    torch.save(source.state_dict(), tmp_path / "features.pth")
    loaded = build_encoder("test_convnext", checkpoint=str(tmp_path / "features.pth")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(_image(1))[-1], source(_image(1))[-1])


def test_mismatched_checkpoint_raises_a_clear_error(tmp_path):
    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="does not fit.*missing keys.*unexpected keys"):
        build_encoder("test_convnext", checkpoint=str(tmp_path / "resnet.pth"))
    trunk = timm.create_model("test_convnext").state_dict()
    trunk["stem.0.weight"] = trunk["stem.0.weight"][:5]
    torch.save(trunk, tmp_path / "bad_shape.pth")
    with pytest.raises(ValueError, match="shape mismatches.*stem.0.weight"):
        build_encoder("test_convnext", checkpoint=str(tmp_path / "bad_shape.pth"))
    with pytest.raises(FileNotFoundError):
        build_encoder("test_convnext", checkpoint=str(tmp_path / "absent.pth"))


def test_three_channel_checkpoint_adapts_to_a_six_channel_pair(tmp_path):
    source = timm.create_model("test_resnet")
    torch.save(source.state_dict(), tmp_path / "rgb.pth")
    encoder = build_encoder("test_resnet", checkpoint=str(tmp_path / "rgb.pth"), in_chans=6).eval()
    x = _image(1)
    with torch.no_grad():
        # The stem weights are repeated and halved, so a pair of equal images gives the RGB features.
        torch.testing.assert_close(encoder(torch.cat([x, x], 1))[-1], _reference_features(source, x)[-1])


@pytest.mark.parametrize("name", ["test_convnext", "test_resnet"])
def test_depthnet_returns_four_disparity_scales(name):
    net = DepthNet(encoder=name)
    image = _image()
    disps = net(image)
    assert [tuple(d.shape) for d in disps] == [(2, 1, H >> s, W >> s) for s in range(4)]
    for d in disps:
        assert ((d > 0) & (d < 1)).all()
    sum(d.mean() for d in disps).backward()
    for part in (net.encoder, net.upconv1, net.dispconv):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


def test_depthnet_rejects_sizes_not_multiple_of_32():
    net = DepthNet(encoder="test_convnext", scales=2)
    assert len(net(_image(1))) == 2
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.rand(1, 3, 60, 96))
    with pytest.raises(ValueError, match="scales"):
        DepthNet(encoder="test_convnext", scales=6)


def test_depthnet_loads_an_encoder_checkpoint(tmp_path):
    source = timm.create_model("test_convnext")
    torch.save(source.state_dict(), tmp_path / "enc.pth")
    net = DepthNet(encoder="test_convnext", checkpoint=str(tmp_path / "enc.pth"))
    for key, value in net.encoder.state_dict().items():
        if key.startswith("stem_0"):
            torch.testing.assert_close(value, source.state_dict()[key.replace("stem_0", "stem.0")])


def _assert_rigid(transform: torch.Tensor) -> None:
    b = transform.shape[0]
    r = transform[:, :3, :3]
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3).expand(b, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(b), atol=1e-5, rtol=0)
    torch.testing.assert_close(transform[:, 3], torch.tensor([[0.0, 0, 0, 1]]).expand(b, 4))


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext"])
def test_posenet_predicts_a_rigid_transform_and_plausible_intrinsics(name):
    net = PoseNet(encoder=name)
    target, source = _image(seed=1), _image(seed=2)
    transform, k_norm, _ = net(target, source)
    assert transform.shape == (2, 4, 4) and k_norm.shape == (2, 4)
    _assert_rigid(transform)
    assert transform[:, :3, 3].abs().max() < 0.1  # Monodepth2's 0.01 scaling: near identity at init
    assert ((k_norm[:, :2] > 0.5) & (k_norm[:, :2] < 1.0)).all()
    assert ((k_norm[:, 2:] > 0.3) & (k_norm[:, 2:] < 0.7)).all()
    (transform[:, :3, 3].sum() + k_norm.sum()).backward()
    assert net.intrinsics.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.pose.parameters())


def test_posenet_source_first_inverts_the_motion_of_the_swapped_pair():
    net = PoseNet(encoder="test_resnet", learn_intrinsics=False).eval()
    with torch.no_grad():
        for p in net.pose[-1].parameters():
            p.normal_(0, 1.0)  # a visible motion, so the check is not identity == identity
        target, source = _image(1, seed=1), _image(1, seed=2)
        forward, k_norm, _ = net(target, source)
        assert k_norm is None
        swapped = net(source, target, source_first=True).transform  # the network sees (target, source) again
        _assert_rigid(swapped)
        assert forward[:, :3, 3].abs().max() > 1e-3
        torch.testing.assert_close(swapped @ forward, torch.eye(4)[None], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- options from the literature


def test_aquanet_levels_are_monotone_and_span_the_disparity_range():
    from trainer.models import aquanet_levels

    min_disp, max_disp = 1 / 100.0, 1 / 0.1
    beta = torch.tensor([0.1, 0.5, 1.0, 2.0, 8.0]).view(1, 5, 1).expand(2, 5, 3).unsqueeze(1)  # [2,1,5,3]
    levels = aquanet_levels(beta, 33, min_disp, max_disp)
    assert levels.shape == (2, 33, 5, 3)
    assert (levels[:, 1:] >= levels[:, :-1]).all()
    # Strictly increasing; float32 rounds the extreme betas' crowded end levels together, float64 does not.
    assert (levels[:, 1:, 1:4] > levels[:, :-1, 1:4]).all()
    exact = aquanet_levels(beta.double(), 33, min_disp, max_disp)
    assert (exact[:, 1:] > exact[:, :-1]).all()
    assert (levels >= min_disp * (1 - 1e-6)).all() and (levels <= max_disp * (1 + 1e-6)).all()
    torch.testing.assert_close(levels[:, 0], torch.full_like(levels[:, 0], min_disp))
    torch.testing.assert_close(levels[:, -1], torch.full_like(levels[:, -1], max_disp))
    # beta = 1: uniform in log disparity; beta > 1 puts more levels at small disparity (far).
    log_levels = levels[0, :, 2, 0].log()
    torch.testing.assert_close(log_levels.diff(), torch.full((32,), log_levels.diff().mean().item()))
    assert levels[0, 16, 3, 0] < levels[0, 16, 2, 0] < levels[0, 16, 1, 0]


def test_aquanet_levels_have_finite_beta_gradients_including_the_first_level():
    from trainer.models import aquanet_levels

    beta = torch.full((1, 1, 2, 2), 1.5, requires_grad=True)
    aquanet_levels(beta, 33, 0.01, 10.0).sum().backward()
    assert torch.isfinite(beta.grad).all() and beta.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["test_convnext", "test_resnet"])
def test_depthnet_aquanet_head_at_every_scale(name):
    from trainer.losses import disp_to_depth

    torch.manual_seed(0)
    net = DepthNet(encoder=name, head="aquanet", levels=33, min_depth=0.1, max_depth=100.0)
    disps = net(_image())
    assert [tuple(d.shape) for d in disps] == [(2, 1, H >> s, W >> s) for s in range(4)]
    for d in disps:
        assert d.dtype == torch.float32 and ((d >= 0) & (d <= 1)).all()
        scaled, depth = disp_to_depth(d, 0.1, 100.0)
        assert ((scaled >= 0.01 - 1e-6) & (scaled <= 10.0 + 1e-6)).all()
        assert ((depth >= 0.1 - 1e-6) & (depth <= 100.0 + 1e-3)).all()
    sum(d.mean() for d in disps).backward()
    for scale, head in net.dispconv.items():
        grad = head.conv.weight.grad
        assert torch.isfinite(grad).all(), scale
        assert grad[:-1].abs().sum() > 0 and grad[-1].abs().sum() > 0, scale  # the logits and beta both learn
    with pytest.raises(ValueError, match="disparity head"):
        DepthNet(encoder=name, head="softmax")


def test_positional_encoding_offsets_change_depth_and_zero_offset_is_the_plain_forward():
    torch.manual_seed(0)
    net = DepthNet(encoder="test_convnext", scales=2, positional_encoding=True).eval()
    image = _image(1)
    with torch.no_grad():
        plain = net(image)[0]
        torch.testing.assert_close(net(image, offset=(0.0, 0.0))[0], plain)
        shifted = net(image, offset=(0.5, 0.0))[0]
    assert (shifted - plain).abs().max() > 1e-4
    net.train()
    net(image, offset=(-0.5, -0.25))[0].mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.position.parameters())
    assert DepthNet(encoder="test_convnext", scales=2).position is None


def test_normalised_grid_puts_the_centre_at_zero_and_the_corner_at_minus_one():
    from trainer.models import normalised_grid

    grid = normalised_grid(4, 6, torch.zeros(1))
    assert grid.shape == (1, 2, 4, 6)
    assert grid[0, 0].mean().abs() < 1e-6 and grid[0, 1].mean().abs() < 1e-6
    # Pixel centres: the first sits half a pixel in from the corner (-1, -1).
    torch.testing.assert_close(grid[0, :, 0, 0], torch.tensor([-1 + 1 / 6, -1 + 1 / 4]))
    torch.testing.assert_close(
        normalised_grid(4, 6, torch.zeros(1), (0.5, -0.25)) - grid,
        torch.tensor([0.5, -0.25]).view(1, 2, 1, 1).expand(1, 2, 4, 6),
    )


def test_posenet_explainability_mask_has_the_image_shape_and_learns():
    torch.manual_seed(0)
    net = PoseNet(encoder="test_resnet", explainability=True)
    target, source = _image(seed=1), _image(seed=2)
    transform, k_norm, mask = net(target, source, explain=True)
    assert transform.shape == (2, 4, 4) and k_norm.shape == (2, 4)
    assert mask.shape == (2, 1, H, W) and ((mask > 0) & (mask < 1)).all()
    assert mask.mean() > 0.8  # starts by explaining nearly everything
    mask.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.explain.parameters())
    assert net(target, source).explainability is None  # only when asked for
    with pytest.raises(ValueError, match="explainability"):
        PoseNet(encoder="test_resnet")(target, source, explain=True)
