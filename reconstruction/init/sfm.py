"""Sparse structure from motion with pycolmap: SIFT, exhaustive matching, incremental mapping.

For the 2-12 photos of a sparse-view capture, COLMAP's defaults are tuned for dense video
and fail on wide baselines, so the features are affine-adapted SIFT with domain-size
pooling (more matches across strong viewpoint changes), matching is guided by the
two-view geometry, and the mapper's initialisation thresholds are relaxed. Where the
incremental mapper still registers too few views, :mod:`reconstruction.init.two_view`
(essential matrix, triangulation, PnP, bundle adjustment) takes over.

SIFT runs on the photos at their own matching resolution (``SfmConfig.match_max_size``,
1600 px, or the photo's own size if smaller), read again from the files, not on the
optimisation-sized images: whether a wide baseline matches must not depend on
``recon fit --max-size``. The cameras and tracks are rescaled once to the optimisation size
(:func:`rescale_model`). Where views stay unregistered, the whole chain runs once more with
more features and a relaxed ratio test (``SfmConfig.retry``), and the model says why each
remaining view failed (``SparseModel.failures``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from geometry.errors import UserError
from geometry.io.images import write_png
from reconstruction.images import LoadedImage, load_image, shared_camera
from reconstruction.init.base import SparseModel
from reconstruction.init.config import SfmConfig
from reconstruction.init.match_graph import image_file_name, read_match_graph
from reconstruction.init.two_view import TwoViewConfig, run_two_view


@contextlib.contextmanager
def _colmap_logging(verbose: bool) -> Iterator[None]:
    import pycolmap

    previous = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 0 if verbose else 3
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = previous


#: Shortest image side (pixels) SIFT is given: pycolmap's affine-adapted extractor with
#: domain-size pooling crashes the process (SIGSEGV) below 16 px (measured: 20x15 and 100x15
#: crash, 21x16 and 300x16 do not); nothing registers at such sizes anyway.
MIN_MATCH_SIDE = 16

#: The retry (``SfmConfig.retry``): features multiplied by this, SIFT's contrast threshold
#: divided by it (COLMAP's default 0.0067 keeps few features on low-contrast surfaces) ...
RETRY_FEATURE_FACTOR = 2
#: ... and the ratio test relaxed to this (more, and less distinctive, candidate matches:
#: geometric verification removes the wrong ones).
RETRY_MAX_RATIO = 0.9


def matching_images(images: Sequence[LoadedImage], match_max_size: int | None
                    ) -> list[LoadedImage]:
    """The photos as SIFT sees them: each read again from its file with its longest side at
    most ``match_max_size`` (never larger than the file), or the image itself where that is
    its size already, it has no file, or ``match_max_size`` is None.

    The focal prior is the optimisation image's (which ``recon fit --focal-35mm`` may have
    set), rescaled to the matching size.
    """
    out = []
    for im in images:
        size = im.source_size
        if match_max_size is None or size is None or not im.path.is_file():
            out.append(im)
            continue
        target = min(match_max_size, max(size))
        if target == max(im.width, im.height):
            out.append(im)
            continue
        big = load_image(im.path, target, im.background)
        focal = None if im.focal_px is None else im.focal_px * big.width / im.width
        out.append(replace(big, focal_px=focal, camera_key=im.camera_key))
    return out


def check_matchable(images: Sequence[LoadedImage]) -> None:
    """Refuse images too small for SIFT (:data:`MIN_MATCH_SIDE`) before any SfM work."""
    small = [im for im in images if min(im.width, im.height) < MIN_MATCH_SIDE]
    if small:
        im = small[0]
        raise UserError(f"photo {im.path.name} is {im.width}x{im.height} pixels, too small to "
                        f"match features in (SfM needs at least {MIN_MATCH_SIDE} pixels on the "
                        "shorter side); use larger photos.")


def rescale_model(model: SparseModel, sizes: np.ndarray) -> SparseModel:
    """The model at other image sizes ``[V, 2]`` (width, height): intrinsics and observed
    pixels scaled per axis (corner-at-0 pixels scale exactly), poses and points unchanged."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if np.array_equal(sizes, model.sizes):
        return model
    scale = sizes / np.maximum(model.sizes, 1)  # [V, 2] (sx, sy)
    Ks = model.Ks.copy()
    Ks[:, 0, :] *= scale[:, 0:1]
    Ks[:, 1, :] *= scale[:, 1:2]
    obs_xy = model.obs_xy * scale[model.obs_view] if len(model.obs_view) else model.obs_xy
    return replace(model, sizes=sizes.copy(), Ks=Ks, obs_xy=obs_xy)


