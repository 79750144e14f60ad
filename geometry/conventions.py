"""Camera-frame conventions of other tools, converted ONCE, at the reader/writer boundary.

Inside sparseview every camera is OpenCV (see :mod:`geometry.cameras`)::

    OpenCV / COLMAP (ours)     OpenGL / NeRF / Blender    LLFF poses_bounds.npy   PyTorch3D
                                / nerfstudio / ingp         (matrix columns)
          z forward                  y up                    back (col 2)             y up
         /                           |                          /                     |   z forward
        o---- x right                o---- x right             o---- right (col 1)    |  /
        |                           /                          |                      | /
        y down                     z back                      down (col 0)   x left -o

All four describe a camera-to-world matrix by where its camera axes point in the world,
so converting between OpenCV and OpenGL/LLFF is a fixed permutation/sign flip of the
rotation COLUMNS; the camera centre does not change. PyTorch3D differs further: it stores
world-to-camera with ROW vectors (``X_cam = X_world @ R + T``) and its intrinsics in NDC.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geometry.cameras import intrinsics_matrix
from geometry.se3 import invert_T, make_T

# Right-multiplying a camera-to-world matrix by this flips the camera's y and z axes.
_FLIP_YZ = (1.0, -1.0, -1.0, 1.0)


def _flip_yz(T_world_cam: Tensor) -> Tensor:
    return T_world_cam * T_world_cam.new_tensor(_FLIP_YZ)


def opengl_to_opencv(T_world_cam_gl: Tensor) -> Tensor:
    """OpenGL/NeRF/Blender/nerfstudio camera-to-world (x right, y up, z back) to OpenCV.

    Args:
        T_world_cam_gl: ``[..., 4, 4]`` (a ``transform_matrix`` of ``transforms.json``).

    Returns:
        ``[..., 4, 4]`` OpenCV camera-to-world (same centre, y and z axes negated).
    """
    return _flip_yz(T_world_cam_gl)


def opencv_to_opengl(T_world_cam: Tensor) -> Tensor:
    """OpenCV camera-to-world to OpenGL/NeRF (the inverse of :func:`opengl_to_opencv`).

    Args:
        T_world_cam: ``[..., 4, 4]``.

    Returns:
        ``[..., 4, 4]``.
    """
    return _flip_yz(T_world_cam)


def llff_to_opencv(poses_llff: Tensor) -> Tensor:
    """LLFF camera-to-world (columns down, right, back, centre) to OpenCV.

    Args:
        poses_llff: ``[..., 3, 4]`` or ``[..., 3, 5]`` (the hwf column is ignored), as in
            ``poses_bounds.npy[:, :15].reshape(-1, 3, 5)``.

    Returns:
        ``[..., 4, 4]`` OpenCV camera-to-world: x = right = col 1, y = down = col 0,
        z = forward = -col 2.
    """
    down, right, back, centre = (poses_llff[..., :, i] for i in range(4))
    R = torch.stack((right, down, -back), -1)
    return make_T(R, centre)


def opencv_to_llff(T_world_cam: Tensor) -> Tensor:
    """OpenCV camera-to-world to the LLFF ``[..., 3, 4]`` layout (down, right, back, centre).

    Args:
        T_world_cam: ``[..., 4, 4]``.

    Returns:
        ``[..., 3, 4]``.
    """
    x, y, z, centre = (T_world_cam[..., :3, i] for i in range(4))
    return torch.stack((y, x, -z, centre), -1)


def _ndc_scale(image_size: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(scale, width, height)`` of PyTorch3D's isotropic NDC: ``scale = min(H, W) / 2``."""
    height, width = image_size[..., 0], image_size[..., 1]
    return torch.minimum(height, width) / 2.0, width, height


def pytorch3d_to_opencv(
    R: Tensor,
    T: Tensor,
    focal_length_ndc: Tensor,
    principal_point_ndc: Tensor,
    image_size: Tensor,
) -> tuple[Tensor, Tensor]:
    """PyTorch3D ``PerspectiveCameras`` (NDC intrinsics) to OpenCV ``K`` and ``T_world_cam``.

    PyTorch3D's camera frame has X left, Y up, Z forward and maps world points with row
    vectors, ``X_cam = X_world @ R + T``. Its NDC is the one of current PyTorch3D and of
    CO3D v2 ("ndc_isotropic"): the SHORTER image side spans ``[-1, 1]``, the longer one
    ``[-u, u]`` with ``u = long / short``, +x pointing left and +y up. With
    ``s = min(H, W) / 2`` the screen intrinsics are (as in pytorch3d's
    ``opencv_from_cameras_projection``, pixel corners at integer coordinates)::

        fx = fl_x * s,  fy = fl_y * s,  cx = W / 2 - px * s,  cy = H / 2 - py * s

    Args:
        R: ``[..., 3, 3]`` PyTorch3D rotation (row-vector convention).
        T: ``[..., 3]`` PyTorch3D translation.
        focal_length_ndc: ``[..., 2]`` ``(fl_x, fl_y)`` or ``[...]`` (one focal).
        principal_point_ndc: ``[..., 2]`` ``(px, py)``.
        image_size: ``[..., 2]`` ``(H, W)`` in pixels, PyTorch3D's order.

    Returns:
        ``K [..., 3, 3]`` and ``T_world_cam [..., 4, 4]`` (OpenCV).
    """
    flip = R.new_tensor([-1.0, -1.0, 1.0])
    R_cam_world = flip[:, None] * R.transpose(-1, -2)  # column-vector form, then X,Y flip
    t_cam_world = flip * T
    T_world_cam = invert_T(make_T(R_cam_world, t_cam_world))
    image_size = torch.as_tensor(image_size, dtype=R.dtype, device=R.device)
    focal = torch.as_tensor(focal_length_ndc, dtype=R.dtype, device=R.device)
    if focal.shape[-1:] != (2,) or focal.dim() == R.dim() - 2:
        focal = torch.stack((focal, focal), -1)
    pp = torch.as_tensor(principal_point_ndc, dtype=R.dtype, device=R.device)
    scale, width, height = _ndc_scale(image_size)
    K = intrinsics_matrix(
        focal[..., 0] * scale,
        focal[..., 1] * scale,
        width / 2.0 - pp[..., 0] * scale,
        height / 2.0 - pp[..., 1] * scale,
    )
    return K, T_world_cam


def opencv_to_pytorch3d(
    K: Tensor, T_world_cam: Tensor, image_size: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inverse of :func:`pytorch3d_to_opencv` (skew in ``K`` is not representable; dropped).

    Args:
        K: ``[..., 3, 3]``.
        T_world_cam: ``[..., 4, 4]`` OpenCV camera-to-world.
        image_size: ``[..., 2]`` ``(H, W)``.

    Returns:
        ``R [..., 3, 3]``, ``T [..., 3]``, ``focal_length_ndc [..., 2]``,
        ``principal_point_ndc [..., 2]``.
    """
    T_cam_world = invert_T(T_world_cam)
    flip = K.new_tensor([-1.0, -1.0, 1.0])
    R = (flip[:, None] * T_cam_world[..., :3, :3]).transpose(-1, -2)
    T = flip * T_cam_world[..., :3, 3]
    image_size = torch.as_tensor(image_size, dtype=K.dtype, device=K.device)
    scale, width, height = _ndc_scale(image_size)
    focal = torch.stack((K[..., 0, 0] / scale, K[..., 1, 1] / scale), -1)
    pp = torch.stack(((width / 2.0 - K[..., 0, 2]) / scale, (height / 2.0 - K[..., 1, 2]) / scale),
                     -1)
    return R, T, focal, pp
