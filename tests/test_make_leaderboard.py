"""`make leaderboard SEQUENCE="default default_class default_domain"`: one `run` per sequence, in
turn, into results/ (stopping at the first that fails), and `make leaderboard` alone still the one
run of `default`; the report over one results folder holding the three settings' runs has a row per
(setting, method) and draws forgetting_settings. Nothing is trained: make prints or runs a fake
interpreter, and the runs are fake finished ones."""
import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEQUENCES = ["default", "default_class", "default_domain"]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make(*args, **kw) -> subprocess.CompletedProcess:
    # -o: the venv counts as installed, so only the leaderboard's own recipe runs (or prints)
    return subprocess.run(["make", "-s", "-C", str(ROOT), "-o", ".venv/bin/.installed", *args], capture_output=True,
                          text=True, **kw)


def arguments(sequence: str) -> str:
    return f"run_bench.py run --sequence {sequence} --methods default --seeds 0 1 2 --out results"


def command(sequence: str) -> str:
    return f".venv/bin/python {arguments(sequence)}"


def test_one_run_per_sequence_and_the_default_unchanged():
    assert make("-n", "leaderboard").stdout.splitlines() == [command("default")]
    several = make("-n", "leaderboard", f"SEQUENCE={' '.join(SEQUENCES)}").stdout.splitlines()
    assert several == [command(s) for s in SEQUENCES]


def test_the_runs_go_in_turn_and_stop_at_the_first_that_fails(tmp_path):
    """A fake interpreter logs each command and fails on default_class."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "log"}\ncase "$*" in *default_class*) exit 3;; esac\n')
    python.chmod(0o755)
    proc = make("leaderboard", f"BIN={tmp_path}", f"SEQUENCE={' '.join(SEQUENCES)}", "-o", f"{tmp_path}/.installed")
    assert proc.returncode != 0
    logged = (tmp_path / "log").read_text().splitlines()
    assert logged == [arguments(s) for s in SEQUENCES[:2]]
    os.remove(tmp_path / "log")
    assert make("leaderboard", f"BIN={tmp_path}", "SEQUENCE=default default_domain",
                "-o", f"{tmp_path}/.installed").returncode == 0
    assert (tmp_path / "log").read_text().splitlines() == [arguments(s) for s in ("default", "default_domain")]


def test_the_report_over_one_folder_covers_every_setting(tmp_path):
    from bench.report import write_report
    from fake_runs import write_run
    A = [[80.0, None], [40.0, 90.0]]
    settings = {"default": {}, "default_class": {"setting": "class", "task_id": "shared"},
                "default_domain": {"setting": "domain", "task_id": "shared"}}
    for sequence, setting in settings.items():
        for method in ("finetune", "er"):
            write_run(tmp_path, method, 0, A, sequence=sequence, beside=setting)
    report = write_report(tmp_path)
    shown = report["table"]
    assert sorted(zip(shown["Setting"], shown["Method"])) == sorted(
        (f"{s} / default / {r.get('setting', 'task')}-IL", m) for s, r in settings.items() for m in ("finetune", "er"))
    figure = (tmp_path / "figures" / "forgetting_settings.png").read_bytes()
    assert base64.b64encode(figure).decode("ascii") in (tmp_path / "index.html").read_text()  # on the results page
