"""RDG-GS: relative-depth-guided Gaussian splatting for sparse views (``--method rdggs``)."""
