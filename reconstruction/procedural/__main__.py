"""``python -m reconstruction.procedural``: write a procedural dataset (see :mod:`.dataset`)."""

from reconstruction.procedural.dataset import main

main()
