"""Difficult samples for evaluating when inference is costly: a greedy pick of the images a weak model gets most wrong,
kept diverse.

Wu, Ma, Liang, Yang, Zhang, "A comprehensive study of multimodal large language models for image quality
assessment" (ECCV 2024; the prompting study of prompting.py). Selection rule as the paper prints it; the Div feature
below (8x8 thumbnails) and lambda / eps are this repo's choices.

    python analyze.py hard-samples --data data/demo_score --pred out/score_tiny/predictions_score.jsonl --n 16
"""
import os

import numpy as np
from PIL import Image

from common import atomic_write_json, atomic_write_png, pyplot, read_jsonl
from data import load_image, load_records


# NR: x*_n = argmax_{x not in X*_{n-1}} (q_w(x) - q(x))^2 / (sigma(x)^2 + eps) + lambda * Div(x, X*_{n-1})
#   q: the MOS and q_w: a weak model's prediction, both min-max normalised to [0, 1] per source (so a model's own
#   scale -- levels 1..5, scores 0..100, Bradley-Terry strengths -- does not matter); sigma: the record's `std` on the
#   same scale (std / (max - min MOS) of the source), else the median of the source's other stds, else --sigma.
#   Div(x, X*): RMS difference (Euclidean distance / sqrt(64)) between x's 8x8 grayscale thumbnail (values in [0, 1])
#   and the nearest already selected one; 0 for the first pick, which is therefore the hardest sample.
# FR, two levels: references are picked by the same rule, with a reference's error the mean error of its distorted
#   images and Div on the reference images' thumbnails; then each picked reference gives its --per_ref hardest images.
def difficulty(q_w, q, sigma, eps=1e-4):
    """The error term (q_w - q)^2 / (sigma^2 + eps), elementwise."""
    q_w, q, sigma = (np.asarray(v, dtype=float) for v in (q_w, q, sigma))
    return (q_w - q) ** 2 / (sigma ** 2 + eps)


def greedy_select(error, features, n, lam):
    """Greedy picks: each step takes the argmax of error + lam * Div over the not yet picked samples (ties: the lower
    index). features [N, D]; Div = min Euclidean distance / sqrt(D) to the picked ones. -> [(index, error, div)]."""
    error, features = np.asarray(error, dtype=float), np.asarray(features, dtype=float)
    features = features.reshape(len(error), -1)
    nearest = np.zeros(len(error))  # Div to the picked set so far (0 while it is empty)
    free, picks = np.ones(len(error), dtype=bool), []
    for _ in range(min(n, len(error))):
        objective = np.where(free, error + lam * nearest, -np.inf)
        k = int(np.argmax(objective))
        picks.append((k, float(error[k]), float(nearest[k])))
        free[k] = False
        dist = np.linalg.norm(features - features[k], axis=1) / np.sqrt(features.shape[1])
        nearest = dist if len(picks) == 1 else np.minimum(nearest, dist)
    return picks


def select_fr(error, group, ref_features, n_refs, per_ref, lam):
    """Two levels: greedy_select over references (error = mean of their images' errors), then the per_ref highest
    errors inside each picked reference. group[i]: reference index of sample i; ref_features [R, D].
    -> (reference picks [(ref, mean error, div)], [sample indices], in pick order)."""
    error, group = np.asarray(error, dtype=float), np.asarray(group)
    ref_error = np.array([error[group == g].mean() for g in range(len(ref_features))])
    ref_picks = greedy_select(ref_error, ref_features, n_refs, lam)
    samples = []
    for g, _, _ in ref_picks:
        members = np.flatnonzero(group == g)
        samples += [int(i) for i in members[np.argsort(-error[members], kind="stable")][:per_ref]]
    return ref_picks, samples


def thumbnail(path, side=8):
    """The Div feature: the image as side x side grayscale, values in [0, 1], flattened."""
    return np.asarray(load_image(path).convert("L").resize((side, side), Image.BOX), dtype=float).ravel() / 255


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


