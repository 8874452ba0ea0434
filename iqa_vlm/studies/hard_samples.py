"""Difficult samples for evaluating when inference is costly: a greedy pick of the images a weak model (or the expert
metrics) gets most wrong, kept diverse.

Wu, Ma, Liang, Yang, Zhang, "A comprehensive study of multimodal large language models for image quality assessment"
(ECCV 2024; the prompting study of prompting.py). The rule as the paper prints it, with the choices of its authors'
code (TianheWu/MLLMs-for-IQA, sample_selection.py) as defaults:

    NR: x*_n = argmax_{x not in X*_{n-1}} (q_w(x) - q(x))^2 / (sigma(x)^2 + eps) + lambda * Div(x, X*_{n-1})
    FR: references first by the same rule (a reference's error the mean over its distorted images, Div on the
        references' features), then each picked reference's --per_ref hardest images (no Div).

q: the MOS (oriented higher = better) and sigma: its std, each min-max scaled to [0, 1] per source; q_w: the weak
model's predictions (--pred) or the mean of the expert metrics (--experts psnr,ssim,ms_ssim, FR), each mapped onto q by
the 4-parameter logistic fit; eps = 1, lambda = 1e-2; Div = 1 - cos(f(x), mean of f over the picked set), 1 while
none is picked; ties go to the later sample (the authors' >=). f: CLIP image features (--features clip:MODEL; the
authors' is ViT-B/32, fed 224 x 224 RGB on [0, 1] without CLIP's normalisation, as their code does), the evaluated
VLM's own visual tokens, mean-pooled (--features vlm:MODEL_OR_CKPT), or 8 x 8 grayscale thumbnails (--features
thumbnail, no model needed). --div nearest_rms: this repo's earlier Div (RMS distance to the nearest pick, 0 first).

--feature_norm: the paper defines Div on the features f themselves (none, the default). The authors' code normalises
each CLIP feature with F.normalize(feat, p=2, dim=0) on its [1, 512] tensor, along the batch axis of size 1: every
element is divided by its own absolute value, so the feature becomes its sign pattern (+1 / -1 per dimension) and
Div compares sign patterns. --feature_norm authors applies that, to reproduce their selection.

    python analyze.py hard-samples --data data/demo_score --pred out/score_tiny/predictions_score.jsonl --n 16
    python analyze.py hard-samples --data data/fr --experts psnr,ssim --fr true --features clip:openai/clip-vit-base-patch32
"""
import os

import numpy as np
from PIL import Image
from tqdm import tqdm

from iqa_vlm.common import atomic_write_json, atomic_write_png, pyplot, read_jsonl
from iqa_vlm.data import load_image, load_records
from iqa_vlm.metrics import fit_logistic, logistic4

DIVS = ("cosine", "nearest_rms")
FEATURE_NORMS = ("none", "authors")


def normalise_features(feats, how="none"):
    """none: as they are (the paper's Div); authors: what F.normalize(x, p=2, dim=0) does to each [1, D] feature in
    the authors' sample_selection.py, x / max(|x|, 1e-12) per element: the sign of each dimension (0 stays 0)."""
    if how not in FEATURE_NORMS:
        raise SystemExit(f"--feature_norm must be one of {FEATURE_NORMS}, got {how!r}")
    feats = np.asarray(feats, dtype=float)
    return feats if how == "none" else feats / np.maximum(np.abs(feats), 1e-12)


def difficulty(q_w, q, sigma, eps=1.0):
    """The error term (q_w - q)^2 / (sigma^2 + eps), elementwise."""
    q_w, q, sigma = (np.asarray(v, dtype=float) for v in (q_w, q, sigma))
    return (q_w - q) ** 2 / (sigma ** 2 + eps)


