"""Depth and pose networks over timm encoders, with encoder weights only ever read from local files.

DepthNet is Monodepth2's multi-scale disparity decoder over any timm feature pyramid; PoseNet is
Monodepth2's pose decoder on a 6-channel image pair, plus a learned-intrinsics head (as SlowTV).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.torch_compat import ensure_torchvision
from trainer.geometry import pose_vec_to_matrix

ensure_torchvision()  # timm imports torchvision, which fails on a CPU torch without this

import timm  # noqa: E402
from timm.models import FeatureInfo, adapt_input_conv  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POSE_SCALE = 0.01  # Monodepth2: keeps the initial motion near identity
DECODER_CHANNELS = (16, 32, 64, 128, 256)  # Monodepth2's, by output stride 1, 2, 4, 8, 16
# Module names that hold classification heads: a checkpoint may carry them or not, at any class count.
_HEAD_NAMES = ("head", "fc", "classifier", "pre_logits", "head_drop", "fc_norm", "head_norm")
_WRAPPER_KEYS = ("state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile


# ---------------------------------------------------------------- encoders and checkpoints


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors from a local .safetensors or torch file, unwrapped and with module. prefixes stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder checkpoint {path} does not exist")
    state: object  # whatever the file holds, until checked below
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    while isinstance(state, dict) and (key := next((k for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)):
        state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path} holds no state dict of tensors")
    return {_strip_prefixes(k): v for k, v in state.items()}


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _is_head_key(key: str, classifiers: tuple[str, ...]) -> bool:
    return key.split(".")[0] in _HEAD_NAMES or any(key.startswith(c + ".") for c in classifiers)


def _names(cfg: dict[str, Any], field: str) -> tuple[str, ...]:
    value = cfg.get(field) or ()
    return (value,) if isinstance(value, str) else tuple(value)


def _pretrained_cfg(model: nn.Module) -> dict[str, Any]:
    """timm's metadata of a model (input statistics, stem and head names, input size); {} if it has none."""
    return getattr(model, "pretrained_cfg", None) or {}


def feature_pyramid(encoder: nn.Module) -> tuple[list[int], list[int]]:
    """(channels, strides) of a timm features_only encoder's levels, shallow to deep."""
    # timm sets feature_info on every features_only model; mypy sees any attribute torch does not know
    # of as Tensor | Module, hence the cast.
    info = cast(FeatureInfo, encoder.feature_info)
    return list(info.channels()), list(info.reduction())


def _fit_checkpoint(model: nn.Module, state: dict[str, Tensor], in_chans: int, where: str) -> dict[str, Tensor]:
    """state checked against a full timm model: head keys may differ, a 3-channel stem is adapted."""
    cfg = _pretrained_cfg(model)
    classifiers = _names(cfg, "classifier")
    stems = {name + ".weight" for name in _names(cfg, "first_conv")}
    own = model.state_dict()
    fitted, mismatched = dict(own), []
    for key, value in state.items():
        if key not in own or _is_head_key(key, classifiers):
            continue
        if key in stems and value.ndim == 4 and value.shape[1] != in_chans and value.shape[0] == own[key].shape[0]:
            value = adapt_input_conv(in_chans, value, base_chans=value.shape[1])  # as Monodepth2's pose encoder
        if value.shape != own[key].shape:
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}")
            continue
        fitted[key] = value
    missing = [k for k in own if k not in state and not _is_head_key(k, classifiers)]
    unexpected = [k for k in state if k not in own and not _is_head_key(k, classifiers)]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{where} does not fit: "
            + "; ".join(
                f"{len(items)} {label} (e.g. {', '.join(items[:3])})"
                for label, items in (
                    ("missing keys", missing),
                    ("unexpected keys", unexpected),
                    ("shape mismatches", mismatched),
                )
                if items
            )
        )
    return fitted


