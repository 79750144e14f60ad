"""The synthetic world: a straight road with lanes, parking strips, sidewalks and
buildings, and objects of the 10 detection classes, parked or moving at constant velocity.

Every object is a union of upright primitives (boxes, vertical cylinders and cones) in
its own frame (x along its length/heading, y to its left, z up, origin on the ground
under its centre). The annotated box encloses the primitives.

The modalities are complementary on purpose:

- truck / construction_vehicle, bus / trailer and bicycle / motorcycle are built from the
  same shapes with the same size distributions and the same LiDAR reflectance: only their
  colours and textures (the cameras) tell them apart;
- car, pedestrian, traffic_cone and barrier have distinctive shapes and sizes, but cars
  and pedestrians take random colours from palettes shared with other classes, so the
  LiDAR shape is what identifies them;
- far and thin objects (cycles, cones, pedestrians at 30-40 m) get few LiDAR points,
  while the cameras still see them.

Road frame: ``u`` along the road, ``v`` to its left, both in metres; the road's origin
and heading in the global frame are drawn per scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

BOX, CYLINDER, CONE = 0, 1, 2

# Patterns of a material: how colour2 is mixed into colour by the local hit position.
PLAIN, STRIPES, BAND, WINDOWS, PANELS, CHECKER = range(6)

LANE_WIDTH = 3.5
BIKE_LANE = (7.0, 8.5)
PARKING = (8.5, 11.0)
SIDEWALK = (11.0, 15.9)
BUILDING_START = 17.0

# Margins of the annotated box around the primitives (annotators draw slightly loose
# boxes; the margin also keeps surface points strictly inside for point counting).
BOX_MARGIN_WL = 0.04
BOX_MARGIN_H = 0.02


@dataclass(frozen=True)
class Material:
    """Appearance of a primitive: two colours mixed by a pattern, and LiDAR reflectance."""

    color: tuple[float, float, float]  # RGB in [0, 1]
    color2: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pattern: int = PLAIN
    p0: float = 0.0  # pattern parameters (see ``shade_materials``)
    p1: float = 0.0
    scale: float = 1.0
    reflectance: float = 20.0  # LiDAR intensity (0-255) at normal incidence


@dataclass
class Primitive:
    """An upright solid in an object's frame.

    ``BOX``: centre ``center`` and half extents ``half`` (x, y, z). ``CYLINDER``/``CONE``:
    base centre ``center`` (z of the base), radius ``half[0]``, height ``half[2]``.
    """

    kind: int
    center: np.ndarray  # [3]
    half: np.ndarray  # [3]
    material: Material


@dataclass
class SynthObject:
    """One object of a scene; ``category`` is ``None`` for unannotated scenery."""

    name: str  # detection class ("car", ...) or "building" / "pole"
    category: str | None  # nuScenes category, e.g. "vehicle.car"
    attribute: str  # nuScenes attribute name or ""
    primitives: list[Primitive]
    position0: np.ndarray  # [2] global xy of the footprint centre at scene time 0
    velocity: np.ndarray  # [2] global m/s, constant
    yaw: float  # global heading of the length axis, radians
    size_wlh: np.ndarray = field(init=False)  # [3] annotated (w, l, h)
    radius: float = field(init=False)  # horizontal bounding radius
    corners_local: np.ndarray = field(init=False)  # [8, 3] corners of the primitives' bounds

    def __post_init__(self) -> None:
        lo, hi = self.local_bounds()
        self.corners_local = np.array(
            [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        )
        extent = np.maximum(np.abs(lo), np.abs(hi))
        self.size_wlh = np.array(
            [2 * extent[1] + BOX_MARGIN_WL, 2 * extent[0] + BOX_MARGIN_WL, hi[2] + BOX_MARGIN_H]
        )
        self.radius = float(math.hypot(self.size_wlh[0], self.size_wlh[1]) / 2)

    @property
    def annotated(self) -> bool:
        return self.category is not None

    def local_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``([3], [3])`` min and max corner of the primitives in the object frame."""
        lows, highs = [], []
        for prim in self.primitives:
            if prim.kind == BOX:
                lows.append(prim.center - prim.half)
                highs.append(prim.center + prim.half)
            else:
                r, h = prim.half[0], prim.half[2]
                lows.append(prim.center - np.array([r, r, 0.0]))
                highs.append(prim.center + np.array([r, r, h]))
        return np.min(lows, axis=0), np.max(highs, axis=0)

    def position(self, t: float) -> np.ndarray:
        """``[2]`` global xy at scene time ``t`` seconds."""
        return self.position0 + self.velocity * t


