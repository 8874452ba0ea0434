"""Distortion perception: can a VLM name the low-level distortion in an image, and which of its parts learns it?

Li, Sun, Chen, Nishida, "Investigate the low-level visual perception in vision-language based image quality
assessment": LIVE, CSIQ, KADID-10k and TID2013 unified into 8 classes; the prompt and answer below, verbatim; one
fine-tuning run per trained part (Table 1, ablation.py); the semantic shift of the visual tokens toward the label
token (Table 2, Fig. 6).

    python prepare_data.py --task distortion --kadid /data/kadid10k --out data/distortion   # distortion_records
    python evaluate.py distortion --ckpt out/run                                         # evaluate()
    python analyze.py semantic-shift --ckpt out/ablation/encoder --ckpt out/ablation/projector   # semantic_shift()
    python analyze.py feature-baseline --data data/distortion     # feature_baseline(): the split without a VLM
"""
import os
import random
import re
import time
from collections import Counter

import numpy as np
import torch
from tqdm import tqdm

from iqa_vlm import iqa_datasets as D
from iqa_vlm import iqa_io
from iqa_vlm.common import atomic_write_json, atomic_write_jsonl, atomic_write_png, pyplot, read_json, release_folder_lock
from iqa_vlm.data import LABELS, claim_output, record_written, closed_set_meta, closed_set_token_ids, encode_prompts, load_image, load_records, read_closed_set
from iqa_vlm.level_ce import level_cross_entropy
from iqa_vlm.model import (eval_device, eval_out, image_inputs, last_token_logits, lm_readout, load_checkpoint,
                           load_evaluated, load_model, read_run_config, to_device, visual_tokens)

# ----------------------------------------------------------------------------- prompts (the paper's, verbatim)
DISTORTION_QUESTION = "Looking at the image above, what is the synthetic distortion in the image?"
DISTORTION_PREFIX = "The image has some"  # the answer is "The image has some {label}."
# untuned models get the options list appended (the paper's baseline protocol)
OPTIONS_SUFFIX = ("Select from the following options: 1. Blur; 2. Noise; 3. Brightness; 4. Compression; "
                  "5. Contrast; 6. Colorfulness; 7. Jitter; 8. Clean")


# ----------------------------------------------------------------------------- records
def distortion_record(rid, image, label, source, ref, **extra):
    return {"id": rid, "image": image,
            "conversations": [{"from": "human", "value": "<image>\n" + DISTORTION_QUESTION},
                              {"from": "gpt", "value": f"{DISTORTION_PREFIX} {label}."}],
            "task": "distortion", "label": label, "source": source, "ref": ref, **extra}


def split_meta(train, test, **extra):
    counts = {}
    for name, recs in (("train", train), ("test", test)):
        counts[name] = {"n": len(recs), "by_label": dict(sorted(Counter(r["label"] for r in recs).items())),
                        "by_source": dict(sorted(Counter(r["source"] for r in recs).items())),
                        "by_source_label": {f"{s}/{l}": n for (s, l), n in sorted(Counter((r["source"], r["label"]) for r in recs).items())}}
    return {"labels": LABELS, **closed_set_meta(LABELS, DISTORTION_PREFIX), "counts": counts, **extra}


def coverage(items, info):
    """Per distortion type of one dataset's items: {type: {"name", "n", "class", "why"}}: what the distortion task
    keeps (class) and what it leaves out, with EXCLUDED_WHY's reason (references are not counted)."""
    names = info.get("dist_names") or {}
    why = D.EXCLUDED_WHY.get(info.get("source"), {})
    out = {}
    for it in items:
        if it["is_ref"] or it["dist"] is None:
            continue
        c = out.setdefault(str(it["dist"]), {"name": names.get(it["dist"], str(it["dist"])), "n": 0,
                                             "class": it["label"]})
        c["n"] += 1
        if it["label"] is None:
            c["why"] = why.get(it["dist"], "no category fits")
    return dict(sorted(out.items(), key=lambda kv: (len(kv[0]), kv[0])))


