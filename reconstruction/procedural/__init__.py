"""The procedural scene generator: synthetic scenes with exact ground truth.

One ray caster (textured rectangles, spheres, oriented boxes; :mod:`.raycast`), two worlds
(:mod:`.worlds`), three camera layouts (:mod:`.scene`), one writer (:mod:`.dataset`).
Everything follows from a :class:`SceneConfig` (seeded), so scenes are reproducible bit for
bit; no third-party data is involved, which keeps the shipped sample license-clean.

==========  ==============================================  ==============================
kind        cameras                                         world
==========  ==============================================  ==============================
``arc``     an arc in front of the scene (shipped sample)   quad world: floor, wall, boxes
``orbit``   an arc around the objects                       object world: spheres, boxes
``forward`` LLFF-like forward-facing grid                   object world with a back wall
``outdoor`` a full circle around the objects (360 rig)      :mod:`.outdoor`: wide ground,
                                                            buildings far away, sky
==========  ==============================================  ==============================

``SceneConfig.textureless`` paints a share of the objects (the largest first) one uniform
colour, against the textured floor and walls: large textureless surfaces, where feature
matching and block stereo find no points (the failure of sparse-view initialisation on
DTU's white walls); with 0 (the default) scenes are bit-identical to those without it.

Outputs per view: the photo, the camera (:class:`geometry.cameras.Cameras`, OpenCV), depth
(camera z, metres), the object mask, the object id map and the object coordinates (the hit
point in the object's canonical frame, bounding box mapped onto ``[0, 1]^3``: see
:class:`~.worlds.SceneObject`). In memory: :func:`render` -> :class:`ProceduralScene`; on
disk: :func:`generate` (the folder ``recon eval`` reads) or :func:`write_photos` (PNGs with
an EXIF focal length, like a camera's). ``python -m reconstruction.procedural --help``.

World frame: z up, metres.
"""

from reconstruction.procedural.dataset import ProceduralDataset, generate, write_photos
from reconstruction.procedural.raycast import Quad, Solid, cast_rays
from reconstruction.procedural.scene import (
    ProceduralScene,
    SceneConfig,
    ViewMaps,
    camera_poses,
    intrinsics,
    make_world,
    render,
    render_view,
)
from reconstruction.procedural.worlds import (
    ObjectWorld,
    QuadWorld,
    SceneObject,
    default_quads,
    object_world,
    quad_world,
    textureless_objects,
)

__all__ = [
    "ObjectWorld",
    "ProceduralDataset",
    "ProceduralScene",
    "Quad",
    "QuadWorld",
    "SceneConfig",
    "SceneObject",
    "Solid",
    "ViewMaps",
    "camera_poses",
    "cast_rays",
    "default_quads",
    "generate",
    "intrinsics",
    "make_world",
    "object_world",
    "quad_world",
    "render",
    "render_view",
    "textureless_objects",
    "write_photos",
]
