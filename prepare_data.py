"""Raw IQA datasets -> unified JSONL (DESIGN.md, "Data format"); with no arguments, the embedded demo set.

    python prepare_data.py                                   # demo set -> data/demo (no download, < 1 min)
    python prepare_data.py --out data/demo --seed 1          # another draw of the demo set
    python prepare_data.py --task distortion --kadid /data/kadid10k --tid2013 /data/tid2013 \\
        --live /data/databaserelease2 --csiq /data/CSIQ --out data/distortion   # any subset of the four
    python prepare_data.py --task distortion --kadid /data/kadid10k --split random --out data/kadid_random
    python prepare_data.py --task score --koniq /data/koniq10k --spaq /data/SPAQ --livec /data/ChallengeDB_release \\
        --agiqa /data/AGIQA-3K --kadid /data/kadid10k --out data/score      # also --live --csiq --tid2013 (MOS view)
    python prepare_data.py --task score --demo data/demo --out data/demo_score          # scoring view of the demo
    python prepare_data.py --task interpret --demo data/demo --out data/demo_interpret  # templated descriptions
    python prepare_data.py --task interpret --llava_json q-instruct.json --image_root /data/q-instruct-images --out data/qinstruct
    python prepare_data.py --task pathway --demo data/demo --out data/demo_pathway    # one_stage/, stage1/, stage2/
    python prepare_data.py --task pathway --llava_json q-pathway.json --image_root /data/q-pathway-images --out data/pathway
    python prepare_data.py --task general --llava_json llava_instruct_150k.json --image_root /data/coco/train2017 --out data/llava

Each dataset is read from its official release layout or from the layout IQA-PyTorch (pyiqa) ships
(meta_info_*.csv); see iqa_datasets.py. Writes OUT/train.jsonl, OUT/test.jsonl, OUT/meta.json, atomically.
"""
import argparse
import io
import os
import shutil
import sys
import time
from collections import Counter

import numpy as np
from PIL import Image

from common import atomic_write_json, atomic_write_jsonl
from data import DISTORTION_PREFIX, DISTORTION_QUESTION, LABELS
from pathway import CONCLUSION_PREFIX, DESCRIBE_QUESTION


def distortion_record(rid, image, label, source, ref, **extra):
    return {"id": rid, "image": image,
            "conversations": [{"from": "human", "value": "<image>\n" + DISTORTION_QUESTION},
                              {"from": "gpt", "value": f"{DISTORTION_PREFIX} {label}."}],
            "task": "distortion", "label": label, "source": source, "ref": ref, **extra}


def reference_images(items):
    """{(source, ref): path of the reference image} from a reader's reference items (LIVE, CSIQ, KADID-10k,
    TID2013); records of distorted images carry it as `ref_image` for full-reference prompting."""
    return {(it["source"], it["ref"]): it["image"] for it in items if it["is_ref"]}


def split_meta(train, test, **extra):
    counts = {}
    for name, recs in (("train", train), ("test", test)):
        counts[name] = {"n": len(recs), "by_label": dict(sorted(Counter(r["label"] for r in recs).items())),
                        "by_source": dict(sorted(Counter(r["source"] for r in recs).items())),
                        "by_source_label": {f"{s}/{l}": n for (s, l), n in sorted(Counter((r["source"], r["label"]) for r in recs).items())}}
    return {"labels": LABELS, "counts": counts, **extra}


# ----------------------------------------------------------------------------- the demo set
# Photos that scikit-image ships (no download). Gray ones are used as RGB; they get no
# colorfulness sample (saturation changes do nothing to a gray image), which meta.json counts.
DEMO_PHOTOS = ["astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
               "stereo_motorcycle", "brick", "camera", "cell", "clock", "coins", "grass", "gravel", "moon", "page", "text"]
# Held-out photos are drawn from the natural scenes only, like the content of IQA datasets; the
# scientific images (deep sky, stained tissue, fundus, microscopy, lunar surface) and the scanned
# page/text only ever train, adding variety there.
DEMO_TEST_POOL = ["astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "brick", "camera", "clock", "coins",
                  "grass", "gravel"]


