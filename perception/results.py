"""The nuScenes detection results file: writing it, and checking it before evaluation.

Format (https://www.nuscenes.org/object-detection)::

    {"meta": {"use_camera": bool, "use_lidar": bool, "use_radar": bool, "use_map": bool,
              "use_external": bool},
     "results": {sample_token: [{"sample_token", "translation" [3], "size" [3] (w, l, h),
                                 "rotation" [4] wxyz, "velocity" [2], "detection_name",
                                 "detection_score", "attribute_name"}, ...]}}

The devkit checks some of this with bare ``assert`` statements (one traceback for the
first problem); :func:`validate_results` reports every problem, one line each, naming
the sample and the field.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from geometry.errors import UserError
from geometry.io.atomic import atomic_write_text
from perception.constants import ATTRIBUTES, DETECTION_CLASSES

META_KEYS = ("use_camera", "use_lidar", "use_radar", "use_map", "use_external")
MAX_BOXES_PER_SAMPLE = 500  # the devkit's detection_cvpr_2019 limit
QUATERNION_NORM_TOLERANCE = 1e-3  # JSON from float32 detectors is good to ~1e-7
MAX_REPORTED = 50


@dataclass
class ResultsMeta:
    """The ``meta`` block: which inputs the method used."""

    use_camera: bool = False
    use_lidar: bool = False
    use_radar: bool = False
    use_map: bool = False
    use_external: bool = False


class ResultsError(UserError):
    """The results file has problems; ``problems`` holds one line per problem."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_REPORTED]
        more = len(problems) - len(shown)
        lines = [f"{path}: {p}" for p in shown]
        if more:
            lines.append(f"{path}: ... and {more} more problems")
        super().__init__("\n".join(lines))


def write_results(path: str | os.PathLike, results: Mapping[str, list[dict]],
                  meta: ResultsMeta) -> None:
    """Write a results file atomically."""
    payload = {"meta": asdict(meta), "results": dict(results)}
    atomic_write_text(path, json.dumps(payload))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _vector_problem(value: Any, length: int) -> str | None:
    """Why ``value`` is not a list of ``length`` finite numbers (None if it is)."""
    if not isinstance(value, list):
        return f"must be a list of {length} numbers, got {type(value).__name__}"
    if len(value) != length:
        return f"must have {length} numbers, got {len(value)}"
    if not all(_is_number(v) for v in value):
        return "must hold numbers only"
    if not all(math.isfinite(v) for v in value):
        return "holds NaN or infinity; write finite numbers"
    return None


def _box_problems(box: Any, where: str, token: str) -> list[str]:
    """Problems of one box entry, each ``'{where}: field: what is wrong'``."""
    if not isinstance(box, dict):
        return [f"{where}: must be an object with the box fields, got {type(box).__name__}"]
    problems = []
    for field in ("sample_token", "translation", "size", "rotation", "velocity",
                  "detection_name", "detection_score", "attribute_name"):
        if field not in box:
            problems.append(f"{where}: {field}: missing")
    if "sample_token" in box and box["sample_token"] != token:
        problems.append(f"{where}: sample_token: is {box['sample_token']!r}, but the box is "
                        f"listed under {token!r}")
    for field, length in (("translation", 3), ("size", 3), ("rotation", 4), ("velocity", 2)):
        if field not in box:
            continue
        why = _vector_problem(box[field], length)
        if why:
            hint = " (write [0.0, 0.0] if the method does not estimate velocity)" if (
                field == "velocity") else ""
            problems.append(f"{where}: {field}: {why}{hint}")
        elif field == "size" and min(box[field]) <= 0:
            problems.append(f"{where}: size: must be positive (w, l, h in metres), got "
                            f"{box[field]}")
        elif field == "rotation":
            norm = math.sqrt(sum(v * v for v in box[field]))
            if abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
                problems.append(f"{where}: rotation: not a unit quaternion (norm {norm:.4f}); "
                                "normalise it (w, x, y, z)")
    if "detection_name" in box and box["detection_name"] not in DETECTION_CLASSES:
        problems.append(f"{where}: detection_name: unknown class {box['detection_name']!r}; "
                        f"use one of {', '.join(DETECTION_CLASSES)}")
    if "detection_score" in box:
        score = box["detection_score"]
        if not _is_number(score):
            problems.append(f"{where}: detection_score: must be a number, got "
                            f"{type(score).__name__}")
        elif not math.isfinite(score):
            problems.append(f"{where}: detection_score: is {score}; write a finite number")
    if "attribute_name" in box and box["attribute_name"] not in ATTRIBUTES:
        problems.append(f"{where}: attribute_name: unknown attribute {box['attribute_name']!r}; "
                        f"use one of {', '.join(a for a in ATTRIBUTES if a)} or \"\"")
    return problems


