"""The embedded demo: photos that scikit-image, matplotlib and scikit-learn ship, cropped small and distorted with
KADID-10k's kinds of distortion, so every pipeline runs on a CPU with no download; and its views for the other studies
(scoring records, templated low-level descriptions for the interpreting and two-stage views).

    python prepare_data.py                                          # make_demo -> data/demo
    python prepare_data.py --task score --demo data/demo --out data/demo_score          # make_demo_view
    python prepare_data.py --task interpret --demo data/demo --out data/demo_interpret
"""
import functools
import io
import json
import math
import os
import random
import shutil
import tempfile
import time
import zlib
from collections import Counter

import numpy as np
from PIL import Image
from tqdm import tqdm

from iqa_vlm import iqa_datasets as D
from iqa_vlm.common import UMASK, atomic_write_json, release_folder_lock, swap_in, atomic_write_jsonl, read_jsonl
from iqa_vlm.data import LABELS, claim_output, closed_set_meta, record_written, write_splits
from iqa_vlm.studies.deqa import attach_soft_labels
from iqa_vlm.studies.distortion import distortion_record, split_meta
from iqa_vlm.studies.scoring import score_record
from iqa_vlm.studies.two_stage import CONCLUSION_PREFIX, DESCRIBE_QUESTION


# ----------------------------------------------------------------------------- the distortion set (data/demo)
# Photos that scikit-image ships (no download). Gray ones are used as RGB; they get no
# colorfulness sample (saturation changes do nothing to a gray image), which meta.json counts.
DEMO_PHOTOS = ["astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
               "stereo_motorcycle", "brick", "camera", "cell", "clock", "coins", "grass", "gravel", "moon", "page", "text"]
# The natural colour photos other installed packages ship: matplotlib's sample portrait and scikit-learn's two sample
# images (no download either). They only train: the held-out draw stays over DEMO_TEST_POOL, so the test photos are
# the earlier demos'. Global distortions (brightness, contrast, colorfulness) need a prior of what natural colour looks
# like, which the scientific and gray images do not give (docs/demo_history.md: what they added).
EXTRA_PHOTOS = {"grace_hopper": "matplotlib", "china": "scikit-learn", "flower": "scikit-learn"}
DEMO_PHOTOS += list(EXTRA_PHOTOS)
# Held-out photos are drawn from the natural scenes only, like the content of IQA datasets; the
# scientific images (deep sky, stained tissue, fundus, microscopy, lunar surface) and the scanned
# page/text only ever train, adding variety there.
DEMO_TEST_POOL = ["astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "brick", "camera", "clock", "coins",
                  "grass", "gravel"]


# Procedural training content: colour "dead leaves" images (occluding disks: a model of natural images' occlusion and
# scale statistics, and the chart camera-quality tests measure texture loss with). They only train, like EXTRA_PHOTOS;
# each photo's crops come from its own random stream, so the held-out crops stay the same. Their parameters are ours,
# no paper's: radius density ~ r^-3 (scale invariant, as natural images are) from 3 px to a quarter of the side, each
# disk's colour a random pixel of one of EXTRA_PHOTOS (natural colours), a 0.7 px blur for the optics
# (docs/demo_history.md: what 8 of them added).
DEAD_LEAVES = 8


def dead_leaves_names(n):
    return [f"dead_leaves_{i}" for i in range(n)]


@functools.lru_cache(maxsize=None)  # every dead-leaves image draws from it: decode the three photos once
def dead_leaves_palette():
    """The colours the disks take: every 97th pixel of EXTRA_PHOTOS (about 9,000 natural colours), read-only float32
    N x 3."""
    palette = np.concatenate([demo_photo(p)[0].reshape(-1, 3)[::97] for p in EXTRA_PHOTOS]).astype(np.float32)
    palette.flags.writeable = False
    return palette


