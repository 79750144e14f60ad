"""Write a synthetic dataset in the nuScenes on-disk format (a ``v1.0-mini``-style version).

Layout written under the output folder, as in a nuScenes download::

    maps/<token>.png                       placeholder semantic-prior maps
    samples/LIDAR_TOP/<log>__LIDAR_TOP__<us>.pcd.bin   keyframe sweeps (float32 x5)
    sweeps/LIDAR_TOP/<log>__LIDAR_TOP__<us>.pcd.bin    intermediate sweeps
    samples/CAM_*/<log>__CAM_*__<us>.jpg               keyframe images
    <version>/{attribute,calibrated_sensor,category,ego_pose,instance,log,map,sample,
               sample_annotation,sample_data,scene,sensor,visibility}.json

Scenes take the official mini scene names, so the devkit's own ``mini_val`` and
``mini_train`` splits select them: the first one or two are ``mini_val`` scenes
(``scene-0103``, ``scene-0916``), the rest ``mini_train`` scenes.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from perception import frames
from perception.constants import (
    CAMERA_CHANNELS,
    LIDAR_CHANNEL,
    NUSCENES_ATTRIBUTE_DESCRIPTIONS,
    NUSCENES_CATEGORIES,
    VISIBILITY_LEVELS,
)
from perception.synth import sensors, world

KEYFRAME_INTERVAL = 0.5  # seconds (2 Hz keyframes, as in nuScenes)
# The devkit's nuscenes.utils.splits.mini_val / mini_train (a test checks they are the
# same; importing the devkit here would cost every worker process seconds).
MINI_VAL = ("scene-0103", "scene-0916")
MINI_TRAIN = ("scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796",
              "scene-1077", "scene-1094", "scene-1100")
MAX_SCENES = len(MINI_TRAIN) + len(MINI_VAL)
LOCATIONS = (
    ("singapore-onenorth", "n015", "+0800"),
    ("boston-seaport", "n008", "-0400"),
    ("singapore-queenstown", "n015", "+0800"),
    ("singapore-hollandvillage", "n015", "+0800"),
)


@dataclass
class SynthSpec:
    """What to generate (the CLI's ``perception synth`` options)."""

    scenes: int = 4
    """Number of scenes (1-10; the first ceil(N/2), at most 2, form ``mini_val``)."""
    samples_per_scene: int = 10
    """Keyframes (annotated samples, 2 Hz) per scene."""
    sweeps_per_sample: int = 9
    """LiDAR sweeps between keyframes (9 = the 20 Hz nuScenes LiDAR)."""
    seed: int = 0
    """Random seed: the same seed writes the same dataset."""
    image_width: int = 640
    """Camera image width in pixels (the intrinsics scale with it; nuScenes has 1600)."""
    image_height: int = 360
    """Camera image height in pixels."""
    jpeg_quality: int = 90
    """JPEG quality of the camera images."""
    version: str = "v1.0-mini"
    """Name of the table folder (the devkit's ``version``)."""


@dataclass
class SynthSummary:
    """What was written."""

    scenes: list[str]
    samples: int
    sweeps: int
    images: int
    annotations: int
    annotations_with_points: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # wall time
    cpu_seconds: float = 0.0  # CPU time of the scene jobs (in whichever process ran them)


def scene_names(n_scenes: int) -> list[str]:
    """Official mini scene names for ``n_scenes`` scenes: ``mini_val`` ones first."""
    n_val = min(len(MINI_VAL), math.ceil(n_scenes / 2))
    return list(MINI_VAL[:n_val]) + list(MINI_TRAIN[: n_scenes - n_val])


class _Tables:
    """The 13 nuScenes tables being filled, and a seeded token source."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)
        self.tables: dict[str, list[dict]] = {
            name: [] for name in (
                "attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log",
                "map", "sample", "sample_annotation", "sample_data", "scene", "sensor",
                "visibility",
            )
        }

    def token(self) -> str:
        return f"{self._random.getrandbits(128):032x}"

    def add(self, table: str, record: dict) -> dict:
        self.tables[table].append(record)
        return record


def _link(records: list[dict]) -> None:
    """Fill ``prev``/``next`` of a chain of records."""
    for i, record in enumerate(records):
        record["prev"] = records[i - 1]["token"] if i > 0 else ""
        record["next"] = records[i + 1]["token"] if i + 1 < len(records) else ""


def _pose_record(T: np.ndarray) -> tuple[list[float], list[float]]:
    """``[4, 4]`` -> (rotation wxyz, translation) lists for a table record."""
    return [float(v) for v in frames.matrix_to_quat(T[:3, :3])], [float(v) for v in T[:3, 3]]


def sweep_timing(spec: SynthSpec) -> tuple[float, int]:
    """``(seconds between LiDAR sweeps, sweeps per scene)``; keyframe ``m`` of a scene is
    sweep ``sweeps_per_sample + m * (sweeps_per_sample + 1)`` (every keyframe, the first
    included, has ``sweeps_per_sample`` sweeps before it)."""
    dt = KEYFRAME_INTERVAL / (spec.sweeps_per_sample + 1)
    n_sweeps = spec.sweeps_per_sample + (spec.samples_per_scene - 1) * (
        spec.sweeps_per_sample + 1) + 1
    return dt, n_sweeps


def keyframe_time(spec: SynthSpec, keyframe: int) -> float:
    """Scene time (seconds) of keyframe ``keyframe`` (0-based) of every scene."""
    dt, _ = sweep_timing(spec)
    return (spec.sweeps_per_sample + keyframe * (spec.sweeps_per_sample + 1)) * dt


def build_scene(spec: SynthSpec, scene_index: int
                ) -> tuple[world.SynthScene, sensors.Appearance, np.random.Generator]:
    """The world of scene ``scene_index`` exactly as :func:`write_dataset` makes it, its
    appearance, and the random stream the sensors go on with."""
    dt, n_sweeps = sweep_timing(spec)
    rng = np.random.default_rng([spec.seed, scene_index])
    scene = world.sample_scene(scene_index, rng, (n_sweeps - 1) * dt)
    appearance = sensors.Appearance(scene, spec.seed * 1000 + scene_index)
    return scene, appearance, rng


@dataclass
class _SharedTokens:
    """Tokens of the records every scene refers to (made once, in the parent process)."""

    categories: dict[str, str]
    attributes: dict[str, str]
    sensors: dict[str, str]


def write_dataset(
    spec: SynthSpec,
    root: Path,
    workers: int = 1,
    on_sample: Callable[[int, int], None] | None = None,
) -> SynthSummary:
    """Generate the dataset into the (empty) folder ``root``.

    Scenes are independent (each has its own random streams, seeded from ``spec.seed``
    and its index), so they can be made in ``workers`` processes; the output does not
    depend on ``workers``.

    Args:
        on_sample: called as ``on_sample(done, total)`` after each keyframe (progress).
    """
    start = time.perf_counter()
    if not 1 <= spec.scenes <= MAX_SCENES:
        raise ValueError(f"scenes must be in 1..{MAX_SCENES}")
    tables = _Tables(spec.seed)
    _make_folders(root, spec.version)
    shared = _add_shared_records(tables)

    names = scene_names(spec.scenes)
    total = len(names) * spec.samples_per_scene
    jobs = [(spec, index, name, str(root), shared) for index, name in enumerate(names)]
    if workers <= 1 or len(jobs) == 1:
        done = 0

        def progress(_scene: int) -> None:
            nonlocal done
            done += 1
            if on_sample is not None:
                on_sample(done, total)

        results = [_scene_job(*job, progress=progress) for job in jobs]
    else:
        results = _run_parallel(jobs, workers, total, on_sample)

    summary, map_logs = _merge_scenes(names, results, tables)
    _add_maps(root, map_logs, tables)
    for name, records in tables.tables.items():
        (root / spec.version / f"{name}.json").write_text(json.dumps(records, indent=0))
    summary.seconds = time.perf_counter() - start
    return summary


def _make_folders(root: Path, version: str) -> None:
    """The table folder and the data folders of the nuScenes layout under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / version).mkdir(parents=True, exist_ok=True)
    for sub in ["samples/LIDAR_TOP", "sweeps/LIDAR_TOP", "maps"] + [
        f"samples/{c}" for c in CAMERA_CHANNELS
    ]:
        (root / sub).mkdir(parents=True, exist_ok=True)


