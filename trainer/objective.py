"""The networks and the per-batch loss in one module, so DDP wraps a single forward.

Video batches: self-supervised view synthesis (Monodepth2 / SlowTV). Stereo batches: the MiDaS
scale-and-shift-invariant loss on flow disparity. The loss follows what the batch carries.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.config import LossConfig, ModelConfig
from trainer.geometry import intrinsics_matrix, warp
from trainer.losses import disp_to_depth, reprojection_loss, smoothness_loss, ssi_loss
from trainer.models import DepthNet, PoseNet


class DepthTraining(nn.Module):
    def __init__(self, model: ModelConfig, loss: LossConfig, load_encoders: bool = True):
        super().__init__()
        self.model_cfg, self.loss_cfg = model, loss
        # Encoder checkpoints only matter for a fresh run; a saved run carries all the weights.
        self.depth = DepthNet(model.encoder, model.encoder_checkpoint if load_encoders else None,
                              scales=loss.scales)
        self.pose = PoseNet(model.pose_encoder, model.pose_checkpoint if load_encoders else None,
                            learn_intrinsics=True)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        if batch["kind"] == "stereo":
            return self.stereo_loss(batch)
        return self.video_loss(batch)

    def video_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        image, supports = batch["image"], batch["supports"]
        _, _, height, width = image.shape
        transforms, learned = [], []
        for s in range(supports.shape[1]):
            # Frames go to the pose net in time order (Monodepth2): supports[:, 0] is t-k, before the target.
            transform, k_norm = self.pose(image, supports[:, s], source_first=s == 0)
            transforms.append(transform)
            learned.append(k_norm)
        k_norm = torch.stack(learned).mean(0)
        given = batch["intrinsics"].to(k_norm.dtype)
        if self.model_cfg.intrinsics == "given":
            known = torch.isfinite(given).all(dim=1, keepdim=True)
            k_norm = torch.where(known, torch.nan_to_num(given), k_norm)
        total = image.new_zeros(())
        reprojection = image.new_zeros(())
        outputs = self.depth(image)
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
            warped, valid = zip(*(warp(src, depth, t.float(), k) for src, t in zip(sources, transforms)))
            rep, _ = reprojection_loss(target, list(warped), sources, list(valid), automask=self.loss_cfg.automask)
            smooth = smoothness_loss(disp.float(), small) / (2 ** scale)
            total = total + rep + self.loss_cfg.smoothness * smooth
            reprojection = reprojection + rep.detach()
        loss = self.loss_cfg.video_weight * total / len(outputs)
        return {"loss": loss, "photometric": reprojection / len(outputs),
                "focal": k_norm[:, 0].mean().detach()}

    def stereo_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        image = batch["image"]
        disp = self.depth(image)[0]
        full = F.interpolate(disp, size=image.shape[-2:], mode="bilinear", align_corners=False)
        # Sky carries the frame's minimum disparity on purpose (MiDaS), so it is supervised too.
        mask = batch["valid"] | batch["sky"]
        ssi = ssi_loss(full.float(), batch["disparity"].float(), mask, alpha=self.loss_cfg.ssi_alpha,
                       trim=self.loss_cfg.ssi_trim, alignment=self.loss_cfg.ssi_alignment)
        return {"loss": self.loss_cfg.stereo_weight * ssi, "ssi": ssi.detach()}

    @torch.no_grad()
    def predict_disparity(self, image: Tensor) -> Tensor:
        """Full-resolution sigmoid disparity (relative inverse depth) for images in [0, 1]."""
        return self.depth(image)[0]
