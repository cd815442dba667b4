"""Run configuration: dataclasses resolved from a sequence YAML, `--quick` and `--set key=value`."""
import copy
import dataclasses
import functools
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.errors import BenchError, did_you_mean

SEQUENCES_DIR = Path(__file__).resolve().parent.parent / "tasks" / "sequences"
TASK_OPTIONS = ("steps", "train_cap", "test_cap", "val_size", "shots", "lr", "holdout")
# the parts of a sequence file that list tasks: trained in order, each learnt after it (CLiMB
# phase II), never trained but probed before and after each task (bench/probe.py)
TASK_PARTS = ("tasks", "downstream", "probe")


@dataclass
class RunConfig:
    """Everything that determines a run's numbers; its hash is the run id."""

    method: str
    sequence: str = "default"
    backbone: str = "default"
    seed: int = 0
    quick: bool = False
    batch_size: int = 32
    eval_batch_size: int = 256
    lr: typing.Optional[float] = None        # None: the method's default
    head_lr: typing.Optional[float] = None   # None: the method's default
    weight_decay: float = 0.01
    warmup: float = 0.1                      # fraction of steps with linear warm-up, then linear decay
    grad_clip: float = 1.0
    skip_bad_images: bool = False            # drop the examples of images that cannot be decoded (counted) instead of stopping
    precision: str = "auto"                  # bf16 autocast or fp32; "auto" is resolved (bench/precision.py)
    steps: typing.Optional[int] = None       # training steps per task; None: the sequence's
    steps_scale: float = 1.0                 # every task's steps x this (after `steps`): budget-matched references
    train_cap: typing.Optional[int] = None
    test_cap: typing.Optional[int] = None
    val_size: typing.Optional[int] = None
    val_checks: int = 2                      # validation passes per task for model selection
    shots: typing.Optional[float] = None     # low-shot: fraction (<1) or k per class (>=1)
    data_root: typing.Optional[str] = None
    setting: typing.Optional[str] = None     # task / class / domain (bench/settings.py); None: the sequence's
    hparams: dict = field(default_factory=dict)  # the method's dataclass, resolved

    def identity(self) -> dict:
        """The config as it enters the run id; the task-incremental setting is left out, so task-IL
        run ids are those of the runs made before settings existed."""
        out = dataclasses.asdict(self)
        if out["setting"] in (None, "task"):
            del out["setting"]
        return out

    @property
    def run_id(self) -> str:
        """Hash of the config, of what the sequence file makes of it (its tasks' steps, caps ...),
        of the method's code and of the files its tasks read (bench/identity.py), so an edited
        sequence file, method or data file never passes an old run off as done. Computed once per
        config (the files are walked once, not at every use of the id)."""
        fields = json.dumps(self.identity(), sort_keys=True, default=str)
        known = self.__dict__.get("_run_id")
        if known is None or known[0] != fields:
            self._run_id = (fields, self._digest())
        return self._run_id[1]

    def _digest(self) -> str:
        from bench.identity import class_code, data_fingerprint
        from bench.registry import METHODS, TASKS
        from bench.settings import setting_identity
        plans = [plan_identity(p) for part in TASK_PARTS for p in plan_tasks(self, part)]
        tasks = {p["name"]: TASKS.get(p["name"])() for p in plans}
        data = {name: data_fingerprint(task, self.data_root) for name, task in tasks.items()}
        # a task's code (its loader, the Task split logic) decides which examples a run sees
        task_code = {name: class_code(type(task)) for name, task in tasks.items()}
        blob = json.dumps({**self.identity(), "plans": plans, "code": class_code(METHODS.get(self.method)),
                           "data": data, "task_code": task_code, **setting_identity(self)}, sort_keys=True, default=str)
        name = Path(self.sequence).stem  # a sequence given as a file path must not make the id a path
        return f"{name}-{self.method}-s{self.seed}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


@dataclass
class TaskPlan:
    name: str
    steps: int
    train_cap: typing.Optional[int]
    test_cap: typing.Optional[int]
    val_size: int
    shots: typing.Optional[float]
    lr: typing.Optional[float]
    holdout: typing.Optional[list] = None  # concepts held out for the compositional test (bench/novel.py)