def demo_photo(name):
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
    visible at 64x64 (KADID-10k's types as the model: gaussian blur, white noise, brighten/darken,
    JPEG, contrast change, saturation change, pixel jitter)."""
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
        # patch grid, and here (patch 8 on a 64x64 crop) an aligned grid would hide every block edge
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


def make_demo(out, seed=0, size=64, crops_per_class=96, n_test_photos=4):
    t0 = time.time()
    rng = np.random.default_rng(seed)
    photos = list(DEMO_PHOTOS)
    color = [p for p in photos if not demo_photo(p)[1]]
    # held-out photos: half colour (so colorfulness is tested), half gray, drawn by the seed
    pool = [p for p in DEMO_TEST_POOL if p in photos]
    test_photos = set(rng.choice([p for p in pool if p in color], n_test_photos // 2, replace=False)) | \
        set(rng.choice([p for p in pool if p not in color], n_test_photos - n_test_photos // 2, replace=False))
    tmp = out.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "images"))
    train, test, skipped = [], [], Counter()
    colour_boost = {held_out: sum((p in test_photos) == held_out for p in photos) /
                    sum((p in test_photos) == held_out for p in color) for held_out in (False, True)}
    for pi, name in enumerate(photos):
        photo, is_gray = demo_photo(name)
        split = test if name in test_photos else train
        n_crops = crops_per_class // 4 if split is test else crops_per_class
        for label in LABELS:
            if label == "colorfulness" and is_gray:
                skipped["colorfulness on a gray photo"] += n_crops
                continue
            # colour photos make up for the gray ones' missing colorfulness crops, keeping classes balanced
            n = round(n_crops * colour_boost[name in test_photos]) if label == "colorfulness" else n_crops
            for k in range(n):
                severity = 0 if label == "clean" else int(rng.integers(1, 6))
                x = distort(random_crop(photo, size, rng), label, severity, rng)
                fname = f"{name}_{label}_{k:03d}.png"
                Image.fromarray(to_uint8(x)).save(os.path.join(tmp, "images", fname))
                mos = synthetic_mos(label, severity, rng)
                split.append(distortion_record(f"demo/{fname}", f"images/{fname}", label, "demo", name,
                                               severity=severity, mos=mos, mos_norm=round((mos - 1) / 4, 4)))
        print(f"\rdemo: photo {pi + 1}/{len(photos)} ({name})      ", end="", file=sys.stderr)
    print(file=sys.stderr)
    meta = split_meta(train, test, source="demo (scikit-image photos)", seed=seed, image_size=size,
                      split_policy="by source photo; held-out photos drawn from the natural scenes", test_photos=sorted(test_photos),
                      train_photos=sorted(set(photos) - test_photos), skipped=dict(skipped),
                      score_direction={"demo": "higher_better"}, score_range={"demo": [1.0, 5.0]})
    atomic_write_jsonl(os.path.join(tmp, "train.jsonl"), train)
    atomic_write_jsonl(os.path.join(tmp, "test.jsonl"), test)
    atomic_write_json(os.path.join(tmp, "meta.json"), meta)
    # the folder appears complete or not at all
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"demo: {len(train)} train / {len(test)} test images ({len(test_photos)} held-out photos: "
          f"{', '.join(sorted(test_photos))}) -> {out} in {time.time() - t0:.1f}s")
    return meta


# ----------------------------------------------------------------------------- real datasets
def make_distortion(datasets, out, split="ref", seed=0, test_frac=0.2, check_images=True):
    import iqa_datasets as D
    train, test, infos = [], [], {}
    for source, root in datasets.items():
        t0 = time.time()
        items, info = D.READERS[source](root, check_images=check_images)
        D.norm_scores(items, info)  # mos_norm in [0, 1] (higher = better) and the 5-level label
        kept = [it for it in items if it["label"] is not None]
        ref_image = reference_images(items)
        tr, te = D.split_items(kept, test_frac=test_frac, by=split, seed=seed)
        for dst, part in ((train, tr), (test, te)):
            for it in part:
                extra = {k: it[k] for k in ("mos", "mos_norm", "std", "level", "dist") if it.get(k) is not None}
                if not it["is_ref"] and (it["source"], it["ref"]) in ref_image:
                    extra["ref_image"] = ref_image[(it["source"], it["ref"])]
                dst.append(distortion_record(it["id"], it["image"], it["label"], it["source"], it["ref"], **extra))
        info["n_kept"], info["n_excluded_types"] = len(kept), len(items) - len(kept)
        infos[source] = info
        print(f"{source}: {len(items)} images read ({info.get('layout')} layout), {len(kept)} kept, "
              f"{len(items) - len(kept)} of excluded types {info.get('excluded', {})}, {time.time() - t0:.1f}s")
    meta = split_meta(train, test, seed=seed, split_policy=f"by reference content, {1 - test_frac:.0%}/{test_frac:.0%}"
                      if split == "ref" else f"random, {1 - test_frac:.0%}/{test_frac:.0%}", datasets=infos,
                      score_direction={s: i.get("direction") for s, i in infos.items()},
                      score_range={s: i.get("score_range") for s, i in infos.items()})
    os.makedirs(out, exist_ok=True)
    # meta last: a folder with meta.json is complete
    if os.path.exists(os.path.join(out, "meta.json")):
        os.unlink(os.path.join(out, "meta.json"))
    atomic_write_jsonl(os.path.join(out, "train.jsonl"), train)
    atomic_write_jsonl(os.path.join(out, "test.jsonl"), test)
    atomic_write_json(os.path.join(out, "meta.json"), meta)
    print(f"wrote {len(train)} train / {len(test)} test records -> {out}")
    return meta


# ----------------------------------------------------------------------------- scoring and instruction data
SCORE_DATASETS = {"koniq10k": "koniq", "spaq": "spaq", "livec": "livec", "agiqa3k": "agiqa", "kadid10k": "kadid",
                  "live": "live", "csiq": "csiq", "tid2013": "tid2013"}  # source -> command-line flag


def write_splits(out, splits, meta):
    """OUT/{train,val,test}.jsonl then OUT/meta.json last (a folder with meta.json is complete)."""
    os.makedirs(out, exist_ok=True)
    if os.path.exists(os.path.join(out, "meta.json")):
        os.unlink(os.path.join(out, "meta.json"))
    for name, recs in splits.items():
        atomic_write_jsonl(os.path.join(out, f"{name}.jsonl"), recs)
    meta["counts"] = {name: {"n": len(recs), "by_source": dict(sorted(Counter(r["source"] for r in recs).items())),
                             "by_level": dict(Counter(r["level"] for r in recs if r.get("level")))}
                      for name, recs in splits.items()}
    atomic_write_json(os.path.join(out, "meta.json"), meta)
    print(f"wrote {', '.join(f'{len(r)} {n}' for n, r in splits.items())} records -> {out}")
    return meta


def make_score(datasets, out, split="ref", seed=0, test_frac=0.2, val_frac=0.05, check_images=True):
    """Scoring records (Q-Align form) from IQA datasets: MOS -> level by equal intervals between the dataset's
    min and max (iqa_datasets.norm_scores). KonIQ-10k keeps its official training/validation/test split when the
    metadata has it; the others are split test_frac by reference content (or randomly), then val_frac of all
    items is held out of train for validation. LIVE Challenge's t1..t7 stay in train. Reference images without a
    score are left out. Train questions are seeded paraphrases; val/test use the canonical question."""
    import random
    import iqa_datasets as D
    from scoring import score_record
    splits, infos = {"train": [], "val": [], "test": []}, {}
    for source, root in datasets.items():
        t0 = time.time()
        items, info = D.READERS[source](root, check_images=check_images)
        D.norm_scores(items, info)
        scored = [it for it in items if it["mos"] is not None]
        ref_image = reference_images(items)
        if any(it.get("split") for it in scored):
            official = {"training": "train", "validation": "val", "test": "test"}
            parts = {k: [it for it in scored if official.get(it.get("split"), "train") == k] for k in splits}
            info["split_policy"] = "official split (training/validation/test)"
        else:
            train, test = D.split_items(scored, test_frac=test_frac, by=split, seed=seed)
            train, val = D.split_items(train, test_frac=val_frac / (1 - test_frac), by=split, seed=seed + 1) \
                if val_frac > 0 else (train, [])
            parts = {"train": train, "val": val, "test": test}
            info["split_policy"] = f"{'by reference content' if split == 'ref' else 'random'}, test {test_frac:.0%}, val {val_frac:.0%}"
        rng = random.Random(f"{seed}:{source}")
        for name, part in parts.items():
            for it in part:
                extra = {k: it[k] for k in ("mos", "mos_norm", "std", "label", "dist", "level_idx", "is_train_only")
                         if it.get(k) is not None and it.get(k) is not False}
                if not it["is_ref"] and (source, it["ref"]) in ref_image:
                    extra["ref_image"] = ref_image[(source, it["ref"])]
                splits[name].append(score_record(it["id"], it["image"], it["level"], source, it["ref"],
                                                 rng if name == "train" else None, **extra))
        info.update(n_scored=len(scored), n_unscored_refs=len(items) - len(scored),
                    levels=dict(Counter(it["level"] for it in scored)), split_counts={k: len(v) for k, v in parts.items()})
        infos[source] = info
        print(f"{source}: {len(scored)} scored images ({info['layout']} layout, range {info['score_range']}, "
              f"{info['direction']}), split {info['split_counts']}, {time.time() - t0:.1f}s")
    meta = {"task": "score", "seed": seed, "datasets": infos,
            "score_direction": {s: i.get("direction") for s, i in infos.items()},
            "score_range": {s: i.get("score_range") for s, i in infos.items()}}
    return write_splits(out, splits, meta)


INTERPRET_QUESTION = DESCRIBE_QUESTION  # the interpret view asks what the pathway views (pathway.py) ask
DEMO_SEVERITY = ["", "slightly", "mildly", "moderately", "heavily", "severely"]
DEMO_DESCRIPTIONS = {  # only words of the tiny model's vocabulary (model.TINY_WORDS)
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


def make_demo_view(demo, out, task="score", seed=0, val_frac=0.05):
    """A scoring (task score) or interpreting (task describe: templated descriptions from label + severity)
    view of the demo set: same images (paths relative to OUT), same split by photo, val_frac of train held out."""
    splits, meta = demo_view_records(demo, out, task, seed, val_frac)
    return write_splits(out, splits, meta)


def demo_view_records(demo, out, task="score", seed=0, val_frac=0.05):
    """make_demo_view's records and meta, not written: ({split: records}, meta); image paths relative to `out`."""
    import json
    import random
    import iqa_datasets as D
    from common import read_jsonl
    from scoring import score_record
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
                # the canonical question only, chosen when six paraphrases cost the tiny random LM most of its SRCC
                # (0.04 vs 0.29); with the grown vocabulary they no longer do (0.304 vs 0.299, README)
                rec = score_record(r["id"], image, it["level"], "demo", r["ref"], None, **extra)
            else:
                rec = {"id": r["id"], "image": image,
                       "conversations": [{"from": "human", "value": "<image>\n" + INTERPRET_QUESTION},
                                         {"from": "gpt", "value": demo_description(r["label"], r["severity"], it["level"])}],
                       "task": "describe", "source": "demo", "ref": r["ref"], "level": it["level"], **extra}
            to = "val" if split == "train" and rng.random() < val_frac else split
            splits[to].append(rec)
    meta = {"task": task, "view_of": os.path.abspath(demo), "seed": seed, "val_frac": val_frac,
            "split_policy": "as the demo set (by photo); val: a seeded share of train",
            "score_direction": {"demo": "higher_better"}, "score_range": {"demo": info["score_range"]}}
    return splits, meta