def extract_and_match(images: Sequence[LoadedImage], work_dir: Path, config: SfmConfig,
                      seed: int, timings: dict[str, float], retry: bool = False) -> Path:
    """Write the views to ``work_dir/images``, extract SIFT and match all pairs; the database.

    ``retry``: more features, a lower contrast threshold and a relaxed ratio test
    (:data:`RETRY_FEATURE_FACTOR`, :data:`RETRY_MAX_RATIO`), into ``database_retry.db``.
    """
    import pycolmap

    image_dir = work_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        write_png(image_dir / image_file_name(i), im.rgb)
    database = work_dir / ("database_retry.db" if retry else "database.db")
    database.unlink(missing_ok=True)
    shared = (shared_camera(images) if config.shared_intrinsics == "auto"
              else config.shared_intrinsics == "yes")

    t0 = time.perf_counter()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_PINHOLE"  # the rasterizer has no lens distortion
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = config.threads
    extraction.sift.max_num_features = config.max_features
    extraction.sift.estimate_affine_shape = config.affine_features
    extraction.sift.domain_size_pooling = config.affine_features
    if retry:
        extraction.sift.max_num_features = config.max_features * RETRY_FEATURE_FACTOR
        extraction.sift.peak_threshold /= RETRY_FEATURE_FACTOR
    names = [image_file_name(i) for i in range(len(images))]
    camera_mode = pycolmap.CameraMode.SINGLE if shared else pycolmap.CameraMode.PER_IMAGE
    with _colmap_logging(config.verbose):
        # The images get their database ids here, in order, on one thread: the parallel
        # extraction would number them as its threads finish, and everything after it
        # (pair order, RANSAC's random streams, the mapper) follows the ids.
        pycolmap.Database.open(str(database)).close()  # creates the empty database
        pycolmap.import_images(database, image_dir, camera_mode=camera_mode,
                               image_names=names, options=reader)
        pycolmap.extract_features(
            database, image_dir, image_names=names, camera_mode=camera_mode,
            reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)
    _set_focal_priors(database, images, shared)
    _add(timings, "features", time.perf_counter() - t0)

    t0 = time.perf_counter()
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = config.threads
    matching.guided_matching = True
    matching.sift.max_ratio = max(config.max_ratio, RETRY_MAX_RATIO) if retry else config.max_ratio
    verification = pycolmap.TwoViewGeometryOptions()
    verification.min_num_inliers = config.min_inliers
    verification.ransac.random_seed = seed
    with _colmap_logging(config.verbose):
        pycolmap.match_exhaustive(database, matching_options=matching,
                                  verification_options=verification, device=pycolmap.Device.cpu)
    _add(timings, "matching", time.perf_counter() - t0)
    return database


def _add(timings: dict[str, float], key: str, seconds: float) -> None:
    timings[key] = timings.get(key, 0.0) + seconds


def _set_focal_priors(database: Path, images: Sequence[LoadedImage], shared: bool) -> None:
    """Put the EXIF focal lengths into the cameras COLMAP created (it saw PNGs without EXIF)."""
    import pycolmap

    db = pycolmap.Database.open(database)
    try:
        by_camera: dict[int, list[float]] = {}
        for db_image in db.read_all_images():
            focal = images[int(Path(db_image.name).stem)].focal_px
            if focal is not None:
                by_camera.setdefault(db_image.camera_id, []).append(focal)
        for camera in db.read_all_cameras():
            focals = by_camera.get(camera.camera_id)
            if not focals:
                continue
            camera.params = [float(np.median(focals)), camera.width / 2, camera.height / 2]
            camera.has_prior_focal_length = True
            db.update_camera(camera)
    finally:
        db.close()
    del shared  # one camera per image or one for all: either way the median of its images


def refine_focal(images: Sequence[LoadedImage], config: SfmConfig) -> bool:
    """Whether bundle adjustment refines the focal length (see ``SfmConfig.refine_focal``)."""
    if config.refine_focal == "auto":
        return any(im.focal_px is None for im in images)
    return config.refine_focal == "always"


