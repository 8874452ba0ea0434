"""Look inside fine-tuned VLMs: one subcommand per analysis, each writing a JSON of its numbers and a PNG.

    python analyze.py --help                 # lists the analyses

Each analysis is one section below: a function `cmd_<name>(args)`, a function adding its arguments, and
a line `COMMANDS["name"] = (cmd_<name>, add_<name>_args, "one-line help")`.
"""
import argparse

# ----------------------------------------------------------------------------- analyses
# (each section registers itself: COMMANDS["name"] = (function, add_arguments, one-line help))
COMMANDS = {}


# ----------------------------------------------------------------------------- level precision (Q-SiT Table II)
# pyiqa metadata (../shared/iqa_meta): score column and direction of each dataset
LEVEL_META = {"koniq10k": ("mos", "higher_better"), "spaq": ("MOS", "higher_better"), "livec": ("mos", "higher_better"),
              "kadid10k": ("dmos", "higher_better"), "tid2013": ("mos", "higher_better"), "live": ("mos", "lower_better"),
              "csiq": ("dmos", "lower_better")}


def cmd_level_precision(args):
    """How much the MOS -> level conversion keeps: SRCC/PLCC between the 5 levels (1..5; equal intervals between
    the dataset's min and max, iqa_datasets.norm_scores) and the scores they come from, per dataset (the check of
    Q-SiT's Table II). Reads IQA-PyTorch meta_info CSVs (--meta, no images needed) and/or prepared score folders
    (--data). Writes OUT/level_precision.json and prints the table."""
    import os
    import iqa_datasets as D
    from common import atomic_write_json
    from data import load_records
    from scoring import level_precision
    results = {}
    if args.meta:
        for source, (col, direction) in LEVEL_META.items():
            path = os.path.join(args.meta, D.PYIQA_META[source])
            if os.path.isfile(path):
                rows = D._read_csv(path, [col])[1]
                scores = [D._num(r[col], f"{path}:{line}", col) for line, r in rows]
                results[source] = {"file": path, "direction": direction, **level_precision(scores, direction)}
    for d in [d for d in (args.data or "").split(",") if d]:
        import json
        with open(os.path.join(d, "meta.json")) as f:
            directions = json.load(f).get("score_direction", {})
        recs = [r for split in ("train", "val", "test") if os.path.exists(os.path.join(d, f"{split}.jsonl"))
                for r in load_records([d], split) if r.get("task") == "score" and r.get("mos") is not None]
        for source in sorted({r["source"] for r in recs}):
            scores = [r["mos"] for r in recs if r["source"] == source]
            results[f"{os.path.basename(os.path.normpath(d))}/{source}"] = {
                "direction": directions.get(source, "higher_better"), **level_precision(scores, directions.get(source, "higher_better"))}
    if not results:
        raise SystemExit("level-precision: nothing read; give --meta DIR (pyiqa meta_info CSVs) and/or --data DIR")
    print(f"{'dataset':24s} {'n':>6s} {'SRCC':>7s} {'PLCC':>7s}   images per level (bad..excellent)")
    for name, r in results.items():
        print(f"{name:24s} {r['n']:6d} {r['srcc']:7.4f} {r['plcc']:7.4f}   {list(r['levels'].values())}")
    path = os.path.join(args.out, "level_precision.json")
    atomic_write_json(path, {"what": "SRCC/PLCC of level index (1..5) vs the dataset's scores", "results": results})
    print(f"-> {path}")
    return results


def add_level_precision_args(p):
    p.add_argument("--meta", default=None, help="folder of IQA-PyTorch meta_info_*.csv files (e.g. ../shared/iqa_meta)")
    p.add_argument("--data", default=None, help="prepared score folder(s), comma-separated (prepare_data.py --task score)")
    p.add_argument("--out", default="out", help="output folder")


COMMANDS["level-precision"] = (cmd_level_precision, add_level_precision_args,
                               "SRCC/PLCC of the 5-level conversion vs the scores per dataset (Q-SiT Table II)")


