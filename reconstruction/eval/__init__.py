"""``recon eval``: the sparse-view benchmark protocol.

Fit a method on k training views, align its cameras to the ground truth (Umeyama Sim(3)),
optimise each held-out view's pose against the frozen scene, render, and report image
metrics (PSNR, SSIM, LPIPS; masked too where object masks exist) and pose metrics (ATE,
RPE, rotation errors) with the wall time of every stage.

Modules (import the one you need; this package imports nothing heavy):

- :mod:`.splits`     training/test views: DTU (pixelNeRF/RegNeRF), LLFF (every 8th held out)
- :mod:`.data`       a dataset with ground truth read through :mod:`geometry.io`
- :mod:`.metrics`    PSNR, SSIM, masked variants, depth AbsRel (pose metrics:
  :mod:`geometry.pose_metrics`; test-view pose optimisation: :mod:`reconstruction.pose_opt`)
- :mod:`.lpips`      the LPIPS network (official key names), loaded from a local file only
- :mod:`.methods`    the reconstruction methods eval can run (``METHODS``)
- :mod:`.protocol`   the whole protocol (:func:`~.protocol.run_eval`)
- :mod:`.report`     eval.json, side-by-side PNGs, the markdown report and its plot
- :mod:`.cli`        the ``Eval`` command (``python -m reconstruction.eval.cli``)
"""