def plan_identity(plan: TaskPlan) -> dict:
    """What a plan adds to the run id: an option added after run ids were first issued (`holdout`)
    enters it only when set, so the runs that predate it keep their ids."""
    return {k: v for k, v in dataclasses.asdict(plan).items() if not (k == "holdout" and v is None)}


def sequence_path(name: str) -> Path:
    """The file of sequence `name`: a path ending in .yaml/.yml, or a name in tasks/sequences/."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else SEQUENCES_DIR / f"{name}.yaml"
    if not path.exists():
        known = [p.stem for p in SEQUENCES_DIR.glob("*.yaml")]
        raise did_you_mean(name, known, "sequence")
    return path


def load_sequence(name: str, derived: tuple = ()) -> dict:
    """The sequence file's mapping; with `base: <sequence>`, the base's keys under the file's own
    (a key given in the file replaces the base's whole)."""
    path = sequence_path(name)
    st = path.stat()  # parsed once per version of the file: run ids and plans read it many times
    seq = copy.deepcopy(_parse_sequence(path, st.st_mtime_ns, st.st_size))
    base = seq.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or path in derived:
            raise BenchError(f"sequence file {path}: 'base' must name another sequence, without a cycle")
        seq = {**load_sequence(base, derived + (path,)), **seq}
    if not isinstance(seq.get("tasks"), list) or not seq["tasks"]:
        raise BenchError(f"malformed sequence file {path}: expected a mapping with a non-empty 'tasks' list")
    for part in TASK_PARTS[1:]:
        if not isinstance(seq.get(part, []), list):
            raise BenchError(f"malformed sequence file {path}: '{part}' must be a list of tasks")
    if not isinstance(seq.get("methods", []), list) or not all(isinstance(m, str) for m in seq.get("methods", [])):
        raise BenchError(f"malformed sequence file {path}: 'methods' must be a list of method names")
    return seq


@functools.lru_cache(maxsize=64)
def _parse_sequence(path: Path, mtime_ns: int, size: int) -> dict:
    try:
        with open(path) as f:
            seq = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise BenchError(f"malformed sequence file {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(seq, dict):
        raise BenchError(f"malformed sequence file {path}: expected a mapping with a non-empty 'tasks' list")
    return seq


def plan_tasks(cfg: RunConfig, part: str = "tasks") -> list[TaskPlan]:
    """Per-task options: sequence defaults < per-task entries < --quick < --set. `part` is one of
    TASK_PARTS: "tasks" (the upstream sequence), "downstream" (tasks each learnt after it, from
    its final model) or "probe" (never trained; bench/probe.py)."""
    seq = load_sequence(cfg.sequence)
    defaults = {"steps": 50, "train_cap": None, "test_cap": None, "val_size": 200, "shots": None, "lr": None,
                "holdout": None}
    defaults.update(seq.get("options", {}))
    plans = []
    for entry in seq.get(part) or []:
        opts = dict(defaults)
        if isinstance(entry, dict):
            entry = dict(entry)
            name = entry.pop("name")
            unknown = set(entry) - set(TASK_OPTIONS)
            if unknown:
                raise BenchError(f"sequence '{cfg.sequence}': unknown task option '{sorted(unknown)[0]}' (known: {', '.join(TASK_OPTIONS)})")
            opts.update(entry)
        else:
            name = entry
        if cfg.quick:
            opts.update(seq.get("quick", {}))
        for key in TASK_OPTIONS:
            if getattr(cfg, key, None) is not None:
                opts[key] = getattr(cfg, key)
        if cfg.steps_scale != 1 and isinstance(opts["steps"], int) and opts["steps"] >= 1:  # a bad value stays for the check
            opts["steps"] = max(1, round(opts["steps"] * cfg.steps_scale))
        plans.append(TaskPlan(name=name, **opts))
    return plans


def _coerce(key: str, raw: str, typ, where: str = "--set "):
    """`raw` as a value of type `typ`; an error names `where` the value came from."""
    value = yaml.safe_load(raw) if isinstance(raw, str) else raw
    origin = typing.get_origin(typ)
    allowed = typing.get_args(typ) if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) else (typ,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if t is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:  # YAML 1.1 reads "1e-3" as a string
                return float(value)
            except ValueError:
                continue
        if t is str:
            return str(value) if not isinstance(value, (dict, list)) else None
        if t in (int, bool, dict, list) and type(value) is t:
            return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed if t is not type(None))
    raise BenchError(f"bad {where}{key}={raw}: expected {names}")


def parse_sets(pairs: list[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise BenchError(f"bad --set '{pair}': expected key=value")
        out.append((key.strip(), value))
    return out


RUN_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig) if f.name not in ("method", "hparams")}
EXEC_KEYS = ("device", "threads", "workers", "cache_dir", "cache_prefix", "reuse_stages", "reuse_scores", "compile", "rerun")


def resolve(method: str, method_cls, sets: list[tuple[str, str]], device: str = "auto", **base) -> RunConfig:
    """Build the RunConfig for one method. `sets` apply to run fields ("lr=1e-3") or to the
    method's hyper-parameters ("<method>.<field>=value"); a key naming another method is ignored
    here (it is validated when that method is resolved). precision="auto" becomes what `device`
    runs fast, so a run's id names the precision it really used."""
    cfg = RunConfig(method=method, **base)
    hints = typing.get_type_hints(RunConfig)
    hp_fields = {f.name: f for f in dataclasses.fields(method_cls.HParams)}
    hp_hints = typing.get_type_hints(method_cls.HParams)
    hp = {}
    for key, raw in sets:
        if key in EXEC_KEYS:
            continue
        if "." in key:
            owner, _, name = key.partition(".")
            if owner != method:
                continue
            if name not in hp_fields:
                raise did_you_mean(name, hp_fields, f"hyper-parameter of method '{method}'")
            hp[name] = _coerce(key, raw, hp_hints[name])
        elif key in RUN_FIELDS:
            setattr(cfg, key, _coerce(key, raw, hints[key]))
        else:
            raise did_you_mean(key, list(RUN_FIELDS) + list(EXEC_KEYS), "--set key")
    hp = {**sequence_hparams(cfg.sequence, method, hp_fields, hp_hints), **hp}
    from bench.settings import setting_of
    cfg.setting = setting_of(cfg)
    from bench.precision import resolve_precision  # imports torch: not for `list`
    cfg.precision = resolve_precision(cfg.precision, device)
    try:  # the method's own range checks (HParams.__post_init__), before anything runs
        cfg.hparams = dataclasses.asdict(method_cls.HParams(**hp))
    except ValueError as e:
        raise BenchError(f"bad hyper-parameter of method '{method}': {e}") from None
    return cfg


def data_plans(cfgs, backbone: bool = False):
    """(config, task plan) once per distinct data the runs read: task, data root, caps, validation
    size, shots and (for low-shot sampling) seed; with `backbone`, once per encoding too."""
    seen = set()
    for cfg in cfgs:
        for p in [p for part in TASK_PARTS for p in plan_tasks(cfg, part)]:
            key = (cfg.backbone if backbone else None, p.name, cfg.data_root, p.train_cap, p.test_cap, p.val_size,
                   p.shots, cfg.seed if p.shots else None, tuple(p.holdout or ()))
            if key not in seen:
                seen.add(key)
                yield cfg, p


def sequence_hparams(sequence: str, method: str, fields, hints) -> dict:
    """A sequence may rescale a method's defaults to its budget (`hparams: {er: {replay_every: 1}}`);
    --set still wins. Every method named there must exist; errors name the file and the key."""
    from bench.registry import METHODS
    path = sequence_path(sequence)
    table = load_sequence(sequence).get("hparams") or {}
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise BenchError(f"sequence file {path}: 'hparams' must map method names to {{field: value}}")
    try:
        for name in table:
            if name not in METHODS:
                raise did_you_mean(name, METHODS.names(), "method under 'hparams'")
        entry = table.get(method, {})
        for name in entry:
            if name not in fields:
                raise did_you_mean(name, fields, f"hyper-parameter under 'hparams.{method}'")
        return {name: _coerce(f"{method}.{name}", value, hints[name], "hparams.") for name, value in entry.items()}
    except BenchError as e:
        raise BenchError(f"sequence file {path}: {e}") from None


def validate_set_owners(sets: list[tuple[str, str]], methods_known) -> None:
    for key, _ in sets:
        if "." in key:
            owner = key.partition(".")[0]
            if owner not in methods_known:
                raise did_you_mean(owner, methods_known, "method in --set")