# ----------------------------------------------------------------------------- mix ratio (Q-SiT Alg. 1, steps 1-2)
def run_ratios(args):
    """Trains the small model at each ratio (--mix score:1,interpret:RATIO), scores it on the score data's
    validation split; returns [(ratio, score, srcc, plcc)], score = (SRCC + PLCC) / 2."""
    import json
    import os
    import subprocess
    import sys
    score_dir, interp_dir = args.data.split(",")
    points = []
    for ratio in [float(r) for r in args.ratios.split(",")]:
        out = os.path.join(args.out, f"ratio_{ratio:g}")
        cmd = [sys.executable, "train.py", "--model", args.model, "--data", f"{score_dir},{interp_dir}",
               "--mix", f"score:1.0,interpret:{ratio:g}", "--max_steps", str(args.max_steps), "--out", out,
               "--log_every", "50", *args.train_args.split()]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        subprocess.run([sys.executable, "evaluate.py", "--task", "score", "--ckpt", out, "--data", score_dir,
                        "--split", args.split], check=True)
        with open(os.path.join(out, "eval_score.json")) as f:
            m = json.load(f)["per_source"]
        m = m.get("all", next(iter(m.values())))
        points.append((ratio, (m["srcc"] + m["plcc"]) / 2, m["srcc"], m["plcc"]))
        print(f"ratio {ratio:g}: SRCC {m['srcc']:.4f} PLCC {m['plcc']:.4f}", flush=True)
    return points


def cmd_mix_ratio(args):
    """Q-SiT Alg. 1, steps 1-2: fit a degree-4 polynomial to (ratio, score) points and report its argmax, the mix
    ratio to map to the primary model. Points from a CSV (--points, columns ratio,score), or --run: train the
    small model at each of --ratios (interpreting : scoring) and score it first. Writes OUT/mix_ratio.json,
    OUT/mix_ratio.png (points + curve) and, with --run, OUT/points.csv."""
    import csv
    import io
    import os
    import numpy as np
    from common import atomic_write, atomic_write_json
    from scoring import poly_argmax
    if args.run:
        if not args.data or len(args.data.split(",")) != 2:
            raise SystemExit("mix-ratio --run needs --data SCORE_DIR,INTERPRET_DIR")
        rows = run_ratios(args)
        args.points = args.points or os.path.join(args.out, "points.csv")
        atomic_write(args.points, "ratio,score,srcc,plcc\n" + "".join(f"{r:g},{s:.6f},{a:.6f},{b:.6f}\n" for r, s, a, b in rows))
    if not args.points:
        raise SystemExit("mix-ratio: give --points CSV (columns ratio,score) or --run")
    with open(args.points, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"ratio", "score"} <= set(rows[0]):
        raise SystemExit(f"{args.points}: expected a CSV with columns ratio,score")
    x, y = np.array([float(r["ratio"]) for r in rows]), np.array([float(r["score"]) for r in rows])
    best, coeffs, deg = poly_argmax(x, y, args.degree)
    result = {"points": [[float(a), float(b)] for a, b in zip(x, y)], "degree": deg, "coefficients": coeffs,
              "argmax_ratio": best, "fitted_score_at_argmax": float(np.polyval(coeffs, best)),
              "best_measured": [float(x[np.argmax(y)]), float(y.max())]}
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(os.path.join(args.out, "mix_ratio.json"), result)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = np.linspace(x.min(), x.max(), 400)
    fig, ax = plt.subplots(figsize=(5.6, 4))
    ax.plot(xs, np.polyval(coeffs, xs), label=f"degree-{deg} fit")
    ax.scatter(x, y, color="k", zorder=3, label="measured")
    ax.axvline(best, ls="--", color="r", label=f"argmax {best:.3g}")
    ax.set_xlabel("mix ratio (interpreting : scoring)")
    ax.set_ylabel("validation score")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(os.path.join(args.out, "mix_ratio.png"), buf.getvalue())
    print(f"degree-{deg} fit over {len(x)} points: argmax ratio {best:.4g} (fitted score {result['fitted_score_at_argmax']:.4f}); "
          f"best measured {result['best_measured'][0]:g} ({result['best_measured'][1]:.4f}) -> {args.out}/mix_ratio.json, mix_ratio.png")
    return result


def add_mix_ratio_args(p):
    p.add_argument("--points", default=None, help="CSV with columns ratio,score (written by --run)")
    p.add_argument("--degree", type=int, default=4, help="polynomial degree (lowered when there are fewer points)")
    p.add_argument("--out", default="out/mix_ratio", help="output folder")
    p.add_argument("--run", action="store_true", help="train the small model at each ratio to make the points")
    p.add_argument("--ratios", default="0.25,0.5,1,2,4", help="--run: interpreting weights (scoring weight 1)")
    p.add_argument("--data", default="data/demo_score,data/demo_interpret", help="--run: SCORE_DIR,INTERPRET_DIR")
    p.add_argument("--model", default="tiny", help="--run: the small model")
    p.add_argument("--max_steps", type=int, default=300, help="--run: training steps per ratio")
    p.add_argument("--split", default="val", help="--run: split of the score data that gives the score")
    p.add_argument("--train_args", default="", help="--run: more train.py arguments, e.g. '--batch_size 16'")