# ----------------------------------------------------------------------------- pathway views (two-stage reasoning)
PATHWAY_KEEP = ("source", "ref", "level", "mos", "mos_norm", "std", "label", "severity")  # carried into every view


def make_pathway(splits, out, meta):
    """Pathway feedback (a description ending in a conclusion that names the quality) -> three views, each a prepared
    folder: OUT/one_stage (image -> whole feedback), OUT/stage1 (image -> description without its conclusion),
    OUT/stage2 (text only: description -> "The quality of the image is {level}."). splits: {split: records whose one
    answer turn is the feedback}. The split point is the concluding sentence naming the quality (pathway.split_feedback);
    records where none is found, or that are not one question and one answer, are counted and excluded, with examples,
    in OUT/meta.json (written last)."""
    import json
    from pathway import LEVEL_WORDING, VIEWS, one_stage_record, split_feedback, stage1_record, stage2_record
    views = {v: {name: [] for name in splits} for v in VIEWS}
    excluded, examples, position, levels = Counter(), {}, Counter(), Counter()

    def exclude(r, reason, text):
        excluded[reason] += 1
        if len(examples.setdefault(reason, [])) < 5:
            examples[reason].append({"id": r.get("id"), "text": text if len(text) <= 400 else "..." + text[-400:]})

    for name, recs in splits.items():
        for r in recs:
            answers = [t["value"] for t in r["conversations"] if t["from"] == "gpt"]
            questions = [t for t in r["conversations"] if t["from"] == "human"]
            if len(answers) != 1 or len(questions) != 1:
                exclude(r, "not one question and one answer", json.dumps(r["conversations"])[:400])
                continue
            if not r.get("image"):
                exclude(r, "no image", answers[0])
                continue
            parts = split_feedback(answers[0])
            if parts["level"] is None:
                exclude(r, parts["reason"], answers[0])
                continue
            if not parts["description"]:
                exclude(r, "nothing before the concluding sentence", answers[0])
                continue
            if r.get("level") and r["level"] != parts["level"]:  # the demo's level comes from its MOS
                exclude(r, "the conclusion's level differs from the record's level", answers[0])
                continue
            extra = {k: r[k] for k in PATHWAY_KEEP if r.get(k) is not None}
            extra.update(level=parts["level"], description=parts["description"])
            position[parts["position"]] += 1
            levels[parts["level"]] += 1
            question = questions[0]["value"].replace("<image>", "").strip()
            views["one_stage"][name].append(one_stage_record(r["id"], r["image"], answers[0], question=question, **extra))
            views["stage1"][name].append(stage1_record(r["id"], r["image"], parts["description"], **extra))
            views["stage2"][name].append(stage2_record(r["id"], parts["description"], **extra))
    n_in = sum(len(recs) for recs in splits.values())
    if os.path.exists(os.path.join(out, "meta.json")):
        os.unlink(os.path.join(out, "meta.json"))
    for v in VIEWS:
        write_splits(os.path.join(out, v), views[v], {**meta, "task": "pathway", "view": v})
    report = {"records_in": n_in, "kept": n_in - sum(excluded.values()), "excluded": dict(excluded),
              "excluded_examples": examples, "conclusion_position": dict(position), "levels": dict(levels),
              "level_wording": LEVEL_WORDING}
    meta = {**meta, "task": "pathway", "views": {v: os.path.join(out, v) for v in VIEWS}, "split": report,
            "counts": {v: {name: len(recs) for name, recs in views[v].items()} for v in VIEWS}}
    atomic_write_json(os.path.join(out, "meta.json"), meta)
    print(f"pathway: {report['kept']} of {n_in} records split into description + conclusion "
          f"(conclusion last {position['last']}, second to last {position['second to last']}); excluded "
          f"{dict(excluded) or 'none'} -> {out}/{{{','.join(VIEWS)}}}, {out}/meta.json")
    return meta


