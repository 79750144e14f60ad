"""The stereo stage's guessed points move along their rays to a depth the other views
agree with (reconstruction.init.stereo.consistent_depths): two cameras, exact geometry."""

from __future__ import annotations

import numpy as np
import pytest

from reconstruction.init.base import SparseModel
from reconstruction.init.config import StereoConfig
from reconstruction.init.stereo import consistent_depths

SIZE = 32
F = 50.0


def _model(second_x: float) -> SparseModel:
    """View 0 at the origin, view 1 at ``(second_x, 0, 0)``, both looking along +z."""
    K = np.array([[F, 0, SIZE / 2], [0, F, SIZE / 2], [0, 0, 1]])
    T1 = np.eye(4)
    T1[0, 3] = -second_x  # t = -R c
    return SparseModel(names=["0", "1"], sizes=np.array([[SIZE, SIZE]] * 2),
                       Ks=np.stack([K, K]), T_cam_world=np.stack([np.eye(4), T1]),
                       registered=np.ones(2, bool), points_world=np.zeros((0, 3)),
                       colors=np.zeros((0, 3)), obs_point=np.zeros(0, np.int64),
                       obs_view=np.zeros(0, np.int64), obs_xy=np.zeros((0, 2)))


def _depths(model, colour: float, guess: float = 3.0, wall: float = 4.0) -> np.ndarray:
    """The depths chosen for three pixels of view 0 guessed at ``guess``, their colour
    ``colour`` (grey level), where view 1 observes a black wall at ``wall`` everywhere."""
    u = np.array([15.5, 16.0, 16.5]) - 0.5
    v = np.full(3, 15.5)
    observed = {0: np.zeros((SIZE, SIZE)), 1: np.full((SIZE, SIZE), wall)}
    blurred = {0: np.full((SIZE, SIZE, 3), colour), 1: np.zeros((SIZE, SIZE, 3))}
    return consistent_depths(model, 0, u, v, np.full(3, guess), np.full((3, 3), colour),
                             observed, blurred, StereoConfig())


def test_a_guess_that_would_hide_an_observed_surface_moves_onto_it():
    # At the guessed depth the point lies in front of the wall view 1 observes: it moves
    # back to the wall, where view 1 shows the point's (black) colour.
    z = _depths(_model(0.2), colour=0.0)
    assert np.all((z > 0.9 * 4.0) & (z < 1.1 * 4.0)), z


def test_a_guess_of_another_colour_moves_behind_the_surface():
    # A white point: on the black wall it would be seen with the wrong colour, behind it
    # view 1 does not see it at all (the wall hides it).
    z = _depths(_model(0.2), colour=1.0)
    assert np.all(z > 1.1 * 4.0), z
    assert np.all(z <= StereoConfig().fill_depth_range[1] * 3.0 + 1e-9)


def test_a_guess_no_other_view_sees_stays():
    # View 1 is far to the side: no depth along these rays projects into it.
    z = _depths(_model(100.0), colour=1.0)
    np.testing.assert_allclose(z, 3.0)


def test_a_guess_hiding_the_surface_at_every_depth_is_dropped():
    # The wall is beyond every candidate (guess x the largest factor): all hide it.
    z = _depths(_model(0.2), colour=0.0, wall=100.0)
    assert np.all(z == 0.0), z


@pytest.mark.parametrize("window", [1, 3])
def test_costs_aggregate_over_the_grid(window):
    # On a 3 x 3 lattice of pixels, the choice is the same with and without aggregation
    # when every pixel sees the same thing.
    model = _model(0.2)
    us, vs = np.meshgrid(np.arange(14.0, 17.0), np.arange(14.0, 17.0))
    observed = {0: np.zeros((SIZE, SIZE)), 1: np.full((SIZE, SIZE), 4.0)}
    blurred = {0: np.zeros((SIZE, SIZE, 3)), 1: np.zeros((SIZE, SIZE, 3))}
    z = consistent_depths(model, 0, us.ravel(), vs.ravel(), np.full(9, 3.0),
                          np.zeros((9, 3)), observed, blurred,
                          StereoConfig(fill_window=window), grid=(3, 3))
    assert np.all((z > 0.9 * 4.0) & (z < 1.1 * 4.0)), z
