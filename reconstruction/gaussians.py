"""A Gaussian splat scene and the standard 3DGS PLY format.

A scene holds N anisotropic 3D Gaussians in the world frame with their raw (unactivated)
parameters, exactly as the 3DGS PLY stores them:

- ``means``            ``[N, 3]``  centres, world frame, metres;
- ``quats``            ``[N, 4]``  rotation, ``wxyz``, not necessarily normalised;
- ``log_scales``       ``[N, 3]``  log of the standard deviations along the local axes;
- ``logit_opacities``  ``[N]``     ``sigmoid`` gives the opacity in [0, 1];
- ``sh0``              ``[N, 1, 3]``  degree-0 spherical-harmonic coefficient per RGB channel;
- ``shN``              ``[N, K-1, 3]`` the higher-degree coefficients, ``K = (degree+1)**2``.

The PLY layout is the one written by the original 3DGS code (and read by the common
viewers): ``x y z nx ny nz f_dc_0..2 f_rest_0..(3*(K-1)-1) opacity scale_0..2 rot_0..3``,
all float32, binary little endian. ``f_rest`` is channel-major: the K-1 coefficients of red,
then those of green, then those of blue. Files written by nerfstudio's exporter and gsplat
use the same names in other orders, sometimes without normals or ``f_rest``; the reader
goes by name and accepts all of them, binary or ascii.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geometry.errors import UserError
from geometry.io.atomic import atomic_path
from reconstruction.splatting.sh import num_sh_bases, rgb_to_sh

_SH_REST_COUNTS = {3 * ((d + 1) ** 2 - 1): d for d in range(5)}  # f_rest count -> degree


@dataclass
class GaussianScene:
    """N 3D Gaussians in the world frame, raw parameters as in the 3DGS PLY (see module doc)."""

    means: Tensor  # [N, 3] world frame, metres
    quats: Tensor  # [N, 4] wxyz, unnormalised
    log_scales: Tensor  # [N, 3] log standard deviations, metres
    logit_opacities: Tensor  # [N]
    sh0: Tensor  # [N, 1, 3]
    shN: Tensor  # [N, K-1, 3] (the name gsplat and nerfstudio use)

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expected = {
            "means": (n, 3),
            "quats": (n, 4),
            "log_scales": (n, 3),
            "logit_opacities": (n,),
            "sh0": (n, 1, 3),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"GaussianScene.{name} has shape {got}, expected {shape}")
        rest = tuple(self.shN.shape)
        if len(rest) != 3 or rest[0] != n or rest[2] != 3 or 3 * rest[1] not in _SH_REST_COUNTS:
            raise ValueError(f"GaussianScene.shN has shape {rest}, expected (N, (d+1)^2-1, 3)")

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        """Largest SH degree the coefficients hold (0 to 4)."""
        return _SH_REST_COUNTS[3 * int(self.shN.shape[1])]

    @property
    def scales(self) -> Tensor:
        """Activated standard deviations ``[N, 3]`` (metres)."""
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> Tensor:
        """Activated opacities ``[N]`` in [0, 1]."""
        return torch.sigmoid(self.logit_opacities)

    @property
    def sh(self) -> Tensor:
        """All SH coefficients ``[N, K, 3]`` (``sh0`` then ``shN``)."""
        return torch.cat([self.sh0, self.shN], dim=1)

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> GaussianScene:
        return GaussianScene(**{f.name: getattr(self, f.name).to(device=device, dtype=dtype)
                                for f in fields(self)})

    def detach(self) -> GaussianScene:
        return GaussianScene(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def tensors(self) -> dict[str, Tensor]:
        """The parameters by field name (for checkpoints and optimisers)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def from_points(
        points_world: Tensor,  # [N, 3]
        colors: Tensor,  # [N, 3] in [0, 1]
        sh_degree: int = 3,
        initial_opacity: float = 0.1,
        num_neighbours: int = 3,
        scale_factor: float = 1.0,
    ) -> GaussianScene:
        """Isotropic Gaussians on a coloured point cloud, sized by their neighbour spacing.

        The standard 3DGS initialisation: each Gaussian's standard deviation is the root-mean-
        square distance to its ``num_neighbours`` nearest neighbours (times ``scale_factor``),
        identity rotation, opacity ``initial_opacity``, degree-0 colour from ``colors`` and
        zero higher-order SH coefficients up to ``sh_degree``.
        """
        from scipy.spatial import cKDTree

        pts = points_world.detach().to(torch.float64).cpu().numpy()
        n = pts.shape[0]
        if n == 0:
            raise ValueError("from_points needs at least one point")
        if n > 1:
            k = min(num_neighbours, n - 1)
            dists, _ = cKDTree(pts).query(pts, k=k + 1)
            dists = np.asarray(dists).reshape(n, k + 1)[:, 1:]
            rms = np.sqrt(np.mean(dists**2, axis=1))
            positive = rms[rms > 0]
            floor = float(np.median(positive)) * 1e-2 if positive.size else 1e-3
            # Isolated outliers would become huge Gaussians that cover (and slow down) the
            # whole image: cap at ten times the typical spacing.
            rms = np.clip(rms, floor, float(np.median(positive)) * 10 if positive.size else 1.0)
        else:
            rms = np.full((1,), 1e-2)
        dtype = points_world.dtype if points_world.is_floating_point() else torch.float32
        log_scale = torch.from_numpy(np.log(rms * scale_factor)).to(dtype)
        quats = torch.zeros(n, 4, dtype=dtype)
        quats[:, 0] = 1.0
        logit = math.log(initial_opacity / (1.0 - initial_opacity))
        return GaussianScene(
            means=points_world.detach().to(dtype).cpu().clone(),
            quats=quats,
            log_scales=log_scale[:, None].expand(n, 3).clone(),
            logit_opacities=torch.full((n,), logit, dtype=dtype),
            sh0=rgb_to_sh(colors.detach().to(dtype).cpu())[:, None, :].clone(),
            shN=torch.zeros(n, num_sh_bases(sh_degree) - 1, 3, dtype=dtype),
        )


