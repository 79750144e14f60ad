"""The ``recon`` command line: ``fit``, ``eval``, ``view``, ``render`` and ``build-ops``.

Subcommands are dataclasses turned into a CLI by tyro; heavy modules are imported inside
``run`` so that ``recon --help`` stays fast. ``view`` and ``render`` live in the viewer
package (the CLI is the one place that ties the packages together).
"""

from __future__ import annotations

from dataclasses import dataclass

import tyro

from geometry.errors import run_cli
from reconstruction.eval.cli import Eval
from reconstruction.instantsplat.config import FitConfig
from viewer.cli import Render, View


@dataclass
class BuildOps:
    """Compile the native kernels now (otherwise they are built on first use)."""

    verbose: bool = False
    """Show the compiler's output."""

    def run(self) -> None:
        from geometry.native import build_ops

        path = build_ops(verbose=self.verbose)
        print(f"native kernels ready: {path}")


@dataclass
class Fit(FitConfig):
    """Fit Gaussian splats and camera poses to a folder of 2-12 unposed photos (InstantSplat).

    Writes OUT/splats.ply, OUT/cameras/ (COLMAP text), OUT/transforms.json, OUT/images/ and
    OUT/metrics.json. Ctrl-C keeps the last checkpoint; rerun with --resume to continue.
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

    def run(self) -> None:
        from reconstruction.instantsplat.pipeline import run_fit

        if not self.view:
            run_fit(self)
            return
        from geometry.errors import UserError

        if self.view_every < 1:
            raise UserError(f"--view-every {self.view_every} must be at least 1.")
        from viewer.live import LiveTrainingViewer

        live = LiveTrainingViewer(port=self.view_port, host=self.view_host,
                                  every=self.view_every)
        try:
            run_fit(self, monitor=live_monitor(live))
        except BaseException:
            live.close()
            raise
        if self.view_keep_open:
            live.keep_open()
        else:
            live.close()


def live_monitor(live):
    """The ``fit`` monitor that refreshes ``live`` (a LiveTrainingViewer) when it is due."""

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


COMMANDS = {
    "fit": Fit,
    "eval": Eval,
    "view": View,
    "render": Render,
    "build-ops": BuildOps,
}


def main() -> None:
    def _main() -> None:
        cmd = tyro.extras.subcommand_cli_from_dict(COMMANDS, prog="recon")
        cmd.run()

    run_cli(_main, prog="recon")


if __name__ == "__main__":
    main()