def run_incremental(database: Path, work_dir: Path, num_views: int, config: SfmConfig,
                    seed: int, focal: bool = True, database_name: str = "sparse"
                    ) -> SparseModel | None:
    """COLMAP's incremental mapper with thresholds relaxed for a handful of views (its
    model goes to ``work_dir/<database_name>``)."""
    import pycolmap

    options = pycolmap.IncrementalPipelineOptions()
    options.multiple_models = False
    options.min_model_size = min(3, num_views)
    options.min_num_matches = config.min_inliers
    options.random_seed = seed
    options.num_threads = config.mapper_threads  # more: not reproducible
    options.ba_refine_focal_length = focal
    options.mapper.abs_pose_refine_focal_length = focal
    options.ba_refine_principal_point = False
    options.mapper.init_min_num_inliers = max(config.min_inliers, 30)
    options.mapper.init_min_tri_angle = 4.0
    options.mapper.abs_pose_min_num_inliers = config.min_inliers
    options.mapper.filter_max_reproj_error = config.max_reprojection_error
    options.triangulation.ignore_two_view_tracks = False  # few views: most tracks are pairs
    output = work_dir / database_name
    output.mkdir(parents=True, exist_ok=True)
    with _colmap_logging(config.verbose):
        reconstructions = pycolmap.incremental_mapping(database, work_dir / "images", output,
                                                       options)
    if not reconstructions:
        return None
    best = max(reconstructions.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
    return model_from_reconstruction(best, num_views)


def model_from_reconstruction(rec, num_views: int) -> SparseModel:
    """Convert a ``pycolmap.Reconstruction`` whose images are named by :func:`image_file_name`."""
    Ks = np.tile(np.eye(3), (num_views, 1, 1))
    T_cam_world = np.tile(np.eye(4), (num_views, 1, 1))
    sizes = np.zeros((num_views, 2), dtype=np.int64)
    registered = np.zeros(num_views, dtype=bool)
    view_of_image: dict[int, int] = {}
    for image_id, image in rec.images.items():
        view = int(Path(image.name).stem)
        view_of_image[image_id] = view
        camera = rec.cameras[image.camera_id]
        sizes[view] = (camera.width, camera.height)
        Ks[view] = camera.calibration_matrix()
        if image.has_pose:
            registered[view] = True
            T_cam_world[view, :3, :] = image.cam_from_world().matrix()
    points, colors, obs_point, obs_view, obs_xy = [], [], [], [], []
    for point in rec.points3D.values():
        index = len(points)
        points.append(point.xyz)
        colors.append(np.asarray(point.color, dtype=np.float64) / 255.0)
        for element in point.track.elements:
            image = rec.images[element.image_id]
            obs_point.append(index)
            obs_view.append(view_of_image[element.image_id])
            obs_xy.append(image.points2D[element.point2D_idx].xy)
    return SparseModel(
        names=[image_file_name(i) for i in range(num_views)],
        sizes=sizes,
        Ks=Ks,
        T_cam_world=T_cam_world,
        registered=registered,
        points_world=np.asarray(points, dtype=np.float64).reshape(-1, 3),
        colors=np.asarray(colors, dtype=np.float64).reshape(-1, 3),
        obs_point=np.asarray(obs_point, dtype=np.int64),
        obs_view=np.asarray(obs_view, dtype=np.int64),
        obs_xy=np.asarray(obs_xy, dtype=np.float64).reshape(-1, 2),
        mapper="incremental",
    )


def sample_colors(images: Sequence[LoadedImage], views: np.ndarray,
                  xy: np.ndarray) -> np.ndarray:
    """Bilinear colours ``[M, 3]`` at pixel positions ``xy [M, 2]`` (corner-at-0) of ``views``."""
    import torch

    colors = np.zeros((len(views), 3))
    for view in np.unique(views):
        sel = views == view
        rgb = images[view].rgb.permute(2, 0, 1)[None].to(torch.float64)  # [1, 3, H, W]
        h, w = rgb.shape[-2:]
        grid = torch.from_numpy(xy[sel]).to(torch.float64).clone()
        grid[:, 0] = grid[:, 0] / w * 2 - 1  # align_corners=False: corner-at-0 convention
        grid[:, 1] = grid[:, 1] / h * 2 - 1
        out = torch.nn.functional.grid_sample(rgb, grid[None, None], mode="bilinear",
                                              padding_mode="border", align_corners=False)
        colors[sel] = out[0, :, 0].T.numpy()
    return colors


def run_sfm(images: Sequence[LoadedImage], work_dir: Path, config: SfmConfig,
            seed: int = 0) -> tuple[SparseModel, dict[str, float]]:
    """Poses, intrinsics and sparse points of ``images`` (see the module doc).

    Features are matched at ``config.match_max_size``; the returned model is at the sizes
    of ``images``. Returns the model (check ``registered``; ``failures`` says why a view
    is not) and the seconds spent per stage.

    Raises:
        UserError: a photo too small for SIFT (:data:`MIN_MATCH_SIDE`).
    """
    import pycolmap

    pycolmap.set_random_seed(seed)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    match_images = matching_images(images, config.match_max_size)
    check_matchable(match_images)
    timings["load_matching_images"] = time.perf_counter() - t0
    model, database = _solve(match_images, work_dir, config, seed, timings, retry=False)
    if config.retry and not model.registered.all():
        retried, retry_database = _solve(match_images, work_dir, config, seed, timings,
                                         retry=True)
        if (retried.registered.sum(), len(retried.points_world)) > \
                (model.registered.sum(), len(model.points_world)):
            model, database = retried, retry_database
        model.stats["retried"] = 1
    model.names = [im.path.name for im in images]
    model.failures = _explain_failures(model, database, config.min_inliers)
    model.stats["match_max_side"] = int(max(max(im.width, im.height) for im in match_images))
    model = rescale_model(model, np.array([(im.width, im.height) for im in images]))
    errors = model.reprojection_errors()
    model.stats.update({
        "registered_views": int(model.registered.sum()),
        "sparse_points": int(len(model.points_world)),
        "mean_reprojection_error_px": float(errors.mean()) if len(errors) else float("nan"),
    })
    return model, timings


def _solve(images: Sequence[LoadedImage], work_dir: Path, config: SfmConfig, seed: int,
           timings: dict[str, float], retry: bool) -> tuple[SparseModel, Path]:
    """Features, matches and the mappers (incremental, then the two-view fallback) on the
    matching-size ``images``; the model at their size, and the database."""
    database = extract_and_match(images, work_dir, config, seed, timings, retry=retry)
    t0 = time.perf_counter()
    model = None
    if config.mapper in ("auto", "incremental"):
        model = run_incremental(database, work_dir, len(images), config, seed,
                                focal=refine_focal(images, config),
                                database_name="sparse_retry" if retry else "sparse")
    needs_fallback = model is None or not model.registered.all()
    if config.mapper == "two-view" or (config.mapper == "auto" and needs_fallback):
        graph = read_match_graph(database, len(images), config.min_inliers)
        fallback = run_two_view(graph, TwoViewConfig(
            max_reprojection_error=config.max_reprojection_error,
            min_inliers=config.min_inliers,
            shared_intrinsics=bool(len(set(graph.camera_ids.tolist())) == 1),
            refine_focal=refine_focal(images, config), seed=seed))
        fallback.colors = _point_colors(fallback, images)
        if model is None or fallback.registered.sum() > model.registered.sum():
            model = fallback
    _add(timings, "mapping", time.perf_counter() - t0)
    if model is None:  # incremental only, and it found no initial pair
        model = SparseModel(
            names=[image_file_name(i) for i in range(len(images))],
            sizes=np.array([(im.width, im.height) for im in images]),
            Ks=np.tile(np.eye(3), (len(images), 1, 1)),
            T_cam_world=np.tile(np.eye(4), (len(images), 1, 1)),
            registered=np.zeros(len(images), dtype=bool),
            points_world=np.zeros((0, 3)), colors=np.zeros((0, 3)),
            obs_point=np.zeros(0, np.int64), obs_view=np.zeros(0, np.int64),
            obs_xy=np.zeros((0, 2)), mapper="none")
    return model, database


def _explain_failures(model: SparseModel, database: Path, min_inliers: int) -> dict[str, str]:
    """Why each unregistered view failed (name -> reason), from its verified matches."""
    if model.registered.all():
        return {}
    graph = read_match_graph(database, model.num_views, 1)
    counts = np.zeros((model.num_views, model.num_views), dtype=np.int64)
    for (i, j), matches in graph.matches.items():
        counts[i, j] = counts[j, i] = len(matches)
    reasons = {}
    for view in np.flatnonzero(~model.registered):
        partners = np.flatnonzero(model.registered) if model.registered.any() \
            else np.array([v for v in range(model.num_views) if v != view])
        if len(partners) == 0 or counts[view, partners].max() == 0:
            reasons[model.names[view]] = "no verified feature matches with the other photos"
            continue
        best = int(partners[np.argmax(counts[view, partners])])
        count = int(counts[view, best])
        if count < min_inliers:
            reasons[model.names[view]] = (f"{count} verified feature matches with "
                                          f"{model.names[best]} at most, {min_inliers} needed")
        else:
            reasons[model.names[view]] = (f"{count} verified feature matches with "
                                          f"{model.names[best]}, but no camera pose fits "
                                          "them")
    return reasons


def _point_colors(model: SparseModel, images: Sequence[LoadedImage]) -> np.ndarray:
    """Mean observed colour of each point ``[P, 3]``."""
    per_obs = sample_colors(images, model.obs_view, model.obs_xy)
    sums = np.zeros((len(model.points_world), 3))
    counts = np.zeros(len(model.points_world))
    np.add.at(sums, model.obs_point, per_obs)
    np.add.at(counts, model.obs_point, 1)
    return sums / np.maximum(counts, 1)[:, None]
