"""The outdoor world: unbounded-scene content for 360-degree rigs (``SceneConfig.kind =
"outdoor"``, NeO 360's training data).

World frame: z up, metres. A wide textured ground ``[-30, 30]^2`` at ``z = 0``; the
object world's spheres and boxes near the origin (the foreground, with hard shadows); a
ring of tall boxes ("buildings") 8 to 14 m away (the distant background: background
pixels, object id 0); a sky gradient where rays leave the scene::

        building     building
            \\   cameras on a    /
             \\  full circle  /       ground to 30 m, sky beyond
                 (objects)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from reconstruction.procedural.raycast import Primitive, Quad, Solid, cast_rays
from reconstruction.procedural.textures import solid_albedo
from reconstruction.procedural.worlds import ObjectWorld, object_world

OUTDOOR_GROUND_HALF = 30.0
"""The outdoor ground square is ``[-30, 30]^2`` at ``z = 0``."""


@dataclass
class OutdoorWorld(ObjectWorld):
    """Objects on a wide ground, a ring of buildings, a sky (see the module doc)."""

    buildings: list[Solid] = field(default_factory=list)
    ground_tint: tuple[float, float, float] = (0.55, 0.75, 0.45)

    @property
    def primitives(self) -> list[Primitive]:
        """The ground, the buildings, then the solids (the objects)."""
        h = OUTDOOR_GROUND_HALF
        ground = Quad(np.array([-h, -h, 0.0]), np.array([2 * h, 0.0, 0.0]),
                      np.array([0.0, 2 * h, 0.0]))
        return [ground, *self.buildings, *self.solids]

    def primitive_objects(self) -> np.ndarray:
        return np.concatenate([np.zeros(1 + len(self.buildings), np.int64),
                               np.arange(1, len(self.solids) + 1)])

    def shade(self, origins: np.ndarray, dirs: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Colour ``[N, 3]``, hit distance ``t [N]`` (inf: sky) and primitive index ``[N]``
        (-1: sky) of rays: origins ``[N, 3]`` or ``[3]``, unit directions ``[N, 3]``."""
        origins = np.broadcast_to(origins, dirs.shape)
        prims = self.primitives
        t, index, normal = cast_rays(prims, origins, dirs)
        up = np.clip(dirs[:, 2:3], 0.0, 1.0)
        colour = (1 - up) * np.array([0.85, 0.88, 0.92]) + up * np.array([0.35, 0.55, 0.9])
        idx = np.nonzero(np.isfinite(t))[0]
        if not len(idx):
            return colour, t, index
        pts = origins[idx] + t[idx, None] * dirs[idx]
        light = np.asarray(self.light_dir)
        lambert = np.clip((normal[idx] * light).sum(-1), 0.0, None)
        occluders = [*self.buildings, *self.solids]
        shadow_t, _, _ = cast_rays(occluders, pts + 1e-4 * normal[idx],
                                   np.broadcast_to(light, pts.shape))
        shading = 0.4 + 0.6 * lambert * np.where(np.isfinite(shadow_t), 0.0, 1.0)
        base = np.zeros((len(idx), 3))
        salt = self.texture_seed * 97
        first_solid = 1 + len(self.buildings)
        for s, prim in enumerate(prims):
            sel = index[idx] == s
            if not sel.any():
                continue
            if s == 0:
                base[sel] = solid_albedo(pts[sel], 1.5, np.asarray(self.ground_tint), salt + 1)
            elif s < first_solid or not prim.uniform:
                base[sel] = solid_albedo(pts[sel], prim.texture_freq, np.asarray(prim.tint),
                                         salt + 3 + s)
            else:
                base[sel] = np.asarray(prim.tint)
        colour[idx] = base * shading[:, None]
        return colour, t, index


def outdoor_world(num_objects: int, seed: int, textureless: float = 0.0,
                  num_buildings: int = 10) -> OutdoorWorld:
    """Objects as the object world's ``orbit`` layout (same seed), buildings drawn from a
    second stream of the seed on a ring of radius 8-14 m."""
    base = object_world("orbit", num_objects, seed, textureless)
    rng = np.random.default_rng([seed, 360])
    buildings = []
    for k in range(num_buildings):
        azimuth = 2 * math.pi * (k + rng.uniform(-0.3, 0.3)) / num_buildings
        radius = float(rng.uniform(8.0, 14.0))
        half = (float(rng.uniform(0.8, 2.0)), float(rng.uniform(0.8, 2.0)),
                float(rng.uniform(1.0, 3.0)))
        tint = tuple(float(v) for v in rng.uniform(0.35, 1.0, size=3))
        buildings.append(Solid("box", (radius * math.cos(azimuth), radius * math.sin(azimuth),
                                       half[2]), half, yaw=float(rng.uniform(0, math.pi)),
                               tint=tint, texture_freq=float(rng.uniform(0.8, 2.0))))
    return OutdoorWorld(base.solids, base.light_dir, wall=False, texture_seed=seed,
                        buildings=buildings)
