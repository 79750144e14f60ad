"""Full-quality renders with sparseview's rasterizer: single views and videos.

The browser draws splats with viser's WebGL sorter (colour = SH degree 0 only); these
renders evaluate the full SH colour with :func:`reconstruction.splatting.rasterization`,
on the CPU or, for CUDA tensors, through gsplat.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from geometry.errors import UserError
from geometry.io.atomic import atomic_path
from geometry.io.images import to_uint8


def render_rgb(
    scene,  # reconstruction.gaussians.GaussianScene
    T_world_cam: np.ndarray | torch.Tensor,  # [4, 4] OpenCV camera-to-world
    K: np.ndarray | torch.Tensor,  # [3, 3] pixels
    width: int,
    height: int,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
    scale_modifier: float = 1.0,
) -> np.ndarray:
    """Render one view; returns ``[H, W, 3]`` uint8.

    ``scale_modifier`` multiplies every Gaussian's scale (3DGS viewers' "scaling
    modifier"). SH degrees above what the rasterizer supports (3) are dropped.
    """
    from reconstruction.splatting import rasterization
    from reconstruction.splatting.sh import MAX_SH_DEGREE, num_sh_bases

    device, dtype = scene.means.device, scene.means.dtype
    T_world_cam = torch.as_tensor(np.asarray(T_world_cam, dtype=np.float64))
    R, t = T_world_cam[:3, :3], T_world_cam[:3, 3]
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, :3], viewmat[:3, 3] = R.T, -R.T @ t
    Ks = torch.as_tensor(np.asarray(K, dtype=np.float64))[None]
    degree = min(scene.sh_degree, MAX_SH_DEGREE)
    with torch.no_grad():
        colors, _, _ = rasterization(
            means=scene.means.detach(),
            quats=scene.quats.detach(),
            scales=scene.scales.detach() * float(scale_modifier),
            opacities=scene.opacities.detach(),
            colors=scene.sh.detach()[:, : num_sh_bases(degree)].contiguous(),
            viewmats=viewmat[None].to(device, dtype),
            Ks=Ks.to(device, dtype),
            width=int(width),
            height=int(height),
            sh_degree=degree,
            backgrounds=torch.tensor([background], device=device, dtype=dtype),
        )
    return to_uint8(colors[0].float())


def even_size(width: int, height: int) -> tuple[int, int]:
    """H.264 in yuv420p needs even sizes: round each down to even (at least 2)."""
    return max(2, width - width % 2), max(2, height - height % 2)


def write_video(
    path: str | os.PathLike,
    frames: Callable[[int], np.ndarray],
    count: int,
    width: int,
    height: int,
    fps: float = 30.0,
    quality: int = 8,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Encode ``count`` frames ``frames(i) -> [H, W, 3] uint8`` as an H.264 mp4, atomically.

    ffmpeg comes from the ``imageio-ffmpeg`` wheel; the file appears only when every
    frame is written (an error or Ctrl-C leaves nothing). ``progress(i)`` is called after
    frame ``i``.
    """
    try:
        import imageio_ffmpeg
    except ImportError:
        raise UserError("writing videos needs the imageio-ffmpeg package; "
                        "pip install imageio-ffmpeg.") from None
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise UserError(f"--out {path} must end in .mp4.")
    if width % 2 or height % 2:
        raise ValueError(f"video sizes must be even, got {width}x{height} (use even_size)")
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
            quality=quality, macro_block_size=2, ffmpeg_log_level="error",
            output_params=["-movflags", "+faststart"],
        )
        writer.send(None)  # start ffmpeg
        try:
            for i in range(count):
                frame = np.ascontiguousarray(frames(i), dtype=np.uint8)
                if frame.shape != (height, width, 3):
                    raise ValueError(f"frame {i} has shape {frame.shape}, expected "
                                     f"{(height, width, 3)}")
                writer.send(frame)
                if progress is not None:
                    progress(i)
        finally:
            writer.close()
    return path


def read_video_frames(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode an mp4 back: ``(frames [F, H, W, 3] uint8, fps)`` (for tests and checks)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    width, height = meta["size"]
    frames = [np.frombuffer(buf, np.uint8).reshape(height, width, 3) for buf in reader]
    return np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8), float(
        meta["fps"])
