"""Batched evaluation under inference mode: accuracy or VQA score, in %."""
import torch

from bench.data import EncodedSplit
from bench.precision import autocast


@torch.inference_mode()
def score(method, t: int, data: EncodedSplit, batch_size: int = 256, precision: str = "fp32") -> float:
    task = method.tasks[t]
    method.net.eval()
    total = 0.0  # a device tensor after the first batch: one host sync per evaluation, not per batch
    for batch in data.batches(batch_size):
        label = batch["label"]
        with autocast(precision, label.device.type):
            pred = method.predict(batch, t).argmax(-1)
        if task.metric == "vqa_score":  # soft score (min(#humans/3, 1)) of the predicted answer
            total = total + label.gather(1, pred[:, None]).sum().double()
        else:
            total = total + (pred == label).sum().double()
    method.net.train()
    return float(100.0 * total / len(data))
