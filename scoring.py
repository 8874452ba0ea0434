"""Quality scoring (Q-Align / Q-SiT): MOS -> five text levels, the closed-set softmax over the level tokens, the
cross-dataset table, what the level conversion keeps, and the mix ratio of scoring to interpreting data.

Zhang, Wu, Jia, Lin, Zhai, "Teaching LMMs for image quality scoring and interpreting" (Q-SiT): levels in equal
intervals between the dataset's min and max (Table II), score = softmax over the five level logits @ [1..5],
scoring data mixed with interpreting and general data at a ratio found on a small model (Algorithm 1, steps 1-2:
mix_ratio below; step 3: data.Mixer.balance). The question and answer are Q-Align's.

    python prepare_data.py --task score --koniq /data/koniq10k --out data/score     # make_score
    python evaluate.py score --ckpt out/A --ckpt out/B --data data/score             # evaluate (the table)
    python analyze.py level-precision --meta ../shared/iqa_meta                      # level_precision_report
    python analyze.py mix-ratio --points points.csv                                  # mix_ratio
"""
import csv
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import torch

import iqa_datasets as D
import iqa_io
from common import atomic_write, atomic_write_json, atomic_write_jsonl, atomic_write_png, pyplot
from data import LEVELS, claim_output, closed_set_token_ids, encode_prompts, load_records, uses_system_prefix, with_system, write_splits
from metrics import closed_set_scores, plcc, score_metrics, srcc
from model import eval_device, eval_out, last_token_logits, load_evaluated, to_device

# ----------------------------------------------------------------------------- prompts (Q-Align form)
SCORE_QUESTION = "How would you rate the quality of this image?"   # the canonical question (val/test)
SCORE_PARAPHRASES = [SCORE_QUESTION, "Can you rate the quality of this image?", "How is the quality of this image?",
                     "Please rate the quality of this image.", "What is the quality of this image?",
                     "Rate the quality of the image."]
SCORE_PREFIX = "The quality of the image is"    # the answer is "The quality of the image is {level}."
SYSTEM_PREFIX = "Assume you are an image quality evaluator."   # system turn for scoring data in a mix


def score_record(rid, image, level, source, ref, rng=None, image_first=False, **extra):
    """One scoring record. rng (random.Random) picks a paraphrase of the question; None = the canonical one. The image
    placeholder follows the question, as in Q-Align's and Q-SiT's released training data ("...this image?\n<image>");
    image_first=True puts it ahead (the demo view, whose measured numbers were made that way)."""
    question = rng.choice(SCORE_PARAPHRASES) if rng is not None else SCORE_QUESTION
    return {"id": rid, "image": image,
            "conversations": [{"from": "human", "value": "<image>\n" + question if image_first else question + "\n<image>"},
                              {"from": "gpt", "value": f"{SCORE_PREFIX} {level}."}],
            "task": "score", "source": source, "ref": ref, "level": level, **extra}


# ----------------------------------------------------------------------------- records
SCORE_DATASETS = {"koniq10k": "koniq", "spaq": "spaq", "livec": "livec", "agiqa3k": "agiqa", "kadid10k": "kadid",
                  "live": "live", "csiq": "csiq", "tid2013": "tid2013"}  # source -> command-line flag