def read_instruction(path, image_root=None, task="describe", source=None):
    """Instruction data in LLaVA JSON form (a list of {id, image, conversations}; also JSONL) -> records in the
    project's JSONL form, every turn of multi-turn conversations kept. Image paths are resolved against
    image_root (default: the JSON's folder) and made absolute. Records whose image is missing are dropped and
    counted (an error if all images are missing: a wrong --image_root). Returns (records, report)."""
    import json
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        entries = json.loads(text)
    except json.JSONDecodeError:
        entries = []
        for no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{no}: neither a JSON list nor JSON lines ({e.msg})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of {{id, image, conversations}}, found {type(entries).__name__}")
    image_root = os.path.abspath(image_root or os.path.dirname(os.path.abspath(path)))
    source = source or os.path.splitext(os.path.basename(path))[0]
    roles = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system"}
    records, missing, skipped, turns, found = [], [], Counter(), Counter(), 0
    for i, e in enumerate(entries, 1):
        where = f"{path} entry {i}"
        conv = e.get("conversations") if isinstance(e, dict) else None
        if not isinstance(conv, list) or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in conv):
            raise ValueError(f"{where}: expected 'conversations', a list of {{from, value}} turns")
        bad = [t.get("from") for t in conv if t.get("from") not in roles]
        if bad:
            raise ValueError(f"{where}: unknown role(s) {bad}; expected human/gpt (or user/assistant, system)")
        conv = [{"from": roles[t["from"]], "value": t["value"]} for t in conv]
        if not any(t["from"] == "gpt" for t in conv):
            skipped["no answer turn"] += 1
            continue
        image = e.get("image")
        if isinstance(image, list):
            if len(image) != 1:
                skipped["several images"] += 1
                continue
            image = image[0]
        n_tags = sum(t["value"].count("<image>") for t in conv)
        if image:
            image = image if os.path.isabs(image) else os.path.join(image_root, image)
            if not os.path.isfile(image):
                missing.append(image)
                continue
            found += 1
            if n_tags > 1:
                skipped["several <image> tags"] += 1
                continue
            if n_tags == 0:  # LLaVA puts the tag in the first human turn; add it where it is absent
                k = next(j for j, t in enumerate(conv) if t["from"] == "human")
                conv[k] = {"from": "human", "value": "<image>\n" + conv[k]["value"]}
        elif n_tags:
            skipped["<image> tag without an image"] += 1
            continue
        turns[sum(t["from"] == "gpt" for t in conv)] += 1
        records.append({"id": f"{source}/{e.get('id', i)}", **({"image": image} if image else {}),
                        "conversations": conv, "task": task, "source": source})
    if missing and not found:
        raise ValueError(f"{path}: none of the {len(missing)} images was found below {image_root} "
                         f"(e.g. {missing[0]}); pass --image_root DIR")
    report = {"entries": len(entries), "kept": len(records), "missing_images": len(missing),
              "missing_examples": missing[:5], "skipped": dict(skipped), "image_root": image_root,
              "answer_turns": {str(k): v for k, v in sorted(turns.items())}}
    return records, report


