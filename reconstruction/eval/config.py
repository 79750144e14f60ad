"""Options of ``recon eval`` (light: imported for --help)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tyro

from reconstruction.init.config import InitName
from reconstruction.pose_opt import PoseOptConfig


def eval_test_pose_options() -> PoseOptConfig:
    """``recon eval``'s test-pose schedule (:class:`~reconstruction.pose_opt.PoseOptConfig`'s
    own defaults stay those of its other callers): pose_opt's schedule, each view stopping
    when its full-size loss has not improved by 0.1 % for 5 steps.

    On DTU scan24 (3 views, 384x384, 8 test views) this took 74 % of the CPU time of the
    full schedule, poses within 0.05 degrees of its (twice as many steps move them by
    0.15 degrees) and PSNR within 0.01 dB. A quarter-size level (``coarse_levels=2``)
    saved nothing there, a quarter-size step costing about as much as a half-size one."""
    return PoseOptConfig(patience=5)


#: Camera formats eval reads (``dtu`` is the IDR ``cameras.npz`` with the DTU preset).
DatasetFormat = Literal["auto", "colmap", "transforms", "llff", "dtu", "co3d"]


@dataclass
class EvalConfig:
    """Evaluate a reconstruction method on held-out views of a scene with ground truth."""

    dataset: Path
    """Scene folder: transforms.json, a COLMAP model, LLFF poses_bounds.npy or DTU/IDR
    cameras.npz, with its images."""
    out: Path
    """Output folder (eval.json, report.md, plot.png, compare/, renders/, method/);
    replaced atomically when the run succeeds."""
    format: DatasetFormat = "auto"
    """Camera format of the dataset (auto: detect)."""
    protocol: Literal["auto", "dtu", "llff"] = "auto"
    """Split: dtu (pixelNeRF/RegNeRF views), llff (every 8th view held out, training views
    evenly from the rest); auto: dtu for a 49-view DTU scan, llff otherwise."""
    train_views: int = 3
    """Number of training views taken by the protocol."""
    views: str | None = None
    """Explicit training views, comma-separated indices into the sorted images
    (e.g. 25,22,28); overrides --train-views."""
    test_views: str | None = None
    """Explicit test views (comma-separated); default: the protocol's."""
    method: str = "instantsplat"
    """Reconstruction method (a name in :mod:`reconstruction.methods`)."""
    known_poses: bool = False
    """Give the method the ground-truth training cameras (for methods evaluated that way);
    the test poses are then used as they are (no alignment, no pose optimisation)."""
    iterations: int | None = None
    """Optimisation steps of the method (default: the method's schedule)."""
    init: InitName | None = None
    """Coarse initialiser of the method, where it has a choice (default: its own)."""
    test_pose: Literal["auto", "on", "off"] = "auto"
    """Optimise each test view's pose against the frozen scene; auto: on unless
    --known-poses."""
    test_pose_options: PoseOptConfig = field(default_factory=eval_test_pose_options)
    """Schedule of the test-view pose optimisation (eval's default: half size, then full
    size, each view stopping when its loss stops improving; the per-view path as it was
    before: --test-pose-batch 1 --test-pose-options.patience 0)."""
    test_pose_batch: int = 8
    """Test views whose poses are optimised together, one render call per step (views of
    one image size, neighbours together); bounds the memory. 1: one view at a time."""
    lpips_weights: Path | None = None
    """Local LPIPS weights: a full LPIPS state_dict, or the official heads (alex.pth) with
    --lpips-backbone. Without it the LPIPS column is empty (nothing is downloaded)."""
    lpips_backbone: Path | None = None
    """torchvision ImageNet weights of the LPIPS trunk (alexnet-owt-7be5be79.pth), needed
    when --lpips-weights holds only the linear heads."""
    masks: Path | None = None
    """Folder of object masks for the masked metrics (default: the dataset's own, if any)."""
    factor: int | None = None
    """LLFF: use images_<factor>. Default (neither --factor nor --max-size): the protocol's
    size, printed and written to eval.json: LLFF images_8 (or the full-size photos shrunk to
    504 px), DTU 400x300, any other photos over 2 megapixels 512 px, else their own size."""
    max_size: int | None = None
    """Shrink every image (and its intrinsics) so its longest side is at most this many
    pixels; the method and the metrics both see the shrunk images (SfM still matches
    features at up to 1600 px). Default: see --factor."""
    seed: int = 0
    """Seed of the method."""
    threads: int | None = None
    """CPU threads of the method's fit (default: all cores; results differ slightly
    between thread counts)."""
    device: str = "cpu"
    """Where the method and the renders run: cpu, cuda or cuda:N."""
    save_renders: bool = True
    """Write compare/ (ground truth | render | error) and renders/ PNGs."""
    quiet: bool = False
    """No progress bars."""
    overwrite: bool = False
    """Replace --out even when it is a non-empty folder that recon eval did not write (an
    earlier recon eval output is replaced without it)."""
    options: tyro.conf.Suppress[Any] = None
    """The method's own options (an instance of its ``options`` class; None: its defaults)."""


def parse_views(text: str | None, option: str) -> list[int] | None:
    """``"25,22,28"`` (or spaces) -> ``[25, 22, 28]``; a UserError names a bad entry."""
    from geometry.errors import UserError

    if text is None:
        return None
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"{option} {text!r} is not a list of view indices; write e.g. "
                        "25,22,28.") from None
    if not values:
        raise UserError(f"{option} is empty; give view indices like 25,22,28.")
    return values
