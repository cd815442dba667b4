"""Name -> object registries filled by decorators; modules are imported lazily on first lookup.

Out-of-tree methods, tasks and backbones are plugins, imported before the first lookup in every
process, where they register themselves with the same decorators: the modules named by installed
packages in the entry-point group `mmcl_bench.plugins` (what users of pytest or lm-evaluation-harness
expect), and modules (or .py files) named in the environment variable MMCL_PLUGINS (comma-separated;
the CLI, local workers, Slurm jobs and Ray tasks inherit it). Nothing else imports code named by a user: sequence
files and --set values are data."""
import importlib
import importlib.util
import os
import pkgutil
import sys
from pathlib import Path

from bench.errors import BenchError, did_you_mean

PLUGINS_ENV = "MMCL_PLUGINS"
ENTRY_POINT_GROUP = "mmcl_bench.plugins"


def import_plugins() -> None:
    import_entry_point_plugins()
    import_env_plugins()


def import_entry_point_plugins() -> None:
    from importlib.metadata import entry_points
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except ImportError as e:
            dist = ep.dist.name if ep.dist else "an installed package"
            raise BenchError(f"entry point '{ep.name} = {ep.value}' of {dist} ({ENTRY_POINT_GROUP}): "
                             f"cannot import it ({e})") from None


def import_env_plugins() -> None:
    for entry in filter(None, (e.strip() for e in os.environ.get(PLUGINS_ENV, "").split(","))):
        if entry.endswith(".py"):
            path = Path(entry).expanduser().resolve()
            name = f"mmcl_plugin_{path.stem}"
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or not path.exists():
                raise BenchError(f"{PLUGINS_ENV}: plugin file {path} not found")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # before running it, so a plugin that looks names up does not recurse
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        else:
            try:
                importlib.import_module(entry)
            except ModuleNotFoundError as e:
                raise BenchError(f"{PLUGINS_ENV}: cannot import plugin module '{entry}' ({e})") from None


class Registry:
    def __init__(self, what: str, packages: tuple[str, ...]):
        self.what = what
        self.packages = packages  # imported on first use so every file in them can register itself
        self._items: dict[str, object] = {}
        self._loaded = False

    def register(self, name: str):
        def deco(obj):
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.what} '{name}' registered twice")
            self._items[name] = obj
            obj.registry_name = name
            return obj
        return deco

    def _load(self):
        if self._loaded:
            return
        self._loaded = True
        import_plugins()
        for package in self.packages:
            pkg = importlib.import_module(package)
            for info in pkgutil.iter_modules(pkg.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{package}.{info.name}")

    def get(self, name: str):
        self._load()
        if name not in self._items:
            raise did_you_mean(name, self._items, self.what)
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name) -> bool:
        self._load()
        return name in self._items


METHODS = Registry("method", ("methods",))
TASKS = Registry("task", ("tasks",))
BACKBONES = Registry("backbone", ("bench.backbones",))
