"""Global motion decomposition and the network's inputs and outputs.

Every window is expressed in a *canonical frame* ``C`` fixed to the head at the window's
last (current) frame: its origin is the head's position projected to the floor
(``(x, y, 0)``) and its x axis is the head's horizontal heading; z stays up::

        z (up)
        |
        |___ x (head's heading at frame t, horizontal)
       /
      y (to the left)

Inputs (tracker positions and rotations) and outputs (pelvis orientation and position)
live in ``C``; only joint rotations relative to their parents are frame-free. Moving or
turning the whole recording about the vertical axis therefore changes nothing the network
sees, and the global trajectory is restored afterwards with ``T_world_C``. Positions are
also divided by the body scale, so a uniformly larger person produces the same inputs
(the scale itself is an input too). The heading is taken from the head's forward axis
``f`` and up axis ``u`` as ``f_xy - f_z * u_xy``, which stays well defined when the user
looks straight down or up (then ``u`` points horizontally).

Per-frame input features (57): for head, left and right wrist each the rotation (6D),
the frame-to-frame rotation ``R_{t-1}^T R_t`` (6D), the position and the velocity
(positions / scale, m/s / scale): 18 x 3; then the two hand-visibility flags and the body
scale. A hand that is not visible has all its 18 features set to zero (its velocity also
when it was not visible in the previous frame), as in the paper's FoV-aware masking; the
flags say which zeros mean "not seen".
"""

from __future__ import annotations

import torch
from torch import Tensor

from geometry.so3 import matrix_to_rot6d, rot6d_to_matrix
from pose.body.egoposer.skeleton import NUM_JOINTS

FEATURES_PER_TRACKER = 18
NUM_FEATURES = 3 * FEATURES_PER_TRACKER + 3
NUM_OUTPUTS = NUM_JOINTS * 6 + 3


def heading_rotation(head_rot: Tensor) -> Tensor:
    """``R_world_C``: rotation about z that takes C's x axis to the head's heading.

    Args:
        head_rot: ``[..., 3, 3]`` ``R_world_head`` (joint frame, z forward, y up).

    Returns:
        ``[..., 3, 3]``.
    """
    f, u = head_rot[..., :, 2], head_rot[..., :, 1]
    hx = f[..., 0] - f[..., 2] * u[..., 0]
    hy = f[..., 1] - f[..., 2] * u[..., 1]
    norm = torch.sqrt(hx * hx + hy * hy).clamp(min=1e-9)
    c, s = hx / norm, hy / norm
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack((torch.stack((c, -s, zero), -1), torch.stack((s, c, zero), -1),
                        torch.stack((zero, zero, one), -1)), -2)


def canonical_frame(head_rot: Tensor, head_pos: Tensor) -> tuple[Tensor, Tensor]:
    """The canonical frame of a window from the head pose at its current frame.

    Args:
        head_rot: ``[..., 3, 3]``; head_pos: ``[..., 3]`` (world).

    Returns:
        ``(R_world_C [..., 3, 3], origin_world [..., 3])`` with ``origin_world[..., 2] == 0``.
    """
    origin = head_pos.clone()
    origin[..., 2] = 0.0
    return heading_rotation(head_rot), origin


