"""Name -> object registries filled by decorators; modules are imported lazily on first lookup."""
import importlib
import pkgutil

from bench.errors import did_you_mean


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