def ply_property_names(sh_degree: int) -> list[str]:
    """Property names of the standard 3DGS PLY vertex element, in the original code's order."""
    n_rest = 3 * (num_sh_bases(sh_degree) - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def write_ply(path: str | os.PathLike, scene: GaussianScene) -> None:
    """Write ``scene`` as a standard 3DGS PLY (binary little endian, float32), atomically."""
    from plyfile import PlyData, PlyElement

    scene = scene.detach().to("cpu", torch.float32)
    n = scene.num_gaussians
    names = ply_property_names(scene.sh_degree)
    # [N, K-1, 3] -> [N, 3, K-1] -> [N, 3*(K-1)]: channel-major, as the original 3DGS code.
    f_rest = scene.shN.transpose(1, 2).reshape(n, -1)
    columns = torch.cat(
        [
            scene.means,
            torch.zeros(n, 3),
            scene.sh0[:, 0, :],
            f_rest,
            scene.logit_opacities[:, None],
            scene.log_scales,
            scene.quats,
        ],
        dim=1,
    ).numpy()
    assert columns.shape[1] == len(names)
    vertex = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = columns[:, i]
    ply = PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<")
    with atomic_path(path) as tmp:
        ply.write(str(tmp))


def read_ply(path: str | os.PathLike) -> GaussianScene:
    """Read a 3DGS PLY (original code, nerfstudio, gsplat; binary or ascii) into float32.

    Properties are found by name, so their order does not matter; missing ``f_rest_*``
    means SH degree 0. A point cloud with ``red green blue`` but no ``f_dc_*`` is rejected,
    since it holds no Gaussians.
    """
    from plyfile import PlyData, PlyParseError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; give the path of a 3DGS .ply file.")
    try:
        ply = PlyData.read(str(path))
    except (PlyParseError, ValueError, OSError, EOFError, IndexError) as err:
        raise UserError(f"{path} is not a readable PLY file ({err}); "
                        "give a 3DGS .ply file.") from None
    if "vertex" not in ply:
        raise UserError(f"{path} has no 'vertex' element; give a 3DGS .ply file.")
    vertex = ply["vertex"]
    names = {p.name for p in vertex.properties}
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [name for name in required if name not in names]
    if missing:
        raise UserError(f"{path} lacks the 3DGS properties {', '.join(missing)}; "
                        "give a PLY written by a Gaussian-splatting trainer.")
    rest_names = sorted((n for n in names if n.startswith("f_rest_")),
                        key=lambda n: int(n.rsplit("_", 1)[1]))
    if len(rest_names) not in _SH_REST_COUNTS or rest_names != [
        f"f_rest_{i}" for i in range(len(rest_names))
    ]:
        raise UserError(f"{path} has {len(rest_names)} f_rest properties, which is no SH "
                        "degree (expected 0, 9, 24 or 45 numbered from 0).")

    def column(*keys: str) -> Tensor:
        data = np.stack([np.asarray(vertex[k], dtype=np.float32) for k in keys], axis=1)
        return torch.from_numpy(data)

    n = len(vertex.data)
    k_rest = len(rest_names) // 3
    f_rest = column(*rest_names) if rest_names else torch.zeros(n, 0)
    return GaussianScene(
        means=column("x", "y", "z"),
        quats=column("rot_0", "rot_1", "rot_2", "rot_3"),
        log_scales=column("scale_0", "scale_1", "scale_2"),
        logit_opacities=column("opacity")[:, 0].contiguous(),
        sh0=column("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :],
        shN=f_rest.reshape(n, 3, k_rest).transpose(1, 2).contiguous(),
    )
