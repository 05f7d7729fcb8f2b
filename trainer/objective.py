"""The networks and the per-batch loss in one module, so DDP wraps a single forward.

Video batches: self-supervised view synthesis (Monodepth2 / SlowTV). Stereo batches: the MiDaS
scale-and-shift-invariant loss on flow disparity. The loss follows what the batch carries.

Options from the literature, each off by default (config): AQUANet's disparity head and SPIMO's
positional encoding (model), SfMLearner's explainability mask and SPIMO's moving-object exclusion
(loss), and the depth-cue-preserving resize (data.augment; batches then carry "resize_factor").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.checkpoint import load_weights
from trainer.config import LossConfig, ModelConfig, TrainConfig
from trainer.geometry import intrinsics_matrix, warp
from trainer.losses import (
    disp_to_depth,
    explainability_regulariser,
    masked_log_disparity_loss,
    moving_mask,
    reprojection_loss,
    smoothness_loss,
    ssi_loss,
)
from trainer.models import DepthNet, PoseNet, PoseOutput


@dataclass(frozen=True)
class SupportMotion:
    """What the pose net finds between a batch's target and each support (t-k, then t+k)."""

    transforms: list[Tensor]  # target-to-source [B,4,4], translation divided by the batch's resize factor
    intrinsics: Tensor  # [B,4] learned normalised intrinsics, the mean over the supports
    explainability: list[Tensor] | None  # [B,1,H,W] per support, when the mask is enabled


