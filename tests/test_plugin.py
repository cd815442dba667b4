"""A method added as one file shows up in `list methods` and runs; the README's example is real code."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_plugin_method_file_is_listed(tmp_path):
    plugin = tmp_path / "zz_test_plugin.py"  # out of tree: nothing is written into methods/
    plugin.write_text("from bench.method import Method\nfrom bench.registry import METHODS\n\n\n"
                      "@METHODS.register('zz_test_plugin')\nclass Plugin(Method):\n    pass\n")
    env = {**os.environ, "MMCL_PLUGINS": str(plugin)}
    out = subprocess.run([sys.executable, "run_bench.py", "list", "methods"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=env).stdout.split()
    assert "zz_test_plugin" in out and "finetune" in out


def test_readme_example_method_runs_and_anchors(run):
    code = re.search(r"```python\n# methods/l2_anchor.py\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    metrics = run("l2_anchor", sets=["l2_anchor.lam=0.5"])
    assert len(metrics["matrix"]) == 4 and metrics["summary"]["final_avg"] is not None
    assert metrics["provenance"]["config"]["hparams"] == {"lam": 0.5}
