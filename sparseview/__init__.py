"""sparseview's command lines: the one place that ties the packages together.

``geometry`` is the shared core; ``reconstruction``, ``perception`` and ``pose`` build on it
(pose also on reconstruction); ``viewer`` shows what all of them produce. The ``recon``
command needs the viewer (``recon view``, ``recon fit --view``) and the pose estimators (as
``recon fit`` initialisers), so it lives here, above all of them (:mod:`sparseview.cli.recon`).
"""