def build_encoder(name: str, checkpoint: str | None = None, in_chans: int = 3) -> nn.Module:
    """timm features_only encoder, optionally with weights from a local checkpoint (nothing downloaded).

    The checkpoint is a full timm model's state dict (classifier head optional, any class count) or
    a features_only encoder's; torch or .safetensors, optionally wrapped in {'state_dict': ...} or
    {'model': ...}, with DataParallel/compile prefixes. Keys that do not fit raise ValueError.
    """
    features = timm.create_model(name, features_only=True, pretrained=False, in_chans=in_chans)
    if checkpoint is None:
        return features
    state = read_state_dict(checkpoint)
    where = f"checkpoint {checkpoint} for encoder {name!r} (in_chans={in_chans})"
    if set(state) == set(features.state_dict()):
        try:
            features.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{where} does not fit: {err}") from err
        return features
    full = timm.create_model(name, pretrained=False, in_chans=in_chans)
    full.load_state_dict(_fit_checkpoint(full, state, in_chans, where))
    # timm wraps a full model into its feature extractor (flattening module names as it goes) only
    # while loading "pretrained" weights; handing it the exact state dict keeps that step lossless.
    input_size = (in_chans, *tuple(_pretrained_cfg(full).get("input_size", (3, 224, 224)))[1:])
    overlay = {"state_dict": full.state_dict(), "source": "", "input_size": input_size}
    return timm.create_model(
        name, features_only=True, pretrained=True, in_chans=in_chans, pretrained_cfg_overlay=overlay
    )


class _Normalize(nn.Module):
    """Maps [0, 1] images to the encoder's input statistics (ImageNet for timm's ImageNet models)."""

    mean: Tensor
    std: Tensor

    def __init__(self, encoder: nn.Module):
        super().__init__()
        cfg = _pretrained_cfg(encoder)
        mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
        # Not persistent: state dicts stay independent of which statistics a timm version reports.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        return (image - self.mean) / self.std


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 reflection-padded conv + ELU, Monodepth2's ConvBlock."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="reflect"), nn.ELU(inplace=True))


# ---------------------------------------------------------------- depth


def aquanet_levels(beta: Tensor, n_levels: int, min_disp: float, max_disp: float) -> Tensor:
    """AQUANet's adaptive disparity levels [B,N,H,W] for per-pixel beta [B,1,H,W] > 0.

    d_n = d_max * exp(ln(d_max / d_min) * (t_n^beta - 1)) with t_n = n / (N - 1), n = 0..N-1, so the
    first level is d_min and the last d_max whatever beta is (the paper writes n / N; this indexing
    puts both ends of the range on a level). beta = 1 spaces the levels uniformly in log disparity;
    beta > 1 packs them towards d_min (far), beta < 1 towards d_max (near).
    """
    t = torch.arange(n_levels, dtype=beta.dtype, device=beta.device).view(1, -1, 1, 1) / (n_levels - 1)
    # t = 0 is taken out of the power: d/dbeta 0^beta = 0 * log(0) is NaN.
    powered = torch.where(t > 0, t.clamp(min=1e-12) ** beta, torch.zeros_like(t * beta))
    return max_disp * torch.exp(math.log(max_disp / min_disp) * (powered - 1))


class AquaNetHead(nn.Module):
    """Adaptive disparity quantisation (AQUANet): a logit volume over N levels and a per-pixel beta.

    Returns the same normalised quantity as the sigmoid head, (d - d_min) / (d_max - d_min) in [0, 1]
    with d_min, d_max = 1 / max_depth, 1 / min_depth, so disp_to_depth maps both heads alike.
    """

    _BETA_OFFSET = math.log(math.e - 1)  # softplus(offset) = 1: log-uniform levels at initialisation

    def __init__(self, channels: int, n_levels: int, min_depth: float, max_depth: float):
        super().__init__()
        if n_levels < 2:
            raise ValueError(f"AQUANet needs at least 2 levels, got {n_levels}")
        self.n_levels = n_levels
        self.min_disp, self.max_disp = 1.0 / max_depth, 1.0 / min_depth
        self.conv = nn.Conv2d(channels, n_levels + 1, 3, padding=1, padding_mode="reflect")

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x).float()  # exp/log of levels in bf16 would blur neighbouring levels together
        logits, raw_beta = out[:, :-1], out[:, -1:]
        beta = F.softplus(raw_beta + self._BETA_OFFSET)
        levels = aquanet_levels(beta, self.n_levels, self.min_disp, self.max_disp)
        disp = (torch.softmax(logits, 1) * levels).sum(1, keepdim=True)
        return ((disp - self.min_disp) / (self.max_disp - self.min_disp)).clamp(0, 1)


def normalised_grid(height: int, width: int, like: Tensor, offset: tuple[float, float] = (0.0, 0.0)) -> Tensor:
    """[1,2,H,W] pixel-centre (u, v) in [-1, 1] (centre (0, 0), top-left corner (-1, -1)), plus offset."""
    v, u = torch.meshgrid(
        (torch.arange(height, dtype=like.dtype, device=like.device) + 0.5) / height * 2 - 1 + offset[1],
        (torch.arange(width, dtype=like.dtype, device=like.device) + 0.5) / width * 2 - 1 + offset[0],
        indexing="ij",
    )
    return torch.stack([u, v], 0).unsqueeze(0)