def make_instruct(path, out, image_root=None, task="describe", seed=0, val_frac=0.05):
    """LLaVA-form instruction data -> OUT/train.jsonl, val.jsonl (val_frac, seeded), an empty test.jsonl."""
    import random
    records, report = read_instruction(path, image_root, task)
    rng, splits = random.Random(f"{seed}:{path}"), {"train": [], "val": [], "test": []}
    for r in records:
        splits["val" if rng.random() < val_frac else "train"].append(r)
    print(f"{path}: {report['kept']} of {report['entries']} conversations kept, {report['missing_images']} with a "
          f"missing image dropped{' (e.g. ' + report['missing_examples'][0] + ')' if report['missing_examples'] else ''}, "
          f"skipped {report['skipped'] or 'none'}; answer turns per conversation {report['answer_turns']}")
    return write_splits(out, splits, {"task": task, "source_file": os.path.abspath(path), "seed": seed, "report": report})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default=None, choices=["distortion", "score", "interpret", "general", "pathway"],
                    help="what to build: distortion/score from IQA datasets (or score/interpret/pathway from --demo), "
                         "interpret/general/pathway from --llava_json instruction data (pathway: Q-Pathway feedback -> "
                         "one_stage, stage1, stage2 views)")
    ap.add_argument("--out", default=None, help="output folder (default data/demo for the demo)")
    ap.add_argument("--seed", type=int, default=0)
    for name, what in (("live", "LIVE IQA (release 2)"), ("csiq", "CSIQ"), ("kadid", "KADID-10k"), ("tid2013", "TID2013"),
                       ("koniq", "KonIQ-10k (--task score)"), ("spaq", "SPAQ (--task score)"),
                       ("livec", "LIVE Challenge (--task score)"), ("agiqa", "AGIQA-3K (--task score)")):
        ap.add_argument(f"--{name}", default=None, help=f"{what} folder (official or pyiqa layout)")
    ap.add_argument("--demo", default=None, help="a demo folder: --task score|interpret writes a view of it to --out")
    ap.add_argument("--llava_json", default=None, help="--task interpret|general: instruction data in LLaVA JSON form")
    ap.add_argument("--image_root", default=None, help="folder the --llava_json image paths are relative to (default: its folder)")
    ap.add_argument("--val_frac", type=float, default=0.05, help="score/interpret/general: share held out as val.jsonl")
    ap.add_argument("--split", default="ref", choices=["ref", "random"], help="8:2 by reference content, or random")
    ap.add_argument("--test_frac", type=float, default=0.2)
    ap.add_argument("--no_image_check", action="store_true", help="skip opening every image (faster, less safe)")
    ap.add_argument("--image_size", type=int, default=64, help="demo only: side of the crops")
    ap.add_argument("--crops_per_class", type=int, default=96, help="demo only: crops per class per training photo")
    args = ap.parse_args(argv)
    if args.task == "pathway":
        return main_pathway(args, ap)
    if args.task in ("interpret", "general") and args.llava_json:
        if not args.out:
            ap.error("--out is required with --llava_json")
        return make_instruct(args.llava_json, args.out, args.image_root, {"interpret": "describe", "general": "vqa"}[args.task],
                             args.seed, args.val_frac)
    if args.demo:
        if args.task not in ("score", "interpret") or not args.out:
            ap.error("--demo DIR takes --task score or --task interpret, and --out")
        return make_demo_view(args.demo, args.out, args.task, args.seed, args.val_frac)
    if args.task == "score":
        datasets = {s: getattr(args, flag) for s, flag in SCORE_DATASETS.items() if getattr(args, flag)}
        if not datasets or not args.out:
            ap.error("--task score needs --out and at least one of " + " ".join(f"--{f}" for f in SCORE_DATASETS.values()))
        return make_score(datasets, args.out, args.split, args.seed, args.test_frac, args.val_frac, not args.no_image_check)
    if args.task in ("interpret", "general"):
        ap.error(f"--task {args.task} needs --llava_json FILE (or --demo DIR for interpret)")
    datasets = {k: v for k, v in (("live", args.live), ("csiq", args.csiq), ("kadid10k", args.kadid), ("tid2013", args.tid2013)) if v}
    if not datasets:
        if args.task:
            ap.error(f"--task {args.task} needs at least one of --live --csiq --kadid --tid2013")
        return make_demo(args.out or "data/demo", args.seed, args.image_size, args.crops_per_class)
    if not args.out:
        ap.error("--out is required with real datasets")
    return make_distortion(datasets, args.out, args.split, args.seed, args.test_frac, not args.no_image_check)


