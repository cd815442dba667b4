"""CLiMB's four upstream vision-language tasks (Srinivasan et al. 2022), read from the files the
datasets ship. `data_root` is CLiMB's `--climb_data_dir` (its DATA_DOWNLOAD.md layout:
vqav2/, ms-coco/, nlvr2/, snli-ve/, flickr30k/, vcr/); the datasets' own distribution layouts
(COCO train2014/val2014, NLVR2's numbered train sub-folders, Flickr30k's flickr30k-images,
VCR's vcr1annots/vcr1images) work too. As in CLiMB, the reported split is VQAv2 val2014,
NLVR2 dev, SNLI-VE dev, VCR val; our validation split is carved from the training files."""
from collections import Counter
from pathlib import Path

from bench.registry import TASKS
from tasks._files import FileTask, images_by_number, scan_images

TEST_SPLIT = {"vqav2": "val", "nlvr2": "dev", "snli_ve": "dev", "vcr": "val"}
MIN_ANSWER_COUNT = 9  # CLiMB/ViLT answer vocabulary: answers given >= 9 times (3,129 on VQAv2)


def vqa_soft_score(count: int, n_answers: int = 10) -> float:
    """The official VQA accuracy of an answer that `count` of the `n_answers` annotators gave:
    min(#humans/3, 1), averaged over the n subsets that leave one annotator out. With 10 annotators:
    1 -> 0.3, 2 -> 0.6, 3 -> 0.9, >=4 -> 1.0, exactly CLiMB's `get_score` soft targets."""
    if count <= 0:
        return 0.0
    with_one_left_out = count * min((count - 1) / 3, 1.0) + (n_answers - count) * min(count / 3, 1.0)
    return round(with_one_left_out / n_answers, 6)


class VQAv2(FileTask):
    """Image + question -> answer among the vocabulary; soft targets, BCE loss, VQA score."""

    dirs = ("vqav2", "VQAv2", "vqa")
    layout = ("<data_root>/vqav2/{v2_OpenEnded_mscoco_<train|val>2014_questions.json, "
              "v2_mscoco_<train|val>2014_annotations.json, ans2label.pkl (optional)} and "
              "<data_root>/ms-coco/{images|train2014|val2014}/<...image id>.jpg")
    VOCAB_FILES = ("ans2label.pkl", "trainval_ans2label.pkl", "cache/trainval_ans2label.pkl", "ans2label.json")
    LIST_VOCAB_FILES = ("trainval_label2ans.pkl", "cache/trainval_label2ans.pkl")

    def prepare(self, data_root):
        self.set_labels(self.vocabulary(self.folder(data_root)), chance=0.0)

    def vocabulary(self, folder: Path) -> list[str]:
        """CLiMB's `ans2label.pkl` ({answer: index}), or bottom-up-attention's
        `trainval_ans2label.pkl` / `trainval_label2ans.pkl`; without one, CLiMB's recipe: the
        `multiple_choice_answer`s given >= 9 times in train+val, in order of first appearance
        (ViLT's extra answer normalisation is not applied)."""
        for name in self.VOCAB_FILES:
            if (folder / name).exists():
                path = folder / name
                mapping = self.read_json(path) if name.endswith(".json") else self.read_pickle_mapping(path)
                if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
                    raise self.error(f"{path}: expected a mapping answer -> index")
                answers = sorted(mapping, key=mapping.get)
                if [mapping[a] for a in answers] != list(range(len(answers))):
                    raise self.error(f"{path}: answer indices must be 0..{len(answers) - 1}")
                return answers
        for name in self.LIST_VOCAB_FILES:
            if (folder / name).exists():
                answers = self.read_pickle_mapping(folder / name)
                if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
                    raise self.error(f"{folder / name}: expected a list of answers")
                return answers
        counts = Counter()
        for tag in ("train", "val"):
            path = self.first(folder, f"v2_mscoco_{tag}2014_annotations.json")
            for where, ann in self.json_list(path, "annotations"):
                counts[self.field(ann, "multiple_choice_answer", where, str)] += 1
        return [a for a, c in counts.items() if c >= MIN_ANSWER_COUNT]

    def read(self, split, folder):
        tag = "train" if split == "train" else TEST_SPLIT["vqav2"]
        qpath = self.first(folder, f"v2_OpenEnded_mscoco_{tag}2014_questions.json")
        apath = self.first(folder, f"v2_mscoco_{tag}2014_annotations.json")
        questions = {}
        for where, q in self.json_list(qpath, "questions"):
            questions[self.field(q, "question_id", where, int)] = (self.field(q, "question", where, str),
                                                                    self.field(q, "image_id", where, int))
        images = coco_images(self, folder.parent)
        index = {a: k for k, a in enumerate(self.labels)}
        for where, ann in self.json_list(apath, "annotations"):
            qid = self.field(ann, "question_id", where, int)
            if qid not in questions:
                raise self.error(f"{where}: question_id {qid} is not in {qpath.name}")
            question, image_id = questions[qid]
            if self.field(ann, "image_id", where, int) != image_id:
                raise self.error(f"{where}: image_id differs from question {qid}'s in {qpath.name}")
            if image_id not in images:
                raise self.error(f"{where}: image {image_id} not found in the COCO image folders")
            given = [self.field(a, "answer", f"{where}.answers[{j}]", str)
                     for j, a in enumerate(self.field(ann, "answers", where, list))]
            counts = Counter(given)
            label = {index[a]: vqa_soft_score(c, len(given)) for a, c in counts.items() if a in index}
            yield {"images": [images[image_id]], "text": question, "label": label}


