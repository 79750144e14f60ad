"""``rasterization``: render 3D Gaussians into C cameras, differentiably, on CPU or CUDA.

The signature mirrors the core of ``gsplat.rasterization`` so that one call serves both
devices: on a CUDA tensor it dispatches to gsplat (the ``cuda`` extra); on the CPU it
projects with sparseview's native projection op (gradients to the Gaussians, ``viewmats``
and ``Ks``), colours with the native SH op and composites with the native rasterizer.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from reconstruction.splatting._projection import camera_centers, project_gaussians
from reconstruction.splatting.sh import MAX_SH_DEGREE, num_sh_bases, sh_to_color

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
RasterizeMode = Literal["classic", "antialiased"]
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")


def _check_float(name: str, value: Tensor, shape: tuple, device: torch.device,
                 dtype: torch.dtype) -> tuple[float, float]:
    """Shape (None = any size), dtype, device and finiteness of one input; its
    ``(min, max)`` (``(0, 0)`` when empty)."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != len(shape) or any(
        s is not None and s != v for s, v in zip(shape, value.shape, strict=True)
    ):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(value.shape)}")
    if value.dtype != dtype:
        raise ValueError(f"{name} must be {dtype} like means, got {value.dtype}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but means is on {device}")
    if value.numel() == 0:
        return 0.0, 0.0
    # One reduction pass (NaN propagates to both), ~10x cheaper than isfinite().all()
    # on the SH coefficients every training step.
    low, high = (float(v) for v in torch.aminmax(value.detach()))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} contains NaN or Inf")
    return low, high


def _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
              sh_degree, backgrounds, render_mode, rasterize_mode, tile_size) -> None:
    if not isinstance(means, Tensor) or means.dim() != 2 or means.shape[-1] != 3:
        shape = list(means.shape) if isinstance(means, Tensor) else type(means).__name__
        raise ValueError(f"means must have shape [N, 3], got {shape}")
    if not means.is_floating_point():
        raise ValueError(f"means must be a floating-point tensor, got {means.dtype}")
    N, dev, dt = means.shape[0], means.device, means.dtype
    _check_float("means", means, (N, 3), dev, dt)
    _check_float("quats", quats, (N, 4), dev, dt)
    scales_range = _check_float("scales", scales, (N, 3), dev, dt)
    opacities_range = _check_float("opacities", opacities, (N,), dev, dt)
    if N and (opacities_range[0] < 0 or opacities_range[1] > 1):
        raise ValueError("opacities must lie in [0, 1] (apply a sigmoid to logits first)")
    if N and scales_range[0] < 0:
        raise ValueError("scales must be non-negative (apply exp to log-scales first)")
    _check_float("viewmats", viewmats, (None, 4, 4), dev, dt)
    C = viewmats.shape[0]
    _check_float("Ks", Ks, (C, 3, 3), dev, dt)
    if sh_degree is None:
        _check_float("colors", colors, (N, None), dev, dt)
    else:
        if not 0 <= int(sh_degree) <= MAX_SH_DEGREE:
            raise ValueError(f"sh_degree must be in 0..{MAX_SH_DEGREE}, got {sh_degree}")
        _check_float("colors", colors, (N, None, 3), dev, dt)
        if colors.shape[1] < num_sh_bases(sh_degree):
            raise ValueError(
                f"colors holds {colors.shape[1]} SH coefficients, sh_degree={sh_degree} "
                f"needs {num_sh_bases(sh_degree)}"
            )
    for name, v in (("width", width), ("height", height), ("tile_size", tile_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize_mode must be 'classic' or 'antialiased', got "
                         f"{rasterize_mode!r}")
    if backgrounds is not None:
        D = 3 if sh_degree is not None else colors.shape[-1]
        _check_float("backgrounds", backgrounds, (C, D), dev, dt)


def rasterization(
    means: Tensor,  # [N, 3] world
    quats: Tensor,  # [N, 4] wxyz, need not be normalised
    scales: Tensor,  # [N, 3] activated (exp of log-scales), metres
    opacities: Tensor,  # [N] activated (sigmoid of logits), in [0, 1]
    colors: Tensor,  # [N, D], or SH coefficients [N, K, 3] with sh_degree
    viewmats: Tensor,  # [C, 4, 4] T_cam_world (OpenCV)
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,  # [C, D]
    render_mode: RenderMode = "RGB",
    rasterize_mode: RasterizeMode = "classic",
    tile_size: int = 16,
) -> tuple[Tensor, Tensor, dict]:
    """Render Gaussians into C cameras.

    Returns:
        ``render_colors [C, H, W, X]`` (X = D, 1 or D+1 by ``render_mode``; "D" is the
        accumulated z-depth, "ED" the expected depth, i.e. divided by alpha),
        ``render_alphas [C, H, W, 1]`` and ``meta``: ``means2d [C, N, 2]`` (call
        ``retain_grad()`` on it before backward for densification statistics),
        ``radii [C, N, 2]`` int32 (0 = culled), ``depths [C, N]``, ``conics [C, N, 3]``,
        ``opacities [C, N]``, ``width``, ``height``, ``tile_size``, ``n_cameras``.

    Raises:
        ValueError: naming the argument, for wrong shapes, dtypes, devices, values or
            non-finite inputs (checked before any kernel runs).
    """
    _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
              sh_degree, backgrounds, render_mode, rasterize_mode, tile_size)
    if means.is_cuda:
        return _rasterization_gsplat(**locals())
    if means.device.type != "cpu":
        raise ValueError(f"means is on {means.device}; rasterization runs on cpu or cuda")

    from geometry.ops.rasterize import rasterize_to_pixels

    return render_cpu(
        rasterize_to_pixels, means, quats, scales, opacities, colors, viewmats, Ks,
        width, height, near_plane, far_plane, radius_clip, eps2d, sh_degree, backgrounds,
        render_mode, rasterize_mode, tile_size, native_sh=True, native_projection=True,
    )


