"""sparseview's shared core: cameras, rotations and rigid/similarity transforms, frame
conventions, camera-format readers/writers and the native ops.

- :mod:`geometry.so3` rotations (wxyz quaternions, axis-angle, 6D, exp/log);
- :mod:`geometry.se3` 4x4 rigid transforms ``T_a_b`` (exp/log with ``xi = (rho, omega)``);
- :mod:`geometry.sim3` Umeyama and trajectory alignment;
- :mod:`geometry.cameras` :class:`~geometry.cameras.Cameras`, the one camera type (OpenCV);
- :mod:`geometry.conventions` OpenGL/NeRF, LLFF and PyTorch3D frames to and from OpenCV;
- :mod:`geometry.io` COLMAP, transforms.json, LLFF, IDR/DTU and CO3D readers/writers, the
  one PNG writer (:mod:`geometry.io.images`);
- :mod:`geometry.pose_metrics` ATE/RPE/rotation errors, RRA/RTA/CCA (eval and pose share them);
- :mod:`geometry.progress` the one progress-bar style; :mod:`geometry.threads` the one
  meaning of ``--threads``;
- :mod:`geometry.ops` native ops (one sub-package per op: wrapper, PyTorch reference,
  dispatch) and their lazy loader :mod:`geometry.ops.loader`.

Importing this package is cheap: submodules are imported where they are used.
"""