class DepthNet(nn.Module):
    """Image [B,3,H,W] in [0,1] -> disparities in [0,1] at strides 1, 2, 4, ... (index 0 = full res).

    head: "sigmoid" (Monodepth2) or "aquanet" (adaptive quantisation, see AquaNetHead).
    positional_encoding: a learned encoding of the normalised pixel position (u, v) is added to every
    decoder level (SPIMO); forward's `offset` shifts that position to probe how much depth relies on it.
    """

    def __init__(
        self,
        encoder: str = "convnext_tiny",
        checkpoint: str | None = None,
        scales: int = 4,
        head: str = "sigmoid",
        levels: int = 33,
        min_depth: float = 0.1,
        max_depth: float = 100.0,
        positional_encoding: bool = False,
    ):
        super().__init__()
        self.encoder = build_encoder(encoder, checkpoint)
        self.normalize = _Normalize(self.encoder)
        channels, reductions = feature_pyramid(self.encoder)
        self.stride = reductions[-1]
        levels_ = int(math.log2(self.stride))
        if 2**levels_ != self.stride or any(2 ** int(math.log2(r)) != r for r in reductions):
            raise ValueError(f"encoder {encoder!r} has feature strides {reductions}; DepthNet needs powers of 2")
        if not 1 <= scales <= levels_:
            raise ValueError(f"scales must be in 1..{levels_} for encoder {encoder!r}, got {scales}")
        self.scales = scales
        # Skip connection per output stride 2^i: the encoder's feature at that stride, if it has one
        # (convnext starts at stride 4, resnet at 2; the finer decoder levels then go without).
        self.skip_index = {int(math.log2(r)): i for i, r in enumerate(reductions)}
        dec = [DECODER_CHANNELS[min(i, len(DECODER_CHANNELS) - 1)] for i in range(levels_)]
        self.upconv0, self.upconv1 = nn.ModuleDict(), nn.ModuleDict()
        c_in = channels[-1]
        for i in range(levels_ - 1, -1, -1):
            skip = channels[self.skip_index[i]] if i in self.skip_index else 0
            self.upconv0[str(i)] = _conv_block(c_in, dec[i])
            self.upconv1[str(i)] = _conv_block(dec[i] + skip, dec[i])
            c_in = dec[i]
        self.levels = levels_
        if head == "sigmoid":
            self.dispconv = nn.ModuleDict(
                {str(i): nn.Conv2d(dec[i], 1, 3, padding=1, padding_mode="reflect") for i in range(scales)}
            )
        elif head == "aquanet":
            self.dispconv = nn.ModuleDict(
                {str(i): AquaNetHead(dec[i], levels, min_depth, max_depth) for i in range(scales)}
            )
        else:
            raise ValueError(f"unknown disparity head {head!r}; expected 'sigmoid' or 'aquanet'")
        self.head = head
        self.position = None
        if positional_encoding:
            # A per-level MLP (1x1 convs) of (u, v): a "neural" encoding the decoder can lean on.
            self.position = nn.ModuleDict(
                {
                    str(i): nn.Sequential(nn.Conv2d(2, 32, 1), nn.ELU(inplace=True), nn.Conv2d(32, dec[i], 1))
                    for i in range(levels_)
                }
            )

    def forward(self, image: Tensor, offset: tuple[float, float] = (0.0, 0.0), logits: bool = False) -> list[Tensor]:
        """List of `scales` disparities in [0, 1], [B,1,H/2^s,W/2^s] for s = 0, 1, ...

        offset: (du, dv) added to the normalised positions fed to the positional encoding (if any).
        logits: the sigmoid head's inputs instead (for a penalty on them; the aquanet head has none).
        """
        if logits and self.head != "sigmoid":
            raise ValueError("logits=True needs the sigmoid disparity head")
        h, w = image.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"DepthNet input height and width must be multiples of {self.stride}, got {h}x{w}")
        features = self.encoder(self.normalize(image))
        x = features[-1]
        out: dict[int, Tensor] = {}
        for i in range(self.levels - 1, -1, -1):
            x = F.interpolate(self.upconv0[str(i)](x), scale_factor=2, mode="nearest")
            if i in self.skip_index:
                x = torch.cat([x, features[self.skip_index[i]]], 1)
            x = self.upconv1[str(i)](x)
            if self.position is not None:
                x = x + self.position[str(i)](normalised_grid(x.shape[-2], x.shape[-1], x, offset))
            if i < self.scales:
                head = self.dispconv[str(i)](x)
                out[i] = torch.sigmoid(head) if self.head == "sigmoid" and not logits else head
        return [out[i] for i in range(self.scales)]


