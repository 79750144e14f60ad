"""Generate the shipped ``recon fit`` sample: ``data/recon_sample/`` (+ its exact cameras).

The sample is procedural (:mod:`reconstruction.procedural`, kind ``arc``: textured boxes on
a floor in front of a wall, ray-cast from the seed), so it is license-clean: no photo or
third-party data is involved. The exact cameras go to ``data/recon_sample_gt/transforms.json``
(a sibling folder, so that ``recon fit --images data/recon_sample`` sees only the photos) for
checking the recovered poses, e.g. with ``recon eval``.

Run from the repository root::

    .venv/bin/python data/make_recon_sample.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from geometry.io.transforms_json import write_transforms_json
from reconstruction.procedural import SceneConfig, render, write_photos

#: The scene of the shipped sample (the test that checks it regenerates this).
SAMPLE = SceneConfig(kind="arc", num_views=3, width=320, height=240, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    scene = render(SAMPLE)
    paths = write_photos(scene, args.out / "recon_sample")
    gt = args.out / "recon_sample_gt"
    gt.mkdir(parents=True, exist_ok=True)
    write_transforms_json(gt / "transforms.json", scene.cameras,
                          file_paths=[f"../recon_sample/{p.name}" for p in paths])
    print(f"wrote {len(paths)} views to {args.out / 'recon_sample'} and cameras to {gt}")


if __name__ == "__main__":
    main()
