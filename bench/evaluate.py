"""Batched evaluation under inference mode: accuracy or VQA score, in %."""
import torch

from bench.data import EncodedSplit


@torch.inference_mode()
def score(method, t: int, data: EncodedSplit, batch_size: int = 256) -> float:
    task = method.tasks[t]
    method.net.eval()
    total = torch.zeros((), dtype=torch.float64)
    for batch in data.batches(batch_size):
        pred = method.predict(batch, t).argmax(-1)
        label = batch["label"]
        if task.metric == "vqa_score":  # soft score (min(#humans/3, 1)) of the predicted answer
            total += label.gather(1, pred[:, None]).sum().double().cpu()
        else:
            total += (pred == label).sum().double().cpu()
    method.net.train()
    return float(100.0 * total / len(data))
