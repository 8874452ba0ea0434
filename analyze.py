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
