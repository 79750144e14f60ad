"""geometry.progress: the house progress bar and stage lines (what they print, and where)."""

from __future__ import annotations

import re

from geometry.progress import log_stage, progress_bar

TIME = re.compile(r"\d+:\d\d:\d\d")  # elapsed may tick on a busy machine


def _run(bar, total: int, **fields) -> None:
    with bar:
        task = bar.add_task("job a", total=total, **fields)
        for _ in range(total):
            bar.advance(task)


def test_bar_prints_title_counts_fields_and_times_to_stderr(capsys):
    _run(progress_bar("render [orbit]", ["{task.fields[n]} frames", "loss {task.fields[loss]}"]),
         4, n=7, loss="0.125")
    out, err = capsys.readouterr()
    assert out == ""
    line = err.strip().splitlines()[-1]
    # stderr is not a terminal here: rich prints the final state once, columns in order.
    assert line.startswith("render [orbit] ")  # plain text, not read as markup
    tail = line.split("━")[-1].split()
    assert tail[:5] == ["4/4", "7", "frames", "loss", "0.125"]
    assert TIME.fullmatch(tail[5]) and tail[6:] == ["ETA", "0:00:00"]


def test_no_title_shows_each_task_description_and_counts_can_go(capsys):
    _run(progress_bar(counts=False), 3)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("job a ")
    assert "3/3" not in line
    tail = line.split("━")[-1].split()
    assert len(tail) == 3 and TIME.fullmatch(tail[0]) and tail[1:] == ["ETA", "0:00:00"]


def test_quiet_bar_is_disabled_and_silent(capsys):
    bar = progress_bar("x", quiet=True)
    assert bar.disable
    _run(bar, 5)
    assert capsys.readouterr() == ("", "")


def test_transient_option_reaches_the_bar():
    assert progress_bar("x", transient=True).live.transient
    assert not progress_bar("x").live.transient


def test_log_stage_prints_one_unwrapped_plain_line_unless_quiet(capsys):
    message = "wrote /tmp/[bold]/" + "a" * 150 + ".png"
    log_stage(message)
    log_stage("hidden", quiet=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert err == message + "\n"