COCO_DIRS = ("ms-coco", "coco", "mscoco", "COCO")
COCO_IMAGE_DIRS = ("images", "train2014", "val2014", "train2017", "val2017",
                   "images/train2014", "images/val2014", "images/train2017", "images/val2017")


def coco_images(task: FileTask, data_root: Path) -> dict[int, str]:
    """{COCO image id: path}: CLiMB's ms-coco/images/<id>.jpg or the official
    <split>2014/COCO_<split>2014_<id>.jpg and <split>2017/<id>.jpg folders."""
    for name in COCO_DIRS:
        if (data_root / name).is_dir():
            index = images_by_number(*(data_root / name / sub for sub in COCO_IMAGE_DIRS))
            if index:
                return index
    raise task.error(f"no COCO images under {data_root}/{{{','.join(COCO_DIRS)}}}/{{{','.join(COCO_IMAGE_DIRS)}}}")


class NLVR2(FileTask):
    """Two images + a statement -> True/False."""

    dirs = ("nlvr2", "NLVR2")
    layout = ("<data_root>/nlvr2/data/<train|dev>.json (JSON lines: identifier, sentence, label) and "
              "<data_root>/nlvr2/images/<train|dev>/[<any sub-folder>/]<identifier minus its last part>-img<0|1>.png")

    def read(self, split, folder):
        tag = "train" if split == "train" else TEST_SPLIT["nlvr2"]
        path = self.first(folder, f"data/{tag}.json", f"{tag}.json")
        image_dir = next((d for d in (folder / "images" / tag, folder / tag) if d.is_dir()), folder / "images" / tag)
        images = scan_images(image_dir, recursive=True)  # the official train zip has 100 numbered sub-folders
        for n, rec in self.jsonl(path):
            where = f"{path} line {n}"
            identifier = self.field(rec, "identifier", where, str)
            label = str(self.field(rec, "label", where))
            if label not in self.labels:
                raise self.error(f"{where}: label '{label}' is not True/False")
            stem = identifier.rsplit("-", 1)[0]
            pair = []
            for k in (0, 1):
                name = f"{stem}-img{k}.png"
                if name not in images:
                    raise self.error(f"{where}: image {name} not found under {image_dir}")
                pair.append(images[name])
            yield {"images": pair, "text": self.field(rec, "sentence", where, str), "label": self.labels.index(label)}


FLICKR_IMAGE_DIRS = ("flickr30k/flickr30k_images", "flickr30k/flickr30k-images", "flickr30k_images", "flickr30k-images",
                     "snli-ve/flickr30k_images", "snli-ve/Flickr30K/flickr30k_images", "flickr30k/images")


