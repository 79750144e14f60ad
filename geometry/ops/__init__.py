"""sparseview's native ops: one sub-package per op, mirroring the kernel sources in ``cuda/``.

Layout (``<op>`` is ``rasterize``, ``voxelize``, ...)::

    cuda/registry.cpp                  the one TORCH_LIBRARY(sparseview): every op's schema
    cuda/<op>/<op>_cpu.cpp             CPU backend (OpenMP), TORCH_LIBRARY_IMPL(..., CPU)
    cuda/<op>/<op>_cuda.cu             CUDA kernels (CUDA runtime only: raw pointers, stream)
    cuda/<op>/<op>_cuda.cpp            thin binding of those kernels, TORCH_LIBRARY_IMPL(..., CUDA)
    geometry/ops/loader.py             lazy build of all of the above (``build_ops``, ``load_ops``)
    geometry/ops/<op>/_wrapper.py      Python front end of torch.ops.sparseview.<op> (+ autograd)
    geometry/ops/<op>/_torch_impl.py   pure-PyTorch reference: the test oracle
    geometry/ops/<op>/__init__.py      the op's public entry points and device dispatch
    tests/geometry/test_ops_<op>.py    native against reference (values, gradients, edge cases)

Kernels are compiled on first use (or by ``recon build-ops``), never at import: importing
``geometry.ops`` or an op's package only imports torch. The CUDA sources are built only
where a CUDA device exists (see :mod:`geometry.ops.loader`).

Adding an op ``foo``:

1. declare its schema in ``cuda/registry.cpp``;
2. write ``cuda/foo/foo_cpu.cpp`` (``TORCH_LIBRARY_IMPL(sparseview, CPU, m)``) and, where it
   pays, ``cuda/foo/foo_cuda.cu`` + ``cuda/foo/foo_cuda.cpp``; the loader globs them, so no
   list needs editing;
3. write ``geometry/ops/foo/_torch_impl.py`` (the reference), ``_wrapper.py`` (calls
   :func:`geometry.ops.loader.load_ops`, or :func:`~geometry.ops.loader.load_ops_with_autograd`
   with its backward if the op is differentiable, then ``torch.ops.sparseview.foo``) and
   ``__init__.py``
   (the entry point that picks the backend by device);
4. compare native and reference in ``tests/geometry/test_ops_foo.py``.
"""