def make_distortion(datasets, out, split="random", seed=0, test_frac=0.2, check_images=True):
    """Distortion records from the official (or pyiqa) releases of `datasets` {source: folder} -> OUT. split "random"
    (the default): one seeded 8:2 draw over the mix of all sets, as the distortion paper splits them; "ref": 8:2 within
    each set by reference content, no content on both sides (our option)."""
    claim_output(out)  # before hours of reading, not after
    train, test, infos, kept, ref_image = [], [], {}, [], {}
    for source, root in datasets.items():
        t0 = time.time()
        items, info = D.READERS[source](root, check_images=check_images)
        D.norm_scores(items, info)  # mos_norm in [0, 1] (higher = better) and the 5-level label
        kept_here = [it for it in items if it["label"] is not None]
        kept += kept_here
        ref_image.update(D.reference_images(items))
        info["n_kept"], info["n_excluded_types"] = len(kept_here), len(items) - len(kept_here)
        info["coverage"] = coverage(items, info)
        infos[source] = info
        print(f"{source}: {len(items)} images read ({info.get('layout')} layout), {len(kept_here)} kept, "
              f"{len(items) - len(kept_here)} of excluded types, {time.time() - t0:.1f}s" + iqa_io.skipped_note(info))
        for t, c in info["coverage"].items():
            print(f"  {t:>11s} {c['name'][:34]:34s} {c['n']:6d}  " + (f"-> {c['class']}" if c["class"] else
                                                                     f"left out: {c['why']}"))
    tr, te = D.split_items(kept, test_frac=test_frac, by=split, seed=seed, per_source=split != "random")
    for dst, part in ((train, tr), (test, te)):
        for it in part:
            extra = {k: it[k] for k in ("mos", "mos_norm", "std", "level", "dist") if it.get(k) is not None}
            if not it["is_ref"] and (it["source"], it["ref"]) in ref_image:
                extra["ref_image"] = ref_image[(it["source"], it["ref"])]
            dst.append(distortion_record(it["id"], it["image"], it["label"], it["source"], it["ref"], **extra))
    meta = split_meta(train, test, seed=seed, split_policy=f"by reference content within each set, {1 - test_frac:.0%}/"
                      f"{test_frac:.0%}" if split == "ref" else f"random over the mix of all sets, {1 - test_frac:.0%}/"
                      f"{test_frac:.0%}", datasets=infos,
                      score_direction={s: i.get("direction") for s, i in infos.items()},
                      score_range={s: i.get("score_range") for s, i in infos.items()})
    out = claim_output(out)
    # meta last: a folder with meta.json is complete
    if os.path.exists(os.path.join(out, "meta.json")):
        os.unlink(os.path.join(out, "meta.json"))
    names = ["train.jsonl", "test.jsonl", "meta.json"]
    record_written(out, names)
    atomic_write_jsonl(os.path.join(out, "train.jsonl"), train)
    atomic_write_jsonl(os.path.join(out, "test.jsonl"), test)
    atomic_write_json(os.path.join(out, "meta.json"), meta)
    record_written(out, names, replace=True)
    release_folder_lock(out)
    print(f"wrote {len(train)} train / {len(test)} test records -> {out}")
    return meta


# ----------------------------------------------------------------------------- evaluation
# words a free-form answer may use for each class (first match in the answer wins)
SYNONYMS = {"blur": ["blur", "blurry", "blurred", "blurriness", "out of focus"],
            "noise": ["noise", "noisy", "grain", "grainy"],
            "brightness": ["brightness", "bright", "dark", "overexposed", "underexposed", "exposure"],
            "compression": ["compression", "compressed", "jpeg", "blocky", "blocking"],
            "contrast": ["contrast"],
            "colorfulness": ["colorfulness", "colourfulness", "saturation", "saturated", "color", "colour"],
            "jitter": ["jitter", "jittered", "jittery"],
            "clean": ["clean", "no distortion", "none", "pristine"]}


def parse_label(text):
    """First class word in a free answer, or None. 'Has some blur' -> 'blur'."""
    text = text.lower()
    best = None
    for label, words in SYNONYMS.items():
        for w in words:
            m = re.search(r"\b" + re.escape(w) + r"\b", text)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), label)
    return best[1] if best else None


def confusion_png(path, confusion, labels, title):
    plt = pyplot()
    cm = np.array(confusion, dtype=float)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8, color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    atomic_write_png(path, fig)


