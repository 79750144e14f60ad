"""Training examples of the small SpaRP model from the procedural object generator.

Per seed (:mod:`reconstruction.procedural.objects`, plain backdrop): ``frames`` photos on a
rough orbit with their exact NOCS maps and masks, and the six novel views of
:func:`~pose.camera.sparp.model.novel_view_poses` around frame 0 (same field of view). An
example takes frame 0 and ``k - 1`` other frames (shuffled) as its inputs; its NOCS target
holds their maps in the inputs' tiles, its views target the six novel views.

The NOCS maps are in the object's canonical frame (the generator's: z up, x towards the
front), the same frame in every view. For objects symmetric in shape and texture about
their z axis (``axis``) that frame's rotation about z cannot be told from the photos, so
the maps (and ``T_world_nocs``) are turned about the NOCS z axis to put the first camera at
azimuth 0 (on the +x side): the first view's map then follows from its photo, as a
deterministic predictor needs (SpaRP's symmetry-aware canonicalisation; the solver's
symmetry hypotheses recover the others).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pose.camera.sparp.config import SparpData
from pose.camera.sparp.model import NUM_TILES, encode_tiles, novel_view_poses

__all__ = ["SparpData", "SparpExample", "make_batch", "render_example", "render_examples"]


@dataclass
class SparpExample:
    """One object's arrays (numpy, ``tile`` px): ``images [F, t, t, 3]``, ``nocs [F, t, t,
    3]``, ``masks [F, t, t]``; ``novel_images [6, t, t, 3]``, ``novel_masks [6, t, t]``;
    ``K [3, 3]``, ``T_world_cam [F, 4, 4]``, ``T_world_nocs [4, 4]``; ``seed``,
    ``category``, ``symmetry``."""

    images: np.ndarray
    nocs: np.ndarray
    masks: np.ndarray
    novel_images: np.ndarray
    novel_masks: np.ndarray
    K: np.ndarray
    T_world_cam: np.ndarray
    T_world_nocs: np.ndarray
    seed: int
    category: str
    symmetry: str


def render_example(seed: int, tile: int, frames: int = 6, supersample: int = 2,
                   image_size: int | None = None, azimuth_span_deg: float = 360.0,
                   distance_range: tuple[float, float] = (0.7, 0.9)) -> SparpExample:
    """Render one object (see the module doc); ``image_size`` renders the photos (and
    their maps) larger than ``tile`` (benchmarks give SfM the larger photos); the novel
    views are always ``tile`` px. ``azimuth_span_deg``: the orbit's azimuth range;
    ``distance_range``: :class:`SparpData`'s."""
    from reconstruction.procedural.objects import (
        ObjectSequenceConfig,
        render_object_views,
        scene_and_cameras,
    )

    size = image_size or tile
    cfg = ObjectSequenceConfig(image_size=size, views=frames, background=False,
                               supersample=supersample, azimuth_span_deg=azimuth_span_deg,
                               distance_range=tuple(distance_range))
    model, T_world_obj, scene, K, poses, _ = scene_and_cameras(int(seed), cfg)
    maps = render_object_views(model, T_world_obj, K, poses, size, supersample, scene)
    K_tile = K.copy()
    K_tile[:2] *= tile / size
    T_obj_cam0 = np.linalg.inv(T_world_obj) @ poses[0]
    T_world_novel = T_world_obj @ novel_view_poses(T_obj_cam0)
    novel = render_object_views(model, T_world_obj, K_tile, T_world_novel, tile, supersample,
                                scene)
    S = np.eye(4)
    S[:3, :3] *= model.nocs_scale
    S[:3, 3] = -0.5 * model.nocs_scale
    nocs = maps["nocs"]
    if model.symmetry == "axis":
        az = float(np.arctan2(T_obj_cam0[1, 3], T_obj_cam0[0, 3]))
        Rz = np.eye(4)
        Rz[:2, :2] = [[np.cos(az), -np.sin(az)], [np.sin(az), np.cos(az)]]
        # p_canonical = Rz^T p_obj: the first camera's centre at azimuth 0
        centred = nocs.astype(np.float64) - 0.5
        turned = centred @ Rz[:3, :3]  # rows: Rz^T p
        nocs = np.where(maps["masks"][..., None], turned + 0.5, 0.0).astype(nocs.dtype)
        S = Rz @ S
    return SparpExample(images=maps["images"], nocs=nocs, masks=maps["masks"],
                        novel_images=novel["images"], novel_masks=novel["masks"], K=K,
                        T_world_cam=poses, T_world_nocs=T_world_obj @ S, seed=int(seed),
                        category=model.category, symmetry=model.symmetry)