COMMANDS["mix-ratio"] = (cmd_mix_ratio, add_mix_ratio_args,
                         "fit a degree-4 polynomial to (mix ratio, score) points, report the argmax; --run makes the points")


# ----------------------------------------------------------------------------- difficult samples (Wu et al. 2024)
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
    import numpy as np
    q_w, q, sigma = (np.asarray(v, dtype=float) for v in (q_w, q, sigma))
    return (q_w - q) ** 2 / (sigma ** 2 + eps)


def greedy_select(error, features, n, lam):
    """Greedy picks: each step takes the argmax of error + lam * Div over the not yet picked samples (ties: the lower
    index). features [N, D]; Div = min Euclidean distance / sqrt(D) to the picked ones. -> [(index, error, div)]."""
    import numpy as np
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
    import numpy as np
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
    import numpy as np
    from PIL import Image
    from data import load_image
    return np.asarray(load_image(path).convert("L").resize((side, side), Image.BOX), dtype=float).ravel() / 255


def read_predictions(path):
    """A weak model's per-image predictions: JSONL rows with `id` and a numeric `score` (evaluate.py --task score's
    predictions_score.jsonl, evaluate.py --protocol's scores_prompting_*.jsonl). Rows whose score is null (an
    unparsed answer) are counted, not used. -> ({id: score}, number of null scores)."""
    from common import read_jsonl
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


