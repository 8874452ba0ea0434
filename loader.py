"""The training data loader: one epoch's batches, prepared (image loading, augmentation, processor) in worker
processes while the model trains. train.py builds one per epoch.

    loader = batch_loader(EpochBatches(processor, records, order, batch_size, n_batches, start, "flip_rot", key), workers)
"""
import random

import torch

from data import encode_batch


def augment_image(img, mode, rng):
    """--augment: flip = a left-right flip half the time; flip_rot = one of the 8 flips/rotations (PIL transpose codes:
    0 left-right, 2/3/4 rotate 90/180/270, 5/6 transpose/transverse, 7 = unchanged). rng: a random.Random."""
    if mode == "flip":
        return img.transpose(0) if rng.random() < 0.5 else img
    code = rng.randrange(8)
    return img if code == 7 else img.transpose(code)


class EpochBatches(torch.utils.data.Dataset):
    """One epoch's training batches, in order, from batch `start` on: batch b holds records order[b*B:(b+1)*B], encoded
    (image loading, augmentation, processor) wherever the DataLoader runs it, a worker process or the main one. Each
    image's augmentation is drawn from its own seeded generator (key, b, position), so the batches are the same
    whatever the number of workers, and a resumed run starting at batch b gets exactly the batches it would have."""

    def __init__(self, processor, records, order, batch_size, n_batches, start=0, augment="none", key=""):
        self.processor, self.records, self.order, self.batch_size = processor, records, order, batch_size
        self.n_batches, self.start, self.augment, self.key = n_batches, start, augment, key

    def __len__(self):
        return max(0, self.n_batches - self.start)

    def __getitem__(self, k):
        b = self.start + k
        recs = [self.records[i] for i in self.order[b * self.batch_size:(b + 1) * self.batch_size]]
        rngs = [random.Random(f"{self.key}:{b}:{j}") for j in range(len(recs))]
        transform = None
        if self.augment != "none":
            rng_iter = iter(rngs)
            transform = lambda img: augment_image(img, self.augment, next(rng_iter))
        return encode_batch(self.processor, recs, transform=transform), len(recs)


def _worker_init(_):
    torch.set_num_threads(1)  # a worker prepares batches; the main process's threads do the math


def batch_loader(dataset, num_workers, pin_memory=False):
    """The DataLoader over EpochBatches: workers prefetch whole batches while the main process trains."""
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                                       pin_memory=pin_memory, prefetch_factor=4 if num_workers else None,
                                       worker_init_fn=_worker_init if num_workers else None)