def _add_shared_records(tables: _Tables) -> _SharedTokens:
    """The category, attribute, visibility and sensor records every scene refers to."""
    shared = _SharedTokens({}, {}, {})
    for name, description in NUSCENES_CATEGORIES:
        shared.categories[name] = tables.add(
            "category", {"token": tables.token(), "name": name, "description": description}
        )["token"]
    for name, description in NUSCENES_ATTRIBUTE_DESCRIPTIONS.items():
        shared.attributes[name] = tables.add(
            "attribute", {"token": tables.token(), "name": name, "description": description}
        )["token"]
    for token, level, description in VISIBILITY_LEVELS:
        tables.add("visibility", {"token": token, "level": level, "description": description})
    for channel, modality in [(LIDAR_CHANNEL, "lidar")] + [(c, "camera") for c in CAMERA_CHANNELS]:
        shared.sensors[channel] = tables.add(
            "sensor", {"token": tables.token(), "channel": channel, "modality": modality}
        )["token"]
    return shared


def _merge_scenes(names: list[str], results: list[tuple[dict, dict]], tables: _Tables
                  ) -> tuple[SynthSummary, dict[str, list[str]]]:
    """Append the scene jobs' records to ``tables`` (in scene order) and add up their counts.

    Returns the summary and the log tokens per location (one map each).
    """
    summary = SynthSummary(names, 0, 0, 0, 0)
    points_per_class: dict[str, int] = {}
    map_logs: dict[str, list[str]] = {}
    for scene_tables, scene_summary in results:
        for name, records in scene_tables.items():
            tables.tables[name].extend(records)
        for key in ("samples", "sweeps", "images", "annotations", "cpu_seconds"):
            setattr(summary, key, getattr(summary, key) + scene_summary[key])
        for name, count in scene_summary["with_points"].items():
            points_per_class[name] = points_per_class.get(name, 0) + count
        map_logs.setdefault(scene_summary["location"], []).append(scene_summary["log_token"])
    summary.annotations_with_points = dict(sorted(points_per_class.items()))
    return summary, map_logs


