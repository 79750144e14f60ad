"""Training and test views of the sparse-view literature.

- DTU (pixelNeRF's split, used by RegNeRF, FreeNeRF, DNGaussian, FSGS ...): training views
  are the first k of ``25, 22, 28, 40, 44, 48, 0, 8, 13`` (3 views: 25, 22, 28); the test
  views are the other views of the 49 except ``3-7, 16-21, 36-39`` (too dark or showing
  little of the object), 25 views. Indices are 0-based positions in the sorted images.
- LLFF (RegNeRF's protocol, also used for any scene without a published split): every 8th
  image (index ``i % 8 == 0``) is held out for testing; k training views are taken evenly
  from the rest, ``rest[round(x)]`` for ``x`` in ``linspace(0, len(rest) - 1, k)`` (Python's
  round, as the reference code).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from geometry.errors import UserError

DTU_NUM_VIEWS = 49
DTU_TRAIN_IDS = (25, 22, 28, 40, 44, 48, 0, 8, 13)
DTU_EXCLUDE_IDS = (3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 36, 37, 38, 39)
DTU_TEST_IDS = tuple(i for i in range(DTU_NUM_VIEWS)
                     if i not in DTU_TRAIN_IDS + DTU_EXCLUDE_IDS)
LLFF_HOLDOUT = 8

Protocol = Literal["dtu", "llff"]


@dataclass
class Split:
    """Indices into the dataset's views (sorted image order)."""

    train: list[int]
    test: list[int]
    protocol: str
    """How the split was made, for the report."""


def dtu_split(num_views: int, num_train: int) -> Split:
    """pixelNeRF/RegNeRF's DTU split (see the module doc)."""
    if num_views != DTU_NUM_VIEWS:
        raise UserError(f"the DTU split needs the 49 views of a DTU scan, the dataset has "
                        f"{num_views}; use --protocol llff or give --views.")
    if not 1 <= num_train <= len(DTU_TRAIN_IDS):
        raise UserError(f"the DTU split defines 1 to {len(DTU_TRAIN_IDS)} training views, not "
                        f"{num_train}; choose --train-views in that range or give --views.")
    return Split(list(DTU_TRAIN_IDS[:num_train]), list(DTU_TEST_IDS),
                 f"dtu-pixelnerf ({num_train} of {list(DTU_TRAIN_IDS)}; standard test views)")


def llff_test_ids(num_views: int, holdout: int = LLFF_HOLDOUT) -> list[int]:
    """Every ``holdout``-th view, starting with view 0."""
    return [i for i in range(num_views) if i % holdout == 0]


def llff_split(num_views: int, num_train: int, holdout: int = LLFF_HOLDOUT) -> Split:
    """RegNeRF's LLFF split (see the module doc)."""
    test = llff_test_ids(num_views, holdout)
    rest = [i for i in range(num_views) if i % holdout != 0]
    if not 1 <= num_train <= len(rest):
        raise UserError(f"--train-views {num_train} does not fit: the dataset has {num_views} "
                        f"views, {len(rest)} of them outside the held-out every-{holdout}th; "
                        "use fewer training views.")
    if not test:
        raise UserError("the dataset has no view to hold out; use a scene with more views.")
    picks = [rest[round(x)] for x in np.linspace(0, len(rest) - 1, num_train)]
    return Split(picks, test, f"llff (every {holdout}th view held out; {num_train} training "
                              "views evenly from the rest)")


def choose_split(num_views: int, protocol: Protocol, num_train: int,
                 views: Sequence[int] | None = None,
                 test_views: Sequence[int] | None = None) -> Split:
    """The split of a dataset: the protocol's, or explicit training (and test) views.

    Args:
        num_views: views in the dataset.
        protocol: ``dtu`` or ``llff`` (see the module doc).
        num_train: training views when ``views`` is not given.
        views: explicit training view indices (``--views 25,22,28``); the test views are
            then the protocol's test views that are not training views.
        test_views: explicit test view indices (override the protocol's).
    """
    if views is not None:
        train = list(views)
        bad = [v for v in train if not 0 <= v < num_views]
        if bad:
            raise UserError(f"--views {bad} are outside the dataset's {num_views} views "
                            f"(0 to {num_views - 1}).")
        if len(set(train)) != len(train):
            raise UserError(f"--views {train} repeats a view; give each view once.")
        if protocol == "dtu" and num_views == DTU_NUM_VIEWS:
            base, name = list(DTU_TEST_IDS), "dtu-pixelnerf test views"
        else:
            base, name = llff_test_ids(num_views), f"every {LLFF_HOLDOUT}th view held out"
        test = [i for i in base if i not in train]
        split = Split(train, test, f"given training views; {name}")
    elif protocol == "dtu":
        split = dtu_split(num_views, num_train)
    else:
        split = llff_split(num_views, num_train)
    if test_views is not None:
        test = list(test_views)
        bad = [v for v in test if not 0 <= v < num_views]
        if bad:
            raise UserError(f"--test-views {bad} are outside the dataset's {num_views} views.")
        overlap = sorted(set(test) & set(split.train))
        if overlap:
            raise UserError(f"test views {overlap} are also training views; hold them out.")
        split = Split(split.train, test, split.protocol + "; given test views")
    if not split.test:
        raise UserError("no test view is left after choosing the training views; give "
                        "--test-views or fewer training views.")
    return split