def render_cpu(composite, means, quats, scales, opacities, colors, viewmats, Ks, width,
               height, near_plane, far_plane, radius_clip, eps2d, sh_degree, backgrounds,
               render_mode, rasterize_mode, tile_size,
               native_sh: bool = False,
               native_projection: bool = False) -> tuple[Tensor, Tensor, dict]:
    """The CPU pipeline behind :func:`rasterization` with a pluggable compositor.

    ``composite(means2d, conics, colors, opacities, depths, radii, width, height,
    tile_size) -> (render_colors, render_alphas)`` is the native kernel in production and
    the PyTorch reference in tests and benchmarks; inputs are assumed validated. SH colours
    come from the native kernel with ``native_sh`` (production), else from the PyTorch
    reference :func:`~reconstruction.splatting.sh.sh_to_color`; the projection from the
    native kernel with ``native_projection`` (production), else from the PyTorch reference
    :func:`~reconstruction.splatting._projection.project_gaussians`.
    """
    proj = project_gaussians(
        means, quats, scales, opacities, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, radius_clip=radius_clip,
        antialiased=rasterize_mode == "antialiased", native=native_projection,
    )
    C, N = viewmats.shape[0], means.shape[0]
    if sh_degree is None:
        rgb = colors[None].expand(C, N, colors.shape[-1])
    else:
        dirs = means[None] - camera_centers(viewmats)[:, None]  # [C, N, 3]
        if native_sh:
            from geometry.ops.rasterize import sh_to_color_native

            rgb = sh_to_color_native(sh_degree, dirs, colors)
        else:
            rgb = sh_to_color(sh_degree, dirs, colors[None].expand(C, *colors.shape))
    feats = {
        "RGB": rgb,
        "D": proj.depths[..., None],
        "ED": proj.depths[..., None],
        "RGB+D": torch.cat((rgb, proj.depths[..., None]), -1),
        "RGB+ED": torch.cat((rgb, proj.depths[..., None]), -1),
    }[render_mode]

    render_colors, render_alphas = composite(
        proj.means2d, proj.conics, feats, proj.opacities, proj.depths, proj.radii,
        width, height, tile_size,
    )
    render_colors = _finish(render_colors, render_alphas, backgrounds, render_mode)
    meta = {
        "means2d": proj.means2d,
        "radii": proj.radii,
        "depths": proj.depths,
        "conics": proj.conics,
        "opacities": proj.opacities,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_cameras": C,
    }
    return render_colors, render_alphas, meta


def rasterization_reference(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int, near_plane: float = 0.01,
    far_plane: float = 1e10, radius_clip: float = 0.0, eps2d: float = 0.3,
    sh_degree: int | None = None, backgrounds: Tensor | None = None, render_mode: str = "RGB",
    rasterize_mode: str = "classic", tile_size: int = 16,
) -> tuple[Tensor, Tensor, dict]:
    """:func:`rasterization` with the PyTorch compositor (the oracle of tests and benchmarks)."""
    from geometry.ops.rasterize import rasterize_to_pixels_torch

    _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
              sh_degree, backgrounds, render_mode, rasterize_mode, tile_size)
    return render_cpu(
        rasterize_to_pixels_torch, means, quats, scales, opacities, colors, viewmats, Ks,
        width, height, near_plane, far_plane, radius_clip, eps2d, sh_degree, backgrounds,
        render_mode, rasterize_mode, tile_size,
    )


def _finish(render_colors: Tensor, render_alphas: Tensor, backgrounds: Tensor | None,
            render_mode: str) -> Tensor:
    """Background on the colour channels; expected depth = accumulated depth / alpha."""
    if render_mode in ("ED", "RGB+ED"):
        depth = render_colors[..., -1:] / render_alphas.clamp_min(1e-10)
        render_colors = torch.cat((render_colors[..., :-1], depth), -1)
    if backgrounds is not None and render_mode not in ("D", "ED"):
        D = backgrounds.shape[-1]
        rgb = render_colors[..., :D] + (1.0 - render_alphas) * backgrounds[:, None, None, :]
        render_colors = torch.cat((rgb, render_colors[..., D:]), -1)
    return render_colors


def _rasterization_gsplat(**kwargs) -> tuple[Tensor, Tensor, dict]:
    try:
        import gsplat
    except ImportError as err:
        raise ValueError(
            "means is on a CUDA device but gsplat is not installed; install the cuda extra "
            "(pip install 'sparseview[cuda]') or move the tensors to the CPU"
        ) from err
    return gsplat.rasterization(
        means=kwargs["means"], quats=kwargs["quats"], scales=kwargs["scales"],
        opacities=kwargs["opacities"], colors=kwargs["colors"], viewmats=kwargs["viewmats"],
        Ks=kwargs["Ks"], width=kwargs["width"], height=kwargs["height"],
        near_plane=kwargs["near_plane"], far_plane=kwargs["far_plane"],
        radius_clip=kwargs["radius_clip"], eps2d=kwargs["eps2d"],
        sh_degree=kwargs["sh_degree"], backgrounds=kwargs["backgrounds"],
        render_mode=kwargs["render_mode"], rasterize_mode=kwargs["rasterize_mode"],
        tile_size=kwargs["tile_size"],
    )
