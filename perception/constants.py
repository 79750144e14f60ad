"""Names shared by the data layer, the generator, the detectors and the evaluation.

The class order is mmdetection3d's for nuScenes (so label indices in mmdet3d info pickles
map one to one); the names themselves are the devkit's detection names (a test checks
them against ``nuscenes.eval.detection.constants``; importing the devkit here would make
``perception --help`` slow).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DETECTION_CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "trailer",
    "bus",
    "construction_vehicle",
    "bicycle",
    "motorcycle",
    "pedestrian",
    "traffic_cone",
    "barrier",
)
"""The 10 nuScenes detection classes; a box's ``label`` indexes this tuple."""

ATTRIBUTES: tuple[str, ...] = (
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.moving",
    "pedestrian.standing",
    "pedestrian.sitting_lying_down",
    "vehicle.moving",
    "vehicle.parked",
    "vehicle.stopped",
    "",
)
"""The 8 nuScenes attributes and ``""`` (no attribute: cones, barriers)."""

CLASS_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "car": ("vehicle.moving", "vehicle.parked", "vehicle.stopped"),
    "truck": ("vehicle.moving", "vehicle.parked", "vehicle.stopped"),
    "trailer": ("vehicle.moving", "vehicle.parked", "vehicle.stopped"),
    "bus": ("vehicle.moving", "vehicle.parked", "vehicle.stopped"),
    "construction_vehicle": ("vehicle.moving", "vehicle.parked", "vehicle.stopped"),
    "bicycle": ("cycle.with_rider", "cycle.without_rider"),
    "motorcycle": ("cycle.with_rider", "cycle.without_rider"),
    "pedestrian": ("pedestrian.moving", "pedestrian.standing", "pedestrian.sitting_lying_down"),
    "traffic_cone": ("",),
    "barrier": ("",),
}
"""Which attributes belong to which class (the devkit's ``detection_name_to_rel_attributes``)."""

DEFAULT_ATTRIBUTE: dict[str, str] = {
    "car": "vehicle.parked",
    "truck": "vehicle.parked",
    "trailer": "vehicle.parked",
    "bus": "vehicle.moving",
    "construction_vehicle": "vehicle.parked",
    "bicycle": "cycle.without_rider",
    "motorcycle": "cycle.without_rider",
    "pedestrian": "pedestrian.moving",
    "traffic_cone": "",
    "barrier": "",
}
"""The most frequent attribute of each class in nuScenes (what mmdet3d predicts by default)."""

CAMERA_CHANNELS: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
"""The six nuScenes cameras, in mmdet3d's order."""

LIDAR_CHANNEL = "LIDAR_TOP"

NUSCENES_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("human.pedestrian.adult", "Adult subcategory."),
    ("human.pedestrian.child", "Child subcategory."),
    ("human.pedestrian.wheelchair", "Wheelchairs."),
    ("human.pedestrian.stroller", "Strollers."),
    ("human.pedestrian.personal_mobility", "Small electric or self-propelled vehicles."),
    ("human.pedestrian.police_officer", "Police officer."),
    ("human.pedestrian.construction_worker", "Construction worker."),
    ("animal", "All animals."),
    ("vehicle.car", "Vehicle designed primarily for personal use."),
    ("vehicle.motorcycle", "Gasoline or electric powered 2-wheeled vehicle."),
    ("vehicle.bicycle", "Human or electric powered 2-wheeled vehicle."),
    ("vehicle.bus.bendy", "Bendy bus subcategory."),
    ("vehicle.bus.rigid", "Rigid bus subcategory."),
    ("vehicle.truck", "Vehicles primarily designed to haul cargo."),
    ("vehicle.construction", "Vehicles primarily designed for construction."),
    ("vehicle.emergency.ambulance", "All types of ambulances."),
    ("vehicle.emergency.police", "All types of police vehicles."),
    ("vehicle.trailer", "Any vehicle trailer."),
    ("movable_object.barrier", "Temporary road barrier placed in the scene."),
    ("movable_object.trafficcone", "All types of traffic cone."),
    ("movable_object.pushable_pullable", "Objects that a pedestrian may push or pull."),
    ("movable_object.debris", "Movable object that is left on the driveable surface."),
    ("static_object.bicycle_rack", "Area or device intended to park or secure bicycles."),
)
"""The 23 nuScenes categories (names and the official descriptions, abridged)."""

NUSCENES_ATTRIBUTE_DESCRIPTIONS: dict[str, str] = {
    "vehicle.moving": "Vehicle is moving.",
    "vehicle.stopped": "Vehicle, with a driver/rider in/on it, is currently stationary.",
    "vehicle.parked": "Vehicle is stationary (usually for longer duration) with no driver.",
    "cycle.with_rider": "There is a rider on the bicycle or motorcycle.",
    "cycle.without_rider": "There is NO rider on the bicycle or motorcycle.",
    "pedestrian.sitting_lying_down": "The human is sitting or lying down.",
    "pedestrian.standing": "The human is standing.",
    "pedestrian.moving": "The human is moving.",
}

VISIBILITY_LEVELS: tuple[tuple[str, str, str], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)
"""The nuScenes visibility table: token, level, description."""

DetectorName = Literal["oracle", "noisy-oracle", "sparsefusion"]
"""Names accepted by ``perception detect --detector`` (a new detector is added here and
to ``perception.detectors.DETECTORS``)."""


@dataclass
class NoiseConfig:
    """How the noisy oracle corrupts the ground truth."""

    center_std: float = 0.3
    """Std of the centre error in x and y, metres (z gets a third of it)."""
    size_std: float = 0.1
    """Std of the relative (log) error of each size."""
    yaw_std: float = 0.2
    """Std of the heading error, radians."""
    velocity_std: float = 0.5
    """Std of the velocity error per axis, m/s."""
    drop_rate: float = 0.15
    """Share of ground-truth boxes not detected."""
    false_positives: float = 2.0
    """Mean number of false boxes per sample (Poisson), placed near real ones."""
    attribute_flip_rate: float = 0.1
    """Share of boxes given another attribute of their class."""
