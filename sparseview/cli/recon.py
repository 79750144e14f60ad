"""The ``recon`` command line: ``fit``, ``eval``, ``view``, ``render``, ``build-ops`` and the
training commands of learned methods (``neo360``, ``upsrt``, ``sparse3d``).

Subcommands are dataclasses turned into a CLI by tyro; heavy modules are imported inside
``run`` so that ``recon --help`` stays fast. ``fit`` and ``eval`` take ``--method NAME``
from the method registry (:mod:`reconstruction.methods`): the command is built for that
method, so ``recon fit --method NAME --help`` shows its own options (``--NAME.*``) and no
other method's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from pose.camera.aden.config import Selection
from reconstruction.engine.config import FitConfig
from reconstruction.eval.cli import Eval
from reconstruction.method import Method
from viewer.cli import Render, View


@dataclass
class BuildOps:
    """Compile the native kernels now (otherwise they are built on first use, ~30 s)."""

    verbose: bool = False
    """Show the compiler's output."""
    cuda_compile_only: bool = False
    """Only check that every CUDA source (cuda/**/*.cu) compiles with nvcc for sm_80 and
    sm_90 (objects in a temporary folder; no GPU needed) and that every torch binding of
    them (cuda/*/*_cuda.cpp) parses against torch's headers; exit 2 naming the file that
    fails."""

    def run(self) -> None:
        from geometry.ops.loader import build_ops, build_plan
        from geometry.progress import log_stage

        if self.cuda_compile_only:
            from geometry.ops.loader import check_cuda_bindings, compile_cuda_sources

            sources = compile_cuda_sources(verbose=self.verbose)
            print(f"CUDA sources compile for sm_80 and sm_90: {len(sources)} file(s)")
            bindings = check_cuda_bindings(verbose=self.verbose)
            print(f"CUDA torch bindings parse against torch's headers: {len(bindings)} "
                  "file(s)")
            return
        plan = build_plan()
        if (plan.build_dir / f"{plan.name}.so").is_file():
            log_stage(f"native kernels already built for this machine in {plan.build_dir}")
        # else build_ops says that it compiles (once)
        path = build_ops(verbose=self.verbose)
        print(f"native kernels ready: {path}")


@dataclass
class Fit(FitConfig):
    """Fit a scene and camera poses to a folder of 1-12 unposed photos (default method:
    InstantSplat; see --method).

    Writes OUT/splats.ply, OUT/sparse/0/ (COLMAP text model with tracks), OUT/transforms.json
    (nerfstudio; its point cloud OUT/sparse_pc.ply), OUT/images/ and OUT/metrics.json.
    Ctrl-C keeps the last checkpoint; rerun with --resume to continue.
    """

    view: bool = False
    """Open the browser viewer during training (splats and cameras refreshed live)."""
    view_port: int = 8080
    """Port of the live viewer."""
    view_host: str = "127.0.0.1"
    """Address of the live viewer (0.0.0.0: reachable from other machines)."""
    view_every: int = 10
    """Refresh the live view every this many iterations (and at most once a second)."""
    view_keep_open: bool = True
    """After training, keep serving the result until Ctrl-C."""
    refine_poses: bool = False
    """Refine the initialiser's cameras with SparseAGS (render-and-compare, outlier views
    detected and corrected; see pose sparseags) before the optimisation."""
    aden_checkpoint: Path | None = None
    """An ADen checkpoint folder ('pose aden train'): its camera poses initialise the fit
    (the cloud is triangulated with them by the --init initialiser; poses the photos'
    matches do not fit are dropped with a warning, and the --init initialiser registers
    the photos itself); None: the --init initialiser's own poses."""
    aden_select: Selection = "argmax"
    """How ADen picks each view's pose among its hypotheses (as in 'pose aden predict'):
    argmax (the paper's) or mean (the chordal mean of the hypotheses)."""
    aden_mirror_views: bool = False
    """Also estimate ADen's poses from the photos mirrored left-right and average the two
    (as in 'pose aden predict')."""

    def run(self) -> dict:
        from geometry.errors import UserError
        from reconstruction.methods import fit

        if self.aden_checkpoint is not None:
            from pose.camera.aden.hook import register_aden

            self.init = register_aden(self.aden_checkpoint, base=self.init,
                                      select=self.aden_select,
                                      mirror_views=self.aden_mirror_views)
        if self.refine_poses:
            from pose.camera.sparseags.hook import register_refine_poses

            self.init = register_refine_poses(self.init)
        if not self.view:
            return _report(self, fit(self))
        if self.view_every < 1:
            raise UserError(f"--view-every {self.view_every} must be at least 1.")
        from viewer.live import LiveTrainingViewer

        live = LiveTrainingViewer(port=self.view_port, host=self.view_host,
                                  every=self.view_every)
        try:
            metrics = fit(self, callbacks=[live_monitor(live)])
        except BaseException:
            live.close()
            raise
        _report(self, metrics)
        if self.view_keep_open:
            live.keep_open()
        else:
            live.close()
        return metrics


