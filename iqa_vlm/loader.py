"""The training data loader: one epoch's batches, prepared (image loading, augmentation, processor) in worker
processes while the model trains. train.py builds one per epoch.

    loader = batch_loader(EpochBatches(processor, records, order, batch_size, n_batches, start, "flip_rot", key), workers)
"""
import random

import numpy as np
import torch
from PIL import Image

from iqa_vlm.data import encode_batch


AUGMENTS = ("none", "flip", "flip_rot", "flip_rot_shift")


def augment_image(img, mode, rng):
    """--augment: flip = a left-right flip half the time; flip_rot = one of the 8 flips/rotations (PIL transpose codes:
    0 left-right, 2/3/4 rotate 90/180/270, 5/6 transpose/transverse, 7 = unchanged); flip_rot_shift = that, then
    shift_image. rng: a random.Random."""
    if mode == "flip":
        return img.transpose(0) if rng.random() < 0.5 else img
    if mode not in ("flip_rot", "flip_rot_shift"):
        raise ValueError(f"augment mode {mode!r}: expected one of {', '.join(AUGMENTS[1:])}")
    code = rng.randrange(8)
    img = img if code == 7 else img.transpose(code)
    return shift_image(img, rng) if mode == "flip_rot_shift" else img


def shift_image(img, rng):
    """The image moved by up to 1/8 of its shorter side each way (offsets uniform, whole pixels), the uncovered
    border filled by mirroring (no seam: a seam would be a sharp edge in a blurred image). Why: the demo's crops are
    cut once by prepare_data.py, so without it every epoch shows each crop on the same patch grid (patch 4 on 32 px:
    16 alignments), and the tiny encoder learns the crops' content; with it the held-out accuracy varies less from
    seed to seed (docs/demo_history.md). Our choice, not a paper's; a translation changes no distortion class."""
    x = np.asarray(img)
    m = max(1, min(x.shape[:2]) // 8)
    padded = np.pad(x, ((m, m), (m, m)) + ((0, 0),) * (x.ndim - 2), mode="reflect")
    dy, dx = rng.randint(0, 2 * m), rng.randint(0, 2 * m)
    return Image.fromarray(padded[dy:dy + x.shape[0], dx:dx + x.shape[1]])


class EpochBatches(torch.utils.data.Dataset):
    """One epoch's training batches, in order, from batch `start` on: batch b holds records order[b*B:(b+1)*B], encoded
    (image loading, augmentation, processor) wherever the DataLoader runs it, a worker process or the main one. Each
    image's augmentation is drawn from its own seeded generator (key, b, position), so the batches are the same
    whatever the number of workers, and a resumed run starting at batch b gets exactly the batches it would have."""

    def __init__(self, processor, records, order, batch_size, n_batches, start=0, augment="none", key="", partners=None,
                 score_targets=False):
        self.processor, self.records, self.order, self.batch_size = processor, records, order, batch_size
        self.n_batches, self.start, self.augment, self.key = n_batches, start, augment, key
        self.partners, self.score_targets = partners, score_targets

    def __len__(self):
        return max(0, self.n_batches - self.start)

    def __getitem__(self, k):
        b = self.start + k
        idx = self.order[b * self.batch_size:(b + 1) * self.batch_size]
        if self.partners is not None:  # image pairs: the anchors, then each one's partner
            idx = idx + pair_partners(self.records, idx, self.partners, random.Random(f"{self.key}:{b}:pairs"))
        recs = [self.records[i] for i in idx]
        rngs = [random.Random(f"{self.key}:{b}:{j}") for j in range(len(recs))]
        transform = None
        if self.augment != "none":
            rng_iter = iter(rngs)
            transform = lambda img: augment_image(img, self.augment, next(rng_iter))
        batch = encode_batch(self.processor, recs, transform=transform)
        if self.score_targets:
            batch.update(score_targets(recs))
        return batch, len(recs)


def pair_pools(records):
    """{source: [record index]}: DeQA-Score draws each image's partner from its own dataset."""
    pools = {}
    for i, r in enumerate(records):
        pools.setdefault(r["source"], []).append(i)
    small = [s for s, p in pools.items() if len(p) < 2]
    if small:
        raise ValueError(f"image pairs need two records of a source at least; {', '.join(small)} has one")
    return pools


def pair_partners(records, anchors, pools, rng):
    """One partner per anchor: a uniformly drawn other record of the anchor's source (DeQA-Score's pair dataset)."""
    out = []
    for i in anchors:
        pool = pools[records[i]["source"]]
        j = i
        while j == i:
            j = pool[rng.randrange(len(pool))]
        out.append(j)
    return out


def score_targets(recs):
    """The scoring targets DeQA-Score's losses read, as tensors: level_probs [B, 5] (NaN rows: none), the MOS and its
    spread on the 1-5 level scale [B] (mu = 4 mos_norm + 1; sigma = std_norm, 0 without one; NaN: no MOS)."""
    nan = float("nan")
    probs = [r.get("level_probs") or [nan] * 5 for r in recs]
    mos = [4 * r["mos_norm"] + 1 if r.get("mos_norm") is not None else nan for r in recs]
    std = [r.get("std_norm") or 0.0 for r in recs]
    return {"score_level_probs": torch.tensor(probs, dtype=torch.float32), "score_mos": torch.tensor(mos),
            "score_std": torch.tensor(std)}


def _worker_init(_):
    torch.set_num_threads(1)  # a worker prepares batches; the main process's threads do the math


def batch_loader(dataset, num_workers, pin_memory=False):
    """The DataLoader over EpochBatches: workers prefetch whole batches while the main process trains."""
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                                       pin_memory=pin_memory, prefetch_factor=4 if num_workers else None,
                                       worker_init_fn=_worker_init if num_workers else None)