def main_pathway(args, ap):
    """--task pathway: from the demo set (templated descriptions, the interpret view's) or from LLaVA-form JSON."""
    import random
    if not args.out or bool(args.demo) == bool(args.llava_json):
        ap.error("--task pathway needs --out and one of --demo DIR or --llava_json FILE")
    if args.demo:  # the interpret view's records (image paths relative to a view folder: the three are siblings)
        splits, meta = demo_view_records(args.demo, os.path.join(args.out, "one_stage"), "interpret", args.seed, args.val_frac)
        return make_pathway(splits, args.out, {**meta, "source": "demo: templated descriptions of distortion and severity"})
    records, report = read_instruction(args.llava_json, args.image_root, task="reason")
    rng, splits = random.Random(f"{args.seed}:{args.llava_json}"), {"train": [], "val": [], "test": []}
    for r in records:
        splits["val" if rng.random() < args.val_frac else "train"].append(r)
    print(f"{args.llava_json}: {report['kept']} of {report['entries']} conversations read, {report['missing_images']} "
          f"with a missing image dropped, skipped {report['skipped'] or 'none'}")
    return make_pathway(splits, args.out, {"source_file": os.path.abspath(args.llava_json), "seed": args.seed,
                                           "val_frac": args.val_frac, "read": report})


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:  # DatasetError and friends: the message names file and line
        raise SystemExit(f"prepare_data.py: error: {e}")