def _add_maps(root: Path, map_logs: dict[str, list[str]], tables: _Tables) -> None:
    """One placeholder map per location, as in nuScenes, and its ``map`` record."""
    for log_tokens in map_logs.values():
        token = tables.token()
        filename = f"maps/{token}.png"
        _write_placeholder_map(root / filename)
        tables.add("map", {"token": token, "log_tokens": log_tokens,
                           "category": "semantic_prior", "filename": filename})


_progress_queue = None


def _init_worker(queue) -> None:
    global _progress_queue
    _progress_queue = queue
    keep_freed_memory()


def _worker_job(*job):
    return _scene_job(*job, progress=_progress_queue.put)


def _run_parallel(jobs, workers, total, on_sample):
    """Run the scene jobs in ``workers`` processes, reporting progress."""
    import multiprocessing
    import queue as queue_module
    from concurrent.futures import ProcessPoolExecutor

    # forkserver, not fork: the parent may have started torch's thread pools, which do not
    # survive a fork. The server imports this module once and forks the workers from it.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    progress_queue = context.Queue()
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context,
                             initializer=_init_worker, initargs=(progress_queue,)) as pool:
        futures = [pool.submit(_worker_job, *job) for job in jobs]
        done = 0
        while not all(f.done() for f in futures) or not progress_queue.empty():
            try:
                progress_queue.get(timeout=0.2)
            except queue_module.Empty:
                continue
            done += 1
            if on_sample is not None:
                on_sample(min(done, total), total)
        return [f.result() for f in futures]


@dataclass
class _SensorRig:
    """The car's sensors at the spec's image size (the same rig in every scene)."""

    lidar: sensors.LidarSpec
    lidar_dirs: np.ndarray  # [columns * beams, 3] unit ray directions, LiDAR frame
    cameras: dict[str, sensors.CameraSpec]
    K: dict[str, np.ndarray]  # [3, 3] intrinsics per channel, pixels
    pixel_dirs: dict[str, np.ndarray]  # [H * W, 3] unit ray directions per channel, camera frame
    T_ego_lidar: np.ndarray  # [4, 4] LiDAR-to-ego
    T_ego_cam: dict[str, np.ndarray]  # [4, 4] camera-to-ego per channel

    @classmethod
    def for_spec(cls, spec: SynthSpec) -> _SensorRig:
        lidar = sensors.LidarSpec()
        cameras = {c.channel: c for c in sensors.CAMERAS}
        K = {c: cameras[c].K(spec.image_width, spec.image_height) for c in CAMERA_CHANNELS}
        pixel_dirs = {
            c: sensors.pixel_directions(K[c], spec.image_width, spec.image_height)
            for c in CAMERA_CHANNELS
        }
        return cls(lidar, lidar.directions(), cameras, K, pixel_dirs, sensors.T_ego_lidar(),
                   {c: cameras[c].T_ego_cam() for c in CAMERA_CHANNELS})