def diversity(features, picked, div="cosine"):
    """Div of every sample to the picked set: cosine, 1 - cos(f(x), mean f(picked)) (1 while none is picked);
    nearest_rms, the RMS distance to the nearest pick (0 while none is)."""
    if not picked:
        return np.ones(len(features)) if div == "cosine" else np.zeros(len(features))
    if div == "cosine":
        mean = features[picked].mean(0)
        norms = np.linalg.norm(features, axis=1) * np.linalg.norm(mean)
        return 1 - (features @ mean) / np.where(norms > 0, norms, 1.0)
    return np.min(np.linalg.norm(features[:, None, :] - features[None, picked, :], axis=2), axis=1) / np.sqrt(features.shape[1])


def greedy_select(error, features, n, lam, div="cosine"):
    """Greedy picks: each step takes the argmax of error + lam * Div over the not yet picked samples (ties: the later
    index, as the authors' >=). features [N, D]. -> [(index, error, Div at the pick)]."""
    error, features = np.asarray(error, dtype=float), np.asarray(features, dtype=float)
    features = features.reshape(len(error), -1)
    free, picks = np.ones(len(error), dtype=bool), []
    for _ in range(min(n, len(error))):
        d = diversity(features, [k for k, _, _ in picks], div)
        objective = np.where(free, error + lam * d, -np.inf)
        k = int(len(objective) - 1 - np.argmax(objective[::-1]))  # the last of equal maxima
        picks.append((k, float(error[k]), float(d[k])))
        free[k] = False
    return picks


def select_fr(error, group, ref_features, n_refs, per_ref, lam, div="cosine"):
    """Two levels: greedy_select over references (error = mean of their images' errors), then the per_ref highest
    errors inside each picked reference. group[i]: reference index of sample i; ref_features [R, D].
    -> (reference picks [(ref, mean error, div)], [sample indices], in pick order)."""
    error, group = np.asarray(error, dtype=float), np.asarray(group)
    ref_error = np.array([error[group == g].mean() for g in range(len(ref_features))])
    ref_picks = greedy_select(ref_error, ref_features, n_refs, lam, div)
    samples = []
    for g, _, _ in ref_picks:
        members = np.flatnonzero(group == g)
        samples += [int(i) for i in members[np.argsort(-error[members], kind="stable")][:per_ref]]
    return ref_picks, samples


def thumbnail(path, side=8):
    """The thumbnail feature: the image as side x side grayscale, values in [0, 1], flattened."""
    return np.asarray(load_image(path).convert("L").resize((side, side), Image.BOX), dtype=float).ravel() / 255


def feature_fn(spec):
    """paths -> [N, D] features, for --features thumbnail | clip:MODEL | vlm:MODEL_OR_CKPT."""
    import torch
    if spec == "thumbnail":
        return lambda paths: np.stack([thumbnail(p) for p in paths])
    kind, _, name = spec.partition(":")
    if kind == "clip" and name:
        from transformers import CLIPVisionModelWithProjection
        try:
            clip = CLIPVisionModelWithProjection.from_pretrained(name).eval()
        except OSError as e:
            raise SystemExit(f"--features clip:{name}: cannot load a CLIP vision model ({e}); give a local folder, "
                             f"vlm:MODEL_OR_CKPT, or thumbnail") from None
        side = clip.config.image_size

        @torch.no_grad()
        def clip_features(paths):
            out = []
            for p in paths:  # the authors' input: resized RGB on [0, 1], no mean/std normalisation
                x = np.asarray(load_image(p).resize((side, side), Image.BICUBIC), dtype=np.float32) / 255
                out.append(clip(pixel_values=torch.from_numpy(x).permute(2, 0, 1)[None]).image_embeds[0].numpy())
            return np.stack(out)
        return clip_features
    if kind == "vlm" and name:
        from iqa_vlm.model import image_inputs, load_evaluated, visual_tokens
        is_run = os.path.exists(os.path.join(name, "trainable.safetensors"))  # a train.py folder, else a model name
        vlm, processor = load_evaluated(name if is_run else None, None if is_run else name)[:2]

        @torch.no_grad()
        def vlm_features(paths):
            out = []
            for p in paths:
                inputs = image_inputs(processor, [load_image(p)])
                out.append(visual_tokens(vlm, inputs)[0].float().mean(0).numpy())
            return np.stack(out)
        return vlm_features
    raise SystemExit(f"--features {spec!r}: expected thumbnail, clip:MODEL or vlm:MODEL_OR_CKPT")


