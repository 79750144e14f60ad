"""Rays of UpSRT: the reference frame of an unposed view set, Plücker coordinates, the
harmonic encodings of rays and of patch/camera ids (official ``upsrt/renderer/rays.py`` and
``upsrt/utils/id_encoding.py``).

Frames. UpFusion's input views are *unposed*: every input patch ray is cast from an
identity camera (only the intrinsics matter), and the views are told apart by a camera id
(the first view is the canonical one). Query cameras are expressed in the frame of the
first input view, which the official code (PyTorch3D cameras) places as::

        y (up)                       the reference frame ``ref``: axes of the first
        |   z (forward, to the       camera in PyTorch3D convention (x left, y up,
        |  /  object)                z forward), origin at the object centre, which is
        | /                          one unit in front of the first camera: the first
  x ----+ (object centre = origin)   camera centre is at (0, 0, -1).

:func:`reference_frame` builds ``T_ref_world`` from OpenCV cameras (ours) and an object
centre; with no known centre (unposed photos) the first camera alone fixes it by that
convention.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geometry.cameras import Cameras

#: OpenCV camera axes -> PyTorch3D camera axes (x left, y up, z forward).
OPENCV_TO_PYTORCH3D = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))
#: Camera-id values of the official encoding: the first (canonical) view, the others.
FIRST_CAMERA_ID = 1.0 / 3.0 + 0.05
OTHER_CAMERA_ID = 2.0 / 3.0 + 0.05


def plucker(origins: Tensor, directions: Tensor) -> Tensor:
    """``[..., 6]`` Plücker coordinates ``(d, o x d)`` with ``d`` normalised.

    Args:
        origins: ``[..., 3]`` any point on each ray.
        directions: ``[..., 3]`` ray directions (any length > 0).
    """
    directions = directions / directions.norm(dim=-1, keepdim=True)
    return torch.cat((directions, torch.cross(origins, directions, dim=-1)), -1)


def frequency_bands(num_freqs: int, start_freq: int, dtype=torch.float32,
                    device=None) -> Tensor:
    """``[F]`` angular frequencies ``pi * 2^k`` for ``k = start_freq .. start_freq + F - 1``."""
    exponents = torch.arange(start_freq, start_freq + num_freqs, dtype=torch.float64)
    return (2.0 ** exponents * math.pi).to(dtype=dtype, device=device)


def harmonic(values: Tensor, num_freqs: int, start_freq: int) -> Tensor:
    """``[..., C]`` -> ``[..., 2 * F * C]``: ``sin`` of every band, then ``cos`` of every band,
    each a block of ``C`` values, in the official order (``positional_encoding``)."""
    bands = frequency_bands(num_freqs, start_freq, values.dtype, values.device)
    scaled = values[..., None, :] * bands[:, None]  # [..., F, C]
    flat = scaled.flatten(-2)  # [..., F*C], band-major like torch.cat([sin(x*f) for f])
    return torch.cat((torch.sin(flat), torch.cos(flat)), -1)


def patch_id_encoding(num_views: int, num_patches: int, num_freqs: int,
                      start_freq: int) -> Tensor:
    """``[num_views, P, 2F]``: the harmonic of ``p / P`` for patch ``p = 1 .. P``."""
    ids = torch.arange(1, num_patches + 1, dtype=torch.float32) / num_patches
    enc = harmonic(ids[:, None], num_freqs, start_freq)  # [P, 2F]
    return enc[None].expand(num_views, -1, -1)


def camera_id_encoding(num_views: int, num_patches: int, num_freqs: int,
                       start_freq: int) -> Tensor:
    """``[num_views, P, 2F]``: the first view's id (1/3 + 0.05), the others' (2/3 + 0.05)."""
    ids = torch.full((num_views, 1), OTHER_CAMERA_ID, dtype=torch.float32)
    ids[0] = FIRST_CAMERA_ID
    return harmonic(ids, num_freqs, start_freq)[:, None].expand(-1, num_patches, -1)


def patch_corner_pixels(width: int, height: int, num_x: int, num_y: int,
                        dtype=torch.float64) -> Tensor:
    """``[num_y * num_x, 2]`` pixel positions ``(u, v)`` of each patch's top-left corner,
    row-major (the official ``get_patch_raybundle`` casts the ray through the corner)."""
    u = torch.arange(num_x, dtype=dtype) * (width / num_x)
    v = torch.arange(num_y, dtype=dtype) * (height / num_y)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack((uu, vv), -1).reshape(-1, 2)


def pixel_centres(width: int, height: int, dtype=torch.float64) -> Tensor:
    """``[H * W, 2]`` pixel centres ``(u + 0.5, v + 0.5)``, row-major."""
    vv, uu = torch.meshgrid(torch.arange(height, dtype=dtype) + 0.5,
                            torch.arange(width, dtype=dtype) + 0.5, indexing="ij")
    return torch.stack((uu, vv), -1).reshape(-1, 2)


def camera_directions(K: Tensor, uv: Tensor) -> Tensor:
    """``[..., N, 3]`` unit directions in PyTorch3D camera axes through pixels ``uv``.

    Args:
        K: ``[..., 3, 3]`` intrinsics (pixels).
        uv: ``[..., N, 2]`` pixel positions.
    """
    x = (uv[..., 0] - K[..., None, 0, 2]) / K[..., None, 0, 0]
    y = (uv[..., 1] - K[..., None, 1, 2]) / K[..., None, 1, 1]
    dirs = torch.stack((-x, -y, torch.ones_like(x)), -1)  # OpenCV -> PyTorch3D axes
    return dirs / dirs.norm(dim=-1, keepdim=True)


def input_patch_rays(K: Tensor, width: int, height: int, num_x: int, num_y: int) -> Tensor:
    """``[V, P, 6]`` Plücker rays of the input patches from identity cameras (the official
    unposed setting: origins at 0, so the moments are 0).

    Args:
        K: ``[V, 3, 3]`` intrinsics of the input photos (pixels of ``width`` x ``height``).
    """
    uv = patch_corner_pixels(width, height, num_x, num_y, K.dtype).to(K.device)
    dirs = camera_directions(K, uv[None].expand(len(K), -1, -1))
    return plucker(torch.zeros_like(dirs), dirs)


def reference_frame(first: Cameras, centre: Tensor | None = None) -> Tensor:
    """``T_ref_world [4, 4]`` (float64): the reference frame of a view set (module doc).

    Args:
        first: the first input camera (one camera, any batch shape of size 1).
        centre: ``[3]`` the object centre in world coordinates; None: one unit of the
            returned frame is the distance to it, and it is taken one *world* unit in
            front of the first camera (unposed photos: there is nothing else to go by).
    """
    T_world_cam = first.T_world_cam.reshape(4, 4).double()
    R_world_cam, c = T_world_cam[:3, :3], T_world_cam[:3, 3]
    if centre is None:
        distance = torch.tensor(1.0, dtype=torch.float64)
    else:
        distance = (centre.double().to(c.device) - c).norm().clamp_min(1e-9)
    flip = OPENCV_TO_PYTORCH3D.to(c.device)
    R_ref_world = flip @ R_world_cam.T / distance  # rotation and scale
    T = torch.eye(4, dtype=torch.float64, device=c.device)
    T[:3, :3] = R_ref_world
    T[:3, 3] = -R_ref_world @ c - torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64,
                                                   device=c.device)
    return T


def query_rays(cameras: Cameras, T_ref_world: Tensor, uv: Tensor | None = None) -> Tensor:
    """``[C, N, 6]`` Plücker rays of query cameras in the reference frame.

    Args:
        cameras: ``[C]`` query cameras (OpenCV, world frame).
        T_ref_world: ``[4, 4]`` from :func:`reference_frame` (rotation times a scale).
        uv: ``[C, N, 2]`` or ``[N, 2]`` pixels; None: every pixel centre, row-major (the
            cameras must then share one image size).
    """
    T_ref_world = T_ref_world.double().to(cameras.device)
    if uv is None:
        uv = pixel_centres(int(cameras.width.reshape(-1)[0]), int(cameras.height.reshape(-1)[0]))
    uv = uv.to(cameras.device).double()
    if uv.dim() == 2:
        uv = uv[None].expand(len(cameras), -1, -1)
    K = cameras.K.double()
    T_world_cam = cameras.T_world_cam.double()
    x = (uv[..., 0] - K[:, None, 0, 2]) / K[:, None, 0, 0]
    y = (uv[..., 1] - K[:, None, 1, 2]) / K[:, None, 1, 1]
    dirs_cam = torch.stack((x, y, torch.ones_like(x)), -1)  # OpenCV camera axes
    R_ref_cam = T_ref_world[:3, :3] @ T_world_cam[:, :3, :3]  # [C, 3, 3]
    dirs_ref = dirs_cam @ R_ref_cam.transpose(-1, -2)
    centres_ref = T_world_cam[:, :3, 3] @ T_ref_world[:3, :3].T + T_ref_world[:3, 3]
    return plucker(centres_ref[:, None].expand_as(dirs_ref), dirs_ref)