@torch.no_grad()
def eval_distortion(model, processor, records, batch_size=32, options=False, generate=True, max_new_tokens=12, device="cpu",
                    tta=False, answer_prefix=DISTORTION_PREFIX):
    """Closed-set argmax over the class tokens after the teacher-forced answer_prefix (through the op), and
    free generation parsed for the class word. -> accuracy, per-class accuracy, confusion matrices, examples.
    tta: the closed-set probabilities averaged over the 8 flips/rotations of each image (our option, for the demo's
    crops, whose classes do not depend on orientation; the papers evaluate each image once)."""
    views = [None] + [lambda img, c=c: img.transpose(c) for c in range(7)] if tta else [None]
    label_ids = closed_set_token_ids(processor, LABELS, answer_prefix)
    level_ids = torch.tensor(label_ids, device=device)
    suffix = OPTIONS_SUFFIX if options else None
    n = len(records)
    confusion = [[0] * len(LABELS) for _ in LABELS]
    gen_correct, unparsed, examples, gen_confusion = 0, 0, [], [[0] * (len(LABELS) + 1) for _ in LABELS]
    nll_sum = 0.0
    for start in tqdm(range(0, n, batch_size), desc="eval", unit="batch"):
        recs = records[start:start + batch_size]
        truth = [LABELS.index(r["label"]) for r in recs]
        target = level_ids[torch.tensor(truth, device=device)]
        probs = 0
        for k, view in enumerate(views):
            enc, last = encode_prompts(processor, recs, answer_prefix=answer_prefix, suffix=suffix, transform=view)
            logits = last_token_logits(model, to_device(enc, model, device), last)
            loss, view_probs = level_cross_entropy(logits.float(), target, level_ids)
            probs = probs + view_probs / len(views)
            if k == 0:  # the NLL of the image as it is
                nll_sum += float(loss.sum())
        for t, p in zip(truth, probs.argmax(1).tolist()):
            confusion[t][p] += 1
        if generate:
            enc, _ = encode_prompts(processor, recs, suffix=suffix, padding_side="left")
            enc = to_device(enc, model, device)
            new = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)[:, enc["input_ids"].shape[1]:]
            for t, r, text in zip(truth, recs, processor.tokenizer.batch_decode(new, skip_special_tokens=True)):
                pred = parse_label(text)
                gen_correct += pred == LABELS[t]
                unparsed += pred is None
                gen_confusion[t][LABELS.index(pred) if pred else len(LABELS)] += 1
                if len(examples) < 10:
                    examples.append({"id": r.get("id"), "label": LABELS[t], "answer": text.strip(), "parsed": pred})
    correct = sum(confusion[i][i] for i in range(len(LABELS)))
    per_class = {l: (confusion[i][i] / sum(confusion[i]) if sum(confusion[i]) else None) for i, l in enumerate(LABELS)}
    result = {"task": "distortion", "n": n, "labels": LABELS, "accuracy": correct / max(n, 1), "per_class": per_class,
              "confusion": confusion, "confusion_axes": "rows = true label, columns = predicted (closed-set argmax)",
              "closed_set_nll": nll_sum / max(n, 1), "label_token_ids": label_ids, "options_appended": options}
    if generate:
        result.update({"generation_accuracy": gen_correct / max(n, 1), "generation_unparsed": unparsed,
                       "generation_confusion": gen_confusion, "generation_examples": examples})
    return result


def evaluate(ckpt=None, model=None, data=None, split="test", out=None, batch_size=32, limit=0, generate=True,
             options="auto", allow_unfinished=False, tta=False):
    """evaluate.py distortion: a fine-tuned run (`ckpt`) or an untuned model (`model`) on the distortion records of
    `data` (default: the run's training data, else data/demo). options: append the options list (auto: only for
    untuned models, the paper's baseline protocol). Writes OUT/eval_distortion.json and OUT/confusion.png, OUT being
    `out`, else the checkpoint folder's eval/, else out/untuned_MODEL."""
    if options not in ("auto", "yes", "no"):
        raise SystemExit(f"--options must be auto, yes or no, got {options!r}")
    device, dtype = eval_device()
    vlm, processor, cfg, name = load_evaluated(ckpt, model, device, dtype, allow_unfinished)
    data = data or cfg.get("data") or "data/demo"
    out = eval_out(out, ckpt, model)
    records = [r for r in load_records(data, split) if r.get("task", "distortion") == "distortion"]
    records = records[:limit] if limit else records
    if not records:
        raise SystemExit(f"no distortion records in {data} ({split})")
    appended = options == "yes" or (options == "auto" and not ckpt)
    _, prefix = read_closed_set(data, expect=LABELS)
    result = eval_distortion(vlm, processor, records, batch_size, appended, generate, device=device, tta=tta,
                             answer_prefix=prefix)
    result["tta"] = tta
    result.update({"model": name, "data": data, "split": split, "unfinished_checkpoint": cfg.get("finished") is False})
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, "eval_distortion.json"), result)
    confusion_png(os.path.join(out, "confusion.png"), result["confusion"], LABELS,
                  f"{name}: accuracy {100 * result['accuracy']:.1f}% (n={result['n']})")
    print("per class: " + ", ".join(f"{l} {100 * a:.0f}%" for l, a in result["per_class"].items() if a is not None))
    if generate:
        print(f"free generation: accuracy {100 * result['generation_accuracy']:.1f}%, "
              f"unparsed {result['generation_unparsed']}/{result['n']}")
    print(f"test accuracy (closed-set, {result['n']} samples): {100 * result['accuracy']:.1f}%  -> {out}/eval_distortion.json")
    return result