# ---------------------------------------------------------------- pose and intrinsics


class PoseOutput(NamedTuple):
    """PoseNet's estimate for one image pair."""

    transform: Tensor  # [B,4,4] mapping target-camera points to the source camera
    intrinsics: Tensor | None  # [B,4] normalised (fx/W, fy/H, cx/W, cy/H); None without the intrinsics head
    explainability: Tensor | None = None  # [B,1,H,W] in (0, 1), when asked for


class PoseNet(nn.Module):
    """Image pair -> PoseOutput: target-to-source transform, learned intrinsics, explainability mask."""

    def __init__(
        self,
        encoder: str = "resnet18",
        checkpoint: str | None = None,
        learn_intrinsics: bool = True,
        explainability: bool = False,
    ):
        super().__init__()
        # A 3-channel checkpoint's stem is repeated and halved for the 6-channel pair (Monodepth2).
        self.encoder = build_encoder(encoder, checkpoint, in_chans=6)
        self.normalize = _Normalize(self.encoder)
        channels, _ = feature_pyramid(self.encoder)
        c = channels[-1]
        self.squeeze = nn.Sequential(nn.Conv2d(c, 256, 1), nn.ReLU(inplace=True))
        self.pose = nn.Sequential(
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 6, 1),
        )
        self.intrinsics = None
        if learn_intrinsics:
            self.intrinsics = nn.Linear(256, 4)
            # Zero init: softplus(0) = 0.69 for fx/W and fy/H (a ~72 degree field of view), sigmoid(0) =
            # 0.5 for the principal point; the head moves away from there as training needs.
            nn.init.zeros_(self.intrinsics.weight)
            nn.init.zeros_(self.intrinsics.bias)
        self.explain = ExplainabilityDecoder(channels) if explainability else None

    def forward(self, target: Tensor, source: Tensor, source_first: bool = False, explain: bool = False) -> PoseOutput:
        """Transform mapping target-camera points to the source camera, and (fx/W, fy/H, cx/W, cy/H).

        source_first=True feeds the pair as (source, target) and inverts the predicted motion, so the
        network always sees frames in temporal order when the source precedes the target (Monodepth2).
        explain=True (needs explainability=True) adds SfMLearner's explainability mask [B,1,H,W] in (0, 1).
        """
        first, second = (source, target) if source_first else (target, source)
        pair = torch.cat([self.normalize(first), self.normalize(second)], 1)
        features = self.encoder(pair)
        x = self.squeeze(features[-1])
        motion = POSE_SCALE * self.pose(x).mean((2, 3))
        transform = pose_vec_to_matrix(motion[:, :3], motion[:, 3:], invert=source_first)
        k_norm = None
        if self.intrinsics is not None:
            raw = self.intrinsics(x.mean((2, 3)))
            k_norm = torch.cat([F.softplus(raw[:, :2]), torch.sigmoid(raw[:, 2:])], 1)
        if not explain:
            return PoseOutput(transform, k_norm)
        if self.explain is None:
            raise ValueError("PoseNet was built without explainability=True")
        return PoseOutput(transform, k_norm, self.explain(features, target.shape[-2:]))


class ExplainabilityDecoder(nn.Module):
    """SfMLearner's explainability mask from the pose encoder's feature pyramid: [B,1,H,W] in (0, 1).

    A light FPN-style decoder (1x1 projection per level, upsampled and summed, one 3x3 conv): the mask
    needs coarse regions (moving objects, occluders), not fine detail.
    """

    _INIT_BIAS = 2.0  # sigmoid(2) = 0.88: start by explaining nearly everything

    def __init__(self, channels: list[int], width: int = 16):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        conv = nn.Conv2d(width, 1, 3, padding=1, padding_mode="reflect")
        nn.init.constant_(cast(Tensor, conv.bias), self._INIT_BIAS)  # a Conv2d built with bias has one
        self.out = nn.Sequential(nn.ELU(), conv)

    def forward(self, features: list[Tensor], size: tuple[int, int]) -> Tensor:
        total = sum(
            F.interpolate(lat(f), size=tuple(size), mode="bilinear", align_corners=False)
            for lat, f in zip(self.lateral, features)
        )
        return torch.sigmoid(self.out(total))
