"""sparseview's shared core: cameras, rotations and rigid/similarity transforms, frame
conventions, camera-format readers/writers and the loader of native kernels.

Importing this package is cheap: submodules are imported where they are used.
"""
