"""Reconstruction from sparse views: a handful of photos -> cameras and a 3D scene.

- :mod:`reconstruction.methods` — the registry (``recon fit/eval --method``) of
  :class:`~reconstruction.method.Method` records; one folder per method
  (:mod:`~reconstruction.instantsplat`, :mod:`~reconstruction.rdggs`);
- :mod:`reconstruction.scene_model` — the protocol every method's result implements
  (cameras, ``render``, save/load), consumed by ``recon eval``, ``recon view`` and pose
  refinement;
- :mod:`reconstruction.engine` — the Gaussian engine (fit loop, trainer with loss terms and
  a densification strategy) the splat methods share;
- :mod:`reconstruction.gaussians`, :mod:`reconstruction.splatting` — Gaussian scenes, the
  3DGS PLY and the differentiable splatting API;
- :mod:`reconstruction.init` — coarse initialisers (SfM, stereo); :mod:`reconstruction.depth`
  — monocular depth priors;
- :mod:`reconstruction.pose_opt` — batched render-and-compare pose optimisation;
- :mod:`reconstruction.eval` — the sparse-view evaluation protocol;
- :mod:`reconstruction.procedural` — the procedural scene generator of tests and benchmarks.

The ``recon`` command line is :mod:`sparseview.cli.recon` (it also needs the viewer).
"""