# ----------------------------------------------------------------------------- a reference without a VLM
def global_features(img):
    """45 numbers a distortion class changes, from a PIL image: luma histogram (16 bins) and percentiles, chroma
    magnitude histogram (12 bins) and spread (saturation), gradient and Laplacian statistics (blur, noise, jitter,
    blocks). Hand-made for this reference, not a paper's."""
    x = np.asarray(img, dtype=np.float32) / 255
    y = x @ np.array([0.299, 0.587, 0.114], np.float32)
    chroma = np.sqrt(((x - y[..., None]) ** 2).sum(-1))
    gy, gx = np.gradient(y)
    grad = np.hypot(gx, gy)
    lap = np.abs(4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:])
    return np.concatenate([np.histogram(y, 16, (0, 1))[0] / y.size, np.histogram(chroma, 12, (0, 0.6))[0] / y.size,
                           np.percentile(y, [1, 5, 25, 50, 75, 95, 99]),
                           [y.std(), chroma.mean(), chroma.std(), grad.mean(), grad.std(), np.percentile(grad, 90),
                            lap.mean(), lap.std()], (x - y[..., None]).std(axis=(0, 1))[[0, 2]]])


def feature_baseline(data="data/demo", split="test", out="out/feature_baseline", seed=0):
    """analyze.py feature-baseline: what the split's classes give away without a VLM, as a bar for a fine-tuned one:
    global_features of every image, a gradient-boosted tree ensemble (scikit-learn's histogram GBT, 300 rounds) fit on
    train, scored on `split`, overall, per class and per reference photo (held-out content is what a no-reference model
    has to generalise over). Writes OUT/feature_baseline.json and OUT/confusion.png."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    def features(name):
        records = [r for r in load_records(data, name) if r.get("task", "distortion") == "distortion"]
        if not records:
            raise SystemExit(f"no distortion records in {data} ({name})")
        unknown = sorted({r["label"] for r in records} - set(LABELS))
        if unknown:
            raise SystemExit(f"{data} ({name}): labels {unknown} are not among {LABELS}")
        feats = [global_features(load_image(r["image"])) for r in tqdm(records, desc=f"features {name}", unit="image")]
        return records, np.stack(feats), np.array([LABELS.index(r["label"]) for r in records])

    _, x_train, y_train = features("train")
    records, x_test, y_test = features(split)
    clf = HistGradientBoostingClassifier(max_iter=300, random_state=seed).fit(x_train, y_train)
    pred = clf.predict(x_test)
    confusion = [[int(((y_test == t) & (pred == p)).sum()) for p in range(len(LABELS))] for t in range(len(LABELS))]
    per_ref = {}
    for r, ok in zip(records, pred == y_test):
        per_ref.setdefault(r.get("ref", "?"), []).append(bool(ok))
    result = {"data": data, "split": split, "n": len(records), "n_train": len(y_train), "accuracy": float((pred == y_test).mean()),
              "per_class": {l: float((pred[y_test == i] == i).mean()) if (y_test == i).any() else None for i, l in enumerate(LABELS)},
              "per_ref": {k: sum(v) / len(v) for k, v in sorted(per_ref.items())}, "labels": LABELS, "confusion": confusion,
              "confusion_axes": "rows = true label, columns = predicted", "classifier": "HistGradientBoostingClassifier(max_iter=300)",
              "features": "distortion.global_features (45 global statistics)", "seed": seed}
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, "feature_baseline.json"), result)
    confusion_png(os.path.join(out, "confusion.png"), confusion, LABELS,
                  f"global features + GBT: accuracy {100 * result['accuracy']:.1f}% (n={result['n']})")
    print("per class: " + ", ".join(f"{l} {100 * a:.0f}%" for l, a in result["per_class"].items() if a is not None))
    print("per photo: " + ", ".join(f"{k} {100 * a:.0f}%" for k, a in result["per_ref"].items()))
    print(f"feature baseline accuracy ({split}, {result['n']} samples): {100 * result['accuracy']:.1f}%  -> {out}/feature_baseline.json")
    return result


# ----------------------------------------------------------------------------- semantic shift (Table 2 and Fig. 6)
# After fine-tuning only the encoder, only the projector or only the LM, how far have the visual tokens moved
# toward the meaning of the label word? Per test sample, V = the projected visual tokens entering the LM,
# L = the LM's input embedding of the sample's true label (its first token), "init" = the checkpoint's base model:
#   Similarity = (cos(V, L) - cos(V_init, L)) / |cos(V_init, L)|
#   Logits     = (p(V, L) - p_init(V_init, L)) / |p_init(V_init, L)|,   p(V, L) = lm_head(final_norm(V))[label]
# p is the raw logit, not a softmax probability. The paper's row is called "Logits", and the raw logit is the
# linear readout of the normed visual vector along the label's output direction, the LM-head counterpart of the
# cosine; a softmax probability would also move when any of the other vocabulary logits moves.
# L is the base model's embedding in both terms: one fixed target (only the `head` part trains the embeddings;
# the JSON says per checkpoint whether it moved).
SHIFT_LOGIT = ("raw logit: lm_head(final_norm(V)) read at the label token, before any softmax (the paper's row is "
               "'Logits'; the raw logit is the readout along the label's output direction, the LM-head counterpart "
               "of the cosine, while a softmax probability would also move with every other vocabulary logit)")
# The paper does not say how V is pooled over the visual tokens; two views:
SHIFT_POOLS = {"mean": "the mean of the visual tokens is one vector V, scored once (cosine and logit of the token-mean)",
               "max": "every visual token is scored and the maximum over tokens is kept, cosine and logit each at its "
                      "own best token (the token most like the label)"}


def pool_tokens(tokens, pool):
    """tokens (B, T, D) -> the vectors to score, (B, K, D): K = 1 for 'mean' (the token-mean), K = T for 'max'
    (every token; the scores are then reduced by a max over K, see token_scores)."""
    if pool == "mean":
        return tokens.mean(1, keepdim=True)
    if pool == "max":
        return tokens
    raise ValueError(f"pool must be one of {list(SHIFT_POOLS)}, got {pool!r}")


def cosine_to_label(vectors, label_emb):
    """Cosine between each vector (..., D) and the label embedding (D,) -> (...), in float32."""
    return torch.nn.functional.cosine_similarity(vectors.float(), label_emb.float().expand_as(vectors), dim=-1)


def label_logit(vectors, norm, head_row, head_bias=None):
    """The LM head's logit at the label token for each vector (..., D) -> (...): final norm (in the model's
    dtype, as the model applies it), then the dot product with the label's row of lm_head, in float32."""
    h = norm(vectors).float()
    return h @ head_row.float() + (0.0 if head_bias is None else head_bias.float())


