"""Every subcommand's ``--help`` of ``recon``, ``perception`` and ``pose`` reads as user
text: no Sphinx/reST markup or development notes (tyro shows field docstrings verbatim),
only flags that exist, unexplained jargon not shown; and every CLI answers ``--version``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version

import pytest

COMMANDS = {
    "recon": [["fit"], ["fit", "--method", "rdggs"], ["eval"], ["eval", "--method", "rdggs"],
              ["view"], ["render"], ["build-ops"]],
    "perception": [["synth"], ["train"], ["detect"], ["eval"]],
    "pose": [["egoposer"], ["egoposer", "train"], ["egoposer", "predict"],
             ["egoposer", "eval"], ["egoposer", "simulate"]],
}
MODULES = {"recon": "sparseview.cli.recon", "perception": "perception.cli", "pose": "pose.cli"}
FORBIDDEN = (":class:", ":func:", ":mod:", ":meth:", ":attr:", ":data:", "``", "TODO",
             "FIXME", "XXX")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-zA-Z0-9]*(?:[.-][a-zA-Z0-9]+)*")


def _run(prog: str, args: list[str]) -> subprocess.CompletedProcess:
    code = f"import sys; sys.argv = {[prog, *args]!r}; from {MODULES[prog]} import main; main()"
    env = dict(os.environ, COLUMNS="400")  # one option per line: no wrapped flag names
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.fixture(scope="module")
def helps() -> dict[tuple[str, ...], str]:
    out = {}
    for prog, subcommands in COMMANDS.items():
        for sub in [[], *subcommands]:
            proc = _run(prog, [*sub, "--help"])
            assert proc.returncode == 0, (prog, sub, proc.stderr[-2000:])
            out[(prog, *sub)] = proc.stdout
    return out


def _defined_flags(text: str) -> set[str]:
    """Flags a help text defines: the first token of each option line."""
    flags = set()
    for line in text.splitlines():
        for cell in line.split("│"):  # tyro may lay option groups out side by side
            for token in re.findall(r"^(--[\w.-]+)(?:, (--[\w.-]+))?", cell.strip()):
                flags.update(t for t in token if t)
    return flags


def test_help_has_no_markup_or_development_notes(helps):
    bad = {" ".join(cmd): [m for m in FORBIDDEN if m in text]
           for cmd, text in helps.items()}
    assert not {k: v for k, v in bad.items() if v}


def test_help_names_only_flags_that_exist(helps):
    for prog in COMMANDS:
        texts = {cmd: text for cmd, text in helps.items() if cmd[0] == prog}
        defined = set().union(*(_defined_flags(t) for t in texts.values()))
        defined |= {"--help", "--version"}
        unknown = {" ".join(cmd): sorted(set(FLAG.findall(text)) - defined)
                   for cmd, text in texts.items()}
        assert not {k: v for k, v in unknown.items() if v}


def test_unexplained_jargon_is_not_shown(helps):
    assert not [" ".join(cmd) for cmd, text in helps.items() if "F-3DGO" in text]


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_version(prog):
    proc = _run(prog, ["--version"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"sparseview {version('sparseview')}" == "sparseview 0.1.0"


def _option_text(text: str, flag: str) -> str | None:
    """The help of ``flag`` in a one-column help text (its line to the next option's)."""
    lines = [line.strip("│ ") for line in text.splitlines()]
    for k, line in enumerate(lines):
        if line.split(" ")[0] == flag:
            rest = [line]
            for nxt in lines[k + 1:]:
                if nxt.startswith("-") or not nxt or nxt.startswith("╰"):
                    break
                rest.append(nxt)
            return " ".join(rest)
    return None


@pytest.fixture(scope="module")
def narrow_helps(helps) -> dict[tuple[str, ...], str]:
    """The helps at 100 columns: one option group per line, so options can be read back."""
    out = {}
    for cmd in helps:
        code = (f"import sys; sys.argv = {[cmd[0], *cmd[1:], '--help']!r}; "
                f"from {MODULES[cmd[0]]} import main; main()")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(os.environ, COLUMNS="100"), timeout=120)
        out[cmd] = proc.stdout
    return out


def test_shared_options_mean_the_same_everywhere(narrow_helps):
    seen = {"--device": 0, "--background": 0}
    for cmd, text in narrow_helps.items():
        device = _option_text(text, "--device")
        if device is not None:
            seen["--device"] += 1
            assert "cuda:N" in device and "{cpu,cuda}" not in device, (cmd, device)
        background = _option_text(text, "--background")
        if background is not None:
            seen["--background"] += 1
            assert "FLOAT FLOAT FLOAT" in background and "[0, 1]" in background, (cmd,
                                                                                   background)
    assert seen["--device"] >= 5 and seen["--background"] >= 2


@pytest.mark.parametrize(("value", "ok"), [("cpu", True), ("cuda", None), ("cuda:1", None),
                                           ("gpu", False), ("cuda:", False), ("CPU", False),
                                           ("cuda:x", False)])
def test_device_spelling(value, ok):
    import torch

    from geometry.device import check_device
    from geometry.errors import UserError

    if ok is None:  # cuda / cuda:N: accepted when the GPU exists, else a one-sentence refusal
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(value.split(":")[1]) if ":" in value else 0
        ok = index < n
    if ok:
        assert check_device(value) == value
    else:
        with pytest.raises(UserError, match="--device"):
            check_device(value)


def test_view_background_is_rgb_in_0_1(tmp_path):
    from geometry.errors import UserError
    from viewer.cli import View

    with pytest.raises(UserError, match=r"\[0, 1\]"):
        View(path=tmp_path, background=(255.0, 255.0, 255.0), port=0).run()
