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


def test_readme_sequence_example_resolves_as_documented(tmp_path):
    from bench.config import plan_tasks, resolve
    from bench.registry import METHODS
    text = re.search(r"## Sequence files.*?```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    path = tmp_path / "example.yaml"
    path.write_text(text)
    cfg = resolve("er", METHODS.get("er"), [], sequence=str(path))
    plans = plan_tasks(cfg)
    assert [(p.name, p.steps, p.lr, p.train_cap) for p in plans] == [("vqa_color", 20, None, 1280), ("text_mention", 40, 3e-4, 1280)]
    assert [p.name for p in plan_tasks(cfg, "downstream")] == ["digits"]
    assert cfg.hparams == {"memory_fraction": 0.1, "replay_every": 1}
    quick = plan_tasks(resolve("er", METHODS.get("er"), [], sequence=str(path), quick=True))
    assert [(p.steps, p.train_cap) for p in quick] == [(6, 192), (6, 192)]  # --quick overrides the task's own steps
