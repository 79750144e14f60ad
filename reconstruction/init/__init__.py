"""Coarse initialisers (InstantSplat's CGI): cameras and a point cloud from unposed photos.

- :mod:`.config`: the options and the :data:`~.config.InitName` choices (light imports);
- :mod:`.registry`: ``INITIALISERS``, the one name -> function table;
- :mod:`.sfm` (pycolmap), :mod:`.two_view` (fallback), :mod:`.match_graph` (the matches
  both read), :mod:`.stereo` (dense cloud), :mod:`.cgi` (the initialisers built from them),
  :mod:`.base` (result types).
"""