class DepthTraining(nn.Module):
    spimo_teacher: DepthNet | None  # SPIMO's frozen first stage; None with loss.spimo off

    def __init__(self, model: ModelConfig, loss: LossConfig, load_encoders: bool = True):
        super().__init__()
        self.model_cfg, self.loss_cfg = model, loss
        # Encoder checkpoints only matter for a fresh run; a saved run carries all the weights.
        self.depth = self._depth_net(
            model, model.encoder_checkpoint if load_encoders else None, loss.scales, model.positional_encoding
        )
        self.pose = PoseNet(
            model.pose_encoder,
            model.pose_checkpoint if load_encoders else None,
            learn_intrinsics=True,
            explainability=loss.explainability.enabled,
        )
        self.spimo_teacher = None
        if loss.spimo.enabled:
            # The first stage's depth net, frozen. A saved second-stage run carries its weights, so the
            # first-stage file is only read for a fresh run.
            teacher = self._depth_net(model, None, 1, positional_encoding=True)
            if load_encoders:
                path = loss.spimo.first_stage_checkpoint
                assert path is not None  # SpimoConfig requires it when enabled
                _load_first_stage(teacher, path)
            teacher.requires_grad_(False)
            self.spimo_teacher = teacher

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> tuple[DepthTraining, TrainConfig]:
        """The trained networks of a checkpoint (or its weights-only export) in eval mode, and their config."""
        state = load_weights(path, map_location=device)
        cfg = TrainConfig.model_validate(state["config"])
        model = cls(cfg.model, cfg.loss, load_encoders=False)
        model.load_state_dict(state["model"])
        return model.to(device).eval(), cfg

    @staticmethod
    def _depth_net(model: ModelConfig, checkpoint: str | None, scales: int, positional_encoding: bool) -> DepthNet:
        return DepthNet(
            model.encoder,
            checkpoint,
            scales=scales,
            head=model.disparity_head,
            levels=model.aquanet_levels,
            min_depth=model.min_depth,
            max_depth=model.max_depth,
            positional_encoding=positional_encoding,
        )

    def _teacher(self) -> DepthNet:
        """The frozen first-stage depth net, in eval mode: its batch-norm statistics stay the first stage's."""
        if self.spimo_teacher is None:
            raise ValueError("no SPIMO first stage: loss.spimo.enabled is false")
        return self.spimo_teacher.eval()

    @torch.no_grad()
    def spimo_keep(self, image: Tensor) -> Tensor:
        """[B,1,H,W] bool: pixels whose first-stage depth holds still under the positional offsets."""
        cfg = self.loss_cfg.spimo
        teacher = self._teacher()
        depths = torch.stack(
            [
                disp_to_depth(
                    teacher(image, offset=(du, dv))[0].float(),
                    self.model_cfg.min_depth,
                    self.model_cfg.max_depth,
                )[1]
                for du, dv in zip(cfg.offsets_u, cfg.offsets_v)
            ]
        )
        return ~moving_mask(depths, cfg.gamma)

    @torch.no_grad()
    def spimo_boost_target(self, image: Tensor) -> Tensor:
        """The first stage's normalised disparity [B,1,H,W], averaged over its estimates at boost_scales."""
        height, width = image.shape[-2:]
        teacher = self._teacher()
        stride = teacher.stride
        estimates = []
        for factor in self.loss_cfg.spimo.boost_scales:
            size = (
                max(stride, round(height * factor / stride) * stride),
                max(stride, round(width * factor / stride) * stride),
            )
            resized = (
                image
                if size == (height, width)
                else F.interpolate(image, size=size, mode="bilinear", align_corners=False)
            )
            disp = teacher(resized)[0].float()
            estimates.append(F.interpolate(disp, size=(height, width), mode="bilinear", align_corners=False))
        return torch.stack(estimates).mean(0)

    def support_motion(self, batch: dict[str, Any]) -> SupportMotion:
        """The pose net on each support; translations are divided by the batch's resize factor here, once."""
        image, supports = batch["image"], batch["supports"]
        explain = self.loss_cfg.explainability.enabled
        transforms: list[Tensor] = []
        learned: list[Tensor] = []
        masks: list[Tensor] = []
        factor = batch.get("resize_factor")
        for s in range(supports.shape[1]):
            # Frames go to the pose net in time order (Monodepth2): supports[:, 0] is t-k, before the target.
            out: PoseOutput = self.pose(image, supports[:, s], source_first=s == 0, explain=explain)
            transform = out.transform
            if factor is not None:
                # Zooming by f makes the scene look f times nearer; the depth net is to predict that, so
                # the camera must have moved f times less for the same image motion (depth-cue preserving).
                scale = torch.ones_like(transform[:, :, :1]).repeat(1, 1, 4)
                scale[:, :3, 3] = 1.0 / factor.to(transform.dtype).view(-1, 1)
                transform = transform * scale
            transforms.append(transform)
            assert out.intrinsics is not None  # the pose net is built with learn_intrinsics=True
            learned.append(out.intrinsics)
            if out.explainability is not None:
                masks.append(out.explainability)
        return SupportMotion(transforms, torch.stack(learned).mean(0), masks if explain else None)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        if batch["kind"] == "stereo":
            return self.stereo_loss(batch)
        return self.video_loss(batch)

    def video_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        image, supports = batch["image"], batch["supports"]
        _, _, height, width = image.shape
        motion = self.support_motion(batch)
        explain_masks = motion.explainability
        k_norm = motion.intrinsics
        keep = self.spimo_keep(image) if self.spimo_teacher is not None else None
        given = batch["intrinsics"].to(k_norm.dtype)
        if self.model_cfg.intrinsics == "given":
            known = torch.isfinite(given).all(dim=1, keepdim=True)
            k_norm = torch.where(known, torch.nan_to_num(given), k_norm)
        total = image.new_zeros(())
        reprojection = image.new_zeros(())
        regulariser = image.new_zeros(())
        outputs, penalty = self.disparities(image)
        for scale, disp in enumerate(outputs):
            small = F.interpolate(image, size=disp.shape[-2:], mode="area")
            target, sources, disp_at = image, list(supports.unbind(1)), disp
            if self.loss_cfg.photometric_resolution == "full":
                disp_at = F.interpolate(disp, size=(height, width), mode="bilinear", align_corners=False)
            elif scale > 0:
                target = small
                sources = [F.interpolate(src, size=disp.shape[-2:], mode="area") for src in sources]
            _, depth = disp_to_depth(disp_at.float(), self.model_cfg.min_depth, self.model_cfg.max_depth)
            k = intrinsics_matrix(k_norm.float(), *depth.shape[-2:])
            warped, valid = zip(*(warp(src, depth, t.float(), k) for src, t in zip(sources, motion.transforms)))
            weights = keep_at = None
            size = tuple(target.shape[-2:])
            if explain_masks is not None:
                weights = [
                    m if tuple(m.shape[-2:]) == size else F.interpolate(m, size=size, mode="area")
                    for m in explain_masks
                ]
            if keep is not None:
                keep_at = (
                    keep
                    if tuple(keep.shape[-2:]) == size
                    else F.interpolate(keep.float(), size=size, mode="nearest") > 0.5
                )
            rep, _ = reprojection_loss(
                target,
                list(warped),
                sources,
                list(valid),
                automask=self.loss_cfg.automask,
                weights=weights,
                keep=keep_at,
            )
            smooth = smoothness_loss(disp.float(), small) / (2**scale)
            total = total + rep + self.loss_cfg.smoothness * smooth
            reprojection = reprojection + rep.detach()
            if weights is not None:
                regulariser = regulariser + explainability_regulariser(weights)
        total = total + self.loss_cfg.explainability.weight * regulariser
        loss = self.loss_cfg.video_weight * (total / len(outputs) + penalty)
        boost = None
        if keep is not None and self.loss_cfg.spimo.boost_weight > 0:
            full = F.interpolate(outputs[0], size=(height, width), mode="bilinear", align_corners=False)
            lo, hi = self.model_cfg.min_depth, self.model_cfg.max_depth
            boost = masked_log_disparity_loss(
                disp_to_depth(full.float(), lo, hi)[0],
                disp_to_depth(self.spimo_boost_target(image), lo, hi)[0],
                ~keep,
                keep,
            )
            loss = loss + self.loss_cfg.video_weight * self.loss_cfg.spimo.boost_weight * boost
        out = {"loss": loss, "photometric": reprojection / len(outputs), "focal": k_norm[:, 0].mean().detach()}
        if explain_masks is not None:
            out["explainability"] = torch.stack([m.detach().float().mean() for m in explain_masks]).mean()
        if keep is not None:
            out["moving_fraction"] = 1.0 - keep.float().mean()
        if boost is not None:
            out["spimo_boost"] = boost.detach()
        return out

    def stereo_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        image = batch["image"]
        outputs, penalty = self.disparities(image)
        full = F.interpolate(outputs[0], size=image.shape[-2:], mode="bilinear", align_corners=False)
        # Sky carries the frame's minimum disparity on purpose (MiDaS), so it is supervised too.
        mask = batch["valid"] | batch["sky"]
        ssi = ssi_loss(
            full.float(),
            batch["disparity"].float(),
            mask,
            alpha=self.loss_cfg.ssi_alpha,
            trim=self.loss_cfg.ssi_trim,
            alignment=self.loss_cfg.ssi_alignment,
        )
        return {"loss": self.loss_cfg.stereo_weight * (ssi + penalty), "ssi": ssi.detach()}

    def disparities(self, image: Tensor) -> tuple[list[Tensor], Tensor]:
        """The depth net's disparities at every scale, and loss.logit_penalty's term on their logits (0 when off)."""
        weight = self.loss_cfg.logit_penalty
        if weight == 0 or self.model_cfg.disparity_head != "sigmoid":
            return self.depth(image), image.new_zeros(())
        logits = self.depth(image, logits=True)
        penalty = weight * torch.stack([(x.float() ** 2).mean() for x in logits]).mean()
        return [torch.sigmoid(x) for x in logits], penalty

    @torch.no_grad()
    def predict_disparity(self, image: Tensor) -> Tensor:
        """Full-resolution normalised disparity (relative inverse depth) for images in [0, 1]."""
        return self.depth(image)[0]


def _load_first_stage(teacher: DepthNet, path: str) -> None:
    """The depth weights of a first-stage run (same model section, positional_encoding: true) into teacher."""
    state = load_weights(path)["model"]
    depth = {k[len("depth.") :]: v for k, v in state.items() if k.startswith("depth.")}
    own = teacher.state_dict()
    depth = {k: v for k, v in depth.items() if k in own or not k.startswith("dispconv.")}  # coarser heads
    try:
        teacher.load_state_dict(depth)
    except RuntimeError as err:
        raise ValueError(
            f"SPIMO first stage {path} does not fit this model section with positional_encoding: true: {err}"
        ) from err
