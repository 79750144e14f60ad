"""ADen's losses: the hypothesis-nearest generator loss and the contrastive discriminator
loss, plus the training objective of each mode (:func:`aden_loss`).

Pose distance (:func:`pose_distance`): the chordal rotation error ``||R - R_gt||_F^2``
(``= 4 (1 - cos angle)``, smooth everywhere, unlike the angle itself) plus
``w ||t - t_gt||^2``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geometry.so3 import axis_angle_to_matrix, random_rotation, rotation_angle

__all__ = ["aden_loss", "all_pairs_frame_loss", "contrastive_discriminator_loss",
           "hypothesis_nearest_loss", "pose_distance", "ranking_discriminator_loss",
           "ranking_targets"]


def pose_distance(R: Tensor, t: Tensor, R_gt: Tensor, t_gt: Tensor,
                  translation_weight: float) -> Tensor:
    """``||R - R_gt||_F^2 + w ||t - t_gt||^2`` with broadcasting, ``[...]``.

    Args:
        R: ``[..., 3, 3]``; t: ``[..., 3]``; R_gt, t_gt broadcastable to them.
    """
    rot = (R - R_gt).square().sum((-1, -2))
    return rot + translation_weight * (t - t_gt).square().sum(-1)


def hypothesis_nearest_loss(R_h: Tensor, t_h: Tensor, R_gt: Tensor, t_gt: Tensor,
                            translation_weight: float) -> tuple[Tensor, Tensor]:
    """Mean over views of the distance of the hypothesis nearest the ground truth (only that
    hypothesis gets a gradient, so the others stay free to cover other modes).

    Args:
        R_h: ``[..., H, 3, 3]`` hypotheses; t_h: ``[..., H, 3]``.
        R_gt: ``[..., 3, 3]``; t_gt: ``[..., 3]``.
        translation_weight: ``w`` of :func:`pose_distance`.

    Returns:
        The loss (scalar) and the index of the nearest hypothesis ``[...]``.
    """
    d = pose_distance(R_h, t_h, R_gt[..., None, :, :], t_gt[..., None, :], translation_weight)
    best, idx = d.min(-1)
    return best.mean(), idx


def contrastive_discriminator_loss(scores: Tensor, valid: Tensor | None = None,
                                   temperature: float = 1.0) -> Tensor:
    """InfoNCE with the ground truth (candidate 0) as the positive among the candidates.

    ``mean(logsumexp(s_valid / T) - s_0 / T)``: the cross entropy of picking candidate 0.

    Args:
        scores: ``[..., 1 + N]``, candidate 0 the ground truth.
        valid: ``[..., 1 + N]`` bool, False for candidates left out (negatives too close to
            the ground truth); candidate 0 is always used.
        temperature: softmax temperature ``T``.
    """
    s = scores / temperature
    if valid is not None:
        valid = valid.clone()
        valid[..., 0] = True
        s = s.masked_fill(~valid, -math.inf)
    return (torch.logsumexp(s, -1) - s[..., 0]).mean()


def ranking_targets(R: Tensor, t: Tensor, R_gt: Tensor, t_gt: Tensor,
                    rotation_deg: float, translation: float) -> Tensor:
    """Soft targets of the ranking loss: ``softmax(-(angle / rotation_deg + ||t - t_gt|| /
    translation))`` over the candidates, so a candidate 1 ``rotation_deg`` farther from the
    truth gets ``e`` times less weight.

    Args:
        R: ``[..., N, 3, 3]`` candidates; t: ``[..., N, 3]``.
        R_gt: ``[..., 3, 3]``; t_gt: ``[..., 3]``.
        rotation_deg, translation: the temperatures (degrees; units of ``t``).

    Returns:
        ``[..., N]``, summing to 1 over the candidates.
    """
    angle = torch.rad2deg(rotation_angle(R, R_gt[..., None, :, :]))  # exact near 0
    dist = (t - t_gt[..., None, :]).norm(dim=-1)
    return torch.softmax(-(angle / rotation_deg + dist / translation), -1)


def ranking_discriminator_loss(scores: Tensor, targets: Tensor,
                               temperature: float = 1.0) -> Tensor:
    """Cross entropy of the candidates' softmax against soft ``targets`` (e.g.
    :func:`ranking_targets`): ``mean(-sum_i q_i log softmax(s / T)_i)``. With one-hot
    targets on candidate 0 it is :func:`contrastive_discriminator_loss`; soft targets teach
    the discriminator to rank the candidates near the truth by their distance to it (at
    inference it must pick among generated hypotheses, none of them the truth).

    Args:
        scores: ``[..., N]``; targets: ``[..., N]`` (each row sums to 1).
        temperature: softmax temperature ``T`` of the scores.
    """
    logp = torch.log_softmax(scores / temperature, -1)
    return -(targets * logp).sum(-1).mean()


def all_pairs_frame_loss(F: Tensor, c: Tensor, R_gt: Tensor, t_gt: Tensor,
                         translation_weight: float) -> Tensor:
    """Mean :func:`pose_distance` of every ordered pair's composed pose.

    Pair ``(i, j)``: predicted ``F_i^T F_j``, ``F_i^T (c_j - c_i)``; true ``R_i^T R_j``,
    ``R_i^T (x_j - x_i)`` with ``R_0 = I``, ``x_0 = 0``, ``R_j = R_gt[j-1]``,
    ``x_j = t_gt[j-1]`` (every camera in the first one's frame).

    Args:
        F: ``[B, V, 3, 3]`` view frames; c: ``[B, V, 3]`` centres.
        R_gt: ``[B, V-1, 3, 3]``; t_gt: ``[B, V-1, 3]`` first-view-relative truth.
    """
    B = R_gt.shape[0]
    eye = torch.eye(3, dtype=R_gt.dtype, device=R_gt.device).expand(B, 1, 3, 3)
    R_all = torch.cat([eye, R_gt], 1)
    x_all = torch.cat([t_gt.new_zeros(B, 1, 3), t_gt], 1)

    def pairs(R: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        Rt = R.transpose(-1, -2)[:, :, None]  # [B, V, 1, 3, 3]: i
        rel_R = Rt @ R[:, None]  # [B, V, V, 3, 3]
        rel_t = (Rt @ (x[:, None] - x[:, :, None])[..., None])[..., 0]
        return rel_R, rel_t

    R_p, t_p = pairs(F, c)
    R_g, t_g = pairs(R_all, x_all)
    V = F.shape[1]
    off = ~torch.eye(V, dtype=torch.bool, device=F.device)
    return pose_distance(R_p, t_p, R_g, t_g, translation_weight)[:, off].mean()


def aden_loss(net, batch: dict) -> dict[str, Tensor]:
    """The training objective of ``net`` (an :class:`~pose.camera.aden.model.AdenNet`; its
    ``forward`` calls this, so that a DDP-wrapped model syncs every gradient) on a batch of
    ``images [B, V, 3, S, S]``, ``R_rel [B, V-1, 3, 3]``, ``t_rel [B, V-1, 3]``.

    - aden: hypothesis-nearest loss of the M generated hypotheses + the contrastive loss of
      the discriminator over (GT, the detached hypotheses farther than the margin from the
      GT, uniformly random rotations and ``local_negatives`` rotations of the GT by
      margin..``local_negative_max_deg`` degrees, both with the GT translation); with
      ``rank_temperature_deg > 0`` the ranking loss instead, over the same candidates with
      no margin (the generated hypotheses near the truth and local turns from 0 degrees
      included, each weighted by :func:`ranking_targets`);
    - regression: the same generator loss with one hypothesis;
    - grid: the contrastive loss over (GT rotation, random and local rotations), plus the squared
      error of the regressed translation.

    With ``view_frames``, plus :func:`all_pairs_frame_loss` (weight ``frame_weight``).

    Returns ``{"loss", "gen", "disc", "rot_err_deg"}`` (the last: mean angle of the nearest
    hypothesis, for the log), and ``"frame"`` with view frames.
    """
    c = net.config
    images, R_gt, t_gt = batch["images"], batch["R_rel"], batch["t_rel"]
    fused = net.encode(images)
    zero = images.new_zeros(())
    if c.mode == "grid":
        _, t_reg = net.generate(fused, 1)
        gen = (t_reg[:, :, 0] - t_gt).square().sum(-1).mean() * c.translation_weight
        R_h = None
    else:  # the noise from the batch's seed: a step is reproducible (DDP, resume)
        noise = torch.Generator().manual_seed(int(batch.get("seed", 0)) + 1)
        R_h, t_h = net.generate(fused, generator=noise)
        gen, idx = hypothesis_nearest_loss(R_h, t_h, R_gt, t_gt, c.translation_weight)
    if c.mode == "regression":
        disc = zero
    else:
        B, V1 = R_gt.shape[:2]
        gen_rand = torch.Generator(device="cpu").manual_seed(int(batch.get("seed", 0)))
        R_rand = random_rotation((B, V1, c.random_negatives), generator=gen_rand).to(R_gt)
        t_rand = t_gt[:, :, None].expand(-1, -1, c.random_negatives, -1)
        cand_R = [R_gt[:, :, None], R_rand]
        cand_t = [t_gt[:, :, None], t_rand]
        ranking = c.mode == "aden" and c.rank_temperature_deg > 0
        if c.local_negatives > 0:  # hard negatives: the truth turned by margin..max degrees
            L = c.local_negatives
            axis = torch.randn(B, V1, L, 3, generator=gen_rand, dtype=torch.float64)
            lo = 0.0 if ranking else math.radians(c.negative_margin_deg)
            hi = math.radians(c.local_negative_max_deg)
            angle = lo + (hi - lo) * torch.rand(B, V1, L, 1, generator=gen_rand,
                                                dtype=torch.float64)
            turn = axis_angle_to_matrix(axis / axis.norm(dim=-1, keepdim=True) * angle)
            cand_R.append(R_gt[:, :, None] @ turn.to(R_gt))
            cand_t.append(t_gt[:, :, None].expand(-1, -1, L, -1))
        generated = c.mode == "aden" and c.generated_negatives
        if generated:
            cand_R.append(R_h.detach())
            cand_t.append(t_h.detach())
        cand_R, cand_t = torch.cat(cand_R, 2), torch.cat(cand_t, 2)
        scores = net.score(fused, cand_R, cand_t)
        if ranking:
            q = ranking_targets(cand_R, cand_t, R_gt, t_gt, c.rank_temperature_deg,
                                c.rank_temperature_t)
            disc = ranking_discriminator_loss(scores, q, c.temperature)
        else:  # every candidate counts, but generated ones within the margin of the truth
            valid = torch.ones_like(scores, dtype=torch.bool)
            if generated:
                M = R_h.shape[2]
                cos = ((cand_R[:, :, -M:] * R_gt[:, :, None]).sum((-1, -2)) - 1) / 2
                valid[..., -M:] = cos < math.cos(math.radians(c.negative_margin_deg))
            disc = contrastive_discriminator_loss(scores, valid, c.temperature)
    out = {"loss": gen + disc, "gen": gen.detach(), "disc": disc.detach()}
    if c.view_frames:
        F, cen = net.frames(fused)
        frame = all_pairs_frame_loss(F, cen, R_gt, t_gt, c.translation_weight)
        out["loss"] = out["loss"] + c.frame_weight * frame
        out["frame"] = frame.detach()
    if R_h is not None:
        with torch.no_grad():
            R_best = R_h.gather(2, idx[..., None, None, None].expand(-1, -1, 1, 3, 3))[:, :, 0]
            cos = ((R_best * R_gt).sum((-1, -2)) - 1) / 2
            out["rot_err_deg"] = torch.rad2deg(torch.acos(cos.clamp(-1, 1))).mean()
    return out
