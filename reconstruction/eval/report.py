"""Outputs of ``recon eval``: side-by-side images, the markdown report and its plot, and the
console table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from torch import Tensor

from geometry.io.images import to_uint8

#: Absolute error (mean over RGB) shown at the top of the error map's colour scale.
ERROR_MAP_MAX = 0.25


def error_map(render: Tensor, reference: Tensor) -> np.ndarray:
    """``[H, W, 3]`` uint8: the mean absolute RGB error through matplotlib's ``inferno``
    colour map, black for 0 and bright yellow at :data:`ERROR_MAP_MAX` and above."""
    from matplotlib import colormaps

    err = (render.clamp(0, 1) - reference).abs().mean(-1).cpu().numpy() / ERROR_MAP_MAX
    return to_uint8(colormaps["inferno"](np.clip(err, 0.0, 1.0))[..., :3])


def side_by_side(reference: Tensor, render: Tensor) -> np.ndarray:
    """``[H, 3W + 8, 3]`` uint8: ground truth | render | error map, 4-pixel white gaps."""
    h = reference.shape[0]
    gap = np.full((h, 4, 3), 255, np.uint8)
    return np.concatenate([to_uint8(reference), gap, to_uint8(render), gap,
                           error_map(render, reference)], 1)


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}"
    return str(value)


SUMMARY_ROWS = (
    ("PSNR (dB)", "psnr", 2), ("SSIM", "ssim", 4), ("LPIPS", "lpips", 4),
    ("PSNR masked (dB)", "psnr_masked", 2), ("SSIM masked", "ssim_masked", 4),
    ("LPIPS masked", "lpips_masked", 4),
    ("depth AbsRel", "depth_absrel", 4), ("depth coverage", "depth_coverage", 3),
    ("ATE RMSE", "ate_rmse", 5), ("ATE / scene extent", "ate_rel", 5),
    ("RPE translation RMSE", "rpe_trans_rmse", 5), ("RPE rotation (deg)", "rpe_rot_mean_deg", 3),
    ("rotation error mean (deg)", "rot_err_mean_deg", 3),
    ("rotation error median (deg)", "rot_err_median_deg", 3),
    ("views under 5 deg", "rot_under_5", 3), ("views under 15 deg", "rot_under_15", 3),
    ("pairs under 5 deg (RRA@5)", "rel_rot_under_5", 3),
    ("pairs under 15 deg (RRA@15)", "rel_rot_under_15", 3),
)


def summary_rows(results: dict) -> list[tuple[str, str]]:
    """(label, formatted value) of every summary metric, with the reason where one is missing."""
    rows = []
    for label, key, digits in SUMMARY_ROWS:
        value = results.get(key)
        text = _fmt(value, digits)
        if value is None and key.startswith("lpips"):
            text = f"- ({results.get('lpips_missing', 'not computed')})"
        elif value is None and key.endswith("_masked"):
            text = f"- ({results.get('masks_missing', 'no masks')})"
        elif value is None and key.startswith("depth_"):
            text = f"- ({results.get('depth_missing') or 'no ground-truth depth'})"
        rows.append((label, text))
    return rows


def print_table(results: dict) -> None:
    """The summary and the per-stage seconds as rich tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"recon eval: {results['method']} on {results['dataset']['name']} "
                        f"({len(results['views']['train'])} training, "
                        f"{len(results['views']['test'])} test views)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("resolution", _resolution(results))
    for label, text in summary_rows(results):
        table.add_row(label, text)
    for stage, seconds in results["seconds"].items():
        table.add_row(f"seconds: {stage}", f"{seconds:.1f}")
    Console(highlight=False).print(table)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_view = results["per_view"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = [v["name"] for v in per_view]
    x = np.arange(len(per_view))
    psnrs = [v["psnr"] if math.isfinite(v["psnr"]) else 60.0 for v in per_view]
    axes[0].bar(x - 0.2, psnrs, 0.4, label="PSNR")
    masked = [v.get("psnr_masked") for v in per_view]
    if any(m is not None for m in masked):
        axes[0].bar(x + 0.2, [m if m is not None and math.isfinite(m) else 0.0 for m in masked],
                    0.4, label="PSNR masked")
    axes[0].set_xticks(x, names, rotation=90, fontsize=7)
    axes[0].set_ylabel("dB")
    axes[0].set_title("held-out views")
    axes[0].legend()
    cams = results["cameras"]
    gt = np.asarray(cams["gt_centres"])
    est = np.asarray(cams["aligned_centres"])
    test = np.asarray(cams["test_gt_centres"])
    # Top view in the plane of the two largest principal directions of the GT centres.
    allc = np.concatenate([gt, test]) if len(test) else gt
    mean = allc.mean(0)
    _, _, vh = np.linalg.svd(allc - mean, full_matrices=False)
    basis = vh[:2].T

    def proj(p: np.ndarray) -> np.ndarray:
        return (p - mean) @ basis if len(p) else np.zeros((0, 2))

    if len(test):
        axes[1].scatter(*proj(test).T, c="lightgray", marker="s", label="test (GT)")
    axes[1].scatter(*proj(gt).T, c="tab:green", marker="o", label="train (GT)")
    axes[1].scatter(*proj(est).T, c="tab:red", marker="x", label="train (estimated, aligned)")
    for a, b in zip(proj(gt), proj(est), strict=True):
        axes[1].plot([a[0], b[0]], [a[1], b[1]], c="tab:red", lw=0.8)
    axes[1].set_aspect("equal", adjustable="datalim")
    axes[1].set_title(f"camera centres (ATE {results['ate_rmse']:.4g})")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _resolution(results: dict) -> str:
    """``"504x378 (LLFF protocol: images_8)"`` from eval.json's ``resolution``."""
    res = results.get("resolution")
    if not res:
        return "-"
    size = f"{'up to ' if res.get('mixed_sizes') else ''}{res['width']}x{res['height']}"
    return f"{size} ({res['rule']})"


def write_report(results: dict, folder: Path) -> None:
    """``report.md`` (summary, seconds, per-view table) and ``plot.png`` in ``folder``."""
    _plot(results, folder / "plot.png")
    poses = "ground truth given (--known-poses)" if results["known_poses"] else "estimated"
    lines = [
        f"# recon eval: {results['method']} on {results['dataset']['name']}",
        "",
        f"- dataset: `{results['dataset']['path']}` ({results['dataset']['format']}, "
        f"{results['dataset']['num_views']} views)",
        f"- resolution: {_resolution(results)}",
        f"- split: {results['views']['protocol']}",
        f"- training views: {results['views']['train']}",
        f"- test views: {results['views']['test']}",
        f"- poses: {poses}"
        f"; test-view pose optimisation: {'on' if results['test_pose_optimised'] else 'off'}",
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    lines += [f"| {label} | {text} |" for label, text in summary_rows(results)]
    lines += ["", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["seconds"].items()]
    lines += ["", "![per-view PSNR and camera centres](plot.png)", "",
              "| view | PSNR | SSIM | LPIPS | PSNR masked | SSIM masked | depth AbsRel "
              "| pose refinement (deg) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for v in results["per_view"]:
        lines.append(
            f"| {v['name']} | {_fmt(v['psnr'], 2)} | {_fmt(v['ssim'], 4)} | "
            f"{_fmt(v.get('lpips'), 4)} | {_fmt(v.get('psnr_masked'), 2)} | "
            f"{_fmt(v.get('ssim_masked'), 4)} | {_fmt(v.get('depth_absrel'), 4)} | "
            f"{_fmt(v['test_pose']['rotation_change_deg'], 3)} |")
    lines += ["", "Images: `compare/<view>.png` is ground truth | render | error "
              f"(mean absolute RGB error, black 0 to yellow {ERROR_MAP_MAX}).", ""]
    (folder / "report.md").write_text("\n".join(lines), encoding="utf-8")


def tensor_list(t: Tensor) -> list:
    """A tensor as nested Python lists of floats (for JSON)."""
    return t.detach().cpu().double().tolist()


__all__ = ["error_map", "print_table", "side_by_side", "summary_rows",
           "tensor_list", "write_report"]
