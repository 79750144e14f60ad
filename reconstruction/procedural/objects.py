"""Object-centric sequences in the CO3D style: one object, cameras on a rough orbit around it.

Training and test data for the object-centric pose methods (ADen, SpaRP, ...): a textured
object of a parametric category standing on a textured ground under a textured sky, seen by
``views`` cameras on a rough orbit (varying azimuth, elevation, distance, aim and roll). Per
view: the photo, the object mask, the object's z-depth and its NOCS map. Everything follows
from ``(seed, config)`` bit for bit; objects are analytic solids (solids of revolution,
ellipsoids, boxes) ray-cast in float64 numpy (:mod:`.raycast`), textured with the solid noise
of :mod:`.textures`.

Frames (world: z up, metres, the ground is ``z = 0``; cameras OpenCV, ``T_world_cam``)::

    object frame "obj": origin at the centre of the object's tight axis-aligned bounding
    box, z up (the object stands upright on the ground, yawed at random), x towards the
    handle / label / front of the asymmetric categories.

    NOCS (Wang et al., CVPR 2019):  nocs = p_obj / nocs_scale + 0.5,
        nocs_scale = the bounding box's diagonal (metres per NOCS unit),
    so the object fits the unit cube [0, 1]^3 centred at (0.5, 0.5, 0.5);
    p_world = T_world_obj @ ((nocs - 0.5) * nocs_scale)   (:attr:`ObjectSequence.T_world_nocs`).

Categories (:data:`CATEGORIES`), each with its symmetry tag:

==========  ========  =============================================================
name        symmetry  shape
==========  ========  =============================================================
bottle      axis      solid of revolution: body, shoulder, neck, cap
can         axis      bevelled cylinder
bowl        axis      hollow bowl on a foot ring
vase        axis      bulging solid of revolution
mug         near      hollow cylinder with a handle (+x)
box         near      square-footprint box (4-fold symmetric) with a label plate on +x
chair       none      seat, back (-x), four legs
car         none      body, cabin towards -x, four wheels
toy         none      ellipsoid animal: body, head (+x, up), tail (-x)
==========  ========  =============================================================

``axis``: symmetric (geometry AND texture) under any rotation about the object's z axis
(which passes through the object frame's origin): the views determine the pose only up to
that rotation. ``near``: the same up to a small feature (the handle, the label).
``none``: no rotational symmetry. The textures of ``axis`` categories depend on the height
and the distance to the axis only; ``box`` uses ``max(|x|, |y|)`` and height (4-fold).

Pixels: the colour averages ``supersample^2`` rays (anti-aliasing) and is quantised to
8 bits (``round(255 c) / 255``, so a disk cache round-trips exactly); mask, depth and NOCS
come from ONE ray through the pixel centre, so ``masks == (depth > 0)`` exactly and
unprojecting ``depth`` with the cameras gives the NOCS map's points.

API: :func:`object_sequence` (one sequence), :func:`object_sequences` (an iterator, with
worker processes), :func:`write_object_dataset` / :func:`read_object_dataset` (npz shards).
Lower level: :func:`make_object` (the object of a seed), :func:`render_object_views` (any
object pose and cameras: e.g. the object rotated about its axis).
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from geometry.cameras import Cameras
from reconstruction.procedural.raycast import EPS, Solid, _intersect_sphere
from reconstruction.procedural.textures import sample_bilinear, solid_albedo

Symmetry = Literal["none", "axis", "near"]

__all__ = [
    "CATEGORIES",
    "Category",
    "ObjectDataset",
    "ObjectModel",
    "ObjectSequence",
    "ObjectSequenceConfig",
    "Part",
    "check_object_config",
    "make_object",
    "object_sequence",
    "object_sequences",
    "read_object_dataset",
    "render_object_views",
    "scene_and_cameras",
    "write_object_dataset",
]


# ------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class ObjectSequenceConfig:
    """Options of the object sequences (each sequence follows from these and its seed)."""

    image_size: int = 64
    """Image width and height in pixels (square images, like RelPose++'s crops)."""
    views: int = 8
    """Cameras per sequence."""
    categories: tuple[str, ...] = ()
    """Categories to draw from (uniformly at random per seed); empty: all of
    :data:`CATEGORIES`."""
    elevation_range_deg: tuple[float, float] = (5.0, 50.0)
    """Range of the sequence's mean camera elevation above the ground plane."""
    elevation_jitter_deg: float = 6.0
    """Per-view elevation offset, uniform in ``[-j, j]``."""
    distance_range: tuple[float, float] = (1.0, 1.4)
    """Range of the sequence's mean camera distance to the object centre, in units of the
    distance at which the object's bounding sphere just fills the field of view."""
    distance_jitter: float = 0.08
    """Per-view relative distance offset, uniform in ``[-j, j]``."""
    azimuth_span_deg: float = 360.0
    """Azimuth range covered by the orbit (starting at a random azimuth)."""
    orbit_jitter: float = 0.6
    """Per-view azimuth offset, uniform in ``[-j/2, j/2]`` times the spacing
    ``azimuth_span_deg / views``."""
    target_jitter: float = 0.08
    """Per-view look-at offset from the object centre, uniform per axis in ``[-j, j]`` times
    the bounding-sphere radius."""
    roll_jitter_deg: float = 4.0
    """Per-view camera roll about the optical axis, uniform in ``[-j, j]``."""
    fov_deg: float = 50.0
    """Field of view (horizontal = vertical) in degrees."""
    fov_jitter_deg: float = 0.0
    """Per-sequence field-of-view offset, uniform in ``[-j, j]`` (one camera per sequence)."""
    background: bool = True
    """True: the object stands on a textured ground (with its shadow) under a textured sky.
    False: a plain mid-grey backdrop, no ground."""
    textureless: float = 0.0
    """Share of the sequences whose object is painted in uniform colours (one per part)."""
    supersample: int = 2
    """Colour rays per pixel along each axis (anti-aliasing)."""

    def resolved_categories(self) -> tuple[str, ...]:
        """The category names drawn from (all of :data:`CATEGORIES` when empty)."""
        return tuple(self.categories) if self.categories else tuple(CATEGORIES)


def check_object_config(config: ObjectSequenceConfig) -> ObjectSequenceConfig:
    """The config, or a :class:`~geometry.errors.UserError` naming the bad option."""
    from geometry.errors import UserError

    unknown = [c for c in config.categories if c not in CATEGORIES]
    if unknown:
        raise UserError(f"unknown object categories {unknown}; use some of {list(CATEGORIES)}.")
    if config.image_size < 8:
        raise UserError(f"--image-size {config.image_size} is too small; use at least 8 pixels.")
    if config.views < 1:
        raise UserError(f"--views {config.views} is too few; use at least 1.")
    if config.supersample < 1:
        raise UserError("--supersample must be at least 1.")
    for name in ("elevation_range_deg", "distance_range"):
        lo, hi = getattr(config, name)
        if not lo <= hi:
            raise UserError(f"--{name.replace('_', '-')} ({lo}, {hi}) is not an ordered range.")
    lo, hi = config.elevation_range_deg
    if lo - config.elevation_jitter_deg < -89.0 or hi + config.elevation_jitter_deg > 89.0:
        raise UserError("camera elevations must stay within (-89, 89) degrees; narrow "
                        "--elevation-range-deg or --elevation-jitter-deg.")
    if config.distance_range[0] * (1.0 - config.distance_jitter) <= 0.2:
        raise UserError("--distance-range is too close to the object; keep it above 0.2 "
                        "(1 = the object just fills the view).")
    fov_lo = config.fov_deg - config.fov_jitter_deg
    fov_hi = config.fov_deg + config.fov_jitter_deg
    if not (1.0 <= fov_lo and fov_hi <= 150.0):
        raise UserError(f"--fov-deg {config.fov_deg} (jitter {config.fov_jitter_deg}) must stay "
                        "within 1 to 150 degrees.")
    if not 0.0 <= config.textureless <= 1.0:
        raise UserError(f"--textureless {config.textureless} is not a share; give 0 to 1.")
    return config


# ------------------------------------------------------------------ objects


@dataclass
class Part:
    """One analytic solid of an object, in its own frame ``part`` placed in the object frame.

    ``lathe``: the solid of revolution about the part's z axis of the polyline ``profile``
    (``[P, 2]`` rows ``(radius, z)``; closed solids start and end on the axis); every
    segment is a cone frustum, cylinder or annulus, seen from both sides. ``ellipsoid``:
    semi-axes ``half``. ``box``: half extents ``half``.
    """

    kind: Literal["lathe", "ellipsoid", "box"]
    R: np.ndarray  # [3, 3] R_obj_part
    t: np.ndarray  # [3] the part frame's origin in the object frame
    profile: np.ndarray | None = None  # lathe: [P, 2] (radius, z)
    half: np.ndarray | None = None  # ellipsoid / box: [3]
    tint: np.ndarray = field(default_factory=lambda: np.ones(3))
    texture: Literal["axis", "square", "solid"] = "solid"
    """Texture coordinates (in the design frame, see :class:`ObjectModel`): ``axis``:
    ``(hypot(x, y), 0, z)`` (rotation-invariant about z); ``square``:
    ``(max(|x|, |y|), 0, z)`` (4-fold); ``solid``: ``(x, y, z)``."""
    freq: float = 30.0
    """Texture frequency (lattice cells per metre)."""
    uniform: bool = False
    """One colour (the tint) instead of the texture."""

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` ``[3]`` each: the tight axis-aligned bounding box in the object frame."""
        if self.kind == "lathe":
            n = self.R[:, 2]
            spread = np.sqrt(np.clip(1.0 - n * n, 0.0, None))  # a unit circle's half extents
            centres = self.t + self.profile[:, 1:2] * n  # [P, 3]
            radii = self.profile[:, 0:1] * spread
            return (centres - radii).min(0), (centres + radii).max(0)
        if self.kind == "ellipsoid":
            half = np.sqrt(((self.R * self.half) ** 2).sum(1))
        else:
            half = (np.abs(self.R) * self.half).sum(1)
        return self.t - half, self.t + half

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``t [N]`` (inf: miss) and unit normal ``[N, 3]`` (object frame, pointing against
        the ray) of rays ``o, d [N, 3]`` (object frame, unit ``d``)."""
        o_p = (o - self.t) @ self.R
        d_p = d @ self.R
        if self.kind == "lathe":
            near = _in_capped_cylinder(o_p, d_p, float(self.profile[:, 0].max()),
                                       float(self.profile[:, 1].min()),
                                       float(self.profile[:, 1].max()))
            t = np.full(len(d), np.inf)
            normal = np.zeros((len(d), 3))
            if len(near):
                t[near], normal[near] = _intersect_lathe(o_p[near], d_p[near], self.profile)
        elif self.kind == "ellipsoid":
            o_s, d_s = o_p / self.half, d_p / self.half
            length = np.linalg.norm(d_s, axis=-1)
            t_s, _ = _intersect_sphere(o_s, d_s / length[:, None], np.zeros(3), 1.0)
            t = t_s / length
            hit = o_p + np.where(np.isfinite(t), t, 0.0)[:, None] * d_p
            normal = hit / self.half**2
        else:
            t, normal = Solid("box", (0.0, 0.0, 0.0), tuple(self.half)).intersect(o_p, d_p)
        normal = normal @ self.R.T
        normal = normal / np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
        facing = np.where((normal * d).sum(-1) > 0, -1.0, 1.0)
        return t, normal * facing[:, None]


def _in_capped_cylinder(o: np.ndarray, d: np.ndarray, radius: float, z0: float, z1: float
                        ) -> np.ndarray:
    """Indices of the rays ``o, d [N, 3]`` that pass through the cylinder
    ``x^2 + y^2 <= radius^2, z0 <= z <= z1`` (slightly enlarged) at some ``t > 0``."""
    radius, z0, z1 = radius * (1 + 1e-6) + 1e-9, z0 - 1e-9, z1 + 1e-9
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    half_b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - radius * radius
    disc = half_b * half_b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        sq = np.sqrt(np.maximum(disc, 0.0))
        vertical = a < 1e-18
        t_in = np.where(vertical, -np.inf, (-half_b - sq) / np.where(vertical, 1.0, a))
        t_out = np.where(vertical, np.inf, (-half_b + sq) / np.where(vertical, 1.0, a))
        inside_axis = ~vertical & (disc >= 0) | vertical & (c <= 0)
        tz0 = (z0 - o[:, 2]) / d[:, 2]
        tz1 = (z1 - o[:, 2]) / d[:, 2]
    flat = np.abs(d[:, 2]) < 1e-18
    in_slab = (o[:, 2] >= z0) & (o[:, 2] <= z1)
    lo = np.where(flat, np.where(in_slab, -np.inf, np.inf), np.minimum(tz0, tz1))
    hi = np.where(flat, np.where(in_slab, np.inf, -np.inf), np.maximum(tz0, tz1))
    start = np.maximum(np.maximum(t_in, lo), 0.0)
    end = np.minimum(t_out, hi)
    return np.nonzero(inside_axis & (end >= start))[0]


def _intersect_lathe(o: np.ndarray, d: np.ndarray, profile: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit ``t [N]`` and (unnormalised) normal ``[N, 3]`` of a solid of revolution
    about z (part frame) with the polyline ``profile [P, 2]`` of ``(radius, z)``.

    Segments with ``z_a != z_b`` are cone frusta (cylinders for ``r_a = r_b``):
    ``x^2 + y^2 = r(z)^2``, ``r(z) = c0 + slope z``, a quadratic in the ray parameter;
    segments with ``z_a = z_b`` are annuli in the plane ``z = z_a``."""
    ra, za = profile[:-1, 0], profile[:-1, 1]  # [S]
    rb, zb = profile[1:, 0], profile[1:, 1]
    flat = np.abs(zb - za) < 1e-12
    n = len(o)
    ox, oy, oz = o[:, 0:1], o[:, 1:2], o[:, 2:3]
    dx, dy, dz = d[:, 0:1], d[:, 1:2], d[:, 2:3]
    best_t = np.full(n, np.inf)
    best_slope = np.zeros(n)
    best_c0 = np.zeros(n)
    best_flat = np.zeros(n, bool)
    cone = np.nonzero(~flat)[0]
    if len(cone):
        za_c, zb_c = za[cone], zb[cone]
        slope = (rb[cone] - ra[cone]) / (zb_c - za_c)
        c0 = ra[cone] - slope * za_c
        w = c0 + slope * oz  # [N, S]
        sdz = slope * dz
        a = (dx * dx + dy * dy) - sdz * sdz
        half_b = ox * dx + oy * dy - sdz * w
        c = (ox * ox + oy * oy) - w * w
        disc = half_b * half_b - a * c
        sq = np.sqrt(np.maximum(disc, 0.0))
        small = np.abs(a) < 1e-12
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_a = 1.0 / np.where(small, 1.0, a)
            t1 = np.where(small, -0.5 * c / np.where(half_b == 0, 1e-300, half_b),
                          (-half_b - sq) * inv_a)
            t2 = np.where(small, np.inf, (-half_b + sq) * inv_a)
        z_lo, z_hi = np.minimum(za_c, zb_c) - 1e-12, np.maximum(za_c, zb_c) + 1e-12
        real = (disc >= 0) | small
        ts = []
        for t in (t1, t2):
            z = oz + t * dz
            ts.append(np.where(real & (t > EPS) & (z >= z_lo) & (z <= z_hi), t, np.inf))
        t_c = np.minimum(ts[0], ts[1])
        k = np.argmin(t_c, 1)
        rows = np.arange(n)
        best_t = t_c[rows, k]
        best_slope, best_c0 = slope[k], c0[k]
    plane = np.nonzero(flat)[0]
    if len(plane):
        with np.errstate(divide="ignore", invalid="ignore"):
            t_p = (za[plane] - oz) / np.where(np.abs(dz) < 1e-300, 1e-300, dz)  # [N, F]
        rho2 = (ox + t_p * dx) ** 2 + (oy + t_p * dy) ** 2
        r_lo = np.minimum(ra[plane], rb[plane]) - 1e-12
        r_hi = np.maximum(ra[plane], rb[plane]) + 1e-12
        ok = (t_p > EPS) & (rho2 >= np.sign(r_lo) * r_lo * r_lo) & (rho2 <= r_hi * r_hi)
        t_p = np.where(ok, t_p, np.inf).min(1)
        best_flat = t_p < best_t
        best_t = np.where(best_flat, t_p, best_t)
    hit = o + np.where(np.isfinite(best_t), best_t, 0.0)[:, None] * d
    radius = best_c0 + best_slope * hit[:, 2]
    normal = np.stack((hit[:, 0], hit[:, 1], -radius * best_slope), -1)
    normal[best_flat] = (0.0, 0.0, 1.0)
    return best_t, normal


@dataclass
class ObjectModel:
    """An object: parts in the object frame (origin at the bounding-box centre, z up).

    ``design_origin`` is the origin of the frame the category was designed in (the object's
    symmetry axis is its z axis; the object's base at its ``z = 0``), in the object frame;
    textures are functions of design-frame coordinates.
    """

    category: str
    symmetry: Symmetry
    parts: list[Part]
    size: np.ndarray  # [3] tight bounding-box extents (metres)
    design_origin: np.ndarray  # [3]
    texture_salt: int

    @property
    def nocs_scale(self) -> float:
        """Metres per NOCS unit: the bounding box's diagonal."""
        return float(np.linalg.norm(self.size))

    @property
    def radius(self) -> float:
        """Radius of the bounding sphere about the object frame's origin (metres)."""
        return 0.5 * self.nocs_scale

    def intersect(self, o: np.ndarray, d: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nearest hit of rays ``o, d [N, 3]`` (object frame, unit ``d``): ``t [N]`` (inf:
        miss), part index ``[N]`` (-1: miss), unit normal ``[N, 3]`` facing the ray."""
        n = len(d)
        o = np.broadcast_to(o, d.shape)
        best_t = np.full(n, np.inf)
        best_part = np.full(n, -1)
        best_normal = np.zeros((n, 3))
        near = np.nonzero(np.isfinite(
            _intersect_sphere(o, d, np.zeros(3), self.radius * (1 + 1e-9))[0]))[0]
        if not len(near):
            return best_t, best_part, best_normal
        o_n, d_n = o[near], d[near]
        t_n = np.full(len(near), np.inf)
        part_n = np.full(len(near), -1)
        normal_n = np.zeros((len(near), 3))
        for k, part in enumerate(self.parts):
            if len(self.parts) > 1:  # only rays through the part's bounding sphere
                lo, hi = part.extent()
                sel = np.nonzero(np.isfinite(_intersect_sphere(
                    o_n, d_n, 0.5 * (lo + hi), 0.5 * float(np.linalg.norm(hi - lo)) * (1 + 1e-9)
                    + 1e-12)[0]))[0]
            else:
                sel = np.arange(len(near))
            if not len(sel):
                continue
            t, normal = part.intersect(o_n[sel], d_n[sel])
            closer = t < t_n[sel]
            t_n[sel] = np.where(closer, t, t_n[sel])
            part_n[sel] = np.where(closer, k, part_n[sel])
            normal_n[sel] = np.where(closer[:, None], normal, normal_n[sel])
        best_t[near], best_part[near], best_normal[near] = t_n, part_n, normal_n
        return best_t, best_part, best_normal

    def albedo(self, pts_obj: np.ndarray, part: np.ndarray) -> np.ndarray:
        """``[N, 3]`` colour in [0, 1] of surface points ``[N, 3]`` (object frame) of the
        parts ``[N]``."""
        out = np.zeros((len(pts_obj), 3))
        design = pts_obj - self.design_origin
        for k, p in enumerate(self.parts):
            sel = part == k
            if not sel.any():
                continue
            if p.uniform:
                out[sel] = p.tint
                continue
            q = design[sel]
            if p.texture == "axis":
                q = np.stack((np.hypot(q[:, 0], q[:, 1]), np.zeros(len(q)), q[:, 2]), -1)
            elif p.texture == "square":
                q = np.stack((np.maximum(np.abs(q[:, 0]), np.abs(q[:, 1])), np.zeros(len(q)),
                              q[:, 2]), -1)
            out[sel] = solid_albedo(q, p.freq, p.tint, self.texture_salt + 11 * k)
        return out


@dataclass(frozen=True)
class Category:
    """A parametric object category: its symmetry and a builder ``rng -> parts`` (design
    frame: symmetry axis = z, base at ``z = 0``)."""

    name: str
    symmetry: Symmetry
    build: Callable[[np.random.Generator], list[Part]]
    description: str = ""


def _lathe(profile: list[tuple[float, float]], **kw) -> Part:
    return Part("lathe", np.eye(3), np.zeros(3), profile=np.asarray(profile, float), **kw)


def _frame_z(axis: np.ndarray) -> np.ndarray:
    """A rotation whose third column is the unit ``axis``."""
    z = axis / np.linalg.norm(axis)
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    return np.stack((x, np.cross(z, x), z), 1)


def _cylinder(p0: np.ndarray, p1: np.ndarray, radius: float, **kw) -> Part:
    """A closed cylinder from ``p0`` to ``p1`` (design frame)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    length = float(np.linalg.norm(p1 - p0))
    return Part("lathe", _frame_z(p1 - p0), p0,
                profile=np.array([[0.0, 0.0], [radius, 0.0], [radius, length], [0.0, length]]),
                **kw)


def _box(centre, half, **kw) -> Part:
    return Part("box", np.eye(3), np.asarray(centre, float), half=np.asarray(half, float), **kw)


def _ellipsoid(centre, half, yaw_pitch: tuple[float, float] = (0.0, 0.0), **kw) -> Part:
    yaw, pitch = yaw_pitch
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    R = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1.0]]) @ np.array(
        [[cp, 0, sp], [0, 1.0, 0], [-sp, 0, cp]])
    return Part("ellipsoid", R, np.asarray(centre, float), half=np.asarray(half, float), **kw)


def _tint(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.3, 1.0, 3)


def _bottle(rng: np.random.Generator) -> list[Part]:
    h = rng.uniform(0.2, 0.32)
    r = rng.uniform(0.03, 0.05)
    body = h * rng.uniform(0.5, 0.65)
    shoulder = h * rng.uniform(0.12, 0.2)
    neck = r * rng.uniform(0.3, 0.45)
    cap = h * 0.06
    profile = [(0, 0), (r * 0.92, 0), (r, 0.01), (r, body), (neck, body + shoulder),
               (neck, h - cap), (neck * 1.2, h - cap), (neck * 1.2, h), (0, h)]
    return [_lathe(profile, tint=_tint(rng), texture="axis", freq=rng.uniform(25, 45))]


def _can(rng: np.random.Generator) -> list[Part]:
    h = rng.uniform(0.08, 0.16)
    r = rng.uniform(0.03, 0.055)
    bevel = 0.08 * r
    profile = [(0, 0), (r - bevel, 0), (r, bevel), (r, h - bevel), (r - bevel, h),
               (r - 2 * bevel, h), (r - 2 * bevel, h - bevel), (0, h - bevel)]
    return [_lathe(profile, tint=_tint(rng), texture="axis", freq=rng.uniform(40, 70))]


def _bowl(rng: np.random.Generator) -> list[Part]:
    R = rng.uniform(0.06, 0.11)
    h = R * rng.uniform(0.45, 0.7)
    foot = R * rng.uniform(0.35, 0.5)
    th = R * 0.07
    outer = [(foot + (R - foot) * math.sin(a * math.pi / 2), th + (h - th) *
              (1 - math.cos(a * math.pi / 2))) for a in np.linspace(0, 1, 7)]
    inner = [(max(rr - th, 0.0), zz + th) for rr, zz in outer[::-1]]
    inner[0] = (R - th, h)
    profile = ([(0, 0), (foot, 0), (foot, th)] + outer[1:] + inner + [(0, 2 * th)])
    return [_lathe(profile, tint=_tint(rng), texture="axis", freq=rng.uniform(30, 60))]


def _vase(rng: np.random.Generator) -> list[Part]:
    h = rng.uniform(0.18, 0.3)
    base = rng.uniform(0.03, 0.05)
    radii = base * np.array([1.0, rng.uniform(1.2, 1.7), rng.uniform(1.1, 1.6),
                             rng.uniform(0.5, 0.8), rng.uniform(0.4, 0.6), rng.uniform(0.6, 0.9)])
    heights = h * np.array([0.0, 0.3, 0.5, 0.75, 0.9, 1.0])
    profile = [(0.0, 0.0)] + list(zip(radii, heights, strict=True)) + [(0.0, h)]
    return [_lathe(profile, tint=_tint(rng), texture="axis", freq=rng.uniform(25, 50))]


def _mug(rng: np.random.Generator) -> list[Part]:
    r = rng.uniform(0.035, 0.05)
    h = r * rng.uniform(1.6, 2.4)
    th = r * 0.1
    tint = _tint(rng)
    freq = rng.uniform(30, 60)
    cup = _lathe([(0, 0), (r, 0), (r, h), (r - th, h), (r - th, th), (0, th)], tint=tint,
                 texture="axis", freq=freq)
    hr = r * 0.12
    reach = r * rng.uniform(0.45, 0.65)
    z_top, z_bot = h * 0.8, h * 0.25
    x_out = r + reach
    handle_tint = _tint(rng)
    kw = {"tint": handle_tint, "texture": "solid", "freq": freq}
    return [cup,
            _cylinder((r - th, 0, z_top), (x_out, 0, z_top), hr, **kw),
            _cylinder((x_out, 0, z_top), (x_out, 0, z_bot), hr, **kw),
            _cylinder((x_out, 0, z_bot), (r - th, 0, z_bot), hr, **kw),
            Part("ellipsoid", np.eye(3), np.array([x_out, 0, z_top]), half=np.full(3, hr), **kw),
            Part("ellipsoid", np.eye(3), np.array([x_out, 0, z_bot]), half=np.full(3, hr), **kw)]


def _box_category(rng: np.random.Generator) -> list[Part]:
    a = rng.uniform(0.04, 0.08)
    h = rng.uniform(0.06, 0.16)
    th = a * 0.06
    return [_box((0, 0, h / 2), (a, a, h / 2), tint=_tint(rng), texture="square",
                 freq=rng.uniform(30, 60)),
            _box((a + th / 2, 0, h / 2), (th / 2, a * 0.6, h * 0.3), tint=_tint(rng),
                 texture="solid", freq=rng.uniform(60, 100))]


def _chair(rng: np.random.Generator) -> list[Part]:
    w = rng.uniform(0.08, 0.12)
    seat_h = rng.uniform(0.08, 0.12)
    th = w * 0.12
    back_h = rng.uniform(0.08, 0.15)
    leg = th * 0.5
    kw = {"tint": _tint(rng), "texture": "solid", "freq": rng.uniform(30, 60)}
    parts = [_box((0, 0, seat_h + th / 2), (w, w, th / 2), **kw),
             _box((-w + th / 2, 0, seat_h + th + back_h / 2), (th / 2, w, back_h / 2), **kw)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_box((sx * (w - leg), sy * (w - leg), seat_h / 2),
                              (leg, leg, seat_h / 2), **kw))
    return parts


def _car(rng: np.random.Generator) -> list[Part]:
    length = rng.uniform(0.14, 0.22)
    width = length * rng.uniform(0.4, 0.5)
    wheel = length * rng.uniform(0.12, 0.16)
    body_h = length * rng.uniform(0.18, 0.25)
    cabin_h = length * rng.uniform(0.15, 0.22)
    body_tint = _tint(rng)
    kw = {"texture": "solid", "freq": rng.uniform(30, 60)}
    parts = [_box((0, 0, wheel + body_h / 2 - wheel * 0.3),
                  (length / 2, width / 2, body_h / 2), tint=body_tint, **kw),
             _box((-length * 0.12, 0, wheel + body_h - wheel * 0.3 + cabin_h / 2),
                  (length * 0.25, width * 0.42, cabin_h / 2), tint=_tint(rng), **kw)]
    wheel_tint = np.full(3, 0.25)
    for sx in (-0.32, 0.32):
        for sy in (-1, 1):
            y0 = sy * width / 2
            parts.append(_cylinder((sx * length, y0, wheel), (sx * length, y0 + sy * wheel * 0.6,
                                                              wheel), wheel,
                                   tint=wheel_tint, **kw))
    return parts


def _toy(rng: np.random.Generator) -> list[Part]:
    body = rng.uniform(0.05, 0.08)
    bx, by, bz = body, body * rng.uniform(0.55, 0.75), body * rng.uniform(0.5, 0.7)
    head = body * rng.uniform(0.4, 0.6)
    kw = {"texture": "solid", "freq": rng.uniform(30, 60)}
    return [_ellipsoid((0, 0, bz), (bx, by, bz), tint=_tint(rng), **kw),
            _ellipsoid((bx * 0.85, 0, bz * 1.6 + head * 0.4), (head * 1.2, head, head),
                       tint=_tint(rng), **kw),
            _ellipsoid((-bx * 1.05, 0, bz * 1.3), (bx * 0.35, by * 0.18, by * 0.18),
                       yaw_pitch=(0.0, -0.6), tint=_tint(rng), **kw)]


CATEGORIES: dict[str, Category] = {c.name: c for c in (
    Category("bottle", "axis", _bottle, "solid of revolution: body, shoulder, neck, cap"),
    Category("can", "axis", _can, "bevelled cylinder"),
    Category("bowl", "axis", _bowl, "hollow bowl on a foot ring"),
    Category("vase", "axis", _vase, "bulging solid of revolution"),
    Category("mug", "near", _mug, "hollow cylinder with a handle on +x"),
    Category("box", "near", _box_category, "square box (4-fold) with a label plate on +x"),
    Category("chair", "none", _chair, "seat, back on -x, four legs"),
    Category("car", "none", _car, "body, cabin towards -x, four wheels"),
    Category("toy", "none", _toy, "ellipsoid animal: body, head on +x, tail on -x"),
)}
"""The parametric categories by name (see the module docstring's table)."""


def make_object(category: str, rng: np.random.Generator, textureless: bool = False,
                texture_salt: int = 0) -> ObjectModel:
    """An object of ``category`` with dimensions, tints and texture frequencies from ``rng``,
    in its object frame (bounding-box centre at the origin, z up)."""
    cat = CATEGORIES[category]
    parts = cat.build(rng)
    lo = np.min([p.extent()[0] for p in parts], 0)
    hi = np.max([p.extent()[1] for p in parts], 0)
    centre = 0.5 * (lo + hi)
    if cat.symmetry == "axis":
        centre[:2] = 0.0  # exactly on the axis (lo = -hi up to rounding)
    for p in parts:
        p.t = p.t - centre
        p.uniform = p.uniform or textureless
    return ObjectModel(category, cat.symmetry, parts, hi - lo, -centre, texture_salt)


# ------------------------------------------------------------------ rendering


@dataclass
class _Scene:
    """Everything of a sequence but the object and the cameras."""

    light: np.ndarray  # [3] unit, from surfaces to the light (world)
    ambient: float
    background: bool
    ground_texture: np.ndarray  # [S, S, 3] wrapping, albedo in [0, 1]
    sky_texture: np.ndarray  # [S, S, 3] wrapping, colour in [0, 1]


def _tile(rng: np.random.Generator, tint: np.ndarray, size: int = 128) -> np.ndarray:
    """A wrapping ``[size, size, 3]`` texture: three octaves of bilinear value noise
    (contrast-stretched) tinted by ``tint``; cheap to sample (:func:`sample_bilinear`)."""
    ii, jj = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    total = np.zeros((size * size, 3))
    for cells, weight in ((4, 0.5), (16, 0.3), (64, 0.2)):
        grid = rng.random((cells, cells, 3))
        total += weight * sample_bilinear(grid, (jj * cells / size).reshape(-1),
                                          (ii * cells / size).reshape(-1))
    contrast = np.clip(0.5 + 2.2 * (total - 0.5), 0.0, 1.0)
    return np.clip(0.08 + 0.92 * contrast * tint, 0.0, 1.0).reshape(size, size, 3)


def _make_scene(rng: np.random.Generator, background: bool) -> _Scene:
    """Light and background textures drawn from ``rng`` (in a fixed order)."""
    light_az, light_el = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(35, 70))
    light = np.array([math.cos(light_el) * math.cos(light_az),
                      math.cos(light_el) * math.sin(light_az), math.sin(light_el)])
    ambient = float(rng.uniform(0.3, 0.45))
    ground_tint, sky_tint = rng.uniform(0.4, 1.0, 3), rng.uniform(0.4, 1.0, 3)
    ground = 0.5 * ground_tint + 0.4 * _tile(rng, ground_tint)
    sky = 0.45 * sky_tint + 0.5 * _tile(rng, sky_tint)
    return _Scene(light, ambient, background, ground, sky)


_GROUND_TILE = 4.0
"""The ground texture repeats every ``_GROUND_TILE`` object radii."""


def _shade(model: ObjectModel, T_world_obj: np.ndarray, scene: _Scene, origin: np.ndarray,
           dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colour ``[N, 3]``, object hit distance ``t [N]`` (inf: no object in front) and the
    object-frame hit points ``[N, 3]`` of rays from ``origin [3]`` along unit ``dirs``."""
    R, c = T_world_obj[:3, :3], T_world_obj[:3, 3]
    o_obj = (origin - c) @ R
    d_obj = dirs @ R
    t_obj, part, normal_obj = model.intersect(o_obj, d_obj)
    n = len(dirs)
    colour = np.zeros((n, 3))
    if scene.background:
        with np.errstate(divide="ignore", invalid="ignore"):
            t_ground = np.where(dirs[:, 2] < -1e-9, -origin[2] / dirs[:, 2], np.inf)
        t_ground = np.where(t_ground > EPS, t_ground, np.inf)
        ground_pts = origin + np.where(np.isfinite(t_ground), t_ground, 0.0)[:, None] * dirs
        far = np.hypot(ground_pts[:, 0] - c[0], ground_pts[:, 1] - c[1]) > 12 * model.radius
        t_ground = np.where(far, np.inf, t_ground)
    else:
        t_ground = np.full(n, np.inf)
    on_obj = t_obj < t_ground
    t_obj = np.where(on_obj, t_obj, np.inf)
    on_ground = ~on_obj & np.isfinite(t_ground)
    sky = ~on_obj & ~on_ground
    pts_obj = o_obj + np.where(on_obj, t_obj, 0.0)[:, None] * d_obj
    light_obj = scene.light @ R
    scale = model.radius
    # object points
    idx = np.nonzero(on_obj)[0]
    if len(idx):
        nrm = normal_obj[idx]
        lambert = np.clip(nrm @ light_obj, 0.0, None)
        shadow_t, _, _ = model.intersect(pts_obj[idx] + 1e-6 * scale * nrm,
                                         np.broadcast_to(light_obj, nrm.shape))
        lit = np.where(np.isfinite(shadow_t), 0.0, 1.0)
        shading = scene.ambient + (1.0 - scene.ambient) * lambert * lit
        colour[idx] = model.albedo(pts_obj[idx], part[idx]) * shading[:, None]
    idx = np.nonzero(on_ground)[0]
    if len(idx):
        pts = origin + t_ground[idx, None] * dirs[idx]
        p_obj = (pts - c) @ R
        shadow_t, _, _ = model.intersect(p_obj, np.broadcast_to(light_obj, p_obj.shape))
        lit = np.where(np.isfinite(shadow_t), 0.0, 1.0)
        shading = scene.ambient + (1.0 - scene.ambient) * max(scene.light[2], 0.0) * lit
        size = scene.ground_texture.shape[0]
        tx = (pts[:, 0] / (_GROUND_TILE * scale) * size) % size
        ty = (pts[:, 1] / (_GROUND_TILE * scale) * size) % size
        albedo = sample_bilinear(scene.ground_texture, tx, ty)
        colour[idx] = albedo * shading[:, None]
    idx = np.nonzero(sky)[0]
    if len(idx):
        if scene.background:
            d = dirs[idx]
            size = scene.sky_texture.shape[0]
            tx = (np.arctan2(d[:, 1], d[:, 0]) / (2 * math.pi) * size) % size
            ty = (np.arcsin(np.clip(d[:, 2], -1, 1)) / math.pi * 2 * size) % size
            gradient = 0.75 + 0.25 * np.clip(d[:, 2:3], -1, 1)
            colour[idx] = gradient * sample_bilinear(scene.sky_texture, tx, ty)
        else:
            colour[idx] = 0.5
    return colour, t_obj, pts_obj


def render_object_views(model: ObjectModel, T_world_obj: np.ndarray, K: np.ndarray,
                        T_world_cam: np.ndarray, image_size: int, supersample: int = 2,
                        scene: _Scene | None = None, chunk: int = 1 << 15
                        ) -> dict[str, np.ndarray]:
    """Ray-cast an object at any pose with any cameras.

    Args:
        model: the object (:func:`make_object`).
        T_world_obj: ``[4, 4]`` float64.
        K: ``[V, 3, 3]`` or ``[3, 3]`` pixels (OpenCV, pixel centres at +0.5).
        T_world_cam: ``[V, 4, 4]``.
        image_size: width = height in pixels.
        supersample: colour rays per pixel along each axis.
        scene: light and background (:func:`object_sequence` draws one per seed); None: a
            fixed default.
        chunk: rays per batch (memory bound).

    Returns:
        numpy ``images [V, H, W, 3]`` float32 (8-bit levels), ``masks [V, H, W]`` bool,
        ``depth [V, H, W]`` float32, ``nocs [V, H, W, 3]`` float32 (see the module docstring).
    """
    if scene is None:
        scene = _make_scene(np.random.default_rng(0), True)
    T_world_cam = np.asarray(T_world_cam, float).reshape(-1, 4, 4)
    K = np.broadcast_to(np.asarray(K, float), (len(T_world_cam), 3, 3))
    size, s = image_size, supersample
    offsets = (np.arange(s) + 0.5) / s
    sub = (np.arange(size)[:, None] + offsets[None, :]).reshape(-1)
    uu_s, vv_s = np.meshgrid(sub, sub)  # [H*s, W*s]
    n_colour = uu_s.size
    if s % 2:  # the middle sub-pixel ray is the pixel-centre ray (exactly: offset 0.5)
        uu, vv = uu_s.reshape(-1), vv_s.reshape(-1)
        geo = np.arange(n_colour).reshape(size, s, size, s)[:, s // 2, :, s // 2].reshape(-1)
    else:  # one extra ray per pixel through its centre
        centre = np.arange(size) + 0.5
        uu_c, vv_c = np.meshgrid(centre, centre)
        uu = np.concatenate((uu_s.reshape(-1), uu_c.reshape(-1)))
        vv = np.concatenate((vv_s.reshape(-1), vv_c.reshape(-1)))
        geo = np.arange(n_colour, n_colour + size * size)
    V = len(T_world_cam)
    images = np.zeros((V, size, size, 3), np.float32)
    depth = np.zeros((V, size, size), np.float32)
    nocs = np.zeros((V, size, size, 3), np.float32)
    for v in range(V):
        Kv, T = K[v], T_world_cam[v]
        x = (uu - Kv[0, 2] - Kv[0, 1] * (vv - Kv[1, 2]) / Kv[1, 1]) / Kv[0, 0]
        dirs_cam = np.stack((x, (vv - Kv[1, 2]) / Kv[1, 1], np.ones_like(uu)), -1)
        z_per_t = 1.0 / np.linalg.norm(dirs_cam, axis=-1)
        dirs = (dirs_cam * z_per_t[:, None]) @ T[:3, :3].T
        colour = np.zeros((len(dirs), 3))
        t_obj = np.zeros(len(dirs))
        pts = np.zeros((len(dirs), 3))
        for start in range(0, len(dirs), chunk):
            sl = slice(start, start + chunk)
            colour[sl], t_obj[sl], pts[sl] = _shade(model, T_world_obj, scene, T[:3, 3],
                                                    dirs[sl])
        rgb = colour[:n_colour].reshape(size, s, size, s, 3).mean((1, 3))
        images[v] = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.float32) / np.float32(255)
        hit = np.isfinite(t_obj[geo]).reshape(size, size)
        z = np.where(hit.reshape(-1), t_obj[geo] * z_per_t[geo], 0.0)
        depth[v] = z.reshape(size, size)
        coords = pts[geo] / model.nocs_scale + 0.5
        nocs[v] = np.where(hit[..., None], coords.reshape(size, size, 3), 0.0)
    masks = depth > 0
    return {"images": images, "masks": masks, "depth": depth, "nocs": nocs}


# ------------------------------------------------------------------ sequences


@dataclass(eq=False)
class ObjectSequence:
    """One rendered object sequence (torch tensors on the CPU).

    Attributes:
        images: ``[V, H, W, 3]`` float32 in [0, 1] (8-bit levels).
        masks: ``[V, H, W]`` bool, the object (pixel-centre ray); ``masks == depth > 0``.
        depth: ``[V, H, W]`` float32 camera z-depth of the object in metres, 0 elsewhere
            (the ground and sky have no depth here).
        nocs: ``[V, H, W, 3]`` float32 NOCS in [0, 1]^3 on the mask, 0 elsewhere.
        cameras: :class:`~geometry.cameras.Cameras` ``[V]`` float64, OpenCV, ``T_world_cam``.
        T_world_obj: ``[4, 4]`` float64, the object frame (bounding-box centre, z up).
        nocs_scale: metres per NOCS unit (the bounding box's diagonal).
        size: ``[3]`` float64 bounding-box extents in metres (object axes).
        category: a key of :data:`CATEGORIES`.
        symmetry: ``none`` | ``axis`` | ``near`` (about the object's z axis).
        seed: the sequence's seed.
        textureless: the object is painted in uniform colours.
    """

    images: Tensor
    masks: Tensor
    depth: Tensor
    nocs: Tensor
    cameras: Cameras
    T_world_obj: Tensor
    nocs_scale: float
    size: Tensor
    category: str
    symmetry: Symmetry
    seed: int
    textureless: bool = False

    @property
    def num_views(self) -> int:
        return int(self.images.shape[0])

    @property
    def T_world_nocs(self) -> Tensor:
        """``[4, 4]`` float64 similarity mapping NOCS coordinates to world points:
        ``p_world = T_world_obj @ ((nocs - 0.5) * nocs_scale)``."""
        S = torch.eye(4, dtype=torch.float64)
        S[:3, :3] *= self.nocs_scale
        S[:3, 3] = -0.5 * self.nocs_scale
        return self.T_world_obj.double() @ S

    def subset(self, views: Sequence[int] | Tensor) -> ObjectSequence:
        """The sequence restricted to (and reordered as) ``views``."""
        idx = torch.as_tensor(views, dtype=torch.long)
        cams = self.cameras
        return replace(self, images=self.images[idx], masks=self.masks[idx],
                       depth=self.depth[idx], nocs=self.nocs[idx],
                       cameras=Cameras(K=cams.K[idx], T_world_cam=cams.T_world_cam[idx],
                                       width=cams.width[idx], height=cams.height[idx]))


def scene_and_cameras(seed: int, config: ObjectSequenceConfig
                      ) -> tuple[ObjectModel, np.ndarray, _Scene, np.ndarray, np.ndarray, bool]:
    """Draw everything of a sequence from its seed, in a fixed order: ``(model,
    T_world_obj, scene, K, camera poses, textureless)``. Public so that other views of the
    same object (e.g. SpaRP's fixed novel views) can be rendered."""
    from geometry.se3 import look_at

    rng = np.random.default_rng([seed, 0x0B1EC7])
    names = config.resolved_categories()
    category = names[int(rng.integers(len(names)))]
    textureless = bool(rng.random() < config.textureless)
    salt = int(rng.integers(1 << 20))
    model = make_object(category, np.random.default_rng([seed, 1]), textureless, salt)
    yaw = rng.uniform(0.0, 2.0 * math.pi)
    c, s = math.cos(yaw), math.sin(yaw)
    T_world_obj = np.eye(4)
    T_world_obj[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T_world_obj[:3, 3] = (0.0, 0.0, 0.5 * model.size[2])
    scene = _make_scene(np.random.default_rng([seed, 2]), config.background)
    fov = config.fov_deg + config.fov_jitter_deg * rng.uniform(-1, 1)
    f = 0.5 * config.image_size / math.tan(math.radians(fov) / 2)
    K = np.array([[f, 0, config.image_size / 2], [0, f, config.image_size / 2], [0, 0, 1.0]])
    fill = model.radius / math.sin(math.radians(fov) / 2)
    elevation0 = rng.uniform(*config.elevation_range_deg)
    distance0 = rng.uniform(*config.distance_range) * fill
    azimuth0 = rng.uniform(0, 360.0)
    V = config.views
    poses = []
    centre = T_world_obj[:3, 3]
    for i in range(V):
        az = math.radians(azimuth0 + config.azimuth_span_deg
                          * (i + 0.5 + config.orbit_jitter * rng.uniform(-0.5, 0.5)) / V)
        el = math.radians(elevation0 + config.elevation_jitter_deg * rng.uniform(-1, 1))
        dist = distance0 * (1.0 + config.distance_jitter * rng.uniform(-1, 1))
        target = centre + config.target_jitter * model.radius * rng.uniform(-1, 1, 3)
        eye = centre + dist * np.array([math.cos(el) * math.cos(az),
                                        math.cos(el) * math.sin(az), math.sin(el)])
        T = look_at(eye, target)
        roll = math.radians(config.roll_jitter_deg * rng.uniform(-1, 1))
        cr, sr = math.cos(roll), math.sin(roll)
        T[:3, :3] = T[:3, :3] @ np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1.0]])
        poses.append(T)
    return model, T_world_obj, scene, K, np.stack(poses), textureless


def _render_arrays(seed: int, config: ObjectSequenceConfig) -> dict:
    """A sequence as plain numpy arrays and scalars (what worker processes return)."""
    model, T_world_obj, scene, K, poses, textureless = scene_and_cameras(seed, config)
    maps = render_object_views(model, T_world_obj, K, poses, config.image_size,
                               config.supersample, scene)
    return {**maps, "K": np.broadcast_to(K, (len(poses), 3, 3)).copy(), "T_world_cam": poses,
            "T_world_obj": T_world_obj, "nocs_scale": model.nocs_scale, "size": model.size,
            "category": model.category, "symmetry": model.symmetry, "seed": seed,
            "textureless": textureless}


def _to_sequence(a: dict) -> ObjectSequence:
    V, H, W = a["depth"].shape
    cameras = Cameras(K=torch.from_numpy(np.asarray(a["K"], np.float64)),
                      T_world_cam=torch.from_numpy(np.asarray(a["T_world_cam"], np.float64)),
                      width=W, height=H)
    return ObjectSequence(
        images=torch.from_numpy(np.ascontiguousarray(a["images"], np.float32)),
        masks=torch.from_numpy(np.ascontiguousarray(a["masks"], bool)),
        depth=torch.from_numpy(np.ascontiguousarray(a["depth"], np.float32)),
        nocs=torch.from_numpy(np.ascontiguousarray(a["nocs"], np.float32)),
        cameras=cameras, T_world_obj=torch.from_numpy(np.asarray(a["T_world_obj"], np.float64)),
        nocs_scale=float(a["nocs_scale"]),
        size=torch.from_numpy(np.asarray(a["size"], np.float64)),
        category=str(a["category"]), symmetry=str(a["symmetry"]),  # type: ignore[arg-type]
        seed=int(a["seed"]), textureless=bool(a["textureless"]))


_DEFAULT = ObjectSequenceConfig()


def object_sequence(seed: int, config: ObjectSequenceConfig = _DEFAULT) -> ObjectSequence:
    """Render the sequence of ``seed`` (deterministic: the same seed and config give the same
    tensors, bit for bit, in any process)."""
    check_object_config(config)
    return _to_sequence(_render_arrays(int(seed), config))


def _worker_init() -> None:
    torch.set_num_threads(1)


def object_sequences(first_seed: int, count: int, config: ObjectSequenceConfig = _DEFAULT,
                     workers: int = 0) -> Iterator[ObjectSequence]:
    """The sequences of seeds ``first_seed .. first_seed + count - 1``, in that order.

    Args:
        workers: worker processes (0 or 1: render in this process). Each sequence is the
            same whatever the number of workers.
    """
    import concurrent.futures
    import multiprocessing

    check_object_config(config)
    seeds = range(int(first_seed), int(first_seed) + int(count))
    if workers <= 1:
        for seed in seeds:
            yield _to_sequence(_render_arrays(seed, config))
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context(method),
            initializer=_worker_init) as pool:
        pending: deque = deque()
        it = iter(seeds)
        for seed in it:
            pending.append(pool.submit(_render_arrays, seed, config))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(_render_arrays, nxt, config))
            yield _to_sequence(result)


# ------------------------------------------------------------------ disk cache

_FORMAT = "sparseview-object-sequences-v1"
_ARRAYS = ("images", "masks", "depth", "nocs", "K", "T_world_cam", "T_world_obj",
           "nocs_scale", "size", "category", "symmetry", "seed", "textureless")


def write_object_dataset(folder: str | os.PathLike, first_seed: int, count: int,
                         config: ObjectSequenceConfig = _DEFAULT, workers: int = 0,
                         shard_size: int = 64, quiet: bool = True) -> Path:
    """Render ``count`` sequences (seeds ``first_seed ..``) into ``folder`` (replaced
    atomically): ``meta.json`` (format, config, seeds, shard sizes) and
    ``shard_NNNNN.npz`` (uncompressed; images as uint8, the rest as in
    :class:`ObjectSequence`). :func:`read_object_dataset` gives the sequences back exactly.
    """
    from geometry.errors import UserError
    from geometry.io.atomic import atomic_directory
    from geometry.progress import progress_bar

    check_object_config(config)
    if count < 1 or shard_size < 1:
        raise UserError("write at least one sequence, in shards of at least one.")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file; give a folder for the object dataset.")
    shards: list[int] = []
    with atomic_directory(folder) as tmp, progress_bar("objects", quiet=quiet,
                                                       transient=True) as progress:
        task = progress.add_task("rendering objects", total=count)
        batch: list[dict] = []

        def flush() -> None:
            arrays = {k: np.stack([np.asarray(b[k]) for b in batch]) for k in _ARRAYS}
            arrays["images"] = np.round(arrays["images"] * 255.0).astype(np.uint8)
            np.savez(tmp / f"shard_{len(shards):05d}.npz", **arrays)
            shards.append(len(batch))
            batch.clear()

        for seq in object_sequences(first_seed, count, config, workers):
            batch.append(_sequence_arrays(seq))
            progress.advance(task)
            if len(batch) == shard_size:
                flush()
        if batch:
            flush()
        meta = {"format": _FORMAT, "config": asdict(config), "first_seed": int(first_seed),
                "count": int(count), "shards": shards}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return folder


def _sequence_arrays(seq: ObjectSequence) -> dict:
    return {"images": seq.images.numpy(), "masks": seq.masks.numpy(), "depth": seq.depth.numpy(),
            "nocs": seq.nocs.numpy(), "K": seq.cameras.K.numpy(),
            "T_world_cam": seq.cameras.T_world_cam.numpy(), "T_world_obj": seq.T_world_obj.numpy(),
            "nocs_scale": seq.nocs_scale, "size": seq.size.numpy(), "category": seq.category,
            "symmetry": seq.symmetry, "seed": seq.seed, "textureless": seq.textureless}


class ObjectDataset(Sequence[ObjectSequence]):
    """The sequences of a folder written by :func:`write_object_dataset` (shards load
    lazily; the last one read stays in memory)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        from geometry.errors import UserError

        self.folder = Path(folder)
        file = self.folder / "meta.json"
        try:
            meta = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise UserError(f"{self.folder} has no readable meta.json; it is not an object "
                            "dataset written by write_object_dataset.") from None
        if meta.get("format") != _FORMAT:
            raise UserError(f"{file} is not a {_FORMAT} dataset.")
        known = {f.name for f in fields(ObjectSequenceConfig)}
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()
               if k in known}
        self.config = ObjectSequenceConfig(**cfg)
        self.first_seed = int(meta["first_seed"])
        self.shards = [int(n) for n in meta["shards"]]
        self._starts = np.cumsum([0] + self.shards)
        self._cache: tuple[int, dict] | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _shard(self, k: int) -> dict:
        if self._cache is None or self._cache[0] != k:
            with np.load(self.folder / f"shard_{k:05d}.npz", allow_pickle=False) as npz:
                self._cache = (k, {name: npz[name] for name in npz.files})
        return self._cache[1]

    def __getitem__(self, i: int) -> ObjectSequence:  # type: ignore[override]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self._starts, i, side="right") - 1)
        data = self._shard(k)
        j = i - int(self._starts[k])
        a = {name: data[name][j] for name in _ARRAYS}
        a["images"] = a["images"].astype(np.float32) / 255.0
        return _to_sequence(a)


def read_object_dataset(folder: str | os.PathLike) -> ObjectDataset:
    """The dataset written by :func:`write_object_dataset` (a sequence of
    :class:`ObjectSequence`)."""
    return ObjectDataset(folder)
