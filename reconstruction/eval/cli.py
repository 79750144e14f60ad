"""``recon eval`` (the ``recon`` CLI, :mod:`sparseview.cli.recon`, builds it per method);
light to import (for --help)."""

from __future__ import annotations

from dataclasses import dataclass

from reconstruction.eval.config import EvalConfig


@dataclass
class Eval(EvalConfig):
    """Measure a method on held-out views: fit on k training views (without their poses),
    align the cameras to ground truth (Sim(3)), optimise the test poses against the frozen
    scene, render, and report PSNR/SSIM/LPIPS (masked too) and ATE/RPE/rotation errors.

    Writes OUT/eval.json, OUT/report.md + plot.png, OUT/compare/ (ground truth | render |
    error) and OUT/method/ (the method's own outputs), and prints the summary table.
    """

    def run(self) -> dict:
        from geometry.threads import set_threads
        from reconstruction.eval.protocol import run_eval
        from reconstruction.eval.report import print_table

        # All cores on an idle machine, one on a busy one (recon fit's rule: on busy cores
        # multi-threaded small tensor ops stall on each other, 5x slower here).
        set_threads(None)
        results = run_eval(self)
        print_table(results)
        print(f"wrote {self.out}")
        return results