def cmd_hard_samples(args):
    """Difficult, diverse samples to evaluate on when inference is costly (Wu et al., ECCV 2024): greedy selection by
    (q_w - q)^2 / (sigma^2 + eps) + lambda * Div (see the comment above cmd_hard_samples in analyze.py). Reads the
    records (--data, --split: MOS, std, image, reference) and a weak model's predictions (--pred), joined by id.
    Writes OUT/hard_samples[_fr].json (the selected ids in pick order, each pick's error and Div, the settings)
    and OUT/hard_samples[_fr].png (error vs Div of every candidate, the picks marked)."""
    import io
    import os
    import numpy as np
    from common import atomic_write, atomic_write_json
    from data import load_records
    preds, null = read_predictions(args.pred)
    records, seen = [], set()
    for r in load_records(args.data, args.split):
        if r.get("image") and r.get("mos") is not None and r["id"] not in seen:
            seen.add(r["id"])
            records.append(r)
    cand = [r for r in records if r["id"] in preds]
    if not cand:
        raise SystemExit(f"no record of {args.data} ({args.split}) has a prediction in {args.pred} (joined by id)")
    # per source: q and q_w min-max normalised to [0, 1]; sigma on q's scale
    q, q_w, sigma, sigma_from = np.zeros(len(cand)), np.zeros(len(cand)), np.zeros(len(cand)), [""] * len(cand)
    minmax = lambda v: (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else np.full(len(v), 0.5)
    for src in sorted({r.get("source") for r in cand}, key=str):
        ix = [i for i, r in enumerate(cand) if r.get("source") == src]
        mos = np.array([cand[i]["mos"] for i in ix], dtype=float)
        oriented = np.array([cand[i]["mos_norm"] if cand[i].get("mos_norm") is not None else cand[i]["mos"] for i in ix], dtype=float)
        q[ix], q_w[ix] = minmax(oriented), minmax(np.array([preds[cand[i]["id"]] for i in ix]))
        span = mos.max() - mos.min() if mos.max() > mos.min() else 1.0
        stds = [cand[i]["std"] / span for i in ix if cand[i].get("std") is not None]
        fallback, how = (float(np.median(stds)), "median std of the source") if stds else (args.sigma, "--sigma")
        for i in ix:
            has = cand[i].get("std") is not None
            sigma[i], sigma_from[i] = (cand[i]["std"] / span, "std") if has else (fallback, how)
    error = difficulty(q_w, q, sigma, args.eps)
    feats = np.stack([thumbnail(r["image"]) for r in cand])
    if args.fr:
        keys = [r["ref_image"] if r.get("ref_image") else (r.get("source"), r.get("ref")) for r in cand]
        refs = sorted(set(keys), key=str)
        group = np.array([refs.index(k) for k in keys])
        ref_feats = np.stack([thumbnail(k) if isinstance(k, str) else feats[group == g].mean(0) for g, k in enumerate(refs)])
        ref_picks, order = select_fr(error, group, ref_feats, args.n_refs, args.per_ref, args.lam)
        chosen_refs = [{"reference": refs[g] if isinstance(refs[g], str) else "/".join(map(str, refs[g])),
                        "feature": "reference image" if isinstance(refs[g], str) else "mean of its images (no ref_image)",
                        "mean_error": round(e, 6), "div": round(d, 6)} for g, e, d in ref_picks]
    else:
        picks = greedy_select(error, feats, args.n, args.lam)
        order = [k for k, _, _ in picks]
    # Div of every candidate to the nearest pick other than itself (the plot's y axis)
    picked = np.array(order)
    dist = np.linalg.norm(feats[:, None, :] - feats[None, picked, :], axis=2) / np.sqrt(feats.shape[1])
    dist[picked, np.arange(len(picked))] = np.inf
    div_final = dist.min(1) if len(picked) > 1 else np.zeros(len(cand))
    result = {"what": "difficult samples, greedy (q_w - q)^2 / (sigma^2 + eps) + lambda * Div", "mode": "FR" if args.fr else "NR",
              "data": args.data, "split": args.split, "pred": args.pred, "lambda": args.lam, "eps": args.eps,
              "normalisation": "q (MOS, oriented higher = better) and q_w (prediction) min-max to [0, 1] per source; "
                               "sigma = std / (max - min MOS) of the source",
              "div": "RMS difference of 8x8 grayscale thumbnails ([0, 1]) to the nearest already selected sample",
              "n_records": len(records), "n_candidates": len(cand), "no_prediction": len(records) - len(cand),
              "null_predictions": null, "sigma_source": {k: sigma_from.count(k) for k in sorted(set(sigma_from))},
              "selected": [cand[i]["id"] for i in order],
              "picks": [{"id": cand[i]["id"], "q": round(float(q[i]), 6), "q_w": round(float(q_w[i]), 6),
                         "sigma": round(float(sigma[i]), 6), "error": round(float(error[i]), 6)} for i in order]}
    if args.fr:
        result.update(n_refs=args.n_refs, per_ref=args.per_ref, references=chosen_refs)
    else:
        for p, (_, _, d) in zip(result["picks"], picks):
            p["div_at_pick"] = round(d, 6)
    name = "hard_samples_fr" if args.fr else "hard_samples"
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(os.path.join(args.out, f"{name}.json"), result)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    ax.scatter(error, div_final, s=8, color="0.6", label=f"candidates ({len(cand)})")
    ax.scatter(error[picked], div_final[picked], s=24, color="r", label=f"selected ({len(picked)})")
    for rank, i in enumerate(order[:30], 1):
        ax.annotate(str(rank), (error[i], div_final[i]), fontsize=7, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("error (q_w - q)^2 / (sigma^2 + eps)")
    ax.set_ylabel("Div: RMS thumbnail distance to nearest selected")
    ax.set_title(f"{name}: lambda {args.lam:g}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(os.path.join(args.out, f"{name}.png"), buf.getvalue())
    print(f"{len(order)} of {len(cand)} candidates selected ({len(records) - len(cand)} records without a prediction, "
          f"{null} null predictions); mean error selected {error[picked].mean():.3f} vs all {error.mean():.3f} "
          f"-> {args.out}/{name}.json, {name}.png")
    return result


def add_hard_samples_args(p):
    p.add_argument("--data", default="data/demo", help="prepared folder(s) with the records (mos, std, image)")
    p.add_argument("--split", default="test")
    p.add_argument("--pred", required=True, help="JSONL of the weak model's predictions: id, score per row")
    p.add_argument("--n", type=int, default=16, help="NR: samples to select")
    p.add_argument("--lam", type=float, default=10.0,
                   help="lambda: weight of Div against the error term (10: a thumbnail 0.1 RMS away weighs as much as a "
                        "prediction one sigma off)")
    p.add_argument("--eps", type=float, default=1e-4, help="eps in sigma^2 + eps")
    p.add_argument("--sigma", type=float, default=0.1, help="sigma on the [0, 1] scale where a source has no std at all")
    p.add_argument("--fr", action="store_true", help="two-level selection: references, then their hardest images")
    p.add_argument("--n_refs", type=int, default=4, help="FR: references to select")
    p.add_argument("--per_ref", type=int, default=4, help="FR: images per selected reference")
    p.add_argument("--out", default="out/hard_samples", help="output folder")


COMMANDS["hard-samples"] = (cmd_hard_samples, add_hard_samples_args,
                            "select difficult, diverse samples from a weak model's errors (Wu et al. 2024), NR or FR")


# ----------------------------------------------------------------------------- entry point
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, (fn, add_arguments, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=fn.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(p)
        p.set_defaults(fn=fn)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    main()