def make_score(datasets, out, split="ref", seed=0, test_frac=0.2, val_frac=0.05, check_images=True):
    """Scoring records (Q-Align form) from IQA datasets: MOS -> level by equal intervals between the dataset's
    min and max (iqa_datasets.norm_scores). KonIQ-10k keeps its official training/validation/test split when the
    metadata has it; the others are split test_frac by reference content (or randomly), then val_frac of all
    items is held out of train for validation. LIVE Challenge's t1..t7 stay in train. Reference images without a
    score are left out. Train questions are seeded paraphrases; val/test use the canonical question."""
    claim_output(out)  # before hours of reading, not after
    splits, infos = {"train": [], "val": [], "test": []}, {}
    for source, root in datasets.items():
        t0 = time.time()
        items, info = D.READERS[source](root, check_images=check_images)
        D.norm_scores(items, info)
        scored = [it for it in items if it["mos"] is not None]
        ref_image = D.reference_images(items)
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


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def eval_score(model, processor, records, batch_size=32, device="cpu", system=None):
    """Scoring: closed-set softmax over the 5 level tokens after the teacher-forced "The quality of the image is"
    (through the op, metrics.closed_set_scores) -> score = probs @ [1..5]; one prediction dict per record."""
    level_ids = closed_set_token_ids(processor, LEVELS, SCORE_PREFIX)
    preds, t0 = [], time.time()
    for start in range(0, len(records), batch_size):
        recs = records[start:start + batch_size]
        enc, last = encode_prompts(processor, [with_system(r, system) if system else r for r in recs], answer_prefix=SCORE_PREFIX)
        logits = last_token_logits(model, to_device(enc, model, device), last)
        target = [LEVELS.index(r["level"]) if r.get("level") in LEVELS else -1 for r in recs]
        probs, score, nll = closed_set_scores(logits, level_ids, target)
        for r, p, s, l in zip(recs, probs.tolist(), score.tolist(), nll.tolist()):
            preds.append({"id": r.get("id"), "source": r.get("source"), "mos": r.get("mos"), "mos_norm": r.get("mos_norm"),
                          "level": r.get("level"), "probs": [round(x, 5) for x in p], "score": round(s, 5),
                          "score01": round((s - 1) / 4, 5), "nll": round(l, 5) if r.get("level") in LEVELS else None})
        done = min(start + batch_size, len(records))
        print(f"\reval score: {done}/{len(records)} ({done / (time.time() - t0):.0f} samples/s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    return preds


def evaluate(ckpts=(), model=None, data=None, split="test", out=None, batch_size=32, limit=0, logistic=False,
             system="auto", table=None, allow_unfinished=False):
    """evaluate.py score: one row per checkpoint in `ckpts` (and the untuned `model`), one column per test source.
    system: the system turn SYSTEM_PREFIX before the question (auto: if the run trained on a --mix of several sources).
    Writes per row OUT/eval_score.json and OUT/predictions_score.jsonl, and the cross-dataset table (rows: trained
    on, columns: tested on) to `table` (default OUT/score_table.json), also printed."""
    if system not in ("auto", "yes", "no"):
        raise SystemExit(f"--system must be auto, yes or no, got {system!r}")
    runs = [("ckpt", c) for c in ckpts or []] + ([("model", model)] if model else [])
    if not runs:
        raise SystemExit("give --ckpt DIR (one or more) or --model NAME")
    device, dtype = eval_device()
    rows, columns = {}, []
    for kind, name in runs:
        vlm, processor, cfg, _ = load_evaluated(*((name, None) if kind == "ckpt" else (None, name)), device, dtype,
                                                allow_unfinished)
        if kind == "ckpt":
            data_dirs, row, trained_on = data or cfg["data"], os.path.basename(os.path.normpath(name)), cfg["data"]
            run_out = os.path.join(out, row) if out and len(runs) > 1 else (out or name)
        else:
            data_dirs, row, trained_on = data or "data/demo_score", f"untuned {name}", None
            run_out = eval_out(out, None, name)
            run_out = os.path.join(run_out, "untuned") if out and len(runs) > 1 else run_out
        turn = SYSTEM_PREFIX if system == "yes" or (system == "auto" and uses_system_prefix(cfg.get("mix"))) else None
        records = [r for r in load_records(data_dirs, split) if r.get("task") == "score"]
        records = records[:limit] if limit else records
        if not records:
            raise SystemExit(f"no score records in {data_dirs} ({split}); make them with prepare_data.py --task score")
        preds = eval_score(vlm, processor, records, batch_size, device, turn)
        for p in preds:  # correlations against mos_norm: higher = better for every source (DMOS flipped)
            p["target"] = p["mos_norm"] if p["mos_norm"] is not None else p["mos"]
        metrics = score_metrics([{**p, "mos": p["target"]} for p in preds], logistic=logistic)
        os.makedirs(run_out, exist_ok=True)
        atomic_write_json(os.path.join(run_out, "eval_score.json"), {
            "task": "score", "model": name, "trained_on": trained_on, "data": data_dirs, "split": split,
            "system_prefix": turn, "logistic": logistic, "per_source": metrics,
            "unfinished_checkpoint": cfg.get("finished") is False})
        atomic_write_jsonl(os.path.join(run_out, "predictions_score.jsonl"), preds)
        rows[row] = {"trained_on": trained_on, "results": metrics}
        columns += [s for s in metrics if s not in columns]
        print(f"{row}: " + ", ".join(f"{s} SRCC {fmt(m['srcc'])} PLCC {fmt(m['plcc'])}" for s, m in metrics.items())
              + f"  -> {run_out}/eval_score.json, predictions_score.jsonl")
    key = "plcc_logistic" if logistic else "plcc"
    print(f"SRCC/{'PLCC (logistic)' if logistic else 'PLCC'}, split {split}:\n" + score_table_text(rows, columns, key))
    table = table or os.path.join(out or (ckpts[0] if ckpts and len(runs) == 1 else "out"), "score_table.json")
    atomic_write_json(table, {"rows": list(rows), "columns": columns, "metric": ["srcc", key], "split": split, "table": rows})
    print(f"table -> {table}")
    return rows


def fmt(x):
    return "-" if x is None else f"{x:.4f}"


def score_table_text(rows, columns, key):
    """Rows: trained on; columns: tested on; cells SRCC/PLCC."""
    def cell(m):
        return "/".join("  -  " if m.get(k) is None else f"{m[k]:.3f}" for k in ("srcc", key))
    lines = ["trained on \\ tested on".ljust(28) + "".join(c.rjust(14) for c in columns)]
    for row, entry in rows.items():
        lines.append(row[:28].ljust(28) + "".join(cell(entry["results"].get(c, {})).rjust(14) for c in columns))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- level precision (Table II)
def level_precision(scores, direction="higher_better"):
    """How much the 5-level conversion keeps: SRCC/PLCC between the level index (1..5) and the scores, the
    levels from iqa_datasets.norm_scores (equal intervals between the scores' min and max)."""
    items = [{"source": "x", "mos": float(s)} for s in scores]
    D.norm_scores(items, {"source": "x", "direction": direction})
    idx = [LEVELS.index(it["level"]) + 1 for it in items]
    oriented = [-s for s in scores] if direction == "lower_better" else list(scores)
    return {"n": len(items), "srcc": srcc(idx, oriented), "plcc": plcc(idx, oriented),
            "levels": {lv: idx.count(i + 1) for i, lv in enumerate(LEVELS)}}


# pyiqa metadata (../shared/iqa_meta): score column and direction of each dataset
LEVEL_META = {"koniq10k": ("mos", "higher_better"), "spaq": ("MOS", "higher_better"), "livec": ("mos", "higher_better"),
              "kadid10k": ("dmos", "higher_better"), "tid2013": ("mos", "higher_better"), "live": ("mos", "lower_better"),
              "csiq": ("dmos", "lower_better")}


def level_precision_report(meta=None, data=None, out="out"):
    """How much the MOS -> level conversion keeps: SRCC/PLCC between the 5 levels (1..5; equal intervals between
    the dataset's min and max, iqa_datasets.norm_scores) and the scores they come from, per dataset (the check of
    Table II). Reads IQA-PyTorch meta_info CSVs (`meta`, a folder; no images needed) and/or prepared score folders
    (`data`). Writes OUT/level_precision.json and prints the table."""
    results = {}
    if meta:
        for source, (col, direction) in LEVEL_META.items():
            path = os.path.join(meta, D.PYIQA_META[source])
            if os.path.isfile(path):
                rows = iqa_io.read_csv(path, [col])[1]
                scores = [iqa_io.num(r[col], f"{path}:{line}", col) for line, r in rows]
                results[source] = {"file": path, "direction": direction, **level_precision(scores, direction)}
    for d in [d for d in (data or "").split(",") if d]:
        with open(os.path.join(d, "meta.json")) as f:
            directions = json.load(f).get("score_direction", {})
        recs = [r for split in ("train", "val", "test") if os.path.exists(os.path.join(d, f"{split}.jsonl"))
                for r in load_records([d], split) if r.get("task") == "score" and r.get("mos") is not None]
        for source in sorted({r["source"] for r in recs}):
            scores = [r["mos"] for r in recs if r["source"] == source]
            direction = directions.get(source, "higher_better")
            results[f"{os.path.basename(os.path.normpath(d))}/{source}"] = {"direction": direction,
                                                                           **level_precision(scores, direction)}
    if not results:
        raise SystemExit("level-precision: nothing read; give --meta DIR (pyiqa meta_info CSVs) and/or --data DIR")
    print(f"{'dataset':24s} {'n':>6s} {'SRCC':>7s} {'PLCC':>7s}   images per level (bad..excellent)")
    for name, r in results.items():
        print(f"{name:24s} {r['n']:6d} {r['srcc']:7.4f} {r['plcc']:7.4f}   {list(r['levels'].values())}")
    path = os.path.join(out, "level_precision.json")
    atomic_write_json(path, {"what": "SRCC/PLCC of level index (1..5) vs the dataset's scores", "results": results})
    print(f"-> {path}")
    return results


# ----------------------------------------------------------------------------- mix ratio (Algorithm 1, steps 1-2)
def poly_argmax(x, y, degree=4, grid=2001):
    """Fits a polynomial of `degree` (lowered to len(x) - 1 when there are fewer points) and returns
    (argmax over [min x, max x] on a dense grid, coefficients highest power first, degree used)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2:
        raise ValueError("need at least 2 (ratio, score) points")
    deg = min(degree, len(np.unique(x)) - 1)
    coeffs = np.polyfit(x, y, deg)
    xs = np.linspace(x.min(), x.max(), grid)
    return float(xs[int(np.argmax(np.polyval(coeffs, xs)))]), [float(c) for c in coeffs], deg


def run_ratios(ratios, data, out, model="tiny", max_steps=300, split="val", train_args=""):
    """Trains the small model at each ratio (--mix score:1,interpret:RATIO) and scores it on the score data's `split`;
    -> [(ratio, score, srcc, plcc)], score = (SRCC + PLCC) / 2. data: 'SCORE_DIR,INTERPRET_DIR'."""
    score_dir, interp_dir = data.split(",")
    points = []
    for ratio in ratios:
        run_out = os.path.join(out, f"ratio_{ratio:g}")
        cmd = [sys.executable, "train.py", *train_args.split(), "--model", model, "--data", f"{score_dir},{interp_dir}",
               "--mix", f"score:1.0,interpret:{ratio:g}", "--max_steps", str(max_steps), "--out", run_out, "--log_every", "50"]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        subprocess.run([sys.executable, "evaluate.py", "score", "--ckpt", run_out, "--data", score_dir, "--split", split],
                       check=True)
        with open(os.path.join(run_out, "eval_score.json")) as f:
            m = json.load(f)["per_source"]
        m = m.get("all", next(iter(m.values())))
        points.append((ratio, (m["srcc"] + m["plcc"]) / 2, m["srcc"], m["plcc"]))
        print(f"ratio {ratio:g}: SRCC {m['srcc']:.4f} PLCC {m['plcc']:.4f}", flush=True)
    return points


def mix_ratio(points=None, degree=4, out="out/mix_ratio", run=False, ratios="0.25,0.5,1,2,4",
              data="data/demo_score,data/demo_interpret", model="tiny", max_steps=300, split="val", train_args=""):
    """Algorithm 1, steps 1-2: fit a degree-4 polynomial to (ratio, score) points and report its argmax, the mix
    ratio to map to the primary model. Points from a CSV (`points`, columns ratio,score), or run=True: train the
    small model at each of `ratios` (interpreting : scoring) and score it first. Writes OUT/mix_ratio.json,
    OUT/mix_ratio.png (points + curve) and, with run, OUT/points.csv."""
    if run:
        if not data or len(data.split(",")) != 2:
            raise SystemExit("mix-ratio --run needs --data SCORE_DIR,INTERPRET_DIR")
        rows = run_ratios([float(r) for r in ratios.split(",")], data, out, model, max_steps, split, train_args)
        points = points or os.path.join(out, "points.csv")
        atomic_write(points, "ratio,score,srcc,plcc\n" + "".join(f"{r:g},{s:.6f},{a:.6f},{b:.6f}\n" for r, s, a, b in rows))
    if not points:
        raise SystemExit("mix-ratio: give --points CSV (columns ratio,score) or --run true")
    with open(points, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"ratio", "score"} <= set(rows[0]):
        raise SystemExit(f"{points}: expected a CSV with columns ratio,score")
    x, y = np.array([float(r["ratio"]) for r in rows]), np.array([float(r["score"]) for r in rows])
    best, coeffs, deg = poly_argmax(x, y, degree)
    result = {"points": [[float(a), float(b)] for a, b in zip(x, y)], "degree": deg, "coefficients": coeffs,
              "argmax_ratio": best, "fitted_score_at_argmax": float(np.polyval(coeffs, best)),
              "best_measured": [float(x[np.argmax(y)]), float(y.max())]}
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, "mix_ratio.json"), result)
    mix_ratio_png(os.path.join(out, "mix_ratio.png"), x, y, coeffs, deg, best)
    print(f"degree-{deg} fit over {len(x)} points: argmax ratio {best:.4g} (fitted score {result['fitted_score_at_argmax']:.4f}); "
          f"best measured {result['best_measured'][0]:g} ({result['best_measured'][1]:.4f}) -> {out}/mix_ratio.json, mix_ratio.png")
    return result


def mix_ratio_png(path, x, y, coeffs, deg, best):
    plt = pyplot()
    xs = np.linspace(x.min(), x.max(), 400)
    fig, ax = plt.subplots(figsize=(5.6, 4))
    ax.plot(xs, np.polyval(coeffs, xs), label=f"degree-{deg} fit")
    ax.scatter(x, y, color="k", zorder=3, label="measured")
    ax.axvline(best, ls="--", color="r", label=f"argmax {best:.3g}")
    ax.set_xlabel("mix ratio (interpreting : scoring)")
    ax.set_ylabel("validation score")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_png(path, fig)
