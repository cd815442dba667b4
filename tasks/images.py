"""Image-only tasks of CLiMB's downstream evaluation: ImageNet (class folders), iNaturalist 2019
(its json), Places365 (its official file lists, or class folders as CLiMB keeps it) and COCO
object classification (instances json). The label space is read from the files in `prepare`.
As in CLiMB, the official validation set is the reported split and our validation split is
carved from the training data. COCO is multi-label, as in CLiMB: a soft 0/1 target per class,
BCE loss, scored by whether the top-scoring class is present (precision@1, the `vqa_score` of 0/1
targets); CLiMB reported micro-F1 at threshold 0.5 instead."""
import csv
from collections import defaultdict
from pathlib import Path

from bench.registry import TASKS
from tasks._files import FileTask, class_folders, images_by_number, scan_images
from tasks.climb import COCO_DIRS, COCO_IMAGE_DIRS


class ClassFolderTask(FileTask):
    """Tasks whose label space may be one sub-folder per class (ImageNet-style)."""

    def folder_examples(self, root: Path) -> list[dict]:
        index = {c: k for k, c in enumerate(self.labels)}
        out = []
        for name in class_folders(root):
            if name not in index:
                raise self.error(f"class folder {root / name} is not a class of the training folder")
            out += [{"images": [p], "label": index[name]} for _, p in sorted(scan_images(root / name).items())]
        if not out:
            raise self.error(f"no images in the class folders of {root}")
        return out


class ImageNet(ClassFolderTask):
    dirs = ("ILSVRC2012", "imagenet", "ImageNet", "ILSVRC", "imagenet-1k")
    layout = ("<data_root>/ILSVRC2012/train/<wnid>/*.JPEG and either val/<wnid>/*.JPEG or "
              "val/<ImageId>.JPEG + LOC_val_solution.csv (Kaggle's files, as CLiMB reads them)")

    def base(self, folder: Path) -> Path:
        kaggle = folder / "ILSVRC" / "Data" / "CLS-LOC"
        return kaggle if (kaggle / "train").is_dir() else folder

    def prepare(self, data_root):
        train = self.base(self.folder(data_root)) / "train"
        if not class_folders(train):
            raise self.error(f"no class folders in {train}")
        self.set_labels(class_folders(train))

    def read(self, split, folder):
        base = self.base(folder)
        if split == "train" or class_folders(base / "val"):
            return self.folder_examples(base / ("train" if split == "train" else "val"))
        path = self.first(folder, "LOC_val_solution.csv")
        index = {c: k for k, c in enumerate(self.labels)}
        out = []
        with open(path, encoding="utf-8", newline="") as f:
            for n, row in enumerate(csv.DictReader(f), 2):
                where = f"{path} line {n}"
                wnid = (self.field(row, "PredictionString", where, str).split() or [""])[0]
                if wnid not in index:
                    raise self.error(f"{where}: class '{wnid}' is not a training class folder")
                image = base / "val" / f"{self.field(row, 'ImageId', where, str)}.JPEG"
                out.append({"images": [self.existing(image, where)], "label": index[wnid]})
        return out


class INat2019(FileTask):
    dirs = ("iNat2019", "inat2019", "inaturalist", "iNaturalist2019")
    layout = "<data_root>/iNat2019/{train2019.json, val2019.json} with images at <data_root>/iNat2019/<file_name>"

    def prepare(self, data_root):
        path = self.first(self.folder(data_root), "val2019.json")
        cats = self.field(self.read_json(path), "categories", str(path), list)
        self.category_ids = sorted(self.field(c, "id", f"{path} categories[{k}]", int) for k, c in enumerate(cats))
        names = {c["id"]: str(c.get("name", c["id"])) for c in cats}
        self.set_labels([names[i] for i in self.category_ids])

    def read(self, split, folder):
        path = self.first(folder, f"{'train' if split == 'train' else 'val'}2019.json")
        doc = self.read_json(path)
        category = {}
        for k, a in enumerate(self.field(doc, "annotations", str(path), list)):
            where = f"{path} annotations[{k}]"
            category[self.field(a, "image_id", where, int)] = self.field(a, "category_id", where, int)
        index = {c: k for k, c in enumerate(self.category_ids)}
        out = []
        for k, im in enumerate(self.field(doc, "images", str(path), list)):
            where = f"{path} images[{k}]"
            image_id = self.field(im, "id", where, int)
            if category.get(image_id) not in index:
                raise self.error(f"{where}: image {image_id} has no annotation with a known category_id")
            out.append({"images": [self.existing(folder / self.field(im, "file_name", where, str), where)],
                        "label": index[category[image_id]]})
        return out