def token_scores(tokens, pool, label_emb, norm, head_row, head_bias=None):
    """One image's visual tokens (T, D) -> (cosine, logit), two scalars, for the given pool."""
    vectors = pool_tokens(tokens[None], pool)[0]  # (K, D)
    return cosine_to_label(vectors, label_emb).amax(), label_logit(vectors, norm, head_row, head_bias).amax()


def relative_shift(after, before):
    """(after - before) / |before|, elementwise. 0 exactly when nothing moved; inf/nan where before == 0."""
    return (after - before) / before.abs()


@torch.no_grad()
def label_scores(model, processor, records, label_ids, label_embs, pools, batch_size=32, device="cpu"):
    """cos(V, L) and p(V, L) of every record under `model`: {pool: {"cos": (N,), "logit": (N,)}}.
    label_ids[i] is record i's label token, label_embs[i] (D,) the fixed L it is compared with."""
    norm, head = lm_readout(model)
    dtype = next(model.parameters()).dtype
    scores = {pool: {"cos": [], "logit": []} for pool in pools}
    for start in tqdm(range(0, len(records), batch_size), desc="semantic shift", unit="batch"):
        recs = records[start:start + batch_size]
        images = image_inputs(processor, [load_image(r["image"]) for r in recs])
        images = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in images.items()}
        for i, tokens in enumerate(visual_tokens(model, images), start):
            bias = None if head.bias is None else head.bias[label_ids[i]]
            for pool in pools:
                cos, logit = token_scores(tokens, pool, label_embs[i], norm, head.weight[label_ids[i]], bias)
                scores[pool]["cos"].append(cos)
                scores[pool]["logit"].append(logit)
    return {pool: {k: torch.stack(v).cpu() for k, v in s.items()} for pool, s in scores.items()}


