"""sparseview's shared core: cameras, rotations and rigid/similarity transforms, frame
conventions, camera-format readers/writers and the loader of native kernels.

- :mod:`geometry.so3` rotations (wxyz quaternions, axis-angle, 6D, exp/log);
- :mod:`geometry.se3` 4x4 rigid transforms ``T_a_b`` (exp/log with ``xi = (rho, omega)``);
- :mod:`geometry.sim3` Umeyama and trajectory alignment;
- :mod:`geometry.cameras` :class:`~geometry.cameras.Cameras`, the one camera type (OpenCV);
- :mod:`geometry.conventions` OpenGL/NeRF, LLFF and PyTorch3D frames to and from OpenCV;
- :mod:`geometry.io` COLMAP, transforms.json, LLFF, IDR/DTU and CO3D readers/writers.

Importing this package is cheap: submodules are imported where they are used.
"""
