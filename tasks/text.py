"""Text-only tasks of CLiMB's downstream evaluation: IMDb and SST-2 (sentiment classification),
PIQA, HellaSwag and CommonsenseQA (multiple choice: one text per choice, `context [SEP] choice`
as CLiMB builds them). Each reads the dataset's official files when present, otherwise local
Hugging Face `datasets` files (hub parquet / json / csv downloads or a `save_to_disk` folder) under
the same folder. As in CLiMB, the reported split is the official dev set (IMDb: its test set)."""
import csv
from pathlib import Path

from bench.registry import TASKS
from tasks._files import FileTask, read_text_file


def choice_texts(context: str, choices: list[str]) -> list[str]:
    return [f"{context} [SEP] {c}" for c in choices]


class TextTask(FileTask):
    """Official files first (`official` returns None when they are absent), else HF rows."""

    hf_test = "validation"  # the Hugging Face split reported as "test"
    official_layout = ""
    hf_columns = ""

    @property
    def layout(self):
        return (f"{self.official_layout}, or Hugging Face files <data_root>/{self.dirs[0]}/**/"
                f"<train|{self.hf_test}>[-*].<parquet|jsonl|json|csv> with columns {self.hf_columns}")

    def read(self, split, folder):
        rows = self.official(split, folder)
        if rows is None:
            hf_split = "train" if split == "train" else self.hf_test
            hf = self.hf_records(folder, hf_split)
            if hf is None:
                raise self.error(f"found neither the official files nor Hugging Face '{hf_split}' files under {folder}")
            rows = (self.from_hf(where, row) for where, row in hf)
        return list(rows)

    def official(self, split: str, folder: Path):
        raise NotImplementedError

    text_column = "text"  # classification tasks: the column with the text to classify

    def from_hf(self, where: str, row: dict) -> dict:
        return {"images": [], "text": self.field(row, self.text_column, where, str),
                "label": self.class_label(self.field(row, "label", where), where)}

    def class_label(self, value, where: str) -> int:
        """An integer class index from an int or a digit string, checked against the label space."""
        text = str(value).strip()
        if not text.lstrip("-").isdigit() or not 0 <= int(text) < len(self.labels):
            raise self.error(f"{where}: label {value!r} is not in 0..{len(self.labels) - 1}")
        return int(text)


class IMDb(TextTask):
    dirs = ("imdb", "IMDb", "aclImdb")
    hub_id = "stanfordnlp/imdb"
    hf_test = "test"
    official_layout = "<data_root>/imdb/[aclImdb/]<train|test>/<neg|pos>/<id>_<rating>.txt"
    hf_columns = "text, label (0 neg, 1 pos)"

    def official(self, split, folder):
        root = next((r for r in (folder / "aclImdb", folder) if (r / "train" / "pos").is_dir()), None)
        if root is None:
            return None
        out = []
        for k, polarity in enumerate(self.labels):
            d = root / split / polarity
            if not d.is_dir():
                raise self.error(f"missing folder {d}")
            out += [{"images": [], "text": read_text_file(p), "label": k} for p in sorted(d.glob("*.txt"))]
        return out


class SST2(TextTask):
    dirs = ("sst2", "SST-2", "sst-2", "glue_sst2")
    hub_id = "stanfordnlp/sst2"
    official_layout = "GLUE's <data_root>/sst2/[SST-2/]<train|dev>.tsv (sentence<TAB>label)"
    hf_columns = "sentence, label"
    text_column = "sentence"

    def official(self, split, folder):
        tag = "train" if split == "train" else "dev"
        path = next((p for p in (folder / "SST-2" / f"{tag}.tsv", folder / f"{tag}.tsv") if p.is_file()), None)
        if path is None:
            return None
        out = []
        with open(path, encoding="utf-8", newline="") as f:
            for n, row in enumerate(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 2):
                out.append(self.from_hf(f"{path} line {n}", row))
        return out