def shift_summary(shift):
    """Mean and median over samples of a relative shift; samples with |before| == 0 (inf/nan) are left out and counted."""
    finite = shift[torch.isfinite(shift)].double()
    if finite.numel() == 0:
        return {"mean": None, "median": None, "n": 0, "n_nonfinite": int(shift.numel())}
    return {"mean": float(finite.mean()), "median": float(finite.median()), "n": int(finite.numel()),
            "n_nonfinite": int(shift.numel() - finite.numel())}


def shift_records(data_dirs, split, limit, seed=0):
    """Distortion records with a known label and an image; at most `limit` of them (a seeded random subset, in
    file order), 0 = all."""
    records = [r for r in load_records(data_dirs, split) if r.get("label") in LABELS and r.get("image")]
    if not records:
        raise SystemExit(f"semantic-shift: no records with an image and a label in {LABELS} in {data_dirs} ({split})")
    if limit and len(records) > limit:
        keep = sorted(random.Random(seed).sample(range(len(records)), limit))
        records = [records[i] for i in keep]
    return records


def shift_table_text(columns, table, summaries, pools, n, where):
    """The table as printed: per pool, rows Similarity and Logits (mean / median of the relative shift), then the
    means over samples of the raw cosine and logit, before -> after (a small |before| makes a relative shift large)."""
    def cell(s):
        return "-" if s["mean"] is None else f"{s['mean']:+.4f} / {s['median']:+.4f}"
    lines = [f"Semantic shift of the visual tokens toward the label token, relative to the base model; "
             f"mean / median over {n} samples ({where}); below them, the raw cos and logit averaged over samples"]
    for pool in pools:
        lines.append(f"\npool = {pool}: {SHIFT_POOLS[pool]}")
        lines.append(f"{'':20s}" + "".join(f"{c:>22s}" for c in columns))
        for row in ("Similarity", "Logits"):
            lines.append(f"{row:20s}" + "".join(f"{cell(table[pool][row][c]):>22s}" for c in columns))
        for what in ("cos", "logit"):  # the means over samples of the raw values
            lines.append(f"{what + ' before->after':20s}" + "".join(
                f"{summaries[c][pool][f'mean_{what}_before']:+.4f} -> {summaries[c][pool][f'mean_{what}_after']:+.4f}".rjust(22)
                for c in columns))
    return "\n".join(lines)


def semantic_shift_png(path, columns, runs, pools):
    """Joint distribution of (cosine, logit) before (base) and after fine-tuning: one panel per checkpoint (columns)
    and pool (rows); the means are joined by an arrow."""
    plt = pyplot()
    fig, axes = plt.subplots(len(pools), len(columns), figsize=(4.2 * len(columns), 3.8 * len(pools)), squeeze=False)
    for r, pool in enumerate(pools):
        for c, col in enumerate(columns):
            ax, before, after = axes[r][c], runs[col]["init"][pool], runs[col]["tuned"][pool]
            ax.scatter(before["cos"], before["logit"], s=5, alpha=0.35, color="0.5", lw=0, label="base (before)")
            ax.scatter(after["cos"], after["logit"], s=5, alpha=0.35, color="C3", lw=0, label="fine-tuned (after)")
            ax.annotate("", xy=(float(after["cos"].mean()), float(after["logit"].mean())),
                        xytext=(float(before["cos"].mean()), float(before["logit"].mean())),
                        arrowprops=dict(arrowstyle="->", color="k", lw=1.5))
            summary = runs[col]["summary"][pool]
            ax.set_title(f"{col} trained, pool={pool}\nmedian shift: Similarity {summary['Similarity']['median']:+.3f}, "
                         f"Logits {summary['Logits']['median']:+.3f}", fontsize=9)
            ax.set_xlabel("cos(V, L)")
            ax.set_ylabel("logit p(V, L)")
            if r == 0 and c == 0:
                ax.legend(fontsize=7, markerscale=3, loc="best")
    fig.tight_layout()
    atomic_write_png(path, fig)


