"""``pose shapo mesh``: meshes of the learned priors (marching cubes), coloured by the
appearance decoder, to look at what the priors learned."""

from __future__ import annotations

from pathlib import Path

import torch

from pose.object.shapo.shapes import CATEGORIES

MARKER = "meshes.json"
"""Written into every output folder of ``pose shapo mesh``."""

__all__ = ["MARKER", "run_mesh"]


def _mesh(priors, z_shape, z_app, resolution: int):
    from pose.object.shapo.surface import mesh_from_sdf

    device = z_shape.device
    verts, faces = mesh_from_sdf(lambda x: priors.sdf(z_shape, x), res=resolution,
                                 device=device)
    colors = None
    if len(verts):
        with torch.no_grad():
            v = torch.from_numpy(verts).float().to(device)
            colors = priors.color(z_app, z_shape, v).cpu().numpy()
    return verts, faces, colors


def run_mesh(priors_dir: Path, out: Path, resolution: int = 64, instances: int = 0,
             overwrite: bool = False, quiet: bool = False, device: str = "cpu") -> dict:
    """Write ``OUT/<category>_mean.ply`` (the category's mean codes) and
    ``OUT/instance_<k>_<category>.ply`` for the first ``instances`` training instances
    (NOCS-normalised frame), and ``OUT/meshes.json``; returns its content. The decoders
    run on ``device``."""
    from geometry.device import check_device
    from geometry.errors import UserError
    from geometry.io.atomic import atomic_directory, check_output_folder, check_replaceable
    from geometry.io.jsonio import dumps_json
    from geometry.progress import progress_bar
    from pose.object.shapo.surface import write_mesh_ply
    from pose.object.shapo.train import load_priors

    if not 16 <= resolution <= 256:
        raise UserError(f"--resolution {resolution} must be between 16 and 256.")
    check_device(device)
    check_output_folder(out)
    check_replaceable(out, MARKER, overwrite)
    priors = load_priors(priors_dir, device)
    jobs = [(f"{c}_mean", *priors.mean_codes(c)) for c in CATEGORIES]
    count = min(max(instances, 0), len(priors.instance_class))
    for k in range(count):
        name = CATEGORIES[int(priors.instance_class[k]) - 1]
        jobs.append((f"instance_{k}_{name}", priors.shape_codes.weight[k],
                     priors.app_codes.weight[k]))
    record: dict = {"priors": str(priors_dir), "resolution": resolution, "meshes": {}}
    with atomic_directory(out) as tmp, progress_bar("meshes", quiet=quiet) as bar:
        task = bar.add_task("", total=len(jobs))
        for name, zs, za in jobs:
            verts, faces, colors = _mesh(priors, zs.detach(), za.detach(), resolution)
            if len(faces):
                write_mesh_ply(tmp / f"{name}.ply", verts, faces, colors)
            record["meshes"][name] = {"vertices": len(verts), "faces": len(faces)}
            bar.advance(task)
        (tmp / MARKER).write_text(dumps_json(record) + "\n")
    return record
