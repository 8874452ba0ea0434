"""Q-Align's CE against DeQA-Score's soft labels (KL) and KL + fidelity, at fixed work on several seeds; one table.

    python prepare_data.py --task score --demo data/demo --out data/demo_score     # the demo's scoring view
    python sweeps/compare_score_losses.py --max_steps 1500 --out out/score_losses         # tiny model, 3 seeds x 4 losses
    python sweeps/compare_score_losses.py --config config/qalign_koniq.py --data data/deqa --torchrun 4 --seeds 0

Each variant is a plain train.py + evaluate.py score run (outputs in OUT/<variant>_s<seed>/). Fixed work: the same
steps and the same images per step; the fidelity variants' batches are pairs, so they take half --batch_size pairs
(kl+fidelity: DeQA-Score's weights, fidelity 1.0 and CE + KL of both images 0.05; kl+fidelity_nt1, ours: CE + KL at
1.0, for a model whose LM does not yet answer with levels). Runs already in OUT are evaluated again, not retrained.
Writes OUT/score_losses.json and .md: SRCC/PLCC on the test split, mean ± std over seeds and each seed's.
"""
import argparse
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo root: iqa_vlm/ and the entry scripts
sys.path.insert(0, ROOT)
from ablation import read_config
from iqa_vlm.common import atomic_write, atomic_write_json, boolean, train_then_evaluate

VARIANTS = [("ce", []), ("kl", ["--score_loss", "kl"]),
            ("kl+fidelity", ["--score_loss", "kl", "--fidelity", "1.0", "--next_token_weight", "0.05"]),  # DeQA's weights
            ("kl+fidelity_nt1", ["--score_loss", "kl", "--fidelity", "1.0", "--next_token_weight", "1.0"])]  # ours


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/demo.py", help="the train.py recipe (a config/*.py file)")
    ap.add_argument("--data", default="data/demo_score", help="a scoring set whose records carry level_probs")
    ap.add_argument("--out", default="out/score_losses")
    ap.add_argument("--max_steps", type=int, default=1500, help="steps per run (0: the recipe's)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trainable", default="encoder,projector")
    ap.add_argument("--only", default="", help="comma list of variants (ce, kl, kl+fidelity, kl+fidelity_nt1); default all")
    ap.add_argument("--torchrun", type=int, default=0, help="processes per run via torchrun (0 = plain python)")
    ap.add_argument("--train_args", default="", help="extra train.py arguments")
    ap.add_argument("--overwrite", type=boolean, default=False, help="replace runs already in OUT/<name>/")
    args = ap.parse_args(argv)
    recipe = read_config(args.config)
    extra_args = args.train_args.split()
    given = [extra_args[i + 1] for i, a in enumerate(extra_args[:-1]) if a == "--batch_size"] + \
        [a.split("=", 1)[1] for a in extra_args if a.startswith("--batch_size=")]
    batch = int(given[-1] if given else recipe.get("batch_size", 8))
    if batch % 2:
        raise SystemExit(f"--batch_size {batch} is odd: the fidelity variants take half as many pairs")
    only = set(filter(None, args.only.split(",")))
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    for name, extra in VARIANTS:
        if only and name not in only:
            continue
        if name.startswith("kl+fidelity"):  # pairs: half as many anchors, the same images per step
            extra = extra + ["--batch_size", str(batch // 2)]
        for seed in seeds:
            run_dir = os.path.join(args.out, f"{name.replace('+', '_')}_s{seed}")
            train_args = [args.config, "--data", args.data, "--trainable", args.trainable, "--seed", str(seed),
                          "--overwrite", str(args.overwrite).lower()] + \
                (["--max_steps", str(args.max_steps)] if args.max_steps else []) + extra_args + extra
            per = train_then_evaluate(run_dir, train_args, [("score", ["--data", args.data])], torchrun=args.torchrun,
                                      skip_trained=not args.overwrite)["score"]["per_source"]
            results.setdefault(name, {})[seed] = {s: {k: per[s][k] for k in ("srcc", "plcc")} for s in per}
    rows = ["| loss | SRCC mean ± std | PLCC mean ± std | " + " | ".join(f"seed {s} SRCC/PLCC" for s in seeds) + " |",
            "|---|---|---|" + "---|" * len(seeds)]
    for name, by_seed in results.items():
        src = sorted(next(iter(by_seed.values())))
        for s in src:
            sr = [by_seed[k][s]["srcc"] for k in seeds]
            pl = [by_seed[k][s]["plcc"] for k in seeds]
            sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
            rows.append(f"| {name}{f' ({s})' if len(src) > 1 else ''} | {statistics.mean(sr):.3f} ± {sd(sr):.3f} | "
                        f"{statistics.mean(pl):.3f} ± {sd(pl):.3f} | " +
                        " | ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(sr, pl)) + " |")
    table = "\n".join(rows)
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(os.path.join(args.out, "score_losses.json"),
                      {"config": args.config, "data": args.data, "max_steps": args.max_steps, "seeds": seeds,
                       "trainable": args.trainable, "results": results})
    atomic_write(os.path.join(args.out, "score_losses.md"), table + "\n")
    print(table)


if __name__ == "__main__":
    main()
