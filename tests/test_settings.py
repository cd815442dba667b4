"""Class- and domain-incremental settings (bench/settings.py, bench/task_id.py): the union label
space built by hand, the task id never given to `predict` (recorded), a method that knows only the
last task scoring 0 on earlier ones, contradicting domains scored by hand through one head
(tests/word_tasks.py), the task-id predictor against a bare nearest-prototype loop,
oracle methods marked, and task-IL run ids untouched."""
from pathlib import Path

import numpy as np
import pytest
import torch

import bench.runner as runner
from bench import metrics
from bench.config import resolve
from bench.data import EncodedSplit, sparse_targets
from bench.errors import BenchError
from bench.method import Method
from bench.novel import planned_task
from bench.registry import METHODS, TASKS
from bench.settings import LabelSpace
from bench.task import Task
from conftest import plugin, run_method
from methods.adapter import Adapter
from word_tasks import CLASSES, DOMAINS, Memoriser, approx_matrix, expected_matrix, register, sequence_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# disjoint label sets, so a method that predicts only the last task's labels is wrong on every earlier one
DISJOINT = """setting: class
tasks: [vqa_color, digits, vqa_shape]
options: {steps: 4, train_cap: 192, test_cap: 64, val_size: 32}  # the default's --quick data: encoded once per test session
"""