def select(pred, data="data/demo", split="test", n=16, lam=10.0, eps=1e-4, sigma=0.1, fr=False, n_refs=4, per_ref=4,
           out="out/hard_samples"):
    """Difficult, diverse samples to evaluate on when inference is costly (Wu et al., ECCV 2024): greedy selection by
    (q_w - q)^2 / (sigma^2 + eps) + lambda * Div (the comment at the top of this module). Reads the
    records (`data`, `split`: MOS, std, image, reference) and a weak model's predictions (`pred`), joined by id.
    Writes OUT/hard_samples[_fr].json (the selected ids in pick order, each pick's error and Div, the settings)
    and OUT/hard_samples[_fr].png (error vs Div of every candidate, the picks marked)."""
    preds, null = read_predictions(pred)
    records, seen = [], set()
    for r in load_records(data, split):
        if r.get("image") and r.get("mos") is not None and r["id"] not in seen:
            seen.add(r["id"])
            records.append(r)
    cand = [r for r in records if r["id"] in preds]
    if not cand:
        raise SystemExit(f"no record of {data} ({split}) has a prediction in {pred} (joined by id)")
    # per source: q and q_w min-max normalised to [0, 1]; sigma on q's scale
    sigma_default = sigma  # where a source has no std at all
    q, q_w, sigma, sigma_from = np.zeros(len(cand)), np.zeros(len(cand)), np.zeros(len(cand)), [""] * len(cand)
    minmax = lambda v: (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else np.full(len(v), 0.5)
    for src in sorted({r.get("source") for r in cand}, key=str):
        ix = [i for i, r in enumerate(cand) if r.get("source") == src]
        mos = np.array([cand[i]["mos"] for i in ix], dtype=float)
        oriented = np.array([cand[i]["mos_norm"] if cand[i].get("mos_norm") is not None else cand[i]["mos"] for i in ix], dtype=float)
        q[ix], q_w[ix] = minmax(oriented), minmax(np.array([preds[cand[i]["id"]] for i in ix]))
        span = mos.max() - mos.min() if mos.max() > mos.min() else 1.0
        stds = [cand[i]["std"] / span for i in ix if cand[i].get("std") is not None]
        fallback, how = (float(np.median(stds)), "median std of the source") if stds else (sigma_default, "--sigma")
        for i in ix:
            has = cand[i].get("std") is not None
            sigma[i], sigma_from[i] = (cand[i]["std"] / span, "std") if has else (fallback, how)
    error = difficulty(q_w, q, sigma, eps)
    feats = np.stack([thumbnail(r["image"]) for r in cand])
    if fr:
        keys = [r["ref_image"] if r.get("ref_image") else (r.get("source"), r.get("ref")) for r in cand]
        refs = sorted(set(keys), key=str)
        group = np.array([refs.index(k) for k in keys])
        ref_feats = np.stack([thumbnail(k) if isinstance(k, str) else feats[group == g].mean(0) for g, k in enumerate(refs)])
        ref_picks, order = select_fr(error, group, ref_feats, n_refs, per_ref, lam)
        chosen_refs = [{"reference": refs[g] if isinstance(refs[g], str) else "/".join(map(str, refs[g])),
                        "feature": "reference image" if isinstance(refs[g], str) else "mean of its images (no ref_image)",
                        "mean_error": round(e, 6), "div": round(d, 6)} for g, e, d in ref_picks]
    else:
        picks = greedy_select(error, feats, n, lam)
        order = [k for k, _, _ in picks]
    # Div of every candidate to the nearest pick other than itself (the plot's y axis)
    picked = np.array(order)
    dist = np.linalg.norm(feats[:, None, :] - feats[None, picked, :], axis=2) / np.sqrt(feats.shape[1])
    dist[picked, np.arange(len(picked))] = np.inf
    div_final = dist.min(1) if len(picked) > 1 else np.zeros(len(cand))
    result = {"what": "difficult samples, greedy (q_w - q)^2 / (sigma^2 + eps) + lambda * Div", "mode": "FR" if fr else "NR",
              "data": data, "split": split, "pred": pred, "lambda": lam, "eps": eps,
              "normalisation": "q (MOS, oriented higher = better) and q_w (prediction) min-max to [0, 1] per source; "
                               "sigma = std / (max - min MOS) of the source",
              "div": "RMS difference of 8x8 grayscale thumbnails ([0, 1]) to the nearest already selected sample",
              "n_records": len(records), "n_candidates": len(cand), "no_prediction": len(records) - len(cand),
              "null_predictions": null, "sigma_source": {k: sigma_from.count(k) for k in sorted(set(sigma_from))},
              "selected": [cand[i]["id"] for i in order],
              "picks": [{"id": cand[i]["id"], "q": round(float(q[i]), 6), "q_w": round(float(q_w[i]), 6),
                         "sigma": round(float(sigma[i]), 6), "error": round(float(error[i]), 6)} for i in order]}
    if fr:
        result.update(n_refs=n_refs, per_ref=per_ref, references=chosen_refs)
    else:
        for p, (_, _, d) in zip(result["picks"], picks):
            p["div_at_pick"] = round(d, 6)
    name = "hard_samples_fr" if fr else "hard_samples"
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, f"{name}.json"), result)
    hard_samples_png(os.path.join(out, f"{name}.png"), error, div_final, picked, order, f"{name}: lambda {lam:g}")
    print(f"{len(order)} of {len(cand)} candidates selected ({len(records) - len(cand)} records without a prediction, "
          f"{null} null predictions); mean error selected {error[picked].mean():.3f} vs all {error.mean():.3f} "
          f"-> {out}/{name}.json, {name}.png")
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
    ax.set_ylabel("Div: RMS thumbnail distance to nearest selected")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_png(path, fig)