class Places365(ClassFolderTask):
    dirs = ("Places365", "places365", "places")
    layout = ("<data_root>/Places365/{categories_places365.txt, places365_train_standard.txt, places365_val.txt, "
              "data_256/, val_256/} (official lists) or <data_root>/Places365/<train|val>/<class>/*.jpg (as CLiMB)")
    LISTS = {"train": ("places365_train_standard.txt", ("data_256", "data_large_standard", "data_large")),
             "test": ("places365_val.txt", ("val_256", "val_large"))}

    def prepare(self, data_root):
        folder = self.folder(data_root)
        path = folder / "categories_places365.txt"
        if not path.is_file():
            self.set_labels(class_folders(folder / "train"))
            return
        names = {}
        for n, line in self.lines(path):
            name, _, idx = line.rpartition(" ")
            if not name or not idx.isdigit():
                raise self.error(f"{path} line {n}: expected '<category> <index>'")
            names[int(idx)] = name[3:] if name[:1] == "/" and name[2:3] == "/" else name  # "/a/abbey" -> "abbey"
        if sorted(names) != list(range(len(names))):
            raise self.error(f"{path}: category indices must be 0..{len(names) - 1}")
        self.set_labels([names[k] for k in range(len(names))])

    def read(self, split, folder):
        list_name, image_dirs = self.LISTS[split]
        if not (folder / list_name).is_file():
            return self.folder_examples(folder / ("train" if split == "train" else "val"))
        path = folder / list_name
        image_dir = next((folder / d for d in image_dirs if (folder / d).is_dir()), folder / image_dirs[0])
        out = []
        for n, line in self.lines(path):
            where = f"{path} line {n}"
            name, _, idx = line.rpartition(" ")
            if not name or not idx.isdigit() or int(idx) >= len(self.labels):
                raise self.error(f"{where}: expected '<image path> <class index below {len(self.labels)}>'")
            out.append({"images": [self.existing(image_dir / name.lstrip("/"), where)], "label": int(idx)})
        return out


class COCOObjects(FileTask):
    """Multi-label: which of the 80 object categories appear in the image."""

    dirs = COCO_DIRS
    layout = ("<data_root>/ms-coco/{detections/annotations|annotations}/instances_<train|val>2017.json and "
              "<data_root>/ms-coco/{images|train2017|val2017}/<image id>.jpg")

    def annotation_file(self, folder: Path, tag: str) -> Path:
        return self.first(folder, f"detections/annotations/instances_{tag}2017.json", f"annotations/instances_{tag}2017.json")

    def prepare(self, data_root):
        path = self.annotation_file(self.folder(data_root), "val")
        doc = self.read_json(path)
        cats = self.field(doc, "categories", str(path), list)
        self.category_ids = sorted(self.field(c, "id", f"{path} categories[{k}]", int) for k, c in enumerate(cats))
        names = {c["id"]: str(c.get("name", c["id"])) for c in cats}
        per_image = self.present(doc, path)
        # chance: precision@1 of a uniformly random class = mean share of classes present (test split)
        density = sum(len(c) for c in per_image.values()) / max(1, len(per_image)) / len(self.category_ids)
        self.set_labels([names[i] for i in self.category_ids], chance=100.0 * density)

    def present(self, doc: dict, path: Path) -> dict[int, set]:
        """{image id: set of category ids annotated in it}; images without annotations are left out, as in CLiMB."""
        out = defaultdict(set)
        for k, a in enumerate(self.field(doc, "annotations", str(path), list)):
            where = f"{path} annotations[{k}]"
            out[self.field(a, "image_id", where, int)].add(self.field(a, "category_id", where, int))
        return out

    def read(self, split, folder):
        path = self.annotation_file(folder, "train" if split == "train" else "val")
        per_image = self.present(self.read_json(path), path)
        images = images_by_number(*(folder / sub for sub in COCO_IMAGE_DIRS))
        index = {c: k for k, c in enumerate(self.category_ids)}
        out = []
        for image_id in sorted(per_image):
            if image_id not in images:
                raise self.error(f"{path}: image {image_id} not found in {folder}/{{{','.join(COCO_IMAGE_DIRS)}}}")
            unknown = per_image[image_id] - set(index)
            if unknown:
                raise self.error(f"{path}: image {image_id} has unknown category_id {sorted(unknown)[0]}")
            out.append({"images": [images[image_id]], "label": {index[c]: 1.0 for c in sorted(per_image[image_id])}})
        return out


TASKS.register("imagenet")(lambda: ImageNet("imagenet", "image", []))
TASKS.register("inat2019")(lambda: INat2019("inat2019", "image", []))
TASKS.register("places365")(lambda: Places365("places365", "image", []))
TASKS.register("coco_cls")(lambda: COCOObjects("coco_cls", "image", [], loss="soft_bce", metric="vqa_score"))