class _SceneWriter:
    """One scene being written: its files under ``root``, its table records and its counts.

    The order of the calls (tokens and the scene's random stream) fixes the output, so the
    steps run in the order :func:`_scene_job` calls them.
    """

    def __init__(self, spec: SynthSpec, scene_index: int, scene_name: str, root: Path,
                 shared: _SharedTokens) -> None:
        self.spec, self.root, self.shared = spec, root, shared
        self.tables = _Tables((spec.seed + 1) * 1_000_003 + scene_index)
        self.rig = _SensorRig.for_spec(spec)
        self.counts = {"samples": 0, "sweeps": 0, "images": 0, "annotations": 0}
        self.with_points: dict[str, int] = {}
        self.scene, self.appearance, self.rng = build_scene(spec, scene_index)
        self._add_log(scene_index)
        self._add_calibration()
        self.scene_record = self.tables.add("scene", {
            "token": self.tables.token(), "log_token": self.log["token"], "name": scene_name,
            "description": f"Synthetic street, ego at {self.scene.ego_speed:.1f} m/s, "
                           f"{sum(o.annotated for o in self.scene.objects)} annotated objects",
        })
        self.samples: list[dict] = []
        self.lidar_records: list[dict] = []
        self.cam_records: dict[str, list[dict]] = {c: [] for c in CAMERA_CHANNELS}
        self.pending_sweeps: list[dict] = []
        self.annotated = [i for i, o in enumerate(self.scene.objects) if o.annotated]
        self.instance_annotations: dict[int, list[dict]] = {i: [] for i in self.annotated}
        self.instances = {
            i: self.tables.add("instance", {
                "token": self.tables.token(),
                "category_token": shared.categories[self.scene.objects[i].category],
            })
            for i in self.annotated
        }

    def _add_log(self, scene_index: int) -> None:
        """The scene's start time (microseconds), log file name and ``log`` record."""
        self.location, vehicle, tz = LOCATIONS[scene_index % len(LOCATIONS)]
        self.base_us = (1531883530_000000 + scene_index * 3_600_000_000
                        + int(self.rng.integers(0, 10**6)))
        when = datetime.fromtimestamp(self.base_us / 1e6, tz=timezone.utc)
        local = when + timedelta(hours=int(tz[:3]))
        self.logfile = f"{vehicle}-{local:%Y-%m-%d-%H-%M-%S}{tz}"
        self.log = self.tables.add("log", {
            "token": self.tables.token(), "logfile": self.logfile, "vehicle": vehicle,
            "date_captured": f"{local:%Y-%m-%d}", "location": self.location,
        })

    def _add_calibration(self) -> None:
        """One ``calibrated_sensor`` record per channel (``self.calib``: channel -> token)."""
        rig, tables = self.rig, self.tables
        self.calib: dict[str, str] = {}
        rot, trans = _pose_record(rig.T_ego_lidar)
        self.calib[LIDAR_CHANNEL] = tables.add("calibrated_sensor", {
            "token": tables.token(), "sensor_token": self.shared.sensors[LIDAR_CHANNEL],
            "translation": trans, "rotation": rot, "camera_intrinsic": [],
        })["token"]
        for channel in CAMERA_CHANNELS:
            rot, trans = _pose_record(rig.T_ego_cam[channel])
            self.calib[channel] = tables.add("calibrated_sensor", {
                "token": tables.token(), "sensor_token": self.shared.sensors[channel],
                "translation": trans, "rotation": rot,
                "camera_intrinsic": [[float(v) for v in row] for row in rig.K[channel]],
            })["token"]

    def _sample_data(self, channel: str, t_us: int, T_global_ego: np.ndarray, filename: str,
                     key: bool, width: int = 0, height: int = 0) -> dict:
        """The ``ego_pose`` and ``sample_data`` records of one file (they share a token)."""
        token = self.tables.token()
        rot, trans = _pose_record(T_global_ego)
        self.tables.add("ego_pose", {"token": token, "timestamp": t_us, "rotation": rot,
                                     "translation": trans})
        return self.tables.add("sample_data", {
            "token": token, "sample_token": "", "ego_pose_token": token,
            "calibrated_sensor_token": self.calib[channel], "timestamp": t_us,
            "fileformat": "pcd" if channel == LIDAR_CHANNEL else "jpg",
            "is_key_frame": key, "height": height, "width": width, "filename": filename,
            "prev": "", "next": "",
        })

    def write_sweep(self, t: float, key: bool) -> tuple[dict, sensors.LidarScan]:
        """Scan the LiDAR at scene time ``t`` (seconds), write the sweep and its records."""
        t_us = self.base_us + int(round(t * 1e6))
        translation, yaw = self.scene.ego_pose(t)
        T_global_ego = sensors.T_global_ego(translation, yaw)
        T_global_lidar = T_global_ego @ self.rig.T_ego_lidar
        placements = sensors.placements_at(self.scene, t)
        scan = sensors.scan_lidar(self.rig.lidar, self.rig.lidar_dirs, T_global_lidar,
                                  placements, self.appearance, self.rng)
        folder = "samples" if key else "sweeps"
        filename = f"{folder}/{LIDAR_CHANNEL}/{self.logfile}__{LIDAR_CHANNEL}__{t_us}.pcd.bin"
        scan.points.tofile(self.root / filename)
        record = self._sample_data(LIDAR_CHANNEL, t_us, T_global_ego, filename, key)
        self.lidar_records.append(record)
        if not key:
            self.counts["sweeps"] += 1
            self.pending_sweeps.append(record)
        return record, scan

    def add_sample(self, lidar_record: dict) -> dict:
        """The ``sample`` of a keyframe sweep; the sweeps since the last one join it."""
        sample = self.tables.add("sample", {"token": self.tables.token(),
                                            "timestamp": lidar_record["timestamp"],
                                            "scene_token": self.scene_record["token"]})
        self.samples.append(sample)
        lidar_record["sample_token"] = sample["token"]
        for sweep in self.pending_sweeps:  # intermediate sweeps belong to the next keyframe
            sweep["sample_token"] = sample["token"]
        self.pending_sweeps = []
        return sample

    def write_images(self, sample: dict, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Render and write the six camera images of the keyframe at ``t`` (seconds).

        Returns per scene object ``[O]`` the pixels its box would cover without occlusion
        and the pixels where it is visible (for the visibility level).
        """
        spec, rig, scene = self.spec, self.rig, self.scene
        hit_counts = np.zeros(len(scene.objects), np.int64)
        visible_counts = np.zeros(len(scene.objects), np.int64)
        for channel in CAMERA_CHANNELS:
            t_cam = t + rig.cameras[channel].time_offset
            t_cam_us = self.base_us + int(round(t_cam * 1e6))
            cam_translation, cam_yaw = scene.ego_pose(t_cam)
            T_global_ego_cam = sensors.T_global_ego(cam_translation, cam_yaw)
            render = sensors.render_camera(
                T_global_ego_cam @ rig.T_ego_cam[channel], rig.K[channel], spec.image_width,
                spec.image_height, rig.pixel_dirs[channel], sensors.placements_at(scene, t_cam),
                scene, self.appearance, self.rng, hit_counts=hit_counts,
            )
            ids = render.object_index[render.object_index >= 0]
            visible_counts += np.bincount(ids, minlength=len(scene.objects))
            image_name = f"samples/{channel}/{self.logfile}__{channel}__{t_cam_us}.jpg"
            Image.fromarray(render.rgb).save(self.root / image_name, quality=spec.jpeg_quality)
            cam_record = self._sample_data(channel, t_cam_us, T_global_ego_cam, image_name,
                                           True, spec.image_width, spec.image_height)
            cam_record["sample_token"] = sample["token"]
            self.cam_records[channel].append(cam_record)
            self.counts["images"] += 1
        return hit_counts, visible_counts

    def add_annotations(self, sample: dict, t: float, scan: sensors.LidarScan,
                        hit_counts: np.ndarray, visible_counts: np.ndarray) -> None:
        """One ``sample_annotation`` per annotated object at keyframe time ``t`` (seconds)."""
        scene = self.scene
        points_per_object = np.bincount(scan.hit_object[scan.hit_object >= 0],
                                        minlength=len(scene.objects))
        for i in self.annotated:
            obj = scene.objects[i]
            xy = obj.position(t)
            visibility = visible_counts[i] / hit_counts[i] if hit_counts[i] else 0.0
            level = 1 + int(np.searchsorted([0.4, 0.6, 0.8], visibility, side="right"))
            attribute = [self.shared.attributes[obj.attribute]] if obj.attribute else []
            annotation = self.tables.add("sample_annotation", {
                "token": self.tables.token(), "sample_token": sample["token"],
                "instance_token": self.instances[i]["token"], "visibility_token": str(level),
                "attribute_tokens": attribute,
                "translation": [float(xy[0]), float(xy[1]), float(obj.size_wlh[2] / 2)],
                "size": [float(v) for v in obj.size_wlh],
                "rotation": [float(v) for v in frames.yaw_to_quat(obj.yaw)],
                "prev": "", "next": "",
                "num_lidar_pts": int(points_per_object[i]), "num_radar_pts": 0,
            })
            self.instance_annotations[i].append(annotation)
            self.counts["annotations"] += 1
            if points_per_object[i] > 0:
                self.with_points[obj.name] = self.with_points.get(obj.name, 0) + 1

    def link_chains(self) -> None:
        """``prev``/``next`` of every chain, and the first/last tokens of instances and scene."""
        _link(self.samples)
        _link(self.lidar_records)
        for records in self.cam_records.values():
            _link(records)
        for i in self.annotated:
            chain = self.instance_annotations[i]
            _link(chain)
            self.instances[i].update({
                "nbr_annotations": len(chain),
                "first_annotation_token": chain[0]["token"],
                "last_annotation_token": chain[-1]["token"],
            })
        self.scene_record.update({
            "nbr_samples": len(self.samples),
            "first_sample_token": self.samples[0]["token"],
            "last_sample_token": self.samples[-1]["token"],
        })


def _scene_job(spec: SynthSpec, scene_index: int, scene_name: str, root_str: str,
               shared: _SharedTokens, progress: Callable[[int], None]):
    """Make one scene: its files under ``root`` and its table records.

    Returns:
        ``(tables, summary)``: records per table name, and counts for the summary.
    """
    cpu_start = time.process_time()
    writer = _SceneWriter(spec, scene_index, scene_name, Path(root_str), shared)
    sweeps_between = spec.sweeps_per_sample
    dt, n_sweeps = sweep_timing(spec)
    for k in range(n_sweeps):
        t = k * dt
        key = k >= sweeps_between and (k - sweeps_between) % (sweeps_between + 1) == 0
        lidar_record, scan = writer.write_sweep(t, key)
        if not key:
            continue
        sample = writer.add_sample(lidar_record)
        hit_counts, visible_counts = writer.write_images(sample, t)
        writer.add_annotations(sample, t, scan, hit_counts, visible_counts)
        writer.counts["samples"] += 1
        progress(scene_index)
    writer.link_chains()
    summary = dict(writer.counts, with_points=writer.with_points, location=writer.location,
                   log_token=writer.log["token"], cpu_seconds=time.process_time() - cpu_start)
    records = {name: records for name, records in writer.tables.tables.items() if records}
    return records, summary


def keep_freed_memory() -> None:
    """Ask glibc to reuse freed memory instead of returning it to the system.

    Ray casting allocates and frees many multi-megabyte temporaries; by default each one
    is a fresh mmap whose pages fault in again (a fifth of the run time). Only affects
    the allocator's thresholds, for the whole process, so only the generator's worker
    processes call it; a no-op where glibc's ``mallopt`` is not available.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 256 * 2**20)
    mallopt(m_trim_threshold, 512 * 2**20)


def _write_placeholder_map(path: Path) -> None:
    """A small grey PNG standing in for a semantic-prior raster (there is no map data)."""
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(path)