@functools.lru_cache(maxsize=None)  # make_demo asks for each photo twice (colour check, then crops)
def dead_leaves(index, size=512, rmin=3.0, coverage=0.999, blur=0.7):
    """A read-only uint8 size x size x 3 dead-leaves image, the same for the same index: disks drawn front to back,
    each painting only pixels no nearer disk took, in batches of 4,096 until `coverage` of the image is painted (the
    few pixels left take the colour of the last disk whose box held a free pixel); then a gaussian blur of `blur` px."""
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(1000 + index)
    palette = dead_leaves_palette()
    img = np.zeros((size, size, 3), np.float32)
    free = np.ones((size, size), bool)
    n_free, rmax = size * size, size / 4
    a, b = rmin ** -2, rmax ** -2  # inverse CDF of p(r) ~ r^-3 on [rmin, rmax]: r = (a - u (a - b))^-1/2
    colour = palette[0]
    while n_free > (1 - coverage) * size * size:
        for r, cy, cx, k in zip((a - rng.random(4096) * (a - b)) ** -0.5, *rng.uniform(0, size, (2, 4096)),
                                rng.integers(0, len(palette), 4096)):
            y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 2)
            x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 2)
            if y0 >= y1 or x0 >= x1 or not free[y0:y1, x0:x1].any():  # late disks mostly lie behind: skip them early
                continue
            yy, xx = np.ogrid[y0:y1, x0:x1]
            paint = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & free[y0:y1, x0:x1]
            colour = palette[k]
            img[y0:y1, x0:x1][paint] = colour
            free[y0:y1, x0:x1][paint] = False
            n_free -= int(paint.sum())
    img[free] = colour
    out = (np.clip(gaussian_filter(img, sigma=(blur, blur, 0)) if blur else img, 0, 255) + 0.5).astype(np.uint8)
    out.flags.writeable = False  # cached: one array serves every caller
    return out


def demo_photo(name):
    """(uint8 HxWx3 photo, whether it was gray)."""
    if name.startswith("dead_leaves_"):
        return dead_leaves(int(name.rsplit("_", 1)[1])), False
    if name == "grace_hopper":
        import matplotlib.cbook
        path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        return np.asarray(Image.open(path).convert("RGB")), False
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image
        return np.asarray(load_sample_image(f"{name}.jpg"))[..., :3], False
    import skimage.data
    img = getattr(skimage.data, name)()
    img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle -> (left, right, disparity)
    img = np.asarray(img)
    is_gray = img.ndim == 2
    return (np.stack([img] * 3, -1) if is_gray else img[..., :3]).astype(np.uint8), is_gray


def gaussian_blur(x, sigma):
    from scipy.ndimage import gaussian_filter
    return gaussian_filter(x, sigma=(sigma, sigma, 0), mode="reflect")


def distort(x, label, severity, rng):
    """x float32 HxWx3 in [0,1] -> distorted copy. Severity 1..5; strengths chosen so that each is
    visible at 64x64 and kept when the crops became 32x32 (KADID-10k's types as the model: gaussian blur,
    white noise, brighten/darken, JPEG, contrast change, saturation change, pixel jitter)."""
    s = severity - 1
    if label == "clean":
        return x
    if label == "blur":
        return gaussian_blur(x, [0.9, 1.3, 1.8, 2.4, 3.2][s])
    if label == "noise":
        return x + rng.normal(0, [0.04, 0.06, 0.09, 0.13, 0.18][s], x.shape)
    if label == "brightness":
        gamma = [0.6, 0.5, 0.4, 0.3, 0.22][s] if rng.random() < 0.5 else [1.7, 2.1, 2.6, 3.2, 4.0][s]
        return np.clip(x, 0, 1) ** gamma
    if label == "compression":
        # JPEG's 8x8 block grid at a random offset: in a real image it has no relation to the model's
        # patch grid, and here (patch 4 on a 32x32 crop) an aligned grid would hide every block edge
        dy, dx = rng.integers(0, 8, 2)
        padded = np.pad(x, ((dy, 8 - dy), (dx, 8 - dx), (0, 0)), mode="reflect")
        buf = io.BytesIO()
        Image.fromarray(to_uint8(padded)).save(buf, "JPEG", quality=[18, 12, 9, 6, 3][s])
        h, w = x.shape[:2]
        return (np.asarray(Image.open(buf), dtype=np.float32) / 255)[dy:dy + h, dx:dx + w]
    if label == "contrast":
        c = [0.5, 0.4, 0.3, 0.22, 0.15][s]
        return x.mean() + (x - x.mean()) * c
    if label == "colorfulness":
        gray = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        f = [0.35, 0.25, 0.15, 0.05, 0.0][s] if rng.random() < 0.5 else [2.0, 2.5, 3.0, 3.6, 4.2][s]
        return gray + (x - gray) * f
    if label == "jitter":  # every pixel taken from a random neighbour within +-a pixels
        a = [1, 1, 2, 2, 3][s]
        h, w = x.shape[:2]
        yy = np.clip(np.arange(h)[:, None] + rng.integers(-a, a + 1, (h, w)), 0, h - 1)
        xx = np.clip(np.arange(w)[None, :] + rng.integers(-a, a + 1, (h, w)), 0, w - 1)
        return x[yy, xx]
    raise ValueError(label)


def to_uint8(x):
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def random_crop(photo, size, rng, min_std=0.06):
    """A random square crop resized to size x size. Nearly flat crops (black sky, empty page) are
    redrawn: blur, jitter or compression leave no trace on them, so their label would be noise."""
    h, w = photo.shape[:2]
    for _ in range(50):
        side = int(min(h, w) * rng.uniform(0.25, 0.6))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = np.asarray(Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.LANCZOS), dtype=np.float32) / 255
        if crop.std() >= min_std:
            break
    return crop


