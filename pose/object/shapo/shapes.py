"""Parametric object categories in the spirit of NOCS, as exact signed distance functions.

Six categories (NOCS's order): bottle, bowl, camera, can, laptop, mug. Each instance is a
union of parts with exact SDFs (a solid of revolution of a 2D polygon, a clipped torus,
oriented boxes, a capped cylinder), so the union is a lower bound of the distance outside
and sphere tracing it is safe.

Object frame (NOCS): centred on the instance's bounding box, y up (the axis of the
revolved categories), the mug's handle along +x, the camera's lens and the laptop's open
side along +z. The NOCS normalised frame divides by the box diagonal, so NOCS coordinates
``p / diag + 0.5`` lie in [0, 1]. All lengths are metres, float64 numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

CATEGORIES = ("bottle", "bowl", "camera", "can", "laptop", "mug")
"""NOCS's six categories, in its class-id order (id = index + 1; 0 is background)."""

__all__ = ["CATEGORIES", "Shape", "random_shape", "polygon_sdf"]


def polygon_sdf(p: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Signed distance ``[N]`` of 2D points ``[N, 2]`` to a closed polygon ``[M, 2]``
    (negative inside; exact, after Inigo Quilez's ``sdPolygon``)."""
    d = ((p - poly[0]) ** 2).sum(-1)
    s = np.ones(len(p))
    for i in range(len(poly)):
        vi, vj = poly[i], poly[i - 1]
        e, w = vj - vi, p - vi
        b = w - e * np.clip((w @ e) / (e @ e), 0.0, 1.0)[:, None]
        d = np.minimum(d, (b * b).sum(-1))
        c1, c2 = p[:, 1] >= vi[1], p[:, 1] < vj[1]
        c3 = e[0] * w[:, 1] > e[1] * w[:, 0]
        flip = (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
        s = np.where(flip, -s, s)
    return s * np.sqrt(d)


def _box_sdf(q: np.ndarray, half: np.ndarray) -> np.ndarray:
    d = np.abs(q) - half
    return (np.linalg.norm(np.maximum(d, 0.0), axis=-1)
            + np.minimum(d.max(-1), 0.0))


def _rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


@dataclass
class Part:
    """One exact-SDF part in the build frame.

    ``kind``: ``revolve`` (``poly [M, 2]`` in (radius, y)), ``torus`` (in the xy plane,
    ``centre``, major ``radius``, minor ``minor``, kept where x >= ``clip_x``), ``box``
    (``centre``, ``half``, rotation ``R``), ``cylinder`` (axis z, ``centre``, ``radius``,
    ``half`` [.., .., half-length]).
    """

    kind: str
    centre: np.ndarray = field(default_factory=lambda: np.zeros(3))
    half: np.ndarray = field(default_factory=lambda: np.zeros(3))
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    poly: np.ndarray | None = None
    radius: float = 0.0
    minor: float = 0.0
    clip_x: float = -np.inf
    handle: bool = False
    """The mug's handle (its visibility decides the mug's symmetry)."""

    def sdf(self, p: np.ndarray) -> np.ndarray:
        q = p - self.centre
        if self.kind == "revolve":
            rho = np.linalg.norm(q[:, [0, 2]], axis=-1)
            return polygon_sdf(np.stack([rho, q[:, 1]], -1), self.poly)
        if self.kind == "torus":
            ring = np.stack([np.linalg.norm(q[:, :2], axis=-1) - self.radius, q[:, 2]], -1)
            return np.maximum(np.linalg.norm(ring, axis=-1) - self.minor, self.clip_x - p[:, 0])
        if self.kind == "box":
            return _box_sdf(q @ self.R, self.half)
        # capped cylinder along z
        d = np.stack([np.linalg.norm(q[:, :2], axis=-1) - self.radius,
                      np.abs(q[:, 2]) - self.half[2]], -1)
        return np.minimum(d.max(-1), 0.0) + np.linalg.norm(np.maximum(d, 0.0), axis=-1)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned ``lo, hi [3]`` of the part (build frame)."""
        c = self.centre
        if self.kind == "revolve":
            r = self.poly[:, 0].max()
            return (c + [-r, self.poly[:, 1].min(), -r], c + [r, self.poly[:, 1].max(), r])
        if self.kind == "torus":
            e = self.radius + self.minor
            return (np.array([max(c[0] - e, self.clip_x), c[1] - e, c[2] - self.minor]),
                    np.array([c[0] + e, c[1] + e, c[2] + self.minor]))
        if self.kind == "box":
            corners = (np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1)
                                 for sz in (-1, 1)]) * self.half) @ self.R.T
            return c + corners.min(0), c + corners.max(0)
        h = np.array([self.radius, self.radius, self.half[2]])
        return c - h, c + h


@dataclass
class Shape:
    """One instance of a category: its parts (build frame) and its box (object frame)."""

    category: str
    parts: list[Part]
    params: dict[str, float]
    tint: np.ndarray
    """``[3]`` colour of the texture."""
    texture_freq: float
    salt: int
    centre: np.ndarray = field(init=False)
    size: np.ndarray = field(init=False)
    """``[3]`` extents of the bounding box along x, y, z (metres)."""

    def __post_init__(self) -> None:
        lo = np.min([p.bounds()[0] for p in self.parts], axis=0)
        hi = np.max([p.bounds()[1] for p in self.parts], axis=0)
        self.centre, self.size = 0.5 * (lo + hi), hi - lo

    @property
    def diag(self) -> float:
        """Length of the box diagonal: the NOCS normalisation (metres)."""
        return float(np.linalg.norm(self.size))

    def sdf(self, p: np.ndarray) -> np.ndarray:
        """Signed distance ``[N]`` (metres) at object-frame points ``[N, 3]`` (metres)."""
        q = p + self.centre
        return np.min([part.sdf(q) for part in self.parts], axis=0)

    def sdf_unit(self, x: np.ndarray) -> np.ndarray:
        """SDF in the NOCS-normalised frame (``x = p / diag``; distances / diag)."""
        return self.sdf(x * self.diag) / self.diag

    def on_handle(self, p: np.ndarray, tol: float = 1e-3) -> np.ndarray:
        """``[N]`` bool: surface points ``[N, 3]`` (object frame) that lie on the handle."""
        q = p + self.centre
        out = np.zeros(len(p), bool)
        for part in self.parts:
            if part.handle:
                out |= part.sdf(q) < tol
        return out

    def albedo(self, p: np.ndarray) -> np.ndarray:
        """``[N, 3]`` surface colour in [0, 1] at object-frame points (metres): solid noise
        attached to the object, so it moves with it."""
        from reconstruction.procedural.textures import solid_albedo

        return solid_albedo(p / self.diag, self.texture_freq, self.tint, self.salt)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def random_shape(category: str, rng: np.random.Generator) -> Shape:
    """A random instance of ``category`` (random proportions, size, colour and texture)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    parts: list[Part]
    if category == "bottle":
        r, h = _u(rng, 0.028, 0.045), _u(rng, 0.16, 0.28)
        body, neck = h * _u(rng, 0.55, 0.7), _u(rng, 0.25, 0.45) * r
        shoulder = h * _u(rng, 0.1, 0.2)
        poly = np.array([[0, 0], [r, 0], [r, body], [neck, body + shoulder], [neck, h],
                         [0, h]], np.float64)
        params = {"radius": r, "height": h, "body": body, "neck": neck}
        parts = [Part("revolve", poly=poly)]
    elif category == "can":
        r, h = _u(rng, 0.028, 0.045), _u(rng, 0.08, 0.14)
        b = 0.1 * r
        poly = np.array([[0, 0], [r - b, 0], [r, b], [r, h - b], [r - b, h], [0, h]],
                        np.float64)
        params = {"radius": r, "height": h}
        parts = [Part("revolve", poly=poly)]
    elif category == "bowl":
        r, h = _u(rng, 0.06, 0.1), _u(rng, 0.04, 0.075)
        foot, t = r * _u(rng, 0.35, 0.55), _u(rng, 0.005, 0.009)
        mid = (foot + 0.75 * (r - foot), 0.55 * h)
        poly = np.array([[0, 0], [foot, 0], mid, [r, h], [r - t, h],
                         [mid[0] - t, mid[1] + 0.3 * t], [foot - t, t], [0, t]], np.float64)
        params = {"radius": r, "height": h, "foot": foot, "wall": t}
        parts = [Part("revolve", poly=poly)]
    elif category == "mug":
        r, h, t = _u(rng, 0.035, 0.05), _u(rng, 0.08, 0.11), _u(rng, 0.004, 0.007)
        poly = np.array([[0, 0], [r, 0], [r, h], [r - t, h], [r - t, t], [0, t]], np.float64)
        hr, hm = h * _u(rng, 0.25, 0.33), _u(rng, 0.005, 0.009)
        params = {"radius": r, "height": h, "wall": t, "handle": hr}
        parts = [Part("revolve", poly=poly),
                 Part("torus", centre=np.array([r, 0.5 * h, 0.0]), radius=hr, minor=hm,
                      clip_x=r - t, handle=True)]
    elif category == "laptop":
        w, d = _u(rng, 0.26, 0.36), _u(rng, 0.18, 0.25)
        tb, ts = _u(rng, 0.012, 0.022), _u(rng, 0.006, 0.01)
        alpha = math.radians(_u(rng, 95.0, 130.0))
        base = Part("box", centre=np.array([0.0, tb / 2, 0.0]),
                    half=np.array([w / 2, tb / 2, d / 2]))
        hinge = np.array([0.0, tb, -d / 2])
        direction = np.array([0.0, math.sin(alpha), math.cos(alpha)])
        R = _rot_x(-alpha)  # local z -> direction, local y -> the screen's normal
        screen = Part("box", centre=hinge + direction * (0.97 * d / 2) + R @ [0, ts / 2, 0],
                      half=np.array([w / 2, ts / 2, 0.97 * d / 2]), R=R)
        params = {"width": w, "depth": d, "opening_deg": math.degrees(alpha)}
        parts = [base, screen]
    else:  # camera
        w, h, d = _u(rng, 0.1, 0.14), _u(rng, 0.06, 0.09), _u(rng, 0.035, 0.055)
        lr, ll = _u(rng, 0.2, 0.3) * h, _u(rng, 0.03, 0.07)
        body = Part("box", centre=np.array([0.0, h / 2, 0.0]), half=np.array([w / 2, h / 2,
                                                                                d / 2]))
        lens = Part("cylinder", centre=np.array([_u(rng, -0.1, 0.1) * w, 0.45 * h,
                                                 d / 2 + ll / 2]),
                    radius=lr, half=np.array([0.0, 0.0, ll / 2]))
        grip = Part("box", centre=np.array([-0.38 * w, h * 0.5, d / 2 + 0.006]),
                    half=np.array([0.1 * w, 0.45 * h, 0.006]))
        top = Part("box", centre=np.array([0.25 * w, h + 0.008, 0.0]),
                   half=np.array([0.12 * w, 0.008, 0.3 * d]))
        params = {"width": w, "height": h, "depth": d, "lens": lr}
        parts = [body, lens, grip, top]
    tint = 0.25 + 0.75 * rng.random(3)
    return Shape(category, parts, params, tint, _u(rng, 3.0, 9.0), int(rng.integers(1 << 20)))