@pytest.fixture(scope="module")
def disjoint(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("seq") / "disjoint.yaml"
    path.write_text(DISJOINT)
    return str(path)


def task(name, labels, **kw):
    return Task(name, "text", labels, n_images=0, **kw)


def test_union_merges_labels_by_string_in_sequence_order_with_the_label_map():
    tasks = [task("a", ["red", "blue"]), task("b", ["True", "False", "blue"]), task("c", ["x"], choices=4),
             task("d", ["yes", "green"])]
    space = LabelSpace("class", tasks, {"True": "yes", "False": "no"}, [8, 8, 8, 8])
    assert space.labels == ["red", "blue", "yes", "no", "green"]
    assert [i if i is None else i.tolist() for i in space.index] == [[0, 1], [2, 3, 1], None, [2, 4]]
    assert space.group == [0, 0, 2, 0]  # the multiple-choice task has a head of its own
    space.through(1, "cpu")
    assert space.seen.tolist() == [True, True, True, True, False]
    views = space.views(tasks)
    assert views[2] is tasks[2] and all(v.n_classes == 5 and v.name == t.name for v, t in zip(views, tasks) if v is not t)


def test_labels_and_soft_vqa_targets_move_to_union_indices():
    space = LabelSpace("class", [task("a", ["u", "v"]), task("b", ["w", "v", "z"], loss="soft_bce", metric="vqa_score")],
                       {}, [8, 8])
    hard = EncodedSplit({"label": torch.tensor([2, 0, 1])}, None)
    assert space.remap(hard, 1).fields["label"].tolist() == [3, 2, 1]
    classes, scores = sparse_targets([{0: 1.0, 2: 0.3}, {1: 0.6}])
    soft = EncodedSplit({"label": scores, "label_classes": classes}, None, n_classes=3)
    dense = space.remap(soft, 1).batch(torch.arange(2))["label"]
    # task b's w, v, z are union classes 2, 1, 3
    expected = torch.tensor([[0, 0, 1.0, 0.3], [0, 0.6, 0, 0]])
    assert torch.equal(dense, expected)


def test_domain_setting_needs_one_label_space_and_bad_settings_are_one_line_errors():
    with pytest.raises(BenchError, match=r"task 'b' differs from task 'a' in 2: 0, 2$"):
        LabelSpace("domain", [task("a", ["0", "1"]), task("b", ["1", "2"])], {}, [8, 8])
    with pytest.raises(BenchError, match="unknown setting 'clas'; did you mean 'class'"):
        resolve("finetune", METHODS.get("finetune"), [("setting", "clas")])


def test_task_setting_is_the_default_and_keeps_the_run_ids():
    plain = resolve("finetune", METHODS.get("finetune"), [])
    explicit = resolve("finetune", METHODS.get("finetune"), [("setting", "task")])
    assert plain.setting == "task" and "setting" not in plain.identity()
    assert explicit.run_id == plain.run_id
    cls = resolve("finetune", METHODS.get("finetune"), [("setting", "class")])
    assert cls.identity()["setting"] == "class" and cls.run_id != plain.run_id
    assert resolve("finetune", METHODS.get("finetune"), [], sequence="default_class").setting == "class"
    assert runner.reference_config(cls).setting == "class"
    task_il = resolve("finetune", METHODS.get("finetune"), [("setting", "task")], sequence="default_class")
    assert task_il.setting == "task" and runner.reference_config(task_il).setting == "task"


class Recorder:
    """The task indices `predict` gets while the runner scores a test split: per scored cell, in
    order, (task j scored, {index given: examples})."""

    def __init__(self, monkeypatch):
        self.cells, self.scoring = [], False
        real = runner.per_example_scores

        def scoring(method, j, *args, **kwargs):
            self.cells.append((j, {}))
            self.scoring = True
            try:
                return real(method, j, *args, **kwargs)
            finally:
                self.scoring = False
        monkeypatch.setattr(runner, "per_example_scores", scoring)

    def record(self, batch, t):
        if self.scoring:
            given = self.cells[-1][1]
            given[t] = given.get(t, 0) + len(batch["label"])

    def by_cell(self) -> dict:
        """{(i, j): {index given: examples}}, cells scored in the runner's order (i, then j <= i)."""
        order = [(i, j) for i in range(3) for j in range(i + 1)]
        assert [j for j, _ in self.cells] == [j for _, j in order]
        return {cell: given for cell, (_, given) in zip(order, self.cells)}


class LastTaskOnly(Method):
    """Predicts only the labels of the last task it trained (the classes of its training split)."""

    def begin_task(self, ctx):
        labels = ctx.train_data[ctx.task].fields["label"]
        self.last = torch.zeros(self.tasks[ctx.task].n_classes, dtype=torch.bool)
        self.last[labels.unique()] = True

    def predict(self, batch, t):
        RECORDER.record(batch, t)
        return self.last.float().expand(len(batch["label"]), -1) + 0 * super().predict(batch, t)


RECORDER = None


@pytest.fixture
def recorder(monkeypatch):
    global RECORDER
    RECORDER = Recorder(monkeypatch)
    yield RECORDER
    RECORDER = None


def test_a_method_that_knows_only_the_last_task_scores_zero_on_earlier_tasks(monkeypatch, recorder, disjoint, tmp_path, cache_dir):
    plugin(monkeypatch, "last_task_only", LastTaskOnly)
    m = run_method("last_task_only", tmp_path, cache_dir, sequence=disjoint)
    assert m["setting"] == "class" and m["task_id"] == "shared"
    A = m["matrix"]
    assert all(A[i][j] == 0 for i in range(3) for j in range(i))
    assert metrics.summary(A, m["chance"], m["single_task"]) == m["summary"]  # the formulas, from metrics.json
    assert all(A[i][i] > 0 for i in range(3))
    # the harness never gave the scored task's id: after task i every split is predicted with index i
    assert {cell: set(given) for cell, given in recorder.by_cell().items()} == {(i, j): {i} for i in range(3) for j in range(i + 1)}


class RecordingAdapter(Adapter):
    def predict(self, batch, t):
        RECORDER.record(batch, t)
        return super().predict(batch, t)


def nearest_prototypes(cfg, cache_dir, n_tasks, split="test") -> list[list[np.ndarray | None]]:
    """A bare nearest-prototype loop: task k's prototype is the mean pooled output of a fresh
    pretrained backbone on its first 256 training examples; after task i a test (or novel) example
    goes to the nearest of prototypes 0..i. None for a task without a `split`."""
    from bench.backbones import build_backbone
    from bench.backbones.base import pooled
    from bench.precision import autocast
    backbone = build_backbone(cfg.backbone).eval()
    plans = runner.plan_tasks(cfg)

    def feats(plan, split):
        data = runner.plan_split(backbone, planned_task(plan), plan, split, cfg, cache_dir)
        with torch.no_grad(), autocast(cfg.precision, "cpu"):
            return torch.cat([pooled(backbone, b).float() for b in data.batches(256)])
    protos = torch.stack([feats(p, "train")[:256].mean(0) for p in plans])
    tests = [feats(p, split) if split == "test" or p.holdout else None for p in plans]
    return [[None if tests[j] is None else torch.cdist(tests[j], protos[:i + 1]).argmin(1).numpy() for j in range(i + 1)]
            for i in range(n_tasks)]


def test_adapters_get_the_predicted_task_id_never_the_oracle(monkeypatch, recorder, disjoint, tmp_path, cache_dir):
    plugin(monkeypatch, "recording_adapter", RecordingAdapter)
    m = run_method("recording_adapter", tmp_path / "a", cache_dir, sequence=disjoint)
    assert m["task_id"] == "predicted"
    cfg = resolve("recording_adapter", RecordingAdapter, [], sequence=disjoint, backbone="toy", quick=True)
    expected = nearest_prototypes(cfg, cache_dir, 3)
    for i in range(3):
        for j in range(i + 1):
            want = expected[i][j]
            assert m["task_id_accuracy"][i][j] == pytest.approx(100.0 * np.mean(want == j))
    # each cell's examples were predicted with the indices of their nearest prototypes, not with j
    for (i, j), given in recorder.by_cell().items():
        counts = np.bincount(expected[i][j], minlength=i + 1)
        assert given == {k: int(n) for k, n in enumerate(counts) if n}
    # the same matrix without the settled-score shortcut (class-IL re-scores every task anyway)
    plain = run_method("adapter", tmp_path / "b", cache_dir, sequence=disjoint, reuse_scores=False)
    assert plain["matrix"] == m["matrix"]


class RoutedMemoriser(Memoriser):
    def activate(self, t, ctx):  # a method that selects something per task: its task id is predicted
        pass


def test_novel_compositions_are_routed_by_the_predicted_task_id(monkeypatch, tmp_path, cache_dir):
    """The novel split of a class-IL run is predicted with the task ids the nearest-prototype
    predictor assigns to its own examples (a bare loop over the novel features), never task j's."""
    import bench.evaluate
    register(monkeypatch, CLASSES)
    plugin(monkeypatch, "routed_memoriser", RoutedMemoriser)
    holdout = {"words_a": ["cat", "sun"], "words_d": ["green", "cat"]}
    sequence = sequence_file(tmp_path / "seq.yaml", "class", CLASSES, holdout)
    given, real = [], bench.evaluate.per_example_scores

    def novel_scores(method, j, data, *args, models=None, **kwargs):  # the novel split's call (bench/novel.py)
        given.append((j, None if models is None else models.cpu().numpy()))
        return real(method, j, data, *args, models=models, **kwargs)
    monkeypatch.setattr(bench.evaluate, "per_example_scores", novel_scores)
    m = run_method("routed_memoriser", tmp_path, cache_dir, sequence=sequence)
    assert m["task_id"] == "predicted"
    cfg = resolve("routed_memoriser", RoutedMemoriser, [], sequence=sequence, backbone="toy", quick=True)
    expected = nearest_prototypes(cfg, cache_dir, 2, "novel")
    cells = [(j, expected[i][j]) for i in range(2) for j in range(i + 1) if expected[i][j] is not None]
    assert [j for j, _ in given] == [j for j, _ in cells]
    assert all(np.array_equal(got, want) for (_, got), (_, want) in zip(given, cells))
    assert any((want != j).any() for j, want in cells)  # the predictor errs here: the oracle would differ


class OracleAdapter(Adapter):
    needs_task_id = True

    def predict(self, batch, t):
        RECORDER.record(batch, t)
        return super().predict(batch, t)


def test_a_method_that_needs_the_task_id_gets_the_oracle_and_says_so(monkeypatch, recorder, disjoint, tmp_path, cache_dir):
    plugin(monkeypatch, "oracle_adapter", OracleAdapter)
    m = run_method("oracle_adapter", tmp_path, cache_dir, sequence=disjoint)
    assert m["task_id"] == "oracle" and "task_id_accuracy" not in m
    assert all(set(given) == {j} for (_, j), given in recorder.by_cell().items())


@pytest.mark.parametrize("setting", ["domain", "task"])
def test_contradicting_domains_score_as_computed_by_hand_through_one_head(monkeypatch, setting, tmp_path, cache_dir):
    """Domain-IL: one head, so after task i every domain is predicted with domain i's word map
    (cells such as 85.7 = 18/21 where two maps agree on 18 of 21 test examples); never a task id
    given to predict. The same toy in task-IL scores 100 everywhere (a head per task, its id)."""
    register(monkeypatch, DOMAINS)
    plugin(monkeypatch, "memoriser", Memoriser)
    monkeypatch.setattr(Memoriser, "log", [])
    m = run_method("memoriser", tmp_path, cache_dir, sequence=sequence_file(tmp_path / "seq.yaml", setting, DOMAINS))
    assert m["setting"] == setting and m["matrix"] == approx_matrix(expected_matrix(DOMAINS, setting))
    assert metrics.summary(m["matrix"], m["chance"], m["single_task"]) == m["summary"]  # the formulas, from metrics.json
    if setting == "task":
        assert all(v == 100 for i, row in enumerate(m["matrix"]) for v in row[:i + 1])
        return
    assert m["task_id"] == "shared" and 0 < m["matrix"][2][0] < m["matrix"][2][1] < 100  # the contradictions cost
    # every prediction (validation and every test split) after task i took index i and read one head
    assert {(trained, given) for trained, given, _ in Memoriser.log} == {(i, i) for i in range(3)}
    assert len({head for *_, head in Memoriser.log}) == 1


def test_domain_sequence_shares_one_head_over_one_label_space(tmp_path, cache_dir):
    m = run_method("finetune", tmp_path, cache_dir, sequence="default_domain")
    assert m["setting"] == "domain" and m["tasks"] == ["digits", "digits_rot90", "digits_inverted", "digits_noise"]
    assert all(v is not None for i, row in enumerate(m["matrix"]) for v in row[:i + 1])
    state = torch.load(tmp_path / "runs" / m["run_id"] / "checkpoint.pt", weights_only=True)["method"]
    heads = {k for k in state if k.startswith("heads.")}
    assert all(torch.equal(state[k], state[k.replace(k.split(".")[1], "0", 1)]) for k in heads)


def test_climb_accepts_the_class_setting(run):
    m = run("finetune", sequence="climb", sets=[f"data_root={FIXTURES / 'climb'}", "setting=class"])
    assert m["setting"] == "class"
    assert all(v is not None and 0 <= v <= 100 for i, row in enumerate(m["matrix"]) for v in row[:i + 1])


def test_predictions_are_over_the_classes_seen_so_far():
    from bench.settings import seen_only
    tasks = [task("a", ["u", "v"]), task("b", ["w"])]
    space = LabelSpace("class", tasks, {}, [8, 8])
    view = space.views(tasks)[0]
    logits = torch.tensor([[0.0, 1.0, 5.0], [2.0, 1.0, 5.0]])  # class w (task b) scores highest
    space.through(0, "cpu")
    assert seen_only(view, logits).argmax(-1).tolist() == [1, 0]
    space.through(1, "cpu")
    assert seen_only(view, logits).argmax(-1).tolist() == [2, 2]
    assert seen_only(tasks[0], logits) is logits  # task-IL: untouched


def test_the_report_keeps_settings_apart_and_marks_the_oracle(tmp_path):
    from bench import report
    import matplotlib.pyplot as plt
    from bench.figures import STYLE, forgetting_by_setting
    from figure_checks import capture
    from bench.settings import labelled
    base = {"method": "adapter", "backbone": "toy", "seed": 0, "summary": {"forgetting": 1.0},
            "params": {"trainable_per_task": [1], "stored": 1, "inference": 1}, "time": {"train_s_per_task": [1.0], "total_s": 1.0}}
    runs = [dict(base, sequence="default"), dict(base, sequence="default", setting="class", task_id="oracle"),
            dict(base, sequence="default_class", setting="class", task_id="predicted", summary={"forgetting": 4.0})]
    runs = [labelled(r) for r in runs]
    assert [r["sequence"] for r in runs] == ["default", "default (class)", "default_class"]
    shown = report.pretty(report.leaderboard(report.runs_frame(runs)))
    assert list(shown["Setting"]) == ["default / toy / task-IL", "default (class) / toy / class-IL", "default_class / toy / class-IL"]
    assert list(shown["Method"]) == ["adapter", "adapter (oracle task id)", "adapter"]
    saved = {}
    with plt.rc_context(STYLE), capture(saved, tmp_path):
        for width in (3.3, 7.0):
            paths = forgetting_by_setting(report.leaderboard(report.runs_frame(runs)), tmp_path, width)
            assert {p.name for p in paths} == {"forgetting_settings.png", "forgetting_settings.pdf"}
    for width in (3.3, 7.0):  # every text readable at either width
        shown = saved[(width, "forgetting_settings")]
        assert shown["overlaps"] == [] and shown["outside"] == [] and shown["title"] == "task-IL"
        assert [w for w, _ in shown["bars"]] == [1.0]  # the task-IL panel: its one run
    assert forgetting_by_setting(report.leaderboard(report.runs_frame(runs[:1])), tmp_path, 7.0) == []