def _report(config: FitConfig, metrics: dict) -> dict:
    """One line: where the outputs went and the figures a method reports."""
    from geometry.progress import log_stage

    parts = []
    if "num_gaussians" in metrics:
        parts.append(f"{metrics['num_gaussians']} splats")
    if "training_psnr_db" in metrics:
        parts.append(f"training PSNR {metrics['training_psnr_db']:.2f} dB")
    if metrics.get("low_psnr_views"):
        parts.append(f"{len(metrics['low_psnr_views'])} view(s) far below the others "
                     "(see the warning)")
    if "total" in metrics.get("timings_s", {}):
        parts.append(f"{metrics['timings_s']['total']:.1f} s")
    # one line even in a log (rich would wrap it at 80 columns there)
    log_stage(f"wrote {config.out}" + (f": {', '.join(parts)}" if parts else ""))
    return metrics


def live_monitor(live):
    """The ``fit`` callback that refreshes ``live`` (a LiveTrainingViewer) when it is due."""

    def monitor(trainer, images) -> None:
        last = trainer.iteration >= trainer.config.iterations
        if not (last or live.due(trainer.iteration)):
            return
        import torch

        from geometry.cameras import Cameras
        from geometry.se3 import invert_T

        with torch.no_grad():
            cameras = Cameras(K=trainer.intrinsics().cpu(),
                              T_world_cam=invert_T(trainer.viewmats().cpu()),
                              width=torch.tensor([im.width for im in images]),
                              height=torch.tensor([im.height for im in images]),
                              image_paths=[str(im.path) for im in images],
                              names=[im.path.name for im in images])
        live.update(trainer.iteration, trainer.scene(), cameras, force=last)

    return monitor


def _take_method_options(command) -> None:
    """``__post_init__`` of a method's command: its option group (field ``<method>``)
    becomes ``command.options``, what the method reads."""
    if command.options is None:
        command.options = getattr(command, command.method, None)


def method_command(base: type, method: Method, names: list[str]) -> type:
    """``base`` (Fit or Eval) for ``method``: ``--method`` choices from the registry and the
    method's own options as the group ``--<name>.*`` (no other method's)."""
    from reconstruction.methods import get_method

    lines = "; ".join(f"{n} ({get_method(n).summary.rstrip('.')})" for n in names)
    method_type = Annotated[Literal[tuple(names)], tyro.conf.arg(  # type: ignore[valid-type]
        help=f"Reconstruction method: {lines}. `--method NAME --help` lists NAME's own "
             "options.")]
    fields = [("method", method_type, dataclasses.field(default=method.name))]
    if method.options is not None:
        fields.append((method.name, Annotated[method.options, tyro.conf.arg(
            help=f"Options of --method {method.name}.")],
            dataclasses.field(default_factory=method.options)))
    return dataclasses.make_dataclass(f"{base.__name__}_{method.name}", fields, bases=(base,),
                                      namespace={"__doc__": base.__doc__,
                                                 "__module__": __name__,
                                                 "__post_init__": _take_method_options})


def _method_in(argv: list[str]) -> str | None:
    """The value of ``--method`` in ``argv`` (``--method X`` or ``--method=X``)."""
    for k, arg in enumerate(argv):
        if arg == "--method" and k + 1 < len(argv):
            return argv[k + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    return None


def commands(argv: list[str]) -> dict[str, type]:
    """The subcommands, ``fit``/``eval`` built for the method ``argv`` names.

    When ``argv`` starts with one of the photo commands (``fit``, ``eval``, ``view``,
    ``render``, ``build-ops``), only that one: the learned methods' training commands
    import their data and model modules, which is start-up time every ``recon fit`` paid.
    """
    from reconstruction.methods import DEFAULT_METHOD, METHODS, get_method, method_names

    builders: dict[str, Callable[[], type]] = {
        "fit": lambda: method_command(Fit, method, names),
        "eval": lambda: method_command(Eval, method, names),
        "view": lambda: View,
        "render": lambda: Render,
        "build-ops": lambda: BuildOps,
    }
    names = method_names()
    chosen = _method_in(argv)
    method = get_method(chosen if chosen in METHODS else DEFAULT_METHOD)
    if argv and argv[0] in builders:
        return {argv[0]: builders[argv[0]]()}
    return {
        **{name: build() for name, build in builders.items()},
        "neo360": _neo360_command(),
        "upsrt": _upsrt_command(),
        "sparse3d": _sparse3d_command(),
    }


def _upsrt_command() -> type:
    from reconstruction.upfusion.cli import UpSRTCommand

    return UpSRTCommand


def _sparse3d_command() -> type:
    from reconstruction.sparse3d.cli import Sparse3DCommand

    return Sparse3DCommand


def _neo360_command() -> type:
    from reconstruction.neo360.cli import NeO360Command

    return NeO360Command


def main() -> None:
    from geometry.version import run_subcommands

    run_subcommands(commands, "recon", "Photos to camera poses and a Gaussian splat scene.")


if __name__ == "__main__":
    main()