@dataclass
class SynthScene:
    """One scene: a road, the ego vehicle driving along it, and the objects."""

    index: int
    origin: np.ndarray  # [2] global xy of the road origin
    heading: float  # global heading of the road's +u axis
    ego_u0: float  # ego position along the road at t = 0
    ego_v: float  # ego lateral position (its lane centre)
    ego_speed: float  # m/s along +u
    objects: list[SynthObject]
    sun: np.ndarray  # [3] unit vector towards the sun, global frame
    duration: float  # seconds covered by the scene's sensor data

    @property
    def road_axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Global unit vectors ``(u, v)`` of the road frame."""
        c, s = math.cos(self.heading), math.sin(self.heading)
        return np.array([c, s]), np.array([-s, c])

    def road_to_global(self, u: float, v: float) -> np.ndarray:
        axis_u, axis_v = self.road_axes
        return self.origin + u * axis_u + v * axis_v

    def ego_pose(self, t: float) -> tuple[np.ndarray, float]:
        """Global ``([3] translation, yaw)`` of the ego vehicle at scene time ``t`` (z = 0,
        as in nuScenes ego poses)."""
        xy = self.road_to_global(self.ego_u0 + self.ego_speed * t, self.ego_v)
        return np.array([xy[0], xy[1], 0.0]), self.heading


# ----------------------------------------------------------------------------- palettes

CAR_COLORS = (
    (0.85, 0.85, 0.87), (0.1, 0.1, 0.12), (0.55, 0.56, 0.6), (0.6, 0.08, 0.08),
    (0.1, 0.2, 0.55), (0.75, 0.75, 0.72), (0.15, 0.35, 0.2), (0.9, 0.6, 0.1),
    (0.35, 0.25, 0.2), (0.2, 0.5, 0.8),
)
CLOTHES = (
    (0.1, 0.1, 0.15), (0.8, 0.2, 0.2), (0.2, 0.3, 0.7), (0.9, 0.85, 0.75), (0.3, 0.5, 0.3),
    (0.6, 0.6, 0.6), (0.9, 0.7, 0.1), (0.5, 0.3, 0.6), (0.2, 0.6, 0.8), (0.95, 0.95, 0.95),
)
TROUSERS = ((0.15, 0.15, 0.3), (0.1, 0.1, 0.1), (0.4, 0.35, 0.3), (0.3, 0.3, 0.35))
TRUCK_CABINS = ((0.95, 0.95, 0.95), (0.15, 0.3, 0.7), (0.6, 0.1, 0.1), (0.7, 0.72, 0.75))
TRUCK_CARGO = ((0.92, 0.92, 0.9), (0.8, 0.82, 0.85), (0.55, 0.6, 0.65))
BUILDING_COLORS = ((0.65, 0.6, 0.55), (0.55, 0.35, 0.3), (0.75, 0.75, 0.72), (0.5, 0.5, 0.55))

TIRE = Material((0.06, 0.06, 0.06), reflectance=6.0)
GLASS = (0.12, 0.16, 0.2)

VEHICLE_REFLECTANCE = 28.0  # painted metal; the same for every vehicle class on purpose
CYCLE_REFLECTANCE = 18.0


def _box(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float,
         material: Material) -> Primitive:
    center = np.array([(x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2])
    half = np.array([(x1 - x0) / 2, (y1 - y0) / 2, (z1 - z0) / 2])
    return Primitive(BOX, center, half, material)


def _cylinder(x: float, y: float, z0: float, radius: float, height: float,
              material: Material, kind: int = CYLINDER) -> Primitive:
    return Primitive(kind, np.array([x, y, z0]), np.array([radius, radius, height]), material)


def _pick(rng: np.random.Generator, options: tuple) -> tuple:
    return options[int(rng.integers(len(options)))]


# ----------------------------------------------------------------------------- shapes


def make_car(rng: np.random.Generator) -> list[Primitive]:
    w, length, h = rng.uniform(1.75, 2.0), rng.uniform(4.1, 4.9), rng.uniform(1.45, 1.7)
    paint = _pick(rng, CAR_COLORS)
    z_belt = 0.58 * h
    body = Material(paint, reflectance=VEHICLE_REFLECTANCE)
    # Side windows: a dark band in the cabin (window pillars every 1.2 m).
    cabin = Material(paint, GLASS, WINDOWS, z_belt + 0.05, h - 0.07, 1.2, VEHICLE_REFLECTANCE)
    return [
        _box(-length / 2, length / 2, -w / 2, w / 2, 0.3, z_belt, body),
        _box(-0.32 * length, 0.18 * length, -0.45 * w, 0.45 * w, z_belt, h, cabin),
        _box(0.32 * length - 0.33, 0.32 * length + 0.33, -w / 2 + 0.02, w / 2 - 0.02, 0.0, 0.32,
             TIRE),
        _box(-0.32 * length - 0.33, -0.32 * length + 0.33, -w / 2 + 0.02, w / 2 - 0.02, 0.0, 0.32,
             TIRE),
    ]


def _truck_shape(rng: np.random.Generator, cabin_color: tuple[float, float, float],
                 cargo: Material) -> list[Primitive]:
    w, length, h = rng.uniform(2.35, 2.6), rng.uniform(6.2, 8.5), rng.uniform(2.7, 3.3)
    cabin = Material(cabin_color, GLASS, WINDOWS, 0.5 * h, 0.78 * h, 2.2, VEHICLE_REFLECTANCE)
    front = length / 2
    return [
        _box(front - 2.0, front, -w / 2, w / 2, 0.55, 0.82 * h, cabin),
        _box(-front, front - 2.15, -w / 2, w / 2, 0.7, h, cargo),
        _box(front - 1.5, front - 0.5, -w / 2 + 0.03, w / 2 - 0.03, 0.0, 0.6, TIRE),
        _box(-front + 0.6, -front + 2.4, -w / 2 + 0.03, w / 2 - 0.03, 0.0, 0.6, TIRE),
    ]


def make_truck(rng: np.random.Generator) -> list[Primitive]:
    cabin_color = _pick(rng, TRUCK_CABINS)
    cargo = Material(_pick(rng, TRUCK_CARGO), (0.45, 0.45, 0.45), PANELS, 0.0, 0.0, 1.2,
                     VEHICLE_REFLECTANCE)
    return _truck_shape(rng, cabin_color, cargo)


def make_construction_vehicle(rng: np.random.Generator) -> list[Primitive]:
    yellow = _pick(rng, ((0.95, 0.75, 0.05), (0.95, 0.5, 0.05)))
    body = Material(yellow, (0.08, 0.08, 0.08), STRIPES, 0.0, 0.0, 0.9, VEHICLE_REFLECTANCE)
    return _truck_shape(rng, yellow, body)


def _long_vehicle_shape(rng: np.random.Generator, body: Material) -> list[Primitive]:
    w, length, h = rng.uniform(2.75, 2.95), rng.uniform(10.0, 12.5), rng.uniform(3.1, 3.6)
    half = length / 2
    return [
        _box(-half, half, -w / 2, w / 2, 0.45, h, body),
        _box(half - 3.0, half - 1.8, -w / 2 + 0.03, w / 2 - 0.03, 0.0, 0.5, TIRE),
        _box(-half + 1.5, -half + 3.2, -w / 2 + 0.03, w / 2 - 0.03, 0.0, 0.5, TIRE),
    ]


def make_bus(rng: np.random.Generator) -> list[Primitive]:
    paint = _pick(rng, ((0.75, 0.1, 0.1), (0.1, 0.35, 0.7), (0.1, 0.55, 0.3)))
    body = Material(paint, GLASS, WINDOWS, 1.6, 2.9, 1.6, VEHICLE_REFLECTANCE)
    return _long_vehicle_shape(rng, body)


def make_trailer(rng: np.random.Generator) -> list[Primitive]:
    paint = _pick(rng, ((0.9, 0.9, 0.88), (0.7, 0.72, 0.75), (0.85, 0.82, 0.7)))
    body = Material(paint, (0.3, 0.3, 0.32), PANELS, 0.0, 0.0, 0.6, VEHICLE_REFLECTANCE)
    return _long_vehicle_shape(rng, body)


def _rider(rng: np.random.Generator, x: float) -> Primitive:
    clothes = Material(_pick(rng, CLOTHES), _pick(rng, TROUSERS), BAND, 0.0, 1.15, 1.0, 8.0)
    return _cylinder(x, 0.0, 0.75, 0.22, rng.uniform(0.95, 1.05), clothes)


def _cycle_shape(rng: np.random.Generator, frame: Material, with_rider: bool) -> list[Primitive]:
    length, w = rng.uniform(1.65, 2.05), rng.uniform(0.6, 0.78)
    half = length / 2
    prims = [
        _box(-half, half, -0.09, 0.09, 0.0, 0.9, frame),
        _box(0.28 * length, 0.38 * length, -w / 2, w / 2, 0.88, 1.02, frame),
    ]
    if with_rider:
        prims.append(_rider(rng, -0.05 * length))
    return prims


def make_bicycle(rng: np.random.Generator, with_rider: bool) -> list[Primitive]:
    frame = Material(_pick(rng, ((0.1, 0.85, 0.3), (0.1, 0.8, 0.85))), (0.95, 0.95, 0.95),
                     CHECKER, 0.0, 0.0, 0.15, CYCLE_REFLECTANCE)
    return _cycle_shape(rng, frame, with_rider)


def make_motorcycle(rng: np.random.Generator, with_rider: bool) -> list[Primitive]:
    frame = Material(_pick(rng, ((0.55, 0.02, 0.05), (0.05, 0.05, 0.08))), (0.8, 0.8, 0.85),
                     BAND, 0.45, 0.6, 1.0, CYCLE_REFLECTANCE)
    return _cycle_shape(rng, frame, with_rider)


def make_pedestrian(rng: np.random.Generator, sitting: bool) -> list[Primitive]:
    h = rng.uniform(1.05, 1.3) if sitting else rng.uniform(1.55, 1.92)
    radius = rng.uniform(0.27, 0.33) if sitting else rng.uniform(0.22, 0.3)
    clothes = Material(_pick(rng, CLOTHES), _pick(rng, TROUSERS), BAND, 0.0, 0.48 * h, 1.0, 8.0)
    return [_cylinder(0.0, 0.0, 0.0, radius, h, clothes)]


def make_traffic_cone(rng: np.random.Generator) -> list[Primitive]:
    h = rng.uniform(0.7, 1.0)
    orange = Material((0.98, 0.4, 0.05), (0.97, 0.97, 0.97), BAND, 0.45 * h, 0.65 * h, 1.0, 120.0)
    base = Material((0.1, 0.1, 0.1), reflectance=10.0)
    return [
        _box(-0.21, 0.21, -0.21, 0.21, 0.0, 0.04, base),
        _cylinder(0.0, 0.0, 0.04, rng.uniform(0.17, 0.2), h - 0.04, orange, kind=CONE),
    ]


def make_barrier(rng: np.random.Generator) -> list[Primitive]:
    length, w, h = rng.uniform(1.8, 2.6), rng.uniform(0.4, 0.6), rng.uniform(0.85, 1.1)
    striped = Material((0.85, 0.1, 0.1), (0.97, 0.97, 0.97), STRIPES, 0.0, 0.0, 0.5, 60.0)
    return [_box(-length / 2, length / 2, -w / 2, w / 2, 0.0, h, striped)]


def make_building(rng: np.random.Generator, length: float, depth: float) -> list[Primitive]:
    h = rng.uniform(5.0, 18.0)
    wall = Material(_pick(rng, BUILDING_COLORS), GLASS, WINDOWS, 1.0, 2.4, 2.5, 35.0)
    return [_box(-length / 2, length / 2, -depth / 2, depth / 2, 0.0, h, wall)]


def make_pole(rng: np.random.Generator) -> list[Primitive]:
    metal = Material((0.4, 0.42, 0.45), reflectance=40.0)
    return [_cylinder(0.0, 0.0, 0.0, 0.12, rng.uniform(5.0, 8.0), metal)]


CATEGORY_OF = {
    "car": "vehicle.car",
    "truck": "vehicle.truck",
    "trailer": "vehicle.trailer",
    "bus": "vehicle.bus.rigid",
    "construction_vehicle": "vehicle.construction",
    "bicycle": "vehicle.bicycle",
    "motorcycle": "vehicle.motorcycle",
    "pedestrian": "human.pedestrian.adult",
    "traffic_cone": "movable_object.trafficcone",
    "barrier": "movable_object.barrier",
}


# ----------------------------------------------------------------------------- layout


class _Strip:
    """A band of the road at lateral position ``v`` where objects are placed along ``u``
    without overlapping (intervals with a gap between them)."""

    def __init__(self, v: float, direction: int, speed: float, gap: float) -> None:
        self.v, self.direction, self.speed, self.gap = v, direction, speed, gap
        self.intervals: list[tuple[float, float]] = []

    def free(self, u: float, half_length: float) -> bool:
        lo, hi = u - half_length - self.gap, u + half_length + self.gap
        return all(hi <= a or lo >= b for a, b in self.intervals)

    def place(self, rng: np.random.Generator, lo: float, hi: float, half_length: float,
              tries: int = 40) -> float | None:
        for _ in range(tries):
            u = float(rng.uniform(lo, hi))
            if self.free(u, half_length):
                self.intervals.append((u - half_length, u + half_length))
                return u
        return None


def sample_scene(index: int, rng: np.random.Generator, duration: float) -> SynthScene:
    """Draw one scene (objects of all 10 classes near the ego path, plus scenery).

    Args:
        index: scene number (only used to spread the scenes over the map).
        duration: seconds of sensor data the scene must cover (objects stay around the
            ego vehicle for that long).
    """
    origin = np.array([300.0 + 400.0 * index, 600.0 + 250.0 * index]) + rng.uniform(-50, 50, 2)
    heading = float(rng.uniform(-math.pi, math.pi))
    ego_speed = float(rng.uniform(2.0, 8.0))
    ego_v = -LANE_WIDTH / 2
    mid = ego_speed * duration / 2  # ego u at mid-scene (ego starts at u = 0)
    sun_az, sun_el = rng.uniform(-math.pi, math.pi), rng.uniform(0.6, 1.1)
    sun = np.array([math.cos(sun_el) * math.cos(sun_az), math.cos(sun_el) * math.sin(sun_az),
                    math.sin(sun_el)])
    scene = SynthScene(index, origin, heading, 0.0, ego_v, ego_speed, [], sun, duration)

    lane_speed = [float(rng.uniform(4.0, 11.0)) for _ in range(3)]
    stopped_lane = int(rng.integers(0, 3)) if rng.random() < 0.35 else -1
    if stopped_lane >= 0:
        lane_speed[stopped_lane] = 0.0
    lanes = [
        _Strip(-1.5 * LANE_WIDTH, +1, lane_speed[0], 4.0),
        _Strip(+0.5 * LANE_WIDTH, -1, lane_speed[1], 4.0),
        _Strip(+1.5 * LANE_WIDTH, -1, lane_speed[2], 4.0),
    ]
    bike = [_Strip(-sum(BIKE_LANE) / 2, +1, float(rng.uniform(3.0, 7.0)), 2.0),
            _Strip(+sum(BIKE_LANE) / 2, -1, float(rng.uniform(3.0, 7.0)), 2.0)]
    parking = [_Strip(-sum(PARKING) / 2, +1, 0.0, 0.8), _Strip(+sum(PARKING) / 2, -1, 0.0, 0.8)]
    walk_v = (12.4, 13.2, 14.0)
    walkways = [_Strip(side * v, side, float(rng.uniform(1.0, 1.6)), 0.6)
                for side in (-1, 1) for v in walk_v]
    standing = [_Strip(-14.8, +1, 0.0, 0.5), _Strip(14.8, -1, 0.0, 0.5)]
    cycle_racks = [_Strip(-11.65, +1, 0.0, 0.4), _Strip(11.65, -1, 0.0, 0.4)]

    def add(name: str, prims: list[Primitive], strip: _Strip, window: tuple[float, float],
            attribute: str, moving: bool, yaw_jitter: float = 0.0) -> bool:
        probe = SynthObject(name, None, "", prims, np.zeros(2), np.zeros(2), 0.0)
        half_length = float(probe.size_wlh[1] / 2)
        speed = strip.speed if moving else 0.0
        # Moving objects are placed by their mid-scene position so they stay near the ego.
        shift = strip.direction * speed * duration / 2
        u_mid = strip.place(rng, window[0], window[1], half_length)
        if u_mid is None:
            return False
        u0 = u_mid - shift
        yaw = heading + (0.0 if strip.direction > 0 else math.pi) + yaw_jitter
        if not moving and name not in ("traffic_cone", "pedestrian") and rng.random() < 0.2:
            yaw += math.pi  # some parked objects face the other way
        axis_u, _ = scene.road_axes
        velocity = axis_u * strip.direction * speed
        obj = SynthObject(name, CATEGORY_OF.get(name), attribute, prims,
                          scene.road_to_global(u0, strip.v), velocity, yaw)
        scene.objects.append(obj)
        return True

    near = (mid - 20.0, mid + 30.0)
    wide = (mid - 55.0, mid + 60.0)

    def vehicle_attribute(strip: _Strip) -> str:
        return "vehicle.stopped" if strip.speed == 0.0 else "vehicle.moving"

    # One guaranteed instance of every class close to the ego vehicle, then the rest.
    plan: list[tuple[str, int]] = [
        ("car", 9), ("truck", 2), ("construction_vehicle", 2), ("bus", 2), ("trailer", 2),
        ("bicycle", 3), ("motorcycle", 3), ("pedestrian", 8), ("traffic_cone", 6),
        ("barrier", 4),
    ]
    for name, count in plan:
        for k in range(count + int(rng.integers(0, 2))):
            window = near if k == 0 else wide
            for _attempt in range(4):
                if _add_object(name, rng, add, lanes, bike, parking, walkways, standing,
                               cycle_racks, window, vehicle_attribute):
                    break

    _add_scenery(scene, rng, mid)
    return scene


def _add_object(name, rng, add, lanes, bike, parking, walkways, standing, cycle_racks, window,
                vehicle_attribute) -> bool:
    """Place one object of class ``name`` on a suitable strip; False if it did not fit."""
    if name in ("car", "truck", "construction_vehicle", "bus"):
        maker = {"car": make_car, "truck": make_truck,
                 "construction_vehicle": make_construction_vehicle, "bus": make_bus}[name]
        moving_share = {"car": 0.55, "truck": 0.5, "construction_vehicle": 0.3, "bus": 0.7}[name]
        if rng.random() < moving_share:
            lane = lanes[int(rng.integers(len(lanes)))]
            return add(name, maker(rng), lane, window, vehicle_attribute(lane), True)
        strip = parking[int(rng.integers(2))]
        return add(name, maker(rng), strip, window, "vehicle.parked", False)
    if name == "trailer":
        strip = parking[int(rng.integers(2))]
        return add(name, make_trailer(rng), strip, window, "vehicle.parked", False)
    if name in ("bicycle", "motorcycle"):
        maker = make_bicycle if name == "bicycle" else make_motorcycle
        if rng.random() < 0.55:
            strip = bike[int(rng.integers(2))]
            return add(name, maker(rng, True), strip, window, "cycle.with_rider", True)
        strip = cycle_racks[int(rng.integers(2))]
        return add(name, maker(rng, False), strip, window, "cycle.without_rider", False)
    if name == "pedestrian":
        r = rng.random()
        if r < 0.6:
            strip = walkways[int(rng.integers(len(walkways)))]
            return add(name, make_pedestrian(rng, False), strip, window, "pedestrian.moving", True)
        sitting = r > 0.85
        strip = standing[int(rng.integers(2))]
        attribute = "pedestrian.sitting_lying_down" if sitting else "pedestrian.standing"
        return add(name, make_pedestrian(rng, sitting), strip, window, attribute, False,
                   yaw_jitter=float(rng.uniform(-math.pi, math.pi)))
    if name == "traffic_cone":
        strip = parking[int(rng.integers(2))]
        return add(name, make_traffic_cone(rng), strip, window, "", False,
                   yaw_jitter=float(rng.uniform(-math.pi, math.pi)))
    if name == "barrier":
        strip = parking[int(rng.integers(2))]
        return add(name, make_barrier(rng), strip, window, "", False,
                   yaw_jitter=float(rng.uniform(-0.15, 0.15)))
    raise ValueError(name)


def _add_scenery(scene: SynthScene, rng: np.random.Generator, mid: float) -> None:
    """Unannotated buildings behind the sidewalks and poles along them."""
    for side in (-1, 1):
        u = mid - 90.0
        while u < mid + 100.0:
            length, depth = float(rng.uniform(10.0, 30.0)), float(rng.uniform(8.0, 15.0))
            v = side * (BUILDING_START + depth / 2 + rng.uniform(0.0, 3.0))
            scene.objects.append(SynthObject(
                "building", None, "", make_building(rng, length, depth),
                scene.road_to_global(u + length / 2, v), np.zeros(2), scene.heading,
            ))
            u += length + float(rng.uniform(2.0, 10.0))
        u = mid - 80.0 + float(rng.uniform(0, 10))
        while u < mid + 90.0:
            scene.objects.append(SynthObject(
                "pole", None, "", make_pole(rng), scene.road_to_global(u, side * 15.6),
                np.zeros(2), scene.heading,
            ))
            u += float(rng.uniform(12.0, 22.0))
