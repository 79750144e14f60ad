"""The ray caster of the procedural worlds: textured rectangles, spheres and oriented boxes.

Analytic intersections in float64 numpy, independent of the splatting code the scenes are
used to test. All functions take rays as origins ``[N, 3]`` (or one ``[3]`` shared by all)
and UNIT directions ``[N, 3]`` in the world frame, so a hit distance ``t`` is in metres.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

EPS = 1e-6
"""Hits closer than this (metres) along a ray are ignored (a ray leaving a surface)."""


@dataclass
class Quad:
    """A rectangle ``origin + a * edge_u + b * edge_v``, ``a, b in [0, 1]``, world frame.

    Its normal is ``edge_u x edge_v`` (normalised); both sides are visible.
    """

    origin: np.ndarray  # [3]
    edge_u: np.ndarray  # [3]
    edge_v: np.ndarray  # [3] orthogonal to edge_u
    texture: int = 0
    """Quad world: index into the world's textures."""
    object_id: int = 0
    """The object (1-based) this face belongs to; 0: background (floor, walls)."""
    uniform: tuple[float, float, float] | None = None
    """Quad world: one colour (linear RGB in [0, 1]) instead of the texture: a textureless
    face."""

    @property
    def normal(self) -> np.ndarray:
        """``[3]`` unit normal ``edge_u x edge_v``."""
        normal = np.cross(self.edge_u, self.edge_v)
        return normal / np.linalg.norm(normal)

    def surface_coords(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``a, b [N]``: the rectangle coordinates of points ``[N, 3]`` on its plane."""
        rel = pts - self.origin
        a = rel @ self.edge_u / (self.edge_u @ self.edge_u)
        b = rel @ self.edge_v / (self.edge_v @ self.edge_v)
        return a, b

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``t [N]`` (inf: miss) and normal ``[N, 3]`` of rays ``[N, 3]``."""
        normal = self.normal
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t = ((self.origin - origins) @ normal) / (dirs @ normal)
            a, b = self.surface_coords(origins + t[:, None] * dirs)
        inside = (t > EPS) & (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1)
        return np.where(inside, t, np.inf), np.broadcast_to(normal, dirs.shape)


@dataclass
class Solid:
    """A sphere (``half = (r, r, r)``) or a box rotated by ``yaw`` about world z, world frame."""

    kind: Literal["sphere", "box"]
    center: tuple[float, float, float]
    half: tuple[float, float, float]
    """Half extents along the solid's own axes (metres)."""
    yaw: float = 0.0
    """Rotation about world z (boxes; spheres keep the world axes)."""
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    texture_freq: float = 4.0
    uniform: bool = False
    """One colour (the tint) instead of the solid texture: a textureless surface, whose
    pixels vary only with the lighting."""

    def rotation(self) -> np.ndarray:
        """``R_world_solid [3, 3]``: the yaw about world z."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``t [N]`` (inf: miss) and outward unit normal ``[N, 3]`` of rays ``[N, 3]``."""
        if self.kind == "sphere":
            return _intersect_sphere(origins, dirs, np.asarray(self.center), self.half[0])
        # Only rays through the box's bounding sphere can hit it.
        bound = float(np.linalg.norm(self.half))
        near = np.nonzero(np.isfinite(
            _intersect_sphere(origins, dirs, np.asarray(self.center), bound)[0]))[0]
        t = np.full(len(dirs), np.inf)
        normal = np.zeros((len(dirs), 3))
        if len(near):
            t[near], normal[near] = _intersect_box(origins[near], dirs[near], self)
        return t, normal


Primitive = Quad | Solid


def _intersect_sphere(o: np.ndarray, d: np.ndarray, center: np.ndarray,
                      radius: float) -> tuple[np.ndarray, np.ndarray]:
    oc = o - center
    b = (d * oc).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - radius * radius)
    sq = np.sqrt(np.maximum(disc, 0.0))
    t = -b - sq
    t = np.where(t > EPS, t, -b + sq)  # from inside: the far side
    t = np.where((disc > 0) & (t > EPS), t, np.inf)
    hit = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    return t, (hit - center) / radius


def _intersect_box(o: np.ndarray, d: np.ndarray, box: Solid) -> tuple[np.ndarray, np.ndarray]:
    R = box.rotation()  # box -> world
    h = np.asarray(box.half)
    o_l = (o - np.asarray(box.center)) @ R
    d_l = d @ R
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / np.where(np.abs(d_l) < 1e-12, 1e-12, d_l)
        t1, t2 = (-h - o_l) * inv, (h - o_l) * inv
    t_near = np.minimum(t1, t2).max(-1)
    t_far = np.maximum(t1, t2).min(-1)
    t = np.where(t_near > EPS, t_near, t_far)
    t = np.where((t_far >= t_near) & (t > EPS), t, np.inf)
    local = o_l + np.where(np.isfinite(t), t, 0.0)[:, None] * d_l
    axis = np.argmax(np.abs(local) / h, -1)
    normal_l = np.zeros_like(local)
    rows = np.arange(len(local))
    normal_l[rows, axis] = np.sign(local[rows, axis])
    return t, normal_l @ R.T


def cast_rays(primitives: Sequence[Primitive], origins: np.ndarray, dirs: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nearest hit of each ray among ``primitives``.

    Args:
        primitives: quads and solids, world frame.
        origins: ``[N, 3]`` or ``[3]`` ray origins (metres).
        dirs: ``[N, 3]`` unit ray directions.

    Returns:
        ``t [N]`` hit distance in metres (inf: miss), ``index [N]`` int of the primitive hit
        (-1: miss) and its unit normal ``[N, 3]`` at the hit (0 on a miss). Ties go to the
        earlier primitive.
    """
    n = len(dirs)
    origins = np.broadcast_to(origins, dirs.shape)
    best_t = np.full(n, np.inf)
    best_index = np.full(n, -1)
    best_normal = np.zeros((n, 3))
    for index, prim in enumerate(primitives):
        t, normal = prim.intersect(origins, dirs)
        closer = t < best_t
        best_t = np.where(closer, t, best_t)
        best_index = np.where(closer, index, best_index)
        best_normal = np.where(closer[:, None], normal, best_normal)
    return best_t, best_index, best_normal