def window_features(trk_rot: Tensor, trk_pos: Tensor, visible: Tensor, scale: Tensor,
                    fps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Input features of windows, in each window's canonical frame.

    A window is ``K`` frames (not necessarily contiguous) ending at the current frame, each
    paired with the frame just before it (for velocities).

    Args:
        trk_rot: ``[B, K, 2, 3, 3, 3]`` world rotations of head, left and right wrist; the
            third axis is (previous frame, frame).
        trk_pos: ``[B, K, 2, 3, 3]`` world positions (metres).
        visible: ``[B, K, 2, 2]`` bool hand visibility (previous/frame, left/right).
        scale: ``[B]`` body scale.
        fps: frame rate.

    Returns:
        ``(features [B, K, 57], R_world_C [B, 3, 3], origin_world [B, 3])``.
    """
    R_wc, origin = canonical_frame(trk_rot[:, -1, 1, 0], trk_pos[:, -1, 1, 0])
    inv_scale = (1.0 / scale)[:, None, None, None, None]
    pos_c = (trk_pos - origin[:, None, None, None, :]) @ R_wc[:, None, None] * inv_scale
    rot = trk_rot[:, :, 1]
    rot_c = R_wc.transpose(-1, -2)[:, None, None] @ rot  # [B, K, 3, 3, 3]
    vel = (pos_c[:, :, 1] - pos_c[:, :, 0]) * fps
    dq = trk_rot[:, :, 0].transpose(-1, -2) @ rot
    feats = torch.cat((matrix_to_rot6d(rot_c), matrix_to_rot6d(dq), pos_c[:, :, 1], vel),
                      -1)  # [B, K, 3, 18]
    vis = visible[:, :, 1]
    vis_vel = vis & visible[:, :, 0]
    ones = torch.ones_like(vis[..., :1])
    tracker_mask = torch.cat((ones, vis), -1).to(feats.dtype)  # [B, K, 3]
    vel_mask = torch.cat((ones, vis_vel), -1).to(feats.dtype)
    mask = torch.cat((tracker_mask[..., None].expand(*tracker_mask.shape, 15),
                      vel_mask[..., None].expand(*vel_mask.shape, 3)), -1)
    # Frame-to-frame rotations of a hand need both frames visible too.
    mask[..., 6:12] = vel_mask[..., None]
    feats = (feats * mask).flatten(-2)
    b, k = feats.shape[:2]
    extra = torch.cat((vis.to(feats.dtype), scale[:, None, None].expand(b, k, 1).to(feats)), -1)
    return torch.cat((feats, extra), -1), R_wc, origin


def encode_targets(local_rots: Tensor, root_pos: Tensor, R_wc: Tensor, origin: Tensor,
                   scale: Tensor) -> tuple[Tensor, Tensor]:
    """Targets in the canonical frame.

    Args:
        local_rots: ``[B, F, 22, 3, 3]`` (world pelvis rotation at index 0).
        root_pos: ``[B, F, 3]`` pelvis positions (world).
        R_wc, origin: ``[B, 3, 3]``, ``[B, 3]`` the windows' canonical frames.
        scale: ``[B]``.

    Returns:
        ``(local_rots_c [B, F, 22, 3, 3], root_pos_c [B, F, 3])``; ``root_pos_c`` is divided
        by the scale.
    """
    rots_c = local_rots.clone()
    rots_c[:, :, 0] = R_wc.transpose(-1, -2)[:, None] @ local_rots[:, :, 0]
    root_c = (root_pos - origin[:, None]) @ R_wc / scale[:, None, None]
    return rots_c, root_c


def decode_outputs(out: Tensor) -> tuple[Tensor, Tensor]:
    """Network outputs -> ``(local_rots_c [..., 22, 3, 3], root_pos_c [..., 3])``.

    Args:
        out: ``[..., 135]``: 22 6D rotations (pelvis in C, then 21 local), then the pelvis
            position in C divided by the body scale.
    """
    rots = rot6d_to_matrix(out[..., : NUM_JOINTS * 6].reshape(*out.shape[:-1], NUM_JOINTS, 6))
    return rots, out[..., NUM_JOINTS * 6:]


def restore_global(local_rots_c: Tensor, root_pos_c: Tensor, R_wc: Tensor, origin: Tensor,
                   scale: Tensor) -> tuple[Tensor, Tensor]:
    """Undo the decomposition: canonical-frame outputs -> world pose.

    Args:
        local_rots_c: ``[B, ..., 22, 3, 3]``; root_pos_c: ``[B, ..., 3]`` (divided by scale).
        R_wc: ``[B, 3, 3]``; origin: ``[B, 3]``; scale: ``[B]``.

    Returns:
        ``(local_rots [B, ..., 22, 3, 3], root_pos [B, ..., 3])`` in the world.
    """
    extra = local_rots_c.dim() - 4
    R = R_wc.reshape(R_wc.shape[0], *([1] * extra), 3, 3)
    rots = local_rots_c.clone()
    rots[..., 0, :, :] = R @ local_rots_c[..., 0, :, :]
    s = scale.reshape(-1, *([1] * (extra + 1)))
    o = origin.reshape(origin.shape[0], *([1] * extra), 3)
    root = ((root_pos_c * s)[..., None, :] @ R.transpose(-1, -2))[..., 0, :] + o
    return rots, root
