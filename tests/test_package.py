"""The project installs as a package (`mmcl-bench` command) and finds plugins that other installed
packages declare in the entry-point group `mmcl_bench.plugins`. Installs go to throwaway folders
(`pip install --no-deps --target`), never into the venv: a folder on sys.path is what an install
is to importlib.metadata, entry points included."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_FILES = ("bench", "methods", "tasks", "run_bench.py", "pyproject.toml", "README.md")


def pip_install_target(source: Path, target: Path) -> None:
    """`pip install --no-deps --target` offline, with the venv's setuptools (no build download)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def run_py(args, path: Path, cwd: Path, **env):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(path), **env})


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """This project, built from a copy of its files and installed into a throwaway folder."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    for name in PACKAGE_FILES:
        item = ROOT / name
        if item.is_dir():
            shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(item, src / name)
    pip_install_target(src, tmp / "site")
    return tmp / "site"


def test_console_script_equals_run_bench_py(installed, tmp_path):
    script = installed / "bin" / "mmcl-bench"
    assert script.exists(), sorted(p.name for p in (installed / "bin").iterdir())
    for what in ("methods", "sequences", "backbones"):
        # run from elsewhere: only the installed copy is importable
        got = run_py([sys.executable, str(script), "list", what], installed, cwd=tmp_path)
        want = subprocess.run([sys.executable, "run_bench.py", "list", what], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert got.returncode == 0, got.stderr
        assert got.stdout == want.stdout and "finetune\n" in got.stdout + "finetune\n"
    installed_seq = run_py([sys.executable, "-c", "import bench.config as c; print(c.SEQUENCES_DIR)"], installed,
                           cwd=tmp_path).stdout.strip()
    assert installed_seq.startswith(str(installed)) and (Path(installed_seq) / "default.yaml").exists()
    bad = run_py([sys.executable, str(script), "list", "method"], installed, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1


PLUGIN_MODULE = '''
"""A method from another package, registered with the harness's decorator."""
from bench.registry import METHODS
from methods.finetune import Finetune


@METHODS.register("zz_entry_point_method")
class EntryPointMethod(Finetune):
    pass
'''


def plugin_package(tmp_path: Path, module_text: str, entry_value: str = "zz_plugin_pkg") -> Path:
    src = tmp_path / "plugin_src"
    (src / "zz_plugin_pkg").mkdir(parents=True)
    (src / "zz_plugin_pkg" / "__init__.py").write_text(module_text)
    (src / "pyproject.toml").write_text(textwrap.dedent(f'''
        [build-system]
        requires = ["setuptools>=70"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "zz-plugin-pkg"
        version = "0.0.1"
        [project.entry-points."mmcl_bench.plugins"]
        zz = "{entry_value}"
        '''))
    pip_install_target(src, tmp_path / "site")
    return tmp_path / "site"


def test_entry_point_plugin_is_listed_and_runs(tmp_path, cache_dir):
    site = plugin_package(tmp_path, PLUGIN_MODULE)
    listed = run_py([sys.executable, "run_bench.py", "list", "methods"], site, cwd=ROOT)
    assert "zz_entry_point_method" in listed.stdout.split() and "finetune" in listed.stdout.split(), listed.stderr
    without = subprocess.run([sys.executable, "run_bench.py", "list", "methods"], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
    assert "zz_entry_point_method" not in without.stdout.split()  # the venv itself is untouched
    out = tmp_path / "results"
    # the toy backbone comes through MMCL_PLUGINS beside the entry point: both routes at once
    ran = run_py([sys.executable, "run_bench.py", "run", "--quick", "--methods", "zz_entry_point_method",
                  "--backbone", "toy", "--seeds", "0", "--workers", "2", "--out", str(out),
                  "--set", "steps=2", "--set", f"cache_dir={cache_dir}"], site, cwd=ROOT,
                 MMCL_PLUGINS=str(ROOT / "tests" / "conftest.py"))
    assert ran.returncode == 0, ran.stderr[-3000:]
    metrics = [json.loads(p.read_text()) for p in out.glob("runs/*/metrics.json")]
    # --workers 2: the spawned workers find the plugin through the entry point too
    assert sorted(m["method"] for m in metrics) == ["single_task", "zz_entry_point_method"]
    run = next(m for m in metrics if m["method"] == "zz_entry_point_method")
    assert run["backbone"] == "toy" and len(run["matrix"]) == 4


def test_broken_entry_point_is_one_error_line(tmp_path):
    site = plugin_package(tmp_path, "", entry_value="zz_plugin_pkg.missing_module")
    proc = run_py([sys.executable, "run_bench.py", "list", "methods"], site, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: entry point 'zz = zz_plugin_pkg.missing_module' of zz-plugin-pkg (mmcl_bench.plugins): cannot import "
        "it (No module named 'zz_plugin_pkg.missing_module')"]