def logistic_onto(pred, q):
    """pred mapped onto q's scale by the 4-parameter logistic fit (the authors' treatment of the expert metrics)."""
    params = fit_logistic(pred, q)
    return np.asarray(logistic4(np.asarray(pred, dtype=float), *params)) if params is not None else np.asarray(pred, dtype=float)


def read_predictions(path):
    """A weak model's per-image predictions: JSONL rows with `id` and a numeric `score` (evaluate.py score's
    predictions_score.jsonl, evaluate.py prompting's scores_prompting_*.jsonl). Rows whose score is null (an
    unparsed answer) are counted, not used. -> ({id: score}, number of null scores)."""
    rows = read_jsonl(path)
    if not rows:
        raise SystemExit(f"{path}: no predictions")
    preds, null = {}, 0
    for i, row in enumerate(rows, 1):
        if "id" not in row or "score" not in row:
            raise SystemExit(f"{path}:{i}: a prediction row needs 'id' and 'score' (has {sorted(row)})")
        if row["score"] is None:
            null += 1
        elif not isinstance(row["score"], (int, float)):
            raise SystemExit(f"{path}:{i}: 'score' is {row['score']!r}, expected a number or null")
        else:
            preds[row["id"]] = float(row["score"])
    return preds, null


def select(pred=None, data="data/demo", split="test", n=16, lam=1e-2, eps=1.0, sigma=0.0, fr=False, n_refs=15, per_ref=10,
           experts=None, features="clip:openai/clip-vit-base-patch32", div="cosine", feature_norm="none",
           out="out/hard_samples"):
    """Difficult, diverse samples (the module docstring's rule). Reads the records (`data`, `split`: MOS, std, image,
    reference) and q_w from a weak model's predictions (`pred`, joined by id) or from expert FR metrics (`experts`).
    Writes OUT/hard_samples[_fr].json (the selected ids in pick order, each pick's error and Div, the settings) and
    OUT/hard_samples[_fr].png (error vs final Div of every candidate, the picks marked)."""
    if bool(pred) == bool(experts):
        raise SystemExit("hard-samples: give --pred FILE (a weak model's predictions) or --experts LIST (FR metrics), one of them")
    if div not in DIVS:
        raise SystemExit(f"--div must be one of {DIVS}, got {div!r}")
    normalise_features([], feature_norm)  # a bad value stops here, before any work
    records, seen = [], set()
    for r in load_records(data, split):
        if r.get("image") and r.get("mos") is not None and r["id"] not in seen:
            seen.add(r["id"])
            records.append(r)
    null = 0
    if pred:
        preds, null = read_predictions(pred)
        cand = [r for r in records if r["id"] in preds]
        if not cand:
            raise SystemExit(f"no record of {data} ({split}) has a prediction in {pred} (joined by id)")
        raw = {"pred": np.array([preds[r["id"]] for r in cand], dtype=float)}
    else:
        from iqa_vlm.expert_iqa import fr_scores
        cand = [r for r in records if r.get("ref_image")]
        if not cand:
            raise SystemExit(f"--experts needs FR records (with ref_image) in {data} ({split})")
        names = [e.strip() for e in experts.split(",") if e.strip()]
        scores = []
        for i, r in enumerate(tqdm(cand, desc="experts", unit="image"), 1):
            scores.append(fr_scores(r["image"], r["ref_image"], names))
        raw = {e: np.array([sc[e] for sc in scores], dtype=float) for e in names}
    q, q_w, sig = np.zeros(len(cand)), np.zeros(len(cand)), np.zeros(len(cand))
    minmax = lambda v: (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else np.zeros(len(v))
    no_std = 0
    for src in sorted({r.get("source") for r in cand}, key=str):
        ix = [i for i, r in enumerate(cand) if r.get("source") == src]
        q[ix] = minmax(np.array([cand[i]["mos_norm"] if cand[i].get("mos_norm") is not None else cand[i]["mos"] for i in ix]))
        q_w[ix] = np.mean([logistic_onto(np.nan_to_num(v[ix]), q[ix]) for v in raw.values()], axis=0)
        stds = np.array([cand[i]["std"] if cand[i].get("std") is not None else np.nan for i in ix], dtype=float)
        no_std += int(np.isnan(stds).sum())
        sig[ix] = np.where(np.isnan(stds), sigma, minmax(np.nan_to_num(stds, nan=np.nanmean(stds) if (~np.isnan(stds)).any() else 0)))
    error = difficulty(q_w, q, sig, eps)
    feats = normalise_features(feature_fn(features)([r["image"] for r in cand]), feature_norm)
    if fr:
        keys = [r["ref_image"] if r.get("ref_image") else (r.get("source"), r.get("ref")) for r in cand]
        refs = sorted(set(keys), key=str)
        group = np.array([refs.index(k) for k in keys])
        ref_paths = [k for k in refs if isinstance(k, str)]
        if len(ref_paths) == len(refs):
            ref_feats = normalise_features(feature_fn(features)(ref_paths), feature_norm)
        else:
            ref_feats = np.stack([feats[group == g].mean(0) for g in range(len(refs))])
        ref_picks, order = select_fr(error, group, ref_feats, n_refs, per_ref, lam, div)
        chosen_refs = [{"reference": refs[g] if isinstance(refs[g], str) else "/".join(map(str, refs[g])),
                        "mean_error": round(e, 6), "div": round(d, 6)} for g, e, d in ref_picks]
    else:
        picks = greedy_select(error, feats, n, lam, div)
        order = [k for k, _, _ in picks]
    div_final = diversity(np.asarray(feats, dtype=float), order, div)
    result = {"what": "difficult samples, greedy (q_w - q)^2 / (sigma^2 + eps) + lambda * Div", "mode": "FR" if fr else "NR",
              "data": data, "split": split, "pred": pred, "experts": experts, "lambda": lam, "eps": eps,
              "features": features, "div": div, "feature_norm": feature_norm,
              "normalisation": "q (MOS, higher = better) and sigma (std) min-max to [0, 1] per source; q_w logistic-fitted onto q",
              "n_records": len(records), "n_candidates": len(cand), "no_prediction": len(records) - len(cand),
              "null_predictions": null, "no_std": no_std, "selected": [cand[i]["id"] for i in order],
              "picks": [{"id": cand[i]["id"], "q": round(float(q[i]), 6), "q_w": round(float(q_w[i]), 6),
                         "sigma": round(float(sig[i]), 6), "error": round(float(error[i]), 6)} for i in order]}
    if fr:
        result.update(n_refs=n_refs, per_ref=per_ref, references=chosen_refs)
    else:
        for p, (_, _, d) in zip(result["picks"], picks):
            p["div_at_pick"] = round(d, 6)
    name = "hard_samples_fr" if fr else "hard_samples"
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, f"{name}.json"), result)
    picked = np.array(order)
    hard_samples_png(os.path.join(out, f"{name}.png"), error, div_final, picked, order, f"{name}: lambda {lam:g}, {div} Div")
    print(f"{len(order)} of {len(cand)} candidates selected ({len(records) - len(cand)} records without q_w, {null} null "
          f"predictions); mean error selected {error[picked].mean():.3f} vs all {error.mean():.3f} -> {out}/{name}.json, {name}.png")
    return result


def hard_samples_png(path, error, div, picked, order, title):
    """Error vs Div of every candidate, the picks marked and numbered in pick order (the first 30)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    ax.scatter(error, div, s=8, color="0.6", label=f"candidates ({len(error)})")
    ax.scatter(error[picked], div[picked], s=24, color="r", label=f"selected ({len(picked)})")
    for rank, i in enumerate(order[:30], 1):
        ax.annotate(str(rank), (error[i], div[i]), fontsize=7, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("error (q_w - q)^2 / (sigma^2 + eps)")
    ax.set_ylabel("Div to the selected set")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_png(path, fig)
