"""``recon view`` and ``recon render`` (also ``python -m viewer.cli view|render``).

Subcommands are dataclasses with a ``run()`` method, like the rest of the ``recon`` CLI;
viser, imageio and the rasterizer are imported inside ``run`` so that ``--help`` is fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from geometry.errors import UserError, run_cli

UpAxis = Literal["auto", "+x", "-x", "+y", "-y", "+z", "-z"]
_AXES = {"+x": (1.0, 0.0, 0.0), "-x": (-1.0, 0.0, 0.0), "+y": (0.0, 1.0, 0.0),
         "-y": (0.0, -1.0, 0.0), "+z": (0.0, 0.0, 1.0), "-z": (0.0, 0.0, -1.0)}


def _up_vector(up: UpAxis):
    import numpy as np

    return None if up == "auto" else np.array(_AXES[up])


@dataclass
class View:
    """Open splats, cameras, points or a nuScenes sample in the browser (viser).

    PATH is the OUT folder of recon fit, a 3DGS .ply (original 3DGS, nerfstudio, gsplat),
    an output folder of the original 3DGS code, a nuScenes dataroot, or an mmdet3d info
    .pkl (or a folder holding one); for the last two --sample and --results pick what to
    show (LiDAR points, boxes and cameras in the ego frame of the LiDAR). Open the printed
    address in a browser; Ctrl-C stops.
    """

    path: tyro.conf.Positional[Path]
    """OUT folder, .ply file, nuScenes dataroot or mmdet3d info .pkl."""
    port: int = 8080
    """Port to serve on (0: any free port)."""
    host: str = "127.0.0.1"
    """Address to serve on; 0.0.0.0 makes the viewer reachable from other machines."""
    up: UpAxis = "auto"
    """World up axis; auto: from the cameras (-y without cameras, +z for nuScenes)."""
    sample: str = "0"
    """nuScenes or info .pkl: sample token, or index in the sample table (the info file)."""
    version: str | None = None
    """nuScenes: table folder (v1.0-mini, ...); default: the only one in PATH."""
    data_root: Path | None = None
    """Info .pkl: the folder its file paths are relative to; default: the .pkl's folder, or
    its parent (whichever holds the LiDAR file)."""
    results: Path | None = None
    """nuScenes or info .pkl: detection results JSON (meta + results) to show next to the
    ground truth."""
    score_threshold: float = 0.3
    """nuScenes or info .pkl: hide detections scored below this."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Initial background colour, RGB in [0, 1] like every --background (also a control in
    the page)."""
    seconds: float | None = None
    """Stop after this many seconds (for scripts); default: run until Ctrl-C."""

    def load(self):
        """The :class:`~viewer.data.ViewerScene` that ``run`` shows."""
        from viewer.data import holds_scene, load_scene, nothing_to_show
        from viewer.mmdet3d import find_info_file, load_info_sample
        from viewer.nusc import is_nuscenes_root, load_nuscenes_sample

        if self.path.is_dir() and is_nuscenes_root(self.path):
            if self.data_root is not None:
                raise UserError(f"--data-root is for mmdet3d info files; the nuScenes "
                                f"dataroot is {self.path} itself, so drop --data-root.")
            return load_nuscenes_sample(self.path, self.version, self.sample, self.results,
                                        self.score_threshold)
        info = None
        if self.path.is_file() and self.path.suffix.lower() == ".pkl":
            info = self.path
        elif self.path.is_dir() and not holds_scene(self.path):
            info = find_info_file(self.path)
            if info is None:
                raise UserError(nothing_to_show(self.path))
        if info is not None:
            return load_info_sample(info, self.sample, self.data_root, self.results,
                                    self.score_threshold)
        for flag, value in (("--results", self.results), ("--data-root", self.data_root)):
            if value is not None:
                raise UserError(f"{flag} is for nuScenes samples and mmdet3d info files, but "
                                f"{self.path} is neither (a dataroot needs its v1.0-*/ "
                                "tables with sample.json; an info file is a .pkl).")
        return load_scene(self.path)

    def run(self) -> None:
        from viewer.ports import check_port_free

        if not self.path.exists():
            raise UserError(f"{self.path} does not exist; give the OUT folder of recon fit, a "
                            "3DGS .ply file, a nuScenes dataroot or an mmdet3d info .pkl.")
        if not all(0.0 <= c <= 1.0 for c in self.background):
            raise UserError("--background takes three numbers in [0, 1] (e.g. 1 1 1 for "
                            "white).")
        check_port_free(self.host, self.port)  # fail fast, before reading big files
        scene = self.load()
        from viewer.server import serve

        serve(scene, host=self.host, port=self.port, up=_up_vector(self.up),
              seconds=self.seconds,
              background=tuple(int(round(255 * c)) for c in self.background))


@dataclass
class Render:
    """Render a video of the splats along a camera path with sparseview's rasterizer.

    auto (the default) follows what the cameras saw: orbit for a capture all around the
    scene, spiral for a forward-facing one, else arc. orbit circles the scene at the
    cameras' distance and height; arc swings along that circle over the cameras' range
    only; spiral is the LLFF/NeRF forward-facing spiral; interpolate flies through the input
    cameras in order, passing exactly through each of them. Writes an H.264 mp4 (ffmpeg
    from imageio-ffmpeg).
    """

    path: tyro.conf.Positional[Path]
    """OUT folder of recon fit (or an original 3DGS output folder, or a bare .ply: orbit only)."""
    trajectory: Literal["auto", "orbit", "arc", "spiral", "interpolate"] = "auto"
    """Camera path (auto: from the cameras' spread, see above; orbit without cameras)."""
    frames: int = 120
    """Number of frames."""
    out: Path | None = None
    """Output .mp4; default: PATH/render_<trajectory>.mp4 (next to a bare .ply), named
    by the path auto chose."""
    fps: float = 30.0
    """Frames per second of the video."""
    width: int | None = None
    """Width in pixels; default: the first camera's, at most 960 (even)."""
    height: int | None = None
    """Height in pixels; with only one of width/height the other keeps the aspect."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Background colour, RGB in [0, 1]."""
    up: UpAxis = "auto"
    """World up axis for orbit; auto: from the cameras (-y without cameras)."""
    device: str = "cpu"
    """cpu (sparseview's kernel), cuda or cuda:N (gsplat on that GPU)."""
    quiet: bool = False
    """No progress bar."""

    def output_path(self, kind: str | None = None) -> Path:
        """``--out``, or the default for the trajectory ``kind`` (default: --trajectory)."""
        kind = kind or self.trajectory
        if self.out is not None:
            return self.out
        if self.path.is_file():
            return self.path.with_name(f"{self.path.stem}_{kind}.mp4")
        return self.path / f"render_{kind}.mp4"

    def output_size(self, cameras) -> tuple[int, int]:
        from viewer.render import even_size

        if cameras is not None:
            w0, h0 = int(cameras.width[0]), int(cameras.height[0])
        else:
            w0, h0 = 960, 540
        if self.width is None and self.height is None:
            s = min(1.0, 960.0 / max(w0, h0))
            w, h = round(w0 * s), round(h0 * s)
        elif self.height is None:
            w, h = self.width, round(self.width * h0 / w0)
        elif self.width is None:
            w, h = round(self.height * w0 / h0), self.height
        else:
            w, h = self.width, self.height
        if w < 2 or h < 2:
            raise UserError(f"the video would be {w}x{h} pixels; pass --width/--height of at "
                            "least 2.")
        return even_size(int(w), int(h))

    def run(self) -> Path:
        # cheap checks first: a wrong argument fails before torch is imported
        if self.frames < 1:
            raise UserError(f"--frames {self.frames} is too few; give at least 1.")
        if self.fps <= 0:
            raise UserError(f"--fps {self.fps} must be positive.")
        out = self.output_path()
        if out.suffix.lower() != ".mp4":
            raise UserError(f"--out {out} must end in .mp4.")
        if not all(0.0 <= c <= 1.0 for c in self.background):
            raise UserError("--background takes three numbers in [0, 1].")
        if not self.path.exists():
            raise UserError(f"{self.path} does not exist; give the OUT folder of recon fit or "
                            "a 3DGS .ply file.")

        import numpy as np

        from geometry.device import check_device
        from geometry.progress import log_stage, progress_bar
        from viewer.data import load_scene
        from viewer.framing import estimate_up, scene_sphere
        from viewer.render import render_rgb, write_video
        from viewer.trajectories import choose_trajectory, make_trajectory

        check_device(self.device)
        scene = load_scene(self.path)
        if scene.splats is None:
            raise UserError(f"{self.path} holds no splats to render; give an OUT folder with "
                            "splats.ply or a 3DGS .ply.")
        cams = scene.cameras
        T = K = widths = heights = None
        if cams is not None:
            T = cams.T_world_cam.detach().cpu().double().numpy()
            K = cams.K.detach().cpu().double().numpy()
            widths, heights = cams.width.cpu().numpy(), cams.height.cpu().numpy()
        up = _up_vector(self.up)
        if up is None:
            up = estimate_up(T)
        # orbit and spiral turn around the content, not around content and cameras
        content = scene.content_points()
        sphere = scene_sphere(content, None if content is not None or T is None
                              else T[:, :3, 3])
        kind = self.trajectory
        if kind == "auto":
            kind = choose_trajectory(sphere, up, T)
            log_stage(f"trajectory: {kind} (chosen from the cameras' spread; pass "
                      "--trajectory to choose)", self.quiet)
            out = self.output_path(kind)
        path = make_trajectory(kind, self.frames, sphere, up, T, K, widths, heights)
        width, height = self.output_size(cams)
        Ks = path.Ks(width, height)
        splats = scene.splats.to(self.device)

        def frame(i: int) -> np.ndarray:
            return render_rgb(splats, path.T_world_cam[i], Ks[i], width, height,
                              self.background)

        progress = progress_bar(f"render {kind}", ["frames"], quiet=self.quiet)
        with progress:
            task = progress.add_task("render", total=self.frames)
            write_video(out, frame, self.frames, width, height, fps=self.fps,
                        progress=lambda i: progress.update(task, completed=i + 1))
        log_stage(f"wrote {out} ({self.frames} frames, {width}x{height}, {self.fps:g} fps)",
                  self.quiet)
        return out


COMMANDS = {"view": View, "render": Render}


def main() -> None:
    def _main() -> None:
        cmd = tyro.extras.subcommand_cli_from_dict(COMMANDS, prog="python -m viewer.cli")
        cmd.run()

    run_cli(_main, prog="recon")


if __name__ == "__main__":
    main()
