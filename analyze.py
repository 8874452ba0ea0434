"""Look inside fine-tuned VLMs: one subcommand per analysis, each writing a JSON of its numbers and a PNG.

    python analyze.py --help                 # lists the analyses

Each analysis is one section below: a function `cmd_<name>(args)`, a function adding its arguments, and
a line `COMMANDS["name"] = (cmd_<name>, add_<name>_args, "one-line help")`.
"""
import argparse
import sys

import torch

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
    import os
    import numpy as np
    from common import atomic_write, atomic_write_json, atomic_write_png
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
    atomic_write_png(os.path.join(args.out, "mix_ratio.png"), fig)
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


# ----------------------------------------------------------------------------- semantic shift (paper 1, Table 2 and Fig. 6)
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
    from data import load_image
    from model import lm_readout, visual_tokens
    norm, head = lm_readout(model)
    dtype = next(model.parameters()).dtype
    scores = {pool: {"cos": [], "logit": []} for pool in pools}
    for start in range(0, len(records), batch_size):
        recs = records[start:start + batch_size]
        images = processor.image_processor(images=[load_image(r["image"]) for r in recs], return_tensors="pt")
        images = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in images.items()}
        for i, tokens in enumerate(visual_tokens(model, images), start):
            bias = None if head.bias is None else head.bias[label_ids[i]]
            for pool in pools:
                cos, logit = token_scores(tokens, pool, label_embs[i], norm, head.weight[label_ids[i]], bias)
                scores[pool]["cos"].append(cos)
                scores[pool]["logit"].append(logit)
        print(f"\rsemantic shift: {min(start + batch_size, len(records))}/{len(records)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return {pool: {k: torch.stack(v).cpu() for k, v in s.items()} for pool, s in scores.items()}


def shift_summary(shift):
    """Mean and median over samples of a relative shift; samples with |before| == 0 (inf/nan) are left out and counted."""
    finite = shift[torch.isfinite(shift)].double()
    if finite.numel() == 0:
        return {"mean": None, "median": None, "n": 0, "n_nonfinite": int(shift.numel())}
    return {"mean": float(finite.mean()), "median": float(finite.median()), "n": int(finite.numel()),
            "n_nonfinite": int(shift.numel() - finite.numel())}


def read_ckpt_config(ckpt):
    """config.json of a train.py output folder, checked before any model is loaded."""
    import json
    import os
    path = os.path.join(ckpt, "config.json")
    if not os.path.isdir(ckpt):
        raise SystemExit(f"semantic-shift: --ckpt {ckpt}: no such folder (expected a train.py output folder)")
    for name in ("config.json", "trainable.safetensors"):
        if not os.path.isfile(os.path.join(ckpt, name)):
            raise SystemExit(f"semantic-shift: --ckpt {ckpt}: {name} not found (expected a train.py output folder)")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise SystemExit(f"semantic-shift: {path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    for field in ("model", "trainable"):
        if not isinstance(cfg, dict) or not cfg.get(field):
            raise SystemExit(f"semantic-shift: {path}: field {field!r} missing or empty")
    return cfg


def shift_records(data_dirs, split, limit, seed=0):
    """Distortion records with a known label and an image; at most `limit` of them (a seeded random subset, in
    file order), 0 = all."""
    import random
    from data import LABELS, load_records
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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from common import atomic_write_png
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


def cmd_semantic_shift(args):
    """Where perception lives (paper 1, Table 2 and Fig. 6): for each --ckpt (a train.py output), how far the
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
    prints the table."""
    import os
    from common import atomic_write_json, atomic_write_jsonl
    from data import LABELS, closed_set_token_ids
    from model import load_checkpoint, load_model
    pools = list(SHIFT_POOLS) if args.pool == "both" else [args.pool]
    cfgs = [read_ckpt_config(c) for c in args.ckpt]  # every folder checked before any model loads
    columns = []
    for ckpt, cfg in zip(args.ckpt, cfgs):
        name = cfg["trainable"]
        columns.append(name if name not in columns else f"{name} ({os.path.basename(os.path.normpath(ckpt))})")
    data_dirs = args.data or cfgs[0].get("data")
    if not data_dirs:
        raise SystemExit(f"semantic-shift: give --data DIR ({args.ckpt[0]}/config.json names no training data)")
    records = shift_records(data_dirs, args.split, args.limit)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    base_cache, runs = {}, {}  # base model name -> its scores, label ids and L (computed once per base)
    for ckpt, cfg, col in zip(args.ckpt, cfgs, columns):
        if cfg["model"] not in base_cache:
            base, processor = load_model(cfg["model"], dtype=dtype, device=device)
            base.eval()
            ids = closed_set_token_ids(processor, LABELS)
            label_ids = [ids[LABELS.index(r["label"])] for r in records]
            label_embs = base.get_input_embeddings().weight[label_ids].detach()
            print(f"{cfg['model']} (base): scoring {len(records)} samples", flush=True)
            scores = label_scores(base, processor, records, label_ids, label_embs, pools, args.batch_size, device)
            base_cache[cfg["model"]] = (scores, label_ids, label_embs)
            del base
        init, label_ids, label_embs = base_cache[cfg["model"]]
        model, processor, _ = load_checkpoint(ckpt, dtype=dtype, device=device)
        model.eval()
        print(f"{ckpt} ({col}): scoring {len(records)} samples", flush=True)
        tuned = label_scores(model, processor, records, label_ids, label_embs, pools, args.batch_size, device)
        embedding_moved = not torch.equal(model.get_input_embeddings().weight[label_ids].detach(), label_embs)
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
    os.makedirs(args.out, exist_ok=True)
    result = {"what": "semantic shift of the visual tokens toward the label token's embedding, relative to the base "
                      "model (paper 1, Table 2); rows Similarity/Logits, columns = the fine-tuned part (config trainable)",
              "similarity": "(cos(V, L) - cos(V_init, L)) / |cos(V_init, L)|",
              "logits": "(p(V, L) - p_init(V_init, L)) / |p_init(V_init, L)|",
              "V": "projected visual tokens entering the LM (the multimodal projector's output)",
              "L": "input embedding (of the base model) of the first token of the sample's true label word",
              "p": SHIFT_LOGIT, "pooling": {p: SHIFT_POOLS[p] for p in pools},
              "statistic": "mean and median over samples; samples with a zero 'before' value are left out (n_nonfinite)",
              "data": data_dirs, "split": args.split, "n": len(records), "columns": columns, "table": table,
              "checkpoints": {col: {k: runs[col][k] for k in ("ckpt", "model", "trainable", "summary",
                                                             "label_embedding_changed_by_tuning")} for col in columns}}
    atomic_write_json(os.path.join(args.out, "semantic_shift.json"), result)
    atomic_write_jsonl(os.path.join(args.out, "semantic_shift_samples.jsonl"), [
        {"id": r.get("id"), "label": r["label"], **{f"{col}/{pool}/{k}_{when}": round(float(runs[col][when][pool][k][i]), 6)
                                                    for col in columns for pool in pools for k in ("cos", "logit")
                                                    for when in ("init", "tuned")}}
        for i, r in enumerate(records)])
    semantic_shift_png(os.path.join(args.out, "semantic_shift.png"), columns, runs, pools)
    print(shift_table_text(columns, table, {c: runs[c]["summary"] for c in columns}, pools, len(records),
                           f"{data_dirs} {args.split}"))
    print(f"-> {args.out}/semantic_shift.json, semantic_shift_samples.jsonl, semantic_shift.png")
    return result


def add_semantic_shift_args(p):
    p.add_argument("--ckpt", action="append", required=True, help="a train.py output folder (repeat: one column each)")
    p.add_argument("--data", default=None, help="prepared folder(s); default: the first checkpoint's training data")
    p.add_argument("--split", default="test")
    p.add_argument("--pool", default="both", choices=["mean", "max", "both"],
                   help="mean: score the token-mean vector; max: best single token; both: report both")
    p.add_argument("--limit", type=int, default=2000, help="at most this many samples (seeded random subset); 0 = all")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--out", default="out/semantic_shift", help="output folder")


COMMANDS["semantic-shift"] = (cmd_semantic_shift, add_semantic_shift_args,
                              "how far the visual tokens moved toward the label token per fine-tuned part (cosine, logit; paper 1 Table 2)")


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
    import os
    import numpy as np
    from common import atomic_write_json, atomic_write_png
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
    atomic_write_png(os.path.join(args.out, f"{name}.png"), fig)
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


# ----------------------------------------------------------------------------- two-stage reasoning: the quality token (paper 2)
# Both analyses look at the "quality token": the last token before the level word (the "is" of "... quality of the
# image is"), whose output is the model's prediction of the level. Inputs come from pathway.quality_inputs:
#   two_stage: the stage-2 question about the description, text only, then "The quality of the image is"
#   one_stage: the image, the question, and the model's feedback up to its level word
# with the description the model writes itself (--description generated, greedy) or the record's (reference).
def quality_token_setup(args, eager=False):
    """(model, processor, items, mode, name, data, device) for logit-lens / attention; items: pathway.quality_inputs."""
    from model import load_checkpoint, load_model
    from pathway import eval_records, quality_inputs
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.ckpt:
        model, processor, cfg = load_checkpoint(args.ckpt, dtype=dtype, device=device)
        name = args.ckpt
    else:
        model, processor = load_model(args.model, dtype=dtype, device=device)
        cfg, name = {}, f"untuned {args.model}"
    mode = args.mode or ("two_stage" if cfg.get("stage") == 2 else "one_stage")
    records, data = eval_records(args.data or cfg.get("data") or "data/demo_pathway", args.split, args.limit, args.seed)
    if eager:
        use_eager_attention(model)
    model.eval()
    print(f"{name}: {mode}, {len(records)} samples of {data} ({args.split}), {args.description} descriptions", flush=True)
    with torch.no_grad():
        items = quality_inputs(model, processor, records, mode, args.description, args.max_new_tokens, device)
    return model, processor, items, mode, name, data, device


def encode_item(processor, model, item, device):
    """One quality_inputs item -> model inputs (batch of 1), the image through the processor where there is one."""
    from data import _tokenize, load_image
    enc = _tokenize(processor, [item["text"]], [load_image(item["image"])] if item["image"] else [])
    return {k: v.to(device, model.dtype) if v.is_floating_point() else v.to(device) for k, v in enc.items()}


def layer_outputs(model, enc):
    """The hidden state after each decoder layer (before the final norm), caught by forward hooks (the model's own
    hidden_states may hold the last one after the norm), and the model's logits."""
    from model import FAMILIES, family_of, get_module
    layers = get_module(model, FAMILIES[family_of(model)]["llm_layers"])
    caught = [None] * len(layers)

    def keep(i):
        def hook(module, inputs, output):
            caught[i] = output[0] if isinstance(output, tuple) else output
        return hook
    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    try:
        logits = model(**enc).logits
    finally:
        for h in handles:
            h.remove()
    return caught, logits


@torch.no_grad()
def logit_lens(model, enc, k):
    """Final norm + LM head on the hidden state of each of the last k decoder layers at the last position.
    -> (layer indices, lens logits [k, V], the model's own logits at that position [V])."""
    from model import lm_readout
    norm, head = lm_readout(model)
    hidden, logits = layer_outputs(model, enc)
    picked = list(range(len(hidden)))[-k:]
    lens = torch.stack([head(norm(hidden[i][:, -1]))[0] for i in picked])
    return picked, lens, logits[0, -1]


def logit_lens_png(path, result, focus):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from common import atomic_write_png
    from data import LEVELS
    layers = result["layers"]
    fig = plt.figure(figsize=(max(7, 3.2 * len(layers)), 7.5))
    grid = fig.add_gridspec(2, len(layers), height_ratios=[1, 1.1])
    ax = fig.add_subplot(grid[0, :])
    bottom = [0.0] * len(layers)
    for j, level in enumerate(LEVELS):
        vals = [result["per_layer"][str(l)]["mean_level_probs"][level] for l in layers]
        ax.bar([f"layer {l}" for l in layers], vals, bottom=bottom, label=level, color=plt.cm.RdYlGn(j / 4))
        bottom = [b + v for b, v in zip(bottom, vals)]
    mass = [result["per_layer"][str(l)]["mean_level_mass_in_vocab"] for l in layers]
    ax.plot([f"layer {l}" for l in layers], mass, "k.--", label="level tokens' share of the whole vocabulary")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean probability")
    ax.set_title(f"logit lens at the quality token ({result['mode']}, {result['n']} samples): closed-set level "
                 f"probabilities per layer", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    for c, l in enumerate(layers):
        ax2 = fig.add_subplot(grid[1, c])
        freq = result["focus"]["token_frequency"][str(l)][:8]
        ax2.barh([t for t, _ in freq][::-1], [n for _, n in freq][::-1], color="C1")
        ax2.set_title(f"layer {l}: top-{result['topk']} tokens,\n{result['focus']['n']} samples predicted {focus!r}", fontsize=8)
        ax2.tick_params(labelsize=7)
    fig.tight_layout()
    atomic_write_png(path, fig)


def cmd_logit_lens(args):
    """Logit lens at the quality token (paper 2): the final norm and the LM head applied to the hidden state of each of
    the last --layers decoder layers, at the last token before the level word. Per sample and layer: the top --topk
    tokens (softmax over the whole vocabulary) and the closed-set probabilities of the five levels; aggregated per
    layer: mean level probabilities, the level tokens' share of the vocabulary, top-1 token counts; and, for the
    samples the model predicts --focus (closed-set argmax at the last layer; default poor, as the paper's Fig. 6), how
    often each token is among the top --topk per layer. At the last layer the lens is the model's own logits.
    Writes OUT/logit_lens.json, OUT/logit_lens_samples.jsonl and OUT/logit_lens.png."""
    import os
    from collections import Counter
    from common import atomic_write_json, atomic_write_jsonl
    from data import LEVELS, closed_set_token_ids
    from scoring import SCORE_PREFIX, closed_set_scores
    if args.focus not in LEVELS:
        raise SystemExit(f"--focus must be one of {LEVELS}, got {args.focus!r}")
    model, processor, items, mode, name, data, device = quality_token_setup(args)
    tok = processor.tokenizer
    level_ids = closed_set_token_ids(processor, LEVELS, SCORE_PREFIX)
    samples, max_diff = [], 0.0
    for i, item in enumerate(items):
        layers, lens, own = logit_lens(model, encode_item(processor, model, item, device), args.layers)
        max_diff = max(max_diff, float((lens[-1].float() - own.float()).abs().max()))
        probs = torch.softmax(lens.float(), -1)
        level_probs = closed_set_scores(lens, level_ids)[0]
        top = probs.topk(args.topk, -1)
        samples.append({"id": item["id"], "level": item["level"], "forced_conclusion": item["forced"],
                        "pred_level": LEVELS[int(level_probs[-1].argmax())],
                        "layers": {str(l): {"top": [[tok.convert_ids_to_tokens(int(t)), round(float(p), 5)]
                                                    for t, p in zip(top.indices[j], top.values[j])],
                                            "level_probs": {lv: round(float(x), 5) for lv, x in zip(LEVELS, level_probs[j])},
                                            "level_mass_in_vocab": round(float(probs[j, level_ids].sum()), 5)}
                                   for j, l in enumerate(layers)}})
        print(f"\rlogit lens: {i + 1}/{len(items)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    focus = [s for s in samples if s["pred_level"] == args.focus]
    per_layer = {}
    for l in map(str, layers):
        per_layer[l] = {
            "mean_level_probs": {lv: sum(s["layers"][l]["level_probs"][lv] for s in samples) / len(samples) for lv in LEVELS},
            "argmax_level_counts": dict(Counter(max(LEVELS, key=s["layers"][l]["level_probs"].get) for s in samples)),
            "mean_level_mass_in_vocab": sum(s["layers"][l]["level_mass_in_vocab"] for s in samples) / len(samples),
            "top1_token_counts": Counter(s["layers"][l]["top"][0][0] for s in samples).most_common(10)}
    result = {"what": "logit lens at the quality token: lm_head(final_norm(h)) for the hidden state h after each of the "
                      "last decoder layers, at the last token before the level word",
              "model": name, "mode": mode, "description": args.description, "data": data, "split": args.split,
              "n": len(samples), "layers": layers, "topk": args.topk, "per_layer": per_layer,
              "last_layer_vs_model_logits_max_abs_diff": max_diff,
              "forced_conclusion": sum(s["forced_conclusion"] for s in samples),
              "focus": {"level": args.focus, "n": len(focus), "ids": [s["id"] for s in focus],
                        "token_frequency": {l: Counter(t for s in focus for t, _ in s["layers"][l]["top"]).most_common(20)
                                            for l in map(str, layers)}}}
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(os.path.join(args.out, "logit_lens.json"), result)
    atomic_write_jsonl(os.path.join(args.out, "logit_lens_samples.jsonl"), samples)
    logit_lens_png(os.path.join(args.out, "logit_lens.png"), result, args.focus)
    print(f"logit lens, {mode}, {name}: {len(samples)} samples, layers {layers} (last = the model's logits, max |diff| "
          f"{max_diff:.2e})")
    print(f"{'layer':>6} " + " ".join(f"{lv:>9}" for lv in LEVELS) + f" {'in vocab':>9}  top-1 tokens")
    for l in map(str, layers):
        r = per_layer[l]
        print(f"{l:>6} " + " ".join(f"{r['mean_level_probs'][lv]:>9.3f}" for lv in LEVELS)
              + f" {r['mean_level_mass_in_vocab']:>9.3f}  " + ", ".join(f"{t} {n}" for t, n in r["top1_token_counts"][:4]))
    for l in map(str, layers):
        print(f"predicted {args.focus!r} ({len(focus)} samples), layer {l}, top-{args.topk} token frequency: "
              + ", ".join(f"{t} {n}" for t, n in result["focus"]["token_frequency"][l][:8]))
    print(f"-> {args.out}/logit_lens.json, logit_lens_samples.jsonl, logit_lens.png")
    return result


def add_quality_token_args(p):
    p.add_argument("--ckpt", default=None, help="a train.py output folder (stage 2 -> two_stage mode, else one_stage)")
    p.add_argument("--model", default="tiny", help="untuned model, without --ckpt")
    p.add_argument("--data", default=None, help="a pathway folder (prepare_data.py --task pathway) or score data; "
                                                "default: the checkpoint's, else data/demo_pathway")
    p.add_argument("--split", default="test")
    p.add_argument("--mode", default=None, choices=["one_stage", "two_stage"],
                   help="which pipeline's input (default: two_stage for a --stage 2 checkpoint, else one_stage)")
    p.add_argument("--description", default="generated", choices=["generated", "reference"],
                   help="the description the model writes (greedy) or the record's own")
    p.add_argument("--max_new_tokens", type=int, default=64, help="length of the generated description")
    p.add_argument("--limit", type=int, default=64, help="samples (a seeded draw); 0 = all")
    p.add_argument("--seed", type=int, default=0)


def add_logit_lens_args(p):
    add_quality_token_args(p)
    p.add_argument("--layers", type=int, default=4, help="the last k decoder layers (all if there are fewer)")
    p.add_argument("--topk", type=int, default=5, help="tokens listed per layer and sample")
    p.add_argument("--focus", default="poor", help="token frequency per layer for samples predicted this level")
    p.add_argument("--out", default="out/logit_lens", help="output folder")


COMMANDS["logit-lens"] = (cmd_logit_lens, add_logit_lens_args,
                          "logit lens at the quality token: top tokens and level probabilities per layer (paper 2)")


# attention from the quality token: eager attention (SDPA and flash never form the weights), the query row of the
# last position, averaged over heads, layers and samples; each earlier token is image / prompt / description / conclusion
ATTENTION_PARTS = {"image": "image tokens (the processor's expansion of <image>)",
                   "prompt": "the rest of the user turn and the chat template (system, roles, question)",
                   "description": "the description's tokens (in the user turn for two_stage, in the answer for one_stage)",
                   "conclusion": "the answer after the description up to the quality token itself "
                                 "(e.g. 'Overall, the quality of the image is')"}


def use_eager_attention(model):
    """Attention weights exist only under the eager implementation."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:
        for cfg in (model.config, getattr(model.config, "text_config", None)):
            if cfg is not None:
                cfg._attn_implementation = "eager"


def token_parts(tokenizer, item, input_ids, image_token_id):
    """Which part (ATTENTION_PARTS) each position of the processed ids belongs to. The processed ids are the text's
    tokens with the image token expanded into a run, so the text is tokenized again with character offsets and
    aligned, run for run; a processor that changes the text otherwise is an error."""
    plain = tokenizer(item["text"], return_offsets_mapping=True)
    ids, d0, d1, ans = input_ids.tolist(), *item["desc_span"], item["answer_start"]
    parts, j = [], 0
    for tid, (a, b) in zip(plain["input_ids"], plain["offset_mapping"]):
        if tid == image_token_id:
            start = j
            while j < len(ids) and ids[j] == image_token_id:
                j += 1
            if j == start:
                raise ValueError(f"{item['id']}: the processed input has no image tokens where the text has <image>")
            parts += ["image"] * (j - start)
            continue
        if j >= len(ids) or ids[j] != tid:
            raise ValueError(f"{item['id']}: cannot align the processed tokens with the text's (position {j}); "
                             f"the attention analysis expects the processor to only expand the image token")
        parts.append("description" if d1 > d0 and a < d1 and b > d0 else "conclusion" if a >= ans else "prompt")
        j += 1
    if j != len(ids):
        raise ValueError(f"{item['id']}: {len(ids) - j} processed tokens left over after aligning with the text")
    return parts


@torch.no_grad()
def quality_attention(model, enc):
    """Attention of the last position (the quality token) to every position, mean over heads: [layers, T]."""
    out = model.model(**enc, output_attentions=True)
    if not out.attentions or out.attentions[0] is None:
        raise SystemExit("the model returned no attention weights (eager attention could not be set)")
    return torch.stack([a[0, :, -1, :].float().mean(0) for a in out.attentions])


def attention_shares(att, parts):
    """att [layers, T] (rows sum to 1), parts: T names -> {part: [share per layer]}; per layer the shares sum to 1."""
    return {p: [float(att[l, [i for i, q in enumerate(parts) if q == p]].sum()) for l in range(att.shape[0])]
            for p in ATTENTION_PARTS}


def attention_png(path, samples, result):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from common import atomic_write_png
    rows = samples[:48]
    width = max(len(s["attention"]) for s in rows)
    heat = np.full((len(rows), width), np.nan)
    kinds = np.full((len(rows), width), np.nan)
    for r, s in enumerate(rows):
        heat[r, :len(s["attention"])] = s["attention"]
        kinds[r, :len(s["attention"])] = [list(ATTENTION_PARTS).index(p) for p in s["parts"]]
    fig, axes = plt.subplots(3, 1, figsize=(10, 9.5), height_ratios=[1.2, 1.2, 1])
    im = axes[0].imshow(np.sqrt(heat), aspect="auto", cmap="magma", interpolation="nearest")
    axes[0].set_title(f"attention from the quality token, mean over heads and layers ({result['mode']}; sqrt scale; "
                      f"one row per sample)", fontsize=9)
    axes[0].set_ylabel("sample")
    fig.colorbar(im, ax=axes[0], label="sqrt(attention)")
    cmap = matplotlib.colors.ListedColormap(["C0", "0.75", "C2", "C3"])
    axes[1].imshow(kinds, aspect="auto", cmap=cmap, vmin=-0.5, vmax=3.5, interpolation="nearest")
    axes[1].set_title("token parts: " + ", ".join(f"{p} ({c})" for p, c in zip(ATTENTION_PARTS, ["blue", "grey", "green", "red"])),
                      fontsize=9)
    axes[1].set_xlabel("token position")
    axes[1].set_ylabel("sample")
    layers = [f"layer {l}" for l in range(len(result["per_layer"]["image"]))] + ["mean"]
    bottom = np.zeros(len(layers))
    for p, c in zip(ATTENTION_PARTS, ["C0", "0.75", "C2", "C3"]):
        vals = np.array(result["per_layer"][p] + [result["shares"][p]])
        axes[2].bar(layers, vals, bottom=bottom, color=c, label=f"{p} {100 * result['shares'][p]:.1f}%")
        bottom += vals
    axes[2].set_ylabel("share of attention")
    axes[2].set_ylim(0, 1)
    axes[2].legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    atomic_write_png(path, fig)


def cmd_attention(args):
    """Attention from the quality token (paper 2): with eager attention, the query row of the last token before the
    level word, averaged over heads; its share on image tokens, prompt tokens, description tokens and the conclusion
    so far, per layer and over layers, averaged over samples. In two_stage mode there is no image (stage 2 is text
    only): its share is 0 by construction. Writes OUT/attention.json, OUT/attention_samples.jsonl (per sample: the
    mean attention over positions and each position's part) and OUT/attention.png (heat map over token positions, the
    parts, the shares per layer)."""
    import os
    from common import atomic_write_json, atomic_write_jsonl
    model, processor, items, mode, name, data, device = quality_token_setup(args, eager=True)
    image_token_id = getattr(model.config, "image_token_id", None)
    samples = []
    for i, item in enumerate(items):
        enc = encode_item(processor, model, item, device)
        att = quality_attention(model, enc)
        parts = token_parts(processor.tokenizer, item, enc["input_ids"][0], image_token_id)
        shares = attention_shares(att, parts)
        samples.append({"id": item["id"], "level": item["level"], "forced_conclusion": item["forced"],
                        "tokens": {p: parts.count(p) for p in ATTENTION_PARTS},
                        "shares": {p: sum(v) / len(v) for p, v in shares.items()}, "per_layer": shares,
                        "attention": [round(float(x), 5) for x in att.mean(0)], "parts": parts})
        print(f"\rattention: {i + 1}/{len(items)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    n_layers = len(samples[0]["per_layer"]["image"])
    result = {"what": "attention from the quality token (the last token before the level word) to every earlier token; "
                      "eager attention, mean over heads, then layers, then samples", "parts": ATTENTION_PARTS,
              "model": name, "mode": mode, "description": args.description, "data": data, "split": args.split,
              "n": len(samples), "forced_conclusion": sum(s["forced_conclusion"] for s in samples),
              "shares": {p: sum(s["shares"][p] for s in samples) / len(samples) for p in ATTENTION_PARTS},
              "per_layer": {p: [sum(s["per_layer"][p][l] for s in samples) / len(samples) for l in range(n_layers)]
                            for p in ATTENTION_PARTS},
              "mean_tokens": {p: sum(s["tokens"][p] for s in samples) / len(samples) for p in ATTENTION_PARTS}}
    result["shares_sum"] = sum(result["shares"].values())
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(os.path.join(args.out, "attention.json"), result)
    atomic_write_jsonl(os.path.join(args.out, "attention_samples.jsonl"),
                       [{k: v for k, v in s.items() if k != "per_layer"} for s in samples])
    attention_png(os.path.join(args.out, "attention.png"), samples, result)
    print(f"attention from the quality token, {mode}, {name}: {len(samples)} samples, {n_layers} layers")
    print(f"{'':>12}" + "".join(f"{p:>13}" for p in ATTENTION_PARTS))
    print(f"{'tokens':>12}" + "".join(f"{result['mean_tokens'][p]:>13.1f}" for p in ATTENTION_PARTS))
    for l in range(n_layers):
        print(f"{'layer ' + str(l):>12}" + "".join(f"{100 * result['per_layer'][p][l]:>12.1f}%" for p in ATTENTION_PARTS))
    print(f"{'all layers':>12}" + "".join(f"{100 * result['shares'][p]:>12.1f}%" for p in ATTENTION_PARTS)
          + f"   (sum {result['shares_sum']:.4f})")
    print(f"-> {args.out}/attention.json, attention_samples.jsonl, attention.png")
    return result


def add_attention_args(p):
    add_quality_token_args(p)
    p.add_argument("--out", default="out/attention", help="output folder")


COMMANDS["attention"] = (cmd_attention, add_attention_args,
                         "attention from the quality token to image / prompt / description tokens (paper 2)")


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