def semantic_shift(ckpts, data=None, split="test", pool="both", limit=2000, batch_size=32, label_embedding="base",
                   out="out/semantic_shift"):
    """Where perception lives (Table 2 and Fig. 6): for each --ckpt (a train.py output), how far the
    projected visual tokens V moved toward the label token's input embedding L, relative to the checkpoint's base:
      Similarity = (cos(V, L) - cos(V_init, L)) / |cos(V_init, L)|
      Logits     = (p(V, L) - p_init(V_init, L)) / |p_init(V_init, L)|,  p = raw logit of lm_head(final_norm(V)) at L
    p is the raw logit, not a softmax probability: the paper's row is "Logits", and the raw logit is the readout of V
    along the label's output direction (the LM-head counterpart of the cosine), while a probability would also move
    with every other vocabulary logit. Computed per test sample (L: the sample's true distortion class, first
    token), mean and median over samples, one column per checkpoint named by its `trainable`. --pool mean scores
    the token-mean vector, max the best single token, both gives both. Writes OUT/semantic_shift.json (table and
    summaries), OUT/semantic_shift_samples.jsonl (per sample: cosine and logit before and after) and
    OUT/semantic_shift.png (joint distribution of cosine and logit before vs after, a panel per checkpoint), and
    prints the table.

    label_embedding: base (the default, Eq. 1 as printed: one L, the base model's embedding, in both terms) or own (the
    "after" terms read L from the fine-tuned model's own input embedding). As printed, a checkpoint that trains only
    the LM cannot move V, which is made before the LM, so its Similarity is 0 by construction; the paper's LM column
    (0.42 %) is not. It can come out nonzero only if the LM's fine-tuning also moved the label's embedding and L is
    read from the fine-tuned model (own, with the embeddings trained: --trainable llm,head), or from numerical noise
    of the paper's own runs; the paper does not say which, so both readings are offered and base stays the default."""
    if label_embedding not in ("base", "own"):
        raise SystemExit(f"--label_embedding must be base or own, got {label_embedding!r}")
    pools = list(SHIFT_POOLS) if pool == "both" else [pool]
    cfgs = [read_run_config(c, "semantic-shift") for c in ckpts]  # every folder checked before any model loads
    columns = []
    for ckpt, cfg in zip(ckpts, cfgs):
        name = cfg["trainable"]
        columns.append(name if name not in columns else f"{name} ({os.path.basename(os.path.normpath(ckpt))})")
    data_dirs = data or cfgs[0].get("data")
    if not data_dirs:
        raise SystemExit(f"semantic-shift: give --data DIR ({ckpts[0]}/config.json names no training data)")
    records = shift_records(data_dirs, split, limit)
    device, dtype = eval_device()
    base_cache, runs = {}, {}  # base model name -> its scores, label ids and L (computed once per base)
    for ckpt, cfg, col in zip(ckpts, cfgs, columns):
        if cfg["model"] not in base_cache:
            base, processor = load_model(cfg["model"], dtype=dtype, device=device)
            base.eval()
            ids = closed_set_token_ids(processor, LABELS, read_closed_set(data_dirs, expect=LABELS)[1])
            label_ids = [ids[LABELS.index(r["label"])] for r in records]
            label_embs = base.get_input_embeddings().weight[label_ids].detach()
            print(f"{cfg['model']} (base): scoring {len(records)} samples", flush=True)
            scores = label_scores(base, processor, records, label_ids, label_embs, pools, batch_size, device)
            base_cache[cfg["model"]] = (scores, label_ids, label_embs)
            del base
        init, label_ids, label_embs = base_cache[cfg["model"]]
        model, processor, _ = load_checkpoint(ckpt, dtype=dtype, device=device)
        model.eval()
        print(f"{ckpt} ({col}): scoring {len(records)} samples", flush=True)
        own_embs = model.get_input_embeddings().weight[label_ids].detach()
        tuned = label_scores(model, processor, records, label_ids, own_embs if label_embedding == "own" else label_embs,
                             pools, batch_size, device)
        embedding_moved = not torch.equal(own_embs, label_embs)
        del model
        summary = {pool: {"Similarity": shift_summary(relative_shift(tuned[pool]["cos"], init[pool]["cos"])),
                          "Logits": shift_summary(relative_shift(tuned[pool]["logit"], init[pool]["logit"])),
                          "mean_cos_before": float(init[pool]["cos"].mean()), "mean_cos_after": float(tuned[pool]["cos"].mean()),
                          "mean_logit_before": float(init[pool]["logit"].mean()),
                          "mean_logit_after": float(tuned[pool]["logit"].mean())} for pool in pools}
        runs[col] = {"ckpt": ckpt, "model": cfg["model"], "trainable": cfg["trainable"], "init": init, "tuned": tuned,
                     "summary": summary, "label_embedding_changed_by_tuning": embedding_moved}
    table = {pool: {row: {col: runs[col]["summary"][pool][row] for col in columns} for row in ("Similarity", "Logits")}
             for pool in pools}
    os.makedirs(out, exist_ok=True)
    result = {"what": "semantic shift of the visual tokens toward the label token's embedding, relative to the base "
                      "model (Table 2); rows Similarity/Logits, columns = the fine-tuned part (config trainable)",
              "similarity": "(cos(V, L) - cos(V_init, L)) / |cos(V_init, L)|",
              "logits": "(p(V, L) - p_init(V_init, L)) / |p_init(V_init, L)|",
              "V": "projected visual tokens entering the LM (the multimodal projector's output)",
              "L": "input embedding of the first token of the sample's true label word: "
                   + ("the base model's, in both terms" if label_embedding == "base" else
                      "the base model's before, the fine-tuned model's own after"), "label_embedding": label_embedding,
              "p": SHIFT_LOGIT, "pooling": {p: SHIFT_POOLS[p] for p in pools},
              "statistic": "mean and median over samples; samples with a zero 'before' value are left out (n_nonfinite)",
              "data": data_dirs, "split": split, "n": len(records), "columns": columns, "table": table,
              "checkpoints": {col: {k: runs[col][k] for k in ("ckpt", "model", "trainable", "summary",
                                                             "label_embedding_changed_by_tuning")} for col in columns}}
    atomic_write_json(os.path.join(out, "semantic_shift.json"), result)
    atomic_write_jsonl(os.path.join(out, "semantic_shift_samples.jsonl"), [
        {"id": r.get("id"), "label": r["label"], **{f"{col}/{pool}/{k}_{when}": round(float(runs[col][when][pool][k][i]), 6)
                                                    for col in columns for pool in pools for k in ("cos", "logit")
                                                    for when in ("init", "tuned")}}
        for i, r in enumerate(records)])
    semantic_shift_png(os.path.join(out, "semantic_shift.png"), columns, runs, pools)
    print(shift_table_text(columns, table, {c: runs[c]["summary"] for c in columns}, pools, len(records),
                           f"{data_dirs} {split}"))
    print(f"-> {out}/semantic_shift.json, semantic_shift_samples.jsonl, semantic_shift.png")
    return result




