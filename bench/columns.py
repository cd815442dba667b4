"""Examples held column-wise, for tasks whose files hold hundreds of thousands of them (VQAv2:
443,757 training questions): as a list of dicts each example costs a dict, a list of images and a
dict of soft scores (about 1 KB in Python objects); here an image path is stored once in a table,
each example holds the table rows of its images (int32), its text, and its label as an int64 or a
sparse soft label in CSR form (class indices int32, scores float64: the loader's values exactly). Indexing gives the example's
dict back, built on demand, so code that reads examples as dicts reads these unchanged."""
from collections.abc import Sequence

import numpy as np


class Examples(Sequence):
    def __init__(self, columns: dict):
        self.c = columns

    @classmethod
    def of(cls, rows) -> "Examples":
        """The examples `rows` (dicts {"images": [paths], "text", "label"}, any iterable: a loader
        may yield them one by one) as columns. Images that are not paths, ragged image counts and
        labels that are neither all ints nor all sparse dicts are kept as given."""
        table, images, texts, labels, image_ids = {}, [], [], [], []
        for ex in rows:
            images.append(ex.get("images", []))
            texts.append(ex.get("text"))
            labels.append(ex["label"])
            image_ids.append(ex.get("image_ids"))
        c = {"n": len(texts), "text": texts}
        if len({len(ims) for ims in images}) <= 1 and all(isinstance(p, str) for ims in images for p in ims):
            rows_of = [[table.setdefault(p, len(table)) for p in ims] for ims in images]
            c["image_table"] = list(table)
            c["image_rows"] = np.array(rows_of, dtype=np.int32).reshape(len(images), len(images[0]) if images else 0)
        else:
            c["images"] = images
        if labels and all(type(lab) is int for lab in labels):
            c["label"] = np.array(labels, dtype=np.int64)
        elif labels and all(isinstance(lab, dict) for lab in labels):
            c["label_ptr"] = np.cumsum([0] + [len(lab) for lab in labels], dtype=np.int64)
            c["label_class"] = np.array([k for lab in labels for k in lab], dtype=np.int32)
            c["label_score"] = np.array([v for lab in labels for v in lab.values()], dtype=np.float64)
        else:
            c["labels"] = labels
        if any(ids is not None for ids in image_ids):
            c["image_ids"] = image_ids
        return cls(c)

    def __len__(self) -> int:
        return self.c["n"]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.take(range(len(self))[i])
        c = self.c
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        images = [c["image_table"][r] for r in c["image_rows"][i]] if "image_table" in c else c["images"][i]
        ex = {"images": images, "label": self._label(i)}
        if c["text"][i] is not None:
            ex["text"] = c["text"][i]
        if "image_ids" in c and c["image_ids"][i] is not None:
            ex["image_ids"] = c["image_ids"][i]
        return ex

    def __eq__(self, other) -> bool:  # equal to the same examples in any sequence (a list of dicts)
        return (isinstance(other, Sequence) and not isinstance(other, str) and len(self) == len(other)
                and all(a == b for a, b in zip(self, other)))

    __hash__ = None

    def _label(self, i: int):
        c = self.c
        if "label" in c:
            return int(c["label"][i])
        if "label_ptr" in c:
            lo, hi = c["label_ptr"][i], c["label_ptr"][i + 1]
            return dict(zip(c["label_class"][lo:hi].tolist(), c["label_score"][lo:hi].tolist()))
        return c["labels"][i]

    def take(self, order) -> "Examples":
        """The examples at positions `order`, in that order, still as columns."""
        idx = np.asarray(order, dtype=np.int64).reshape(-1)
        c = dict(self.c, n=len(idx), text=[self.c["text"][i] for i in idx])
        for name in ("images", "labels", "image_ids"):
            if name in c:
                c[name] = [self.c[name][i] for i in idx]
        for name in ("image_rows", "label"):
            if name in c:
                c[name] = self.c[name][idx]
        if "label_ptr" in c:
            lo, lengths = self.c["label_ptr"][idx], self.c["label_ptr"][idx + 1] - self.c["label_ptr"][idx]
            c["label_ptr"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            picks = np.repeat(lo - c["label_ptr"][:-1], lengths) + np.arange(c["label_ptr"][-1])
            c["label_class"], c["label_score"] = self.c["label_class"][picks], self.c["label_score"][picks]
        return Examples(c)
