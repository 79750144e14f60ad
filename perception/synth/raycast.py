"""Vectorised ray casting against the ground plane and upright primitives.

All rays of one call share one origin (a LiDAR or a camera centre) and are laid out on a
2D grid (LiDAR: azimuth column x ring; camera: pixel row x column). Each object is tested
only against the rectangles of that grid the caller selects for it (the sensor culls by
azimuth span or by the object's 2D box), so a scan costs about
``rays + sum(rays near each object)``. Surface normals and hit positions in the object's
frame are computed afterwards for the winning rays only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception.synth.world import BOX, CONE, CYLINDER, SynthObject

GROUND = -1
NOTHING = -2
_EPS = 1e-12

Rect = tuple[slice, slice]


class PrimitiveTable:
    """The primitives of all objects of a scene as flat arrays (row = one primitive)."""

    def __init__(self, objects: list[SynthObject]) -> None:
        self.offsets = np.zeros(len(objects) + 1, np.int64)
        prims = []
        for i, obj in enumerate(objects):
            self.offsets[i + 1] = self.offsets[i] + len(obj.primitives)
            prims.extend(obj.primitives)
        self.primitives = prims
        self.kind = np.array([p.kind for p in prims], np.int64)
        # float32: the casting is memory-bound, and millimetres at 100 m are plenty.
        self.center = np.array([p.center for p in prims], np.float32).reshape(-1, 3)
        self.half = np.array([p.half for p in prims], np.float32).reshape(-1, 3)
        self.object_of = np.repeat(np.arange(len(objects)), np.diff(self.offsets))


@dataclass
class RayHits:
    """Nearest hit of every ray (flattened grid order), and the surface at the rays that
    hit an object (``rows``; compact arrays aligned with it).

    ``obj`` is the object hit, ``GROUND`` or ``NOTHING``; ``prim`` the row of the hit
    primitive in the :class:`PrimitiveTable` (-1 for none). The ground's normal is +z.
    """

    t: np.ndarray  # [R] float32 distance along the unit ray, inf where nothing was hit
    obj: np.ndarray  # [R] int64
    prim: np.ndarray  # [R] int64
    rows: np.ndarray  # [M] indices of the rays that hit an object
    local: np.ndarray  # [M, 3] float32 hit point in the hit object's frame
    normal: np.ndarray  # [M, 3] float32 unit surface normal, global frame


def _box_t(ox, oy, oz, dx, dy, dz, ix, iy, iz, center, half):
    """Entry distance of rays into an axis-aligned box (inf for a miss)."""
    t_enter = None
    t_exit = None
    for o, inv, c, h in ((ox, ix, center[0], half[0]), (oy, iy, center[1], half[1]),
                         (oz, iz, center[2], half[2])):
        t1 = (c - h - o) * inv
        t2 = (c + h - o) * inv
        near = np.minimum(t1, t2)
        far = np.maximum(t1, t2)
        t_enter = near if t_enter is None else np.maximum(t_enter, near)
        t_exit = far if t_exit is None else np.minimum(t_exit, far)
    return np.where((t_enter <= t_exit) & (t_enter > 1e-6), t_enter, np.inf)


def _cylinder_t(ox, oy, oz, dx, dy, dz, center, half):
    """Entry distance of rays into a vertical cylinder (side or top cap)."""
    radius, height = half[0], half[2]
    rx, ry, rz = ox - center[0], oy - center[1], oz - center[2]
    a = dx * dx + dy * dy
    b = 2.0 * (rx * dx + ry * dy)
    c = rx * rx + ry * ry - radius * radius
    disc = b * b - 4.0 * a * c
    t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * np.maximum(a, _EPS))
    z_side = rz + t_side * dz
    t_side = np.where((disc >= 0) & (t_side > 1e-6) & (z_side >= 0) & (z_side <= height),
                      t_side, np.inf)
    if rz <= height:  # the origin is below the top: the cap can only be seen from inside
        return t_side
    t_top = (height - rz) / np.minimum(dz, -_EPS)
    x_top, y_top = rx + t_top * dx, ry + t_top * dy
    t_top = np.where((dz < 0) & (x_top * x_top + y_top * y_top <= radius * radius), t_top,
                     np.inf)
    return np.minimum(t_side, t_top)


def _cone_t(ox, oy, oz, dx, dy, dz, center, half):
    """Entry distance of rays into an upright cone (base radius, apex above the base)."""
    radius, height = half[0], half[2]
    k2 = (radius / height) ** 2
    rx, ry, rz = ox - center[0], oy - center[1], oz - center[2]
    gap = height - rz  # apex height above the origin
    a = dx * dx + dy * dy - k2 * dz * dz
    b = 2.0 * (rx * dx + ry * dy + k2 * gap * dz)
    c = rx * rx + ry * ry - k2 * gap * gap
    disc = b * b - 4.0 * a * c
    sq = np.sqrt(np.maximum(disc, 0.0))
    safe_a = np.where(np.abs(a) < _EPS, _EPS, a)
    best = np.full(np.shape(dx), np.inf)
    for root in ((-b - sq) / (2 * safe_a), (-b + sq) / (2 * safe_a)):
        z = rz + root * dz
        ok = (disc >= 0) & (root > 1e-6) & (z >= 0) & (z <= height)
        best = np.minimum(best, np.where(ok, root, np.inf))
    return best


@dataclass
class Placement:
    """An object posed in the global frame at one instant."""

    xy: np.ndarray  # [2] footprint centre, global
    yaw: float  # global heading


def cast(
    origin: np.ndarray,
    dirs: np.ndarray,
    table: PrimitiveTable,
    placements: list[Placement],
    rects: list[list[Rect]],
    ground_z: float = 0.0,
    hit_counts: np.ndarray | None = None,
) -> RayHits:
    """Nearest hit of each ray against the ground plane ``z = ground_z`` and the objects.

    Args:
        origin: ``[3]`` global ray origin.
        dirs: ``[A, B, 3]`` global unit directions on the sensor's ray grid.
        table: the scene's primitives.
        placements: per object, its pose now.
        rects: per object, the grid rectangles to test (empty list: skip it).
        hit_counts: optional ``[n_objects]`` int array; each object's number of rays that
            hit it, occluded or not, is added to it (for visibility levels).
    """
    shape = dirs.shape[:2]
    dirs = np.ascontiguousarray(dirs, dtype=np.float32)
    dx, dy, dz = (np.ascontiguousarray(dirs[..., k]) for k in range(3))
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = (ground_z - origin[2]) / dz
    hits_ground = (dz < -1e-6) & (t_ground > 0)
    t_best = np.where(hits_ground, t_ground, np.float32(np.inf))
    obj = np.where(hits_ground, GROUND, NOTHING).astype(np.int64)
    prim = np.full(shape, -1, np.int64)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for index, (placement, object_rects) in enumerate(zip(placements, rects, strict=True)):
            if not object_rects:
                continue
            c, s = np.cos(placement.yaw), np.sin(placement.yaw)
            rel = origin - np.array([placement.xy[0], placement.xy[1], 0.0])
            ox, oy, oz = c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1], rel[2]
            c, s = np.float32(c), np.float32(s)
            first, last = table.offsets[index], table.offsets[index + 1]
            for rect in object_rects:
                gx, gy, gz = dx[rect], dy[rect], dz[rect]
                lx, ly = c * gx + s * gy, -s * gx + c * gy
                inv = None
                t_obj = np.full(gx.shape, np.inf, np.float32)
                p_obj = np.full(gx.shape, -1, np.int64)
                for row in range(first, last):
                    kind = table.kind[row]
                    if kind == BOX:
                        if inv is None:
                            inv = (1.0 / lx, 1.0 / ly, 1.0 / gz)
                        t = _box_t(ox, oy, oz, lx, ly, gz, *inv, table.center[row],
                                   table.half[row])
                    elif kind == CYLINDER:
                        t = _cylinder_t(ox, oy, oz, lx, ly, gz, table.center[row],
                                        table.half[row])
                    else:
                        t = _cone_t(ox, oy, oz, lx, ly, gz, table.center[row], table.half[row])
                    if row == first:
                        t_obj = t
                        p_obj[np.isfinite(t)] = row
                    else:
                        closer = t < t_obj
                        p_obj[closer] = row
                        np.minimum(t_obj, t, out=t_obj)
                if hit_counts is not None:
                    hit_counts[index] += int(np.count_nonzero(p_obj >= 0))
                t_view = t_best[rect]
                closer = t_obj < t_view
                np.copyto(t_view, t_obj, where=closer)
                np.copyto(obj[rect], index, where=closer)
                np.copyto(prim[rect], p_obj, where=closer)

    t_flat, obj_flat, prim_flat = t_best.ravel(), obj.ravel(), prim.ravel()
    rows = np.flatnonzero(obj_flat >= 0)
    local, normal = _surface(origin, dirs.reshape(-1, 3)[rows], t_flat[rows], obj_flat[rows],
                             prim_flat[rows], table, placements)
    return RayHits(t_flat, obj_flat, prim_flat, rows, local, normal)


def _surface(origin, dirs, t, obj, prim, table, placements):
    """Hit points in the objects' frames and global normals, ``([N, 3], [N, 3])``.

    Branch-free on 1D component arrays: every formula is evaluated for every row and the
    right one is picked with ``np.where`` (much faster than boolean-mask indexing).
    """
    if t.size == 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
    xs = np.array([p.xy[0] for p in placements], np.float32)[obj]
    ys = np.array([p.xy[1] for p in placements], np.float32)[obj]
    yaw = np.array([p.yaw for p in placements], np.float32)[obj]
    c, s = np.cos(yaw), np.sin(yaw)
    origin = origin.astype(np.float32)
    rx = origin[0] + dirs[:, 0] * t - xs
    ry = origin[1] + dirs[:, 1] * t - ys
    lz = origin[2] + dirs[:, 2] * t
    lx = c * rx + s * ry
    ly = -s * rx + c * ry
    kind = table.kind[prim]
    cx, cy, cz = table.center[prim].T
    hx, hy, hz = table.half[prim].T
    # Boxes: the face whose normalised distance from the centre is largest.
    qx, qy, qz = (lx - cx) / hx, (ly - cy) / hy, (lz - cz) / hz
    ax, ay, az = np.abs(qx), np.abs(qy), np.abs(qz)
    face_x = (ax >= ay) & (ax >= az)
    face_y = ~face_x & (ay >= az)
    face_z = ~face_x & ~face_y
    # Cylinders and cones: radial, tilted up by the cone's slope; cylinder tops point up.
    px, py = lx - cx, ly - cy
    rho = np.sqrt(px * px + py * py) + 1e-9
    is_box = kind == BOX
    slope = np.where(kind == CONE, hx / hz, np.float32(0.0))
    top = (kind == CYLINDER) & (lz >= cz + hz - 1e-6)
    norm = np.sqrt(1.0 + slope * slope)
    nx = np.where(is_box, np.where(face_x, np.sign(qx), 0.0), np.where(top, 0.0, px / rho / norm))
    ny = np.where(is_box, np.where(face_y, np.sign(qy), 0.0), np.where(top, 0.0, py / rho / norm))
    nz = np.where(is_box, np.where(face_z, np.sign(qz), 0.0), np.where(top, 1.0, slope / norm))
    local = np.stack([lx, ly, lz], axis=1)
    normal = np.stack([c * nx - s * ny, s * nx + c * ny, nz], axis=1)
    return local, normal