# ----------------------------------------------------------------------------- the paper's tables beside a run's
PAPER_TABLE1 = {"encoder": 83.43, "projector": 72.12, "llm": 74.24, "encoder+projector": 88.80, "encoder+partial llm": 91.45,
                "projector+llm": 74.15, "untuned": 14.92, "Q-Instruct": 9.05}   # accuracy (%), mPLUG-Owl2-7B
PAPER_TABLE2 = {"Similarity": {"projector": 87.06, "encoder": 181.0, "llm": 0.42},
                "Logits": {"projector": 14.51, "encoder": 10.96, "llm": 2.04}}  # relative shift (%)


def paper_tables(ablation=None, shift=None, pool="mean"):
    """analyze.py distortion-tables: Table 1 (accuracy per fine-tuned part) from ablation.py's ablation.json and Table 2
    (semantic shift, mean over samples, in %) from semantic-shift's semantic_shift.json, each beside the paper's."""
    if not ablation and not shift:
        raise SystemExit("distortion-tables: give --ablation OUT/ablation.json and/or --shift OUT/semantic_shift.json")
    lines = []
    if ablation:
        rows = read_json(ablation)
        # the paper's metric is the generated answer ("The image has some <degradation>."), parsed for the class word;
        # the closed-set argmax after the answer's prefix is this repo's second column
        lines += ["Table 1: accuracy (%): the generated answer (the paper's metric), the closed set (ours), the paper's",
                  f"{'configuration':40s} {'generated':>9s} {'closed set':>10s} {'paper':>7s}"]
        for name, r in rows.items():
            key = "Q-Instruct" if "q-instruct" in name.lower() else name.split(" (")[0]
            gen = 100 * r["generation_accuracy"] if "generation_accuracy" in r else float("nan")
            lines.append(f"{name[:40]:40s} {gen:9.2f} {100 * r['accuracy']:10.2f} {PAPER_TABLE1.get(key, float('nan')):7.2f}")
    if shift:
        result = read_json(shift)
        lines += ["", f"Table 2: semantic shift (%, mean over samples, pool {pool}); columns: the fine-tuned part"]
        columns = result["columns"]
        lines.append(f"{'':12s}" + "".join(f"{c[:16]:>17s}{'paper':>8s}" for c in columns))
        for row in ("Similarity", "Logits"):  # a mean of exactly 0 is a number (an LM-only Similarity), None is not
            mean = lambda c: result["table"][pool][row][c]["mean"]
            cells = "".join(f"{100 * (mean(c) if mean(c) is not None else float('nan')):17.2f}"
                            f"{PAPER_TABLE2[row].get(c, float('nan')):8.2f}" for c in columns)
            lines.append(f"{row:12s}{cells}")
    print("\n".join(lines))
    return "\n".join(lines)