_CACHE_FIELDS = ("images", "nocs", "masks", "novel_images", "novel_masks", "K", "T_world_cam",
                 "T_world_nocs")


def render_examples(data: SparpData, tile: int, quiet: bool = False,
                    cache: Path | None = None) -> list[SparpExample]:
    """The objects of ``data`` (seeds ``data.seed ..``), with a progress bar.

    ``cache``: an ``.npz`` file holding them for these options: read when it exists and
    matches (else rendered and written, atomically)."""
    import json

    from geometry.progress import progress_bar

    key = json.dumps({"data": asdict(data), "tile": tile, "format": 2}, sort_keys=True)
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                meta = json.loads(str(z["meta"]))
                arrays = {f: z[f] for f in _CACHE_FIELDS}  # each read once (z[f] re-reads)
                return [SparpExample(**{f: arrays[f][k] for f in _CACHE_FIELDS}, **meta[k])
                        for k in range(len(meta))]
    out = []
    with progress_bar(None, quiet=quiet) as bar:
        task = bar.add_task("rendering objects", total=data.sequences)
        for k in range(data.sequences):
            out.append(render_example(data.seed + k, tile, data.frames, data.supersample,
                                      distance_range=data.distance_range))
            bar.advance(task)
    if cache is not None:
        import io

        from geometry.io.atomic import atomic_write_bytes

        meta = [{"seed": e.seed, "category": e.category, "symmetry": e.symmetry} for e in out]
        buf = io.BytesIO()
        np.savez(buf, key=np.array(key), meta=np.array(json.dumps(meta)),
                 **{f: np.stack([getattr(e, f) for e in out]) for f in _CACHE_FIELDS})
        atomic_write_bytes(cache, buf.getvalue())
    return out


def resize_square(images: np.ndarray, size: int) -> np.ndarray:
    """``[N, s, s, C]`` -> ``[N, size, size, C]`` by area averaging (``s`` a multiple of
    ``size``) or bilinear resampling."""
    t = torch.from_numpy(np.ascontiguousarray(images, np.float32)).permute(0, 3, 1, 2)
    if t.shape[-1] % size == 0:
        t = torch.nn.functional.avg_pool2d(t, t.shape[-1] // size)
    else:
        t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear",
                                            antialias=True, align_corners=False)
    return t.permute(0, 2, 3, 1).numpy()


def condition_tiles(images: Tensor) -> Tensor:
    """``[B, k, t, t, 3]`` input photos -> the condition image ``[B, 4, 3t, 2t]`` (empty tiles
    white, mask channel +1 on the inputs' tiles)."""
    b, k, t = images.shape[:3]
    rgb = torch.ones(b, NUM_TILES, t, t, 3)
    rgb[:, :k] = images
    mask = torch.zeros(b, NUM_TILES, t, t, dtype=torch.bool)
    mask[:, :k] = True
    return encode_tiles(rgb, mask)


def make_batch(examples: list[SparpExample], batch: int, views: tuple[int, int],
               p_nocs: float, rng: np.random.Generator) -> dict[str, Tensor]:
    """``{"cond", "target", "domain"}`` for ``batch`` examples drawn with ``rng``: ``k`` in
    ``views`` (inclusive range, one per batch) input photos, the domain NOCS with
    probability ``p_nocs``."""
    k = int(rng.integers(views[0], views[1] + 1))
    conds, targets, domains = [], [], []
    for _ in range(batch):
        ex = examples[int(rng.integers(len(examples)))]
        others = rng.permutation(np.arange(1, len(ex.images)))[:k - 1]
        idx = np.concatenate(([0], others)).astype(int)
        t = ex.images.shape[1]
        conds.append(torch.from_numpy(ex.images[idx]))
        nocs_domain = bool(rng.random() < p_nocs)
        if nocs_domain:
            rgb = torch.zeros(NUM_TILES, t, t, 3)
            mask = torch.zeros(NUM_TILES, t, t, dtype=torch.bool)
            rgb[:k] = torch.from_numpy(ex.nocs[idx])
            mask[:k] = torch.from_numpy(ex.masks[idx])
        else:
            rgb = torch.from_numpy(ex.novel_images)
            mask = torch.from_numpy(ex.novel_masks)
        targets.append(encode_tiles(rgb[None], mask[None])[0])
        domains.append(1 if nocs_domain else 0)
    return {"cond": condition_tiles(torch.stack(conds)), "target": torch.stack(targets),
            "domain": torch.tensor(domains)}