def validate_results(data: Any, sample_tokens: Iterable[str], split: str,
                     max_boxes: int = MAX_BOXES_PER_SAMPLE) -> list[str]:
    """Every problem of a parsed results file, one line each (empty: the file is valid).

    Args:
        data: the parsed JSON.
        sample_tokens: the samples of the split being evaluated; each must be present
            (with ``[]`` if nothing was detected) and no other may be.
        split: the split's name, for the messages.
        max_boxes: the most boxes a sample may have.
    """
    if not isinstance(data, dict):
        return [f"top level: must be an object with 'meta' and 'results', got "
                f"{type(data).__name__}"]
    problems = []
    meta = data.get("meta")
    if "meta" not in data:
        problems.append('meta: missing; add "meta": {' + ", ".join(
            f'"{k}": true/false' for k in META_KEYS) + "}")
    elif not isinstance(meta, dict):
        problems.append(f"meta: must be an object, got {type(meta).__name__}")
    else:
        for key in META_KEYS:
            if key not in meta:
                problems.append(f"meta: {key}: missing; say whether the method uses it "
                                "(true/false)")
            elif not isinstance(meta[key], bool):
                problems.append(f"meta: {key}: must be true or false, got {meta[key]!r}")
    results = data.get("results")
    if "results" not in data:
        problems.append("results: missing; add \"results\": {sample_token: [boxes]}")
        return problems
    if not isinstance(results, dict):
        problems.append(f"results: must be an object keyed by sample token, got "
                        f"{type(results).__name__}")
        return problems
    expected = list(sample_tokens)
    expected_set = set(expected)
    for token in expected:
        if token not in results:
            problems.append(f"sample {token}: missing from results (every sample of split "
                            f"'{split}' needs an entry; write [] if nothing was detected)")
    for token, boxes in results.items():
        where = f"sample {token}"
        if token not in expected_set:
            problems.append(f"{where}: not a sample of split '{split}'; remove it or evaluate "
                            "the split it belongs to")
            continue
        if not isinstance(boxes, list):
            problems.append(f"{where}: must be a list of boxes, got {type(boxes).__name__}")
            continue
        if len(boxes) > max_boxes:
            problems.append(f"{where}: has {len(boxes)} boxes, at most {max_boxes} are allowed; "
                            f"keep the {max_boxes} highest-scoring ones")
        for i, box in enumerate(boxes):
            problems.extend(_box_problems(box, f"{where}: box {i}", token))
    return problems


def read_results_json(path: str | os.PathLike) -> Any:
    """The parsed JSON of a results file, not yet validated (see :func:`load_results`).

    Raises:
        UserError: the file is missing, not UTF-8 or not JSON.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"results file {path} is a folder; pass the results JSON file in it "
                        "(the one 'perception detect --out' wrote).")
    if not path.is_file():
        raise UserError(f"results file {path} does not exist; write one with "
                        "'perception detect' or pass the right --results.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a UTF-8 text file; pass the results JSON.") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: "
                        f"{err.msg}); fix the file.") from None


def load_results(path: str | os.PathLike, sample_tokens: Iterable[str], split: str,
                 max_boxes: int = MAX_BOXES_PER_SAMPLE) -> dict:
    """Read and validate a results file.

    Raises:
        ResultsError: with one line per problem.
        UserError: the file is missing or not JSON.
    """
    data = read_results_json(path)
    problems = validate_results(data, sample_tokens, split, max_boxes)
    if problems:
        raise ResultsError(str(path), problems)
    return data