def synthetic_mos(label, severity, rng):
    """1..5, higher = better: clean near the top, then down ~0.75 per severity step, with rater noise."""
    base = rng.uniform(4.3, 5.0) if label == "clean" else 4.9 - 0.75 * severity + rng.normal(0, 0.25)
    return round(float(np.clip(base, 1.0, 5.0)), 3)


def make_demo(out, seed=0, size=32, crops_per_class=96, n_test_photos=4, dead_leaves=DEAD_LEAVES):
    if dead_leaves < 0:
        raise ValueError(f"dead_leaves: expected a count >= 0, got {dead_leaves}")
    t0 = time.time()
    rng = np.random.default_rng(seed)
    photos = list(DEMO_PHOTOS) + dead_leaves_names(dead_leaves)
    color = [p for p in photos if not demo_photo(p)[1]]
    # held-out photos: half colour (so colorfulness is tested), half gray, drawn by the seed
    pool = [p for p in DEMO_TEST_POOL if p in photos]
    test_photos = set(rng.choice([p for p in pool if p in color], n_test_photos // 2, replace=False)) | \
        set(rng.choice([p for p in pool if p not in color], n_test_photos - n_test_photos // 2, replace=False))
    out = claim_output(out)  # replaced below only when it holds nothing but what prepare_data.py wrote
    parent, base = os.path.split(out)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{base}.partial-")  # never a user's folder; removed if this fails
    os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes it 0700; the data is as readable as the user's umask allows
    try:
        record_written(tmp, [])  # marks it ours: an interrupted one goes at the next prepare
        meta, n_train, n_test = write_demo(tmp, seed, size, crops_per_class, dead_leaves, photos, color, test_photos)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_in(tmp, out)  # the folder appears complete or not at all (the old one held only prepare_data.py's files)
    release_folder_lock(out)
    print(f"demo: {n_train} train / {n_test} test images ({len(test_photos)} held-out photos: "
          f"{', '.join(sorted(test_photos))}) -> {out} in {time.time() - t0:.1f}s")
    return meta


def write_demo(tmp, seed, size, crops_per_class, dead_leaves, photos, color, test_photos):
    """The demo's images and records into `tmp` (make_demo swaps it in). -> (meta, n train, n test)"""
    os.makedirs(os.path.join(tmp, "images"))
    train, test, skipped = [], [], Counter()
    colour_boost = {held_out: sum((p in test_photos) == held_out for p in photos) /
                    sum((p in test_photos) == held_out for p in color) for held_out in (False, True)}
    for name in tqdm(photos, desc="demo photos", unit="photo"):
        photo, is_gray = demo_photo(name)
        # each photo draws from its own stream, so adding training content leaves every other photo's crops as they were
        photo_rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        split = test if name in test_photos else train
        n_crops = crops_per_class // 4 if split is test else crops_per_class
        for label in LABELS:
            if label == "colorfulness" and is_gray:
                skipped["colorfulness on a gray photo"] += n_crops
                continue
            # colour photos make up for the gray ones' missing colorfulness crops, keeping classes balanced
            n = round(n_crops * colour_boost[name in test_photos]) if label == "colorfulness" else n_crops
            for k in range(n):
                severity = 0 if label == "clean" else int(photo_rng.integers(1, 6))
                x = distort(random_crop(photo, size, photo_rng), label, severity, photo_rng)
                fname = f"{name}_{label}_{k:03d}.png"
                Image.fromarray(to_uint8(x)).save(os.path.join(tmp, "images", fname))
                mos = synthetic_mos(label, severity, photo_rng)
                split.append(distortion_record(f"demo/{fname}", f"images/{fname}", label, "demo", name,
                                               severity=severity, mos=mos, mos_norm=round((mos - 1) / 4, 4)))
    meta = split_meta(train, test, source="demo (photos scikit-image, matplotlib and scikit-learn ship"
                      f"{f', and {dead_leaves} dead-leaves images' if dead_leaves else ''})", seed=seed, dead_leaves=dead_leaves,
                      image_size=size,
                      split_policy="by source photo; held-out photos drawn from the natural scenes", test_photos=sorted(test_photos),
                      train_photos=sorted(set(photos) - test_photos), skipped=dict(skipped),
                      score_direction={"demo": "higher_better"}, score_range={"demo": [1.0, 5.0]})
    atomic_write_jsonl(os.path.join(tmp, "train.jsonl"), train)
    atomic_write_jsonl(os.path.join(tmp, "test.jsonl"), test)
    atomic_write_json(os.path.join(tmp, "meta.json"), meta)
    record_written(tmp, ["images", "train.jsonl", "test.jsonl", "meta.json"])
    return meta, len(train), len(test)


# ----------------------------------------------------------------------------- views: scoring, interpreting
INTERPRET_QUESTION = DESCRIBE_QUESTION  # the interpret view asks what the pathway views (two_stage.py) ask
DEMO_SEVERITY = ["", "slightly", "mildly", "moderately", "heavily", "severely"]
DEMO_DESCRIPTIONS = {  # only words of the tiny model's vocabulary (tiny_models.TINY_WORDS)
    "blur": "the image is {adv} blurry, and fine details are not clear",
    "noise": "the image is {adv} noisy, with visible grain",
    "brightness": "the image is {adv} darkened or brightened",
    "compression": "the image has {adv} visible compression artifacts and blocky edges",
    "contrast": "the image has {adv} low contrast, and the colors look washed out",
    "colorfulness": "the colors are {adv} saturated or dull",
    "jitter": "the image is {adv} jittered, with displaced pixels",
    "clean": "the image is sharp and clear, with no visible distortion"}


def demo_description(label, severity, level):
    text = DEMO_DESCRIPTIONS[label].format(adv=DEMO_SEVERITY[severity]).replace("  ", " ")
    return f"{text[0].upper()}{text[1:]}. {CONCLUSION_PREFIX} {level}."


def synthetic_rating_std(mos, rng, raters=24, noise=0.7):
    """The demo's stand-in for a dataset's per-image rating spread (DeQA-Score's soft labels need one): the sample std
    of `raters` integer 1-5 ratings drawn around the MOS with rater noise `noise` (ours, not a paper's; the clipping
    at 1 and 5 narrows the spread at the ends, as in real data)."""
    ratings = [min(5, max(1, round(mos + rng.gauss(0, noise)))) for _ in range(raters)]
    mean = sum(ratings) / raters
    return round(math.sqrt(sum((x - mean) ** 2 for x in ratings) / (raters - 1)), 4)


def make_demo_view(demo, out, task="score", seed=0, val_frac=0.05):
    """A scoring (task score) or interpreting (task describe: templated descriptions from label + severity)
    view of the demo set: same images (paths relative to OUT), same split by photo, val_frac of train held out."""
    splits, meta = demo_view_records(demo, out, task, seed, val_frac)
    return write_splits(out, splits, meta)


def demo_view_records(demo, out, task="score", seed=0, val_frac=0.05):
    """make_demo_view's records and meta, not written: ({split: records}, meta); image paths relative to `out`."""
    with open(os.path.join(demo, "meta.json")) as f:
        meta_in = json.load(f)
    info = {"source": "demo", "direction": "higher_better", "score_range": meta_in.get("score_range", {}).get("demo", [1.0, 5.0])}
    rng, splits = random.Random(f"{seed}:demo:{task}"), {"train": [], "val": [], "test": []}
    for split in ("train", "test"):
        recs = read_jsonl(os.path.join(demo, f"{split}.jsonl"))
        items = [{"source": "demo", "mos": r["mos"]} for r in recs]
        D.norm_scores(items, info)
        for r, it in zip(recs, items):
            image = os.path.relpath(os.path.join(demo, r["image"]), out) if not os.path.isabs(r["image"]) else r["image"]
            extra = dict(mos=r["mos"], mos_norm=round(it["mos_norm"], 4), label=r["label"], severity=r["severity"])
            if task == "score":
                extra["std"] = synthetic_rating_std(r["mos"], random.Random(f"{seed}:std:{r['id']}"))
                # the canonical question only: one wording is what the tiny random LM can learn in a demo's steps
                rec = score_record(r["id"], image, it["level"], "demo", r["ref"], None, image_first=True, **extra)
            else:
                rec = {"id": r["id"], "image": image,
                       "conversations": [{"from": "human", "value": "<image>\n" + INTERPRET_QUESTION},
                                         {"from": "gpt", "value": demo_description(r["label"], r["severity"], it["level"])}],
                       "task": "describe", "source": "demo", "ref": r["ref"], "level": it["level"], **extra}
            to = "val" if split == "train" and rng.random() < val_frac else split
            splits[to].append(rec)
    soft = attach_soft_labels(splits, {"demo": info}) if task == "score" else None
    meta = {"task": task, **closed_set_meta(), "view_of": os.path.abspath(demo), "seed": seed, "val_frac": val_frac,
            **({"soft_labels": soft, "std": "synthetic: the spread of 24 simulated 1-5 ratings around the MOS "
                "(demo_set.synthetic_rating_std)"} if soft else {}),
            "split_policy": "as the demo set (by photo); val: a seeded share of train",
            "score_direction": {"demo": "higher_better"}, "score_range": {"demo": info["score_range"]}}
    return splits, meta