class PIQA(TextTask):
    dirs = ("piqa", "PIQA")
    official_layout = "<data_root>/piqa/{<train|valid>.jsonl (goal, sol1, sol2), <train|valid>-labels.lst}"
    hf_columns = "goal, sol1, sol2, label"

    def official(self, split, folder):
        tag = "train" if split == "train" else "valid"
        if not (folder / f"{tag}.jsonl").is_file():
            return None
        labels_path = self.first(folder, f"{tag}-labels.lst")
        labels = list(self.lines(labels_path))
        rows = list(self.jsonl(folder / f"{tag}.jsonl"))
        if len(labels) != len(rows):
            raise self.error(f"{labels_path} has {len(labels)} labels for {len(rows)} lines of {tag}.jsonl")
        return [self.from_hf(f"{folder / tag}.jsonl line {n}", {**row, "label": lab})
                for (n, row), (_, lab) in zip(rows, labels)]

    def from_hf(self, where, row):
        goal, sols = self.field(row, "goal", where, str), [self.field(row, k, where, str) for k in ("sol1", "sol2")]
        return {"images": [], "text": choice_texts(goal, sols), "label": self.class_label(self.field(row, "label", where), where)}


class HellaSwag(TextTask):
    dirs = ("hellaswag", "HellaSwag")
    official_layout = "<data_root>/hellaswag/hellaswag_<train|val>.jsonl (ctx, endings, label)"
    hf_columns = "ctx, endings, label"

    def official(self, split, folder):
        path = folder / f"hellaswag_{'train' if split == 'train' else 'val'}.jsonl"
        if not path.is_file():
            return None
        return [self.from_hf(f"{path} line {n}", row) for n, row in self.jsonl(path)]

    def from_hf(self, where, row):
        endings = self.field(row, "endings", where, list)
        if len(endings) != self.choices:
            raise self.error(f"{where}: expected {self.choices} endings, got {len(endings)}")
        return {"images": [], "text": choice_texts(self.field(row, "ctx", where, str), [str(e) for e in endings]),
                "label": self.class_label(self.field(row, "label", where), where)}


class CommonsenseQA(TextTask):
    dirs = ("commonsenseqa", "commonsense_qa", "CommonsenseQA", "csqa")
    hub_id = "tau/commonsense_qa"
    official_layout = "<data_root>/commonsenseqa/<train|dev>_rand_split.jsonl (question.stem, question.choices, answerKey)"
    hf_columns = "question, choices {label, text}, answerKey"

    def official(self, split, folder):
        path = folder / f"{'train' if split == 'train' else 'dev'}_rand_split.jsonl"
        if not path.is_file():
            return None
        out = []
        for n, row in self.jsonl(path):
            where = f"{path} line {n}"
            q = self.field(row, "question", where, dict)
            choices = [self.field(c, "text", f"{where} question.choices", str) for c in self.field(q, "choices", where, list)]
            out.append(self.example(self.field(q, "stem", where, str), choices, row, where))
        return out

    def from_hf(self, where, row):
        choices = self.field(row, "choices", where, dict)
        return self.example(self.field(row, "question", where, str), list(self.field(choices, "text", where, list)), row, where)

    def example(self, stem, choices, row, where):
        key = self.field(row, "answerKey", where, str)
        if len(choices) != self.choices or key not in self.labels:
            raise self.error(f"{where}: expected {self.choices} choices and answerKey in {''.join(self.labels)}")
        return {"images": [], "text": choice_texts(stem, choices), "label": self.labels.index(key)}


TASKS.register("imdb")(lambda: IMDb("imdb", "text", ["neg", "pos"], n_images=0))
TASKS.register("sst2")(lambda: SST2("sst2", "text", ["negative", "positive"], n_images=0))
TASKS.register("piqa")(lambda: PIQA("piqa", "text", ["sol1", "sol2"], n_images=0, choices=2))
TASKS.register("hellaswag")(lambda: HellaSwag("hellaswag", "text", ["0", "1", "2", "3"], n_images=0, choices=4))
TASKS.register("commonsenseqa")(lambda: CommonsenseQA("commonsenseqa", "text", list("ABCDE"), n_images=0, choices=5))
