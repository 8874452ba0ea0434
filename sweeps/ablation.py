"""Which part carries distortion perception? Train and evaluate each freeze configuration of Table 1 of Li, Sun, Chen,
Nishida, "Investigate the low-level visual perception in vision-language based image quality assessment"; one table.

    python sweeps/ablation.py                                   # config/demo.py: tiny model on the demo, 5 minutes each
    python sweeps/ablation.py --max_steps 1500 --out out/ablation
    python sweeps/ablation.py --config config/distortion_mplug_owl2.py --partial_llm llm:24-31 \\
        --baselines q-future/q-instruct-mplug-owl2-1031 --torchrun 4 --train_args "--fsdp true"   # the paper's recipe and rows
    python analyze.py distortion-tables --ablation out/ablation/ablation.json  # Table 1 beside the paper's

--config is the train.py recipe every run starts from (model, data, lr, steps, ...); --model / --data / --max_steps /
--minutes override it. Each configuration is a plain train.py + evaluate.py run (their outputs stay in OUT/<name>/),
so any row can be rerun or inspected alone. Writes OUT/ablation.json and OUT/ablation.md (the table).
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo root: iqa_vlm/ and the entry scripts
sys.path.insert(0, ROOT)
from iqa_vlm.common import atomic_write, atomic_write_json, boolean, evaluate_only, train_then_evaluate
from iqa_vlm.data import LABELS

# the paper's configurations (its Table 1), plus the untuned baseline
CONFIGS = [("encoder", "encoder"), ("projector", "projector"), ("llm", "llm"),
           ("encoder+projector", "encoder,projector"), ("encoder+partial llm", "encoder,{partial}"),
           ("projector+llm", "projector,llm")]


def read_config(path):
    """The keys a config/*.py file sets (it is Python, as train.py reads it)."""
    if not os.path.isfile(path):
        raise SystemExit(f"--config {path}: not found")
    keys = {}
    exec(open(path).read(), {}, keys)
    return keys


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/demo.py", help="the train.py recipe (a config/*.py file)")
    ap.add_argument("--model", default=None, help="overrides the recipe's model")
    ap.add_argument("--data", default=None, help="overrides the recipe's data")
    ap.add_argument("--out", default="out/ablation")
    ap.add_argument("--minutes", type=float, default=0.0, help="training budget per configuration (0: the recipe's; "
                                                               "5 with the demo recipe when --max_steps is 0 too)")
    ap.add_argument("--max_steps", type=int, default=0, help="fixed step count per configuration (0: the recipe's)")
    ap.add_argument("--partial_llm", default="llm:1-1", help="the LM layers of 'encoder+partial llm' (tiny has 2: 0-1)")
    ap.add_argument("--only", default="", help="comma list of configuration names to run (default all)")
    ap.add_argument("--torchrun", type=int, default=0, help="processes per run via torchrun (0 = plain python)")
    ap.add_argument("--train_args", default="", help="extra train.py arguments, e.g. '--lr 1e-4 --batch_size 8'")
    ap.add_argument("--overwrite", type=boolean, default=False, help="replace runs already in OUT/<name>/ (train.py --overwrite)")
    ap.add_argument("--baselines", default="", help="more untuned models evaluated as the base is (options listed), "
                                                    "e.g. the paper's Q-Instruct row: q-future/q-instruct-mplug-owl2-1031")
    args = ap.parse_args(argv)
    recipe = read_config(args.config)
    model, data = args.model or recipe.get("model", "tiny"), args.data or recipe.get("data", "data/demo")
    if not args.max_steps and not args.minutes and not recipe.get("max_steps") and not recipe.get("max_minutes"):
        args.minutes = 5.0  # the demo recipe trains by time
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    rows = []
    t0 = time.time()
    for name, spec in CONFIGS:
        if only and name not in only:
            continue
        spec = spec.format(partial=args.partial_llm)
        out = os.path.join(args.out, name.replace(" ", "_").replace("+", "_"))
        budget = (["--max_steps", str(args.max_steps)] if args.max_steps else []) + \
            (["--max_minutes", str(args.minutes)] if args.minutes else [])
        train_args = [args.config, "--model", model, "--data", data, "--trainable", spec] + budget + \
            (["--overwrite", "true"] if args.overwrite else []) + args.train_args.split()
        res = train_then_evaluate(out, train_args, [("distortion", ["--data", data])], torchrun=args.torchrun)
        rows.append((f"{name} ({spec})", res["distortion"]))
    if not only or "untuned" in only:
        out = os.path.join(args.out, "untuned")
        rows.append(("untuned (options listed)", evaluate_only("distortion", ["--model", model, "--data", data, "--out", out], out)))
    for baseline in [b for b in args.baselines.split(",") if b]:
        out = os.path.join(args.out, "untuned_" + os.path.basename(baseline.rstrip("/")))
        rows.append((f"untuned {baseline} (options listed)",
                     evaluate_only("distortion", ["--model", baseline, "--data", data, "--out", out], out)))
    short = [l[:5] for l in LABELS]
    # the paper scores the generated answer; the closed-set argmax (and its per-class split) is the second column
    lines = [f"| configuration | generated answer | closed set | {' | '.join(short)} |", "|---" * (3 + len(LABELS)) + "|"]
    for name, r in rows:
        per = " | ".join("–" if r["per_class"][l] is None else f"{100 * r['per_class'][l]:.0f}" for l in LABELS)
        gen = f"{100 * r['generation_accuracy']:.1f}" if "generation_accuracy" in r else "–"
        lines.append(f"| {name} | {gen} | {100 * r['accuracy']:.1f} | {per} |")
    table = "\n".join(lines)
    budget = f"{args.max_steps} steps" if args.max_steps else f"{args.minutes:.1f} min" if args.minutes else "the recipe's steps"
    note = (f"\nmodel {model}, data {data}, recipe {args.config} ({rows[0][1]['n'] if rows else 0} test samples), "
            f"{budget} per configuration, "
            f"generated answer = the free answer parsed for a class word (%, the paper's metric), closed set = argmax "
            f"over the {len(LABELS)} class tokens after the answer's prefix (%, and per class); "
            f"total {(time.time() - t0) / 60:.1f} min\n")
    atomic_write(os.path.join(args.out, "ablation.md"), table + "\n" + note)
    atomic_write_json(os.path.join(args.out, "ablation.json"), {name: r for name, r in rows})
    print("\n" + table + note)


if __name__ == "__main__":
    main()
