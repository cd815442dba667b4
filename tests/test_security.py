"""Security basics: checkpoints are weights only, YAML is safe-loaded, and the only code loaded by
name is a plugin the user names in MMCL_PLUGINS."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.errors import BenchError
from bench.registry import PLUGINS_ENV, import_plugins

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for d in ("bench", "methods", "tasks") for p in (ROOT / d).rglob("*.py")) + [ROOT / "run_bench.py"]


def calls(pattern: str):
    """(file, line) of every match of `pattern` in the project's own code."""
    return [(p.relative_to(ROOT), line.strip()) for p in SOURCES for line in p.read_text().splitlines()
            if re.search(pattern, line)]


def test_every_torch_load_is_weights_only():
    loads = calls(r"torch\.load\(")
    assert loads, "the store loads checkpoints with torch.load"
    assert all("weights_only=True" in line for _, line in loads), loads


def test_no_unsafe_deserialisation_or_eval():
    assert not calls(r"yaml\.(load|unsafe_load|full_load)\(|yaml\.(Unsafe|Full)?Loader\b")
    assert not calls(r"pickle\.loads?\(|(?<![.\w])(eval|exec)\(")  # builtins, not nn.Module.eval()


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_and_the_run_redone(run, tmp_path):
    full = run("frozen", out=tmp_path / "full")
    killed = tmp_path / "killed"
    run_dir = killed / "runs" / full["run_id"]
    run_dir.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"finished": 1, "method": {}, "progress": Exploit(marker)}, run_dir / "checkpoint.pt")
    again = run("frozen", out=killed)
    assert not marker.exists(), "the pickled call was not executed"
    assert again["matrix"] == full["matrix"]


def test_plugins_named_by_the_user_register_themselves_in_a_fresh_process(tmp_path):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text("from bench.registry import METHODS\nfrom methods.finetune import Finetune\n\n\n"
                      "@METHODS.register('my_finetune')\nclass MyFinetune(Finetune):\n    pass\n")
    env = {**os.environ, PLUGINS_ENV: str(plugin)}
    proc = subprocess.run([sys.executable, str(ROOT / "run_bench.py"), "list", "methods"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "my_finetune" in proc.stdout.split(), proc.stderr


@pytest.mark.parametrize("entry,message", [
    ("no_such_plugin_module", "MMCL_PLUGINS: cannot import plugin module 'no_such_plugin_module'"),
    ("/nowhere/plugin.py", "MMCL_PLUGINS: plugin file /nowhere/plugin.py not found"),
])
def test_an_unimportable_plugin_is_a_one_line_error(monkeypatch, entry, message):
    monkeypatch.setenv(PLUGINS_ENV, entry)
    with pytest.raises(BenchError, match=re.escape(message)):
        import_plugins()
