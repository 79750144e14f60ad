"""The two procedural worlds (scene contents) and their objects' canonical frames.

World frame: z up, metres.

- :class:`QuadWorld` (the ``arc`` scenes, the shipped sample): textured rectangles, a floor,
  a back wall and three boxes, under a sky gradient, flat Lambertian shading, no shadows.
  Textures are random value noise under random coloured discs and bars (image textures,
  :func:`~.textures.image_texture`), one part of a texture per face::

            back wall (y = 1.6)
        +---------------------------+
        |     [box]      [box]      |     floor z = 0
        +---------------------------+

- :class:`ObjectWorld` (the ``orbit`` / ``forward`` scenes): textured spheres and yawed boxes on
  a ground square ``[-3, 3]^2`` (and, for ``forward``, a back wall at ``y = 2.5``), one
  directional light with hard shadows, black background. Textures are solid (3D) noise in
  world coordinates, so every surface point has one colour whatever the view.

Every world lists its :class:`SceneObject` s: the things masks, object ids and object
coordinates are about (the boxes and spheres; never the floor, ground or walls).

Textureless objects (``SceneConfig.textureless``, :func:`textureless_objects`): the largest
objects can be painted one uniform colour instead of their texture, against the textured
floor and walls: the surfaces where feature matching and block stereo find nothing (DTU's
white walls). Their pixels then vary only with the lighting: not at all on a quad-world box
face (flat shading), smoothly across an object-world sphere, and where a shadow falls.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from reconstruction.procedural.raycast import Primitive, Quad, Solid, cast_rays
from reconstruction.procedural.textures import image_texture, sample_bilinear, solid_albedo

GROUND_HALF = 3.0
"""Object world: the ground square is ``[-3, 3]^2`` at ``z = 0``."""
WALL_Y = 2.5
"""Object world, forward scenes: the back wall is the plane ``y = WALL_Y``."""


@dataclass
class SceneObject:
    """An object's canonical frame and bounding box, for object masks and coordinates.

    The object frame ``obj`` has its origin at the centre of the object's bounding box and its
    axes along the box's edges (z up for every object here)::

              z
              |  y
              | /
              o---- x        box = [-size/2, size/2] in this frame

    The object coordinates of a surface point ``p_world`` are ``p_obj / size + 0.5`` with
    ``p_obj = T_obj_world p_world``: the bounding box maps onto ``[0, 1]^3``, each axis
    scaled on its own (NOCS-like; ``(0, 0, 0)`` is the box's ``-x, -y, -z`` corner).
    """

    kind: str
    """``sphere`` or ``box``."""
    T_world_obj: np.ndarray  # [4, 4]
    size: np.ndarray  # [3] bounding-box extents along the object's x, y, z (metres)
    textureless: bool = False
    """Painted one uniform colour (no texture)."""

    def object_coords(self, pts_world: np.ndarray) -> np.ndarray:
        """``[N, 3]`` object coordinates (in ``[0, 1]^3`` on the object) of ``[N, 3]`` points."""
        pts_obj = (pts_world - self.T_world_obj[:3, 3]) @ self.T_world_obj[:3, :3]
        return pts_obj / self.size + 0.5

    def describe(self) -> dict:
        """A JSON-able description (``T_world_obj`` as nested lists)."""
        return {"kind": self.kind, "T_world_obj": self.T_world_obj.tolist(),
                "size": self.size.tolist(), "textureless": self.textureless}


def textureless_objects(sizes: list[np.ndarray], share: float) -> list[int]:
    """Indices (0-based, ascending) of the objects to paint one colour: the
    ``ceil(share * n)`` largest by bounding-box volume (ties: the first), none for 0.

    Args:
        sizes: each object's ``[3]`` bounding-box extents.
        share: in ``[0, 1]``.
    """
    count = math.ceil(share * len(sizes) - 1e-9) if share > 0 else 0
    order = sorted(range(len(sizes)), key=lambda i: (-float(np.prod(sizes[i])), i))
    return sorted(order[:count])


def _extent(objects: list[SceneObject]) -> float:
    """Diameter of a sphere about the world origin holding the objects' boxes (metres)."""
    radius = 0.0
    for obj in objects:
        radius = max(radius, float(np.linalg.norm(obj.T_world_obj[:3, 3]))
                     + float(np.linalg.norm(obj.size / 2)))
    return 2.0 * radius


def _frame(R_world_obj: np.ndarray, center: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R_world_obj, center
    return T


# ------------------------------------------------------------------ the quad world


def _box_faces(lo: np.ndarray, hi: np.ndarray, texture: int, object_id: int) -> list[Quad]:
    """The five visible faces (no bottom) of an axis-aligned box."""
    x0, y0, z0 = lo
    x1, y1, z1 = hi
    ex, ey, ez = np.array([x1 - x0, 0, 0]), np.array([0, y1 - y0, 0]), np.array([0, 0, z1 - z0])
    return [
        Quad(np.array([x0, y0, z1]), ex, ey, texture, object_id),  # top
        Quad(np.array([x0, y0, z0]), ex, ez, texture, object_id),  # front (-y)
        Quad(np.array([x0, y1, z0]), ex, ez, texture, object_id),  # back (+y)
        Quad(np.array([x0, y0, z0]), ey, ez, texture, object_id),  # left (-x)
        Quad(np.array([x1, y0, z0]), ey, ez, texture, object_id),  # right (+x)
    ]


_QUAD_BOXES = (((-0.9, -0.35, 0.0), (-0.25, 0.25, 0.55)),
               ((0.15, -0.6, 0.0), (0.75, -0.05, 0.35)),
               ((0.35, 0.6, 0.0), (0.95, 1.1, 0.8)))
_QUAD_TINTS = np.array([[0.9, 0.8, 0.6], [0.6, 0.7, 0.9], [0.9, 0.4, 0.3], [0.3, 0.8, 0.4],
                        [0.8, 0.7, 0.2]])


def default_quads() -> list[Quad]:
    """The quad world's rectangles: floor, back wall, then five faces per box (objects 1-3)."""
    quads = [
        Quad(np.array([-2.5, -2.0, 0.0]), np.array([5.0, 0, 0]), np.array([0, 3.6, 0]), 0),
        Quad(np.array([-2.5, 1.6, 0.0]), np.array([5.0, 0, 0]), np.array([0, 0, 2.2]), 1),
    ]
    for k, (lo, hi) in enumerate(_QUAD_BOXES):
        quads += _box_faces(np.array(lo), np.array(hi), 2 + k, 1 + k)
    return quads


@dataclass
class QuadWorld:
    """Textured rectangles under a sky (see the module docstring)."""

    quads: list[Quad]
    textures: list[np.ndarray]  # [S, S, 3] float64 each
    objects: list[SceneObject]
    seed: int = 0

    LIGHT = (0.4, -0.6, 0.7)
    TEXEL = 1.0 / 200
    """Metres per texel: a 1024 texture spans 5.1 m, the widest quad."""

    @property
    def primitives(self) -> list[Primitive]:
        return list(self.quads)

    def primitive_objects(self) -> np.ndarray:
        """``[P]`` int: the object id (1-based, 0: background) of each primitive."""
        return np.array([q.object_id for q in self.quads], dtype=np.int64)

    def extent(self) -> float:
        """Diameter of a sphere about the origin holding the objects (metres)."""
        return _extent(self.objects)

    def shade(self, origins: np.ndarray, dirs: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Colour ``[N, 3]`` in [0, 1], hit distance ``t [N]`` (inf: sky) and primitive index
        ``[N]`` (-1: sky) of rays: origins ``[N, 3]`` or ``[3]``, unit directions ``[N, 3]``."""
        origins = np.broadcast_to(origins, dirs.shape)
        t, index, normal = cast_rays(self.quads, origins, dirs)
        # Sky: a vertical gradient, textureless on purpose (no features off the scene).
        sky = np.clip(0.55 + 0.4 * dirs[:, 2:3], 0, 1)
        colour = np.zeros((len(dirs), 3))
        colour[:] = sky * np.array([0.6, 0.75, 0.95])
        light = np.array(self.LIGHT)
        light /= np.linalg.norm(light)
        for k, quad in enumerate(self.quads):
            sel = np.nonzero(index == k)[0]
            if not len(sel):
                continue
            shading = 0.55 + 0.45 * abs(float(quad.normal @ light))
            if quad.uniform is not None:
                colour[sel] = np.asarray(quad.uniform) * shading
                continue
            a, b = quad.surface_coords(origins[sel] + t[sel, None] * dirs[sel])
            tex = self.textures[quad.texture]
            size = tex.shape[0]
            # Each face reads its own part of the texture: repeated patterns would give SIFT
            # consistent false matches (measured: 10 % of the verified matches of a pair).
            offset = size * ((0.37 * k) % 1.0), size * ((0.61 * k) % 1.0)
            tx = (a * np.linalg.norm(quad.edge_u) / self.TEXEL + offset[0]) % size
            ty = (b * np.linalg.norm(quad.edge_v) / self.TEXEL + offset[1]) % size
            colour[sel] = sample_bilinear(tex, tx, ty) * shading
        return colour, t, index

    def describe(self) -> dict:
        """A JSON-able description (the textures follow from ``seed``)."""
        return {"quads": [{"origin": q.origin.tolist(), "edge_u": q.edge_u.tolist(),
                           "edge_v": q.edge_v.tolist(), "texture": q.texture,
                           "object_id": q.object_id,
                           **({} if q.uniform is None else {"uniform": list(q.uniform)})}
                          for q in self.quads],
                "texture_seed": self.seed}


def quad_world(seed: int, textureless: float = 0.0) -> QuadWorld:
    """The quad world with textures drawn from ``seed``; the ``textureless`` share of its
    boxes (the largest first, :func:`textureless_objects`) painted one colour each: the mean
    colour of the box's texture."""
    rng = np.random.default_rng(seed)
    textures = [image_texture(rng, tint) for tint in _QUAD_TINTS]
    sizes = [np.array(hi) - np.array(lo) for lo, hi in _QUAD_BOXES]
    plain = textureless_objects(sizes, textureless)
    objects = [SceneObject("box", _frame(np.eye(3), (np.array(lo) + np.array(hi)) / 2),
                           size, textureless=k in plain)
               for k, ((lo, hi), size) in enumerate(zip(_QUAD_BOXES, sizes, strict=True))]
    quads = default_quads()
    for quad in quads:
        if quad.object_id - 1 in plain:
            # image_texture's mean: 0.2 + 0.45 * (mean noise 0.5) + 0.35 * tint.
            tint = _QUAD_TINTS[quad.texture]
            quad.uniform = tuple(float(v) for v in 0.425 + 0.35 * tint)
    return QuadWorld(quads, textures, objects, seed)


# ------------------------------------------------------------------ the object world


@dataclass
class ObjectWorld:
    """Spheres and boxes on a ground square, with shadows (see the module docstring)."""

    solids: list[Solid]
    light_dir: tuple[float, float, float]
    """Unit, pointing from the surfaces to the light."""
    wall: bool = False
    texture_seed: int = 0
    ground_tint: tuple[float, float, float] = (0.9, 0.85, 0.75)
    wall_tint: tuple[float, float, float] = (0.7, 0.8, 0.95)
    objects: list[SceneObject] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.objects = [SceneObject(s.kind, _frame(s.rotation() if s.kind == "box"
                                                   else np.eye(3), np.asarray(s.center,
                                                                              float)),
                                    2.0 * np.asarray(s.half, float), textureless=s.uniform)
                        for s in self.solids]

    @property
    def primitives(self) -> list[Primitive]:
        """The ground, the wall (forward scenes), then the solids."""
        y_max = WALL_Y if self.wall else GROUND_HALF
        out: list[Primitive] = [Quad(np.array([-GROUND_HALF, -GROUND_HALF, 0.0]),
                                     np.array([2 * GROUND_HALF, 0.0, 0.0]),
                                     np.array([0.0, y_max + GROUND_HALF, 0.0]))]
        if self.wall:
            out.append(Quad(np.array([-GROUND_HALF - 2, WALL_Y, 0.0]),
                            np.array([2 * GROUND_HALF + 4, 0.0, 0.0]), np.array([0.0, 0.0, 4.0])))
        return out + list(self.solids)

    def primitive_objects(self) -> np.ndarray:
        """``[P]`` int: the object id (1-based, 0: background) of each primitive."""
        background = 2 if self.wall else 1
        return np.concatenate([np.zeros(background, np.int64),
                               np.arange(1, len(self.solids) + 1)])

    def extent(self) -> float:
        """Diameter of a sphere about the origin holding the objects (metres)."""
        return _extent(self.objects)

    def shade(self, origins: np.ndarray, dirs: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Colour ``[N, 3]`` in [0, 1], hit distance ``t [N]`` (inf: miss) and primitive
        index ``[N]`` (-1: miss) of rays: origins ``[N, 3]`` or ``[3]``, unit directions."""
        origins = np.broadcast_to(origins, dirs.shape)
        prims = self.primitives
        t, index, normal = cast_rays(prims, origins, dirs)
        colour = np.zeros((len(dirs), 3))
        idx = np.nonzero(np.isfinite(t))[0]
        if not len(idx):
            return colour, t, index
        pts = origins[idx] + t[idx, None] * dirs[idx]
        light = np.asarray(self.light_dir)
        lambert = np.clip(normal[idx] @ light, 0.0, None)
        # Hard shadows: is the light blocked by a solid?
        shadow_t, _, _ = cast_rays(self.solids, pts + 1e-4 * normal[idx],
                                   np.broadcast_to(light, pts.shape))
        lit = np.where(np.isfinite(shadow_t), 0.0, 1.0)
        shading = 0.35 + 0.65 * lambert * lit
        base = np.zeros((len(idx), 3))
        background = len(prims) - len(self.solids)
        for s, prim in enumerate(prims):
            sel = index[idx] == s
            if not sel.any():
                continue
            salt = self.texture_seed * 97
            if s == 0:
                base[sel] = solid_albedo(pts[sel], 2.5, np.asarray(self.ground_tint), salt + 1)
            elif s < background:
                base[sel] = solid_albedo(pts[sel], 2.0, np.asarray(self.wall_tint), salt + 2)
            elif prim.uniform:
                base[sel] = np.asarray(prim.tint)
            else:
                base[sel] = solid_albedo(pts[sel], prim.texture_freq, np.asarray(prim.tint),
                                         salt + 3 + s)
        colour[idx] = base * shading[:, None]
        return colour, t, index

    def describe(self) -> dict:
        """A JSON-able description."""
        return {k: v for k, v in asdict(self).items() if k != "objects"}


def object_world(kind: Literal["orbit", "forward"], num_objects: int, seed: int,
                 textureless: float = 0.0) -> ObjectWorld:
    """A random but reproducible arrangement of textured spheres and boxes.

    ``orbit``: objects within ``[-1.1, 1.1]^2``; ``forward``: spread in x, ``y in [-0.5, 1.5]``
    in front of a back wall. The ``textureless`` share of the objects (the largest first,
    :func:`textureless_objects`) is painted its tint alone; the layout does not depend on it.
    """
    rng = np.random.default_rng(seed)
    solids: list[Solid] = []
    placed: list[tuple[float, float, float]] = []  # (x, y, footprint radius)
    spread = 1.1 if kind == "orbit" else 1.3
    for i in range(num_objects):
        for _ in range(200):
            size = float(rng.uniform(0.25, 0.5))
            x, y = rng.uniform(-spread, spread, size=2)
            if kind == "forward":
                y = float(rng.uniform(-0.5, 1.5))
            if all(math.hypot(x - px, y - py) > size + pr + 0.05 for px, py, pr in placed):
                break
        tint = tuple(float(v) for v in rng.uniform(0.35, 1.0, size=3))
        freq = float(rng.uniform(3.0, 6.0))
        if i % 2 == 0:
            solids.append(Solid("sphere", (float(x), float(y), size), (size,) * 3,
                                tint=tint, texture_freq=freq))
            placed.append((float(x), float(y), size))
        else:
            half = tuple(float(v) for v in rng.uniform(0.2, 0.45, size=3))
            solids.append(Solid("box", (float(x), float(y), half[2]), half,
                                yaw=float(rng.uniform(0, math.pi)), tint=tint,
                                texture_freq=freq))
            placed.append((float(x), float(y), math.hypot(half[0], half[1])))
    for i in textureless_objects([2.0 * np.asarray(s.half) for s in solids], textureless):
        solids[i].uniform = True
    light = np.array([0.45, -0.35, 0.82])
    light /= np.linalg.norm(light)
    return ObjectWorld(solids, tuple(float(v) for v in light), wall=kind == "forward",
                       texture_seed=seed)