class SNLIVE(FileTask):
    """Image premise + text hypothesis -> entailment / contradiction / neutral (CLiMB's order)."""

    dirs = ("snli-ve", "snli_ve", "SNLI-VE")
    layout = ("<data_root>/snli-ve/snli_ve_<train|dev>.jsonl (Flickr30K_ID, sentence2, gold_label) and "
              "<data_root>/flickr30k/flickr30k_images/<Flickr30K_ID>.jpg")

    def read(self, split, folder):
        tag = "train" if split == "train" else TEST_SPLIT["snli_ve"]
        path = self.first(folder, f"snli_ve_{tag}.jsonl", f"data/snli_ve_{tag}.jsonl")
        images = images_by_number(*(folder.parent / d for d in FLICKR_IMAGE_DIRS))
        for n, rec in self.jsonl(path):
            where = f"{path} line {n}"
            raw_id = self.field(rec, "Flickr30K_ID", where, (str, int))
            if not str(raw_id).isdigit() or int(raw_id) not in images:
                raise self.error(f"{where}: Flickr30k image {raw_id} not found")
            gold = self.field(rec, "gold_label", where, str)
            if gold not in self.labels:
                raise self.error(f"{where}: gold_label '{gold}' is not one of {', '.join(self.labels)}")
            yield {"images": [images[int(raw_id)]], "text": self.field(rec, "sentence2", where, str),
                   "label": self.labels.index(gold)}


def vcr_text(tokens: list, objects: list[str]) -> str:
    """VCR's mixed tokens (words and lists of object indices) as plain text: object i becomes
    its class and 1-based index, e.g. [[0, 2], 'is', 'smiling'] -> 'person1 and person3 is smiling'."""
    words = []
    for tok in tokens:
        if isinstance(tok, list):
            names = [f"{objects[i]}{i + 1}" for i in tok]
            words.append(names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1])
        else:
            words.append(str(tok))
    return " ".join(words)


class VCR(FileTask):
    """Q->A: image + question -> one of 4 answers; each choice text is `question [SEP] answer`
    (CLiMB's input), scored by the shared multiple-choice head."""

    dirs = ("vcr", "VCR")
    layout = ("<data_root>/vcr/{annotation|vcr1annots}/<train|val>.jsonl and either CLiMB's "
              "<data_root>/vcr/drawn_images/bbox/<train|val>/answer/<annot_id>.jpg or <data_root>/vcr/vcr1images/<img_fn>")

    def read(self, split, folder):
        tag = "train" if split == "train" else TEST_SPLIT["vcr"]
        path = self.first(folder, f"annotation/{tag}.jsonl", f"vcr1annots/{tag}.jsonl", f"{tag}.jsonl")
        drawn_dir = folder / "drawn_images" / "bbox" / tag / "answer"  # CLiMB: boxes drawn on the images
        drawn = scan_images(drawn_dir)
        for n, rec in self.jsonl(path):
            where = f"{path} line {n}"
            objects = self.field(rec, "objects", where, list)
            answers = self.field(rec, "answer_choices", where, list)
            label = self.field(rec, "answer_label", where, int)
            if len(answers) != self.choices or not 0 <= label < self.choices:
                raise self.error(f"{where}: expected {self.choices} answer_choices and answer_label in 0..{self.choices - 1}")
            if drawn:
                name = f"{self.field(rec, 'annot_id', where, str)}.jpg"
                if name not in drawn:
                    raise self.error(f"{where}: image {name} not found in {drawn_dir}")
                image = drawn[name]
            else:
                image = self.existing(folder / "vcr1images" / self.field(rec, "img_fn", where, str), where)
            try:
                question = vcr_text(self.field(rec, "question", where, list), objects)
                texts = [f"{question} [SEP] {vcr_text(a, objects)}" for a in answers]
            except (IndexError, TypeError):
                raise self.error(f"{where}: an object reference is not an index into 'objects'") from None
            yield {"images": [image], "text": texts, "label": label}


TASKS.register("vqav2")(lambda: VQAv2("vqav2", "vl", [], loss="soft_bce", metric="vqa_score", chance=0.0))
TASKS.register("nlvr2")(lambda: NLVR2("nlvr2", "vl", ["False", "True"], n_images=2, chance=50.0))
TASKS.register("snli_ve")(lambda: SNLIVE("snli_ve", "vl", ["entailment", "contradiction", "neutral"], chance=33.33))
TASKS.register("vcr")(lambda: VCR("vcr", "vl", ["A", "B", "C", "D"], choices=4, chance=25.0))
