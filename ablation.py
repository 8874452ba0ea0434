"""Which part carries distortion perception? Train and evaluate each freeze configuration, print one table.

    python ablation.py                                   # tiny model on the demo, 5 minutes per configuration
    python ablation.py --minutes 2 --out out/ablation_quick
    python ablation.py --model llava-hf/llava-1.5-7b-hf --data data/distortion --max_steps 2000 \\
        --partial_llm llm:24-31 --torchrun 4            # a real checkpoint, 4 GPUs per run

Each configuration is a plain train.py + evaluate.py run (their outputs stay in OUT/<name>/), so any
row can be rerun or inspected alone. Writes OUT/ablation.json and OUT/ablation.md (the table).
"""
import argparse
import json
import os
import subprocess
import sys
import time

from common import atomic_write, atomic_write_json
from data import LABELS

# the paper's configurations (its Table 1), plus the untuned baseline
CONFIGS = [("encoder", "encoder"), ("projector", "projector"), ("llm", "llm"),
           ("encoder+projector", "encoder,projector"), ("encoder+partial llm", "encoder,{partial}"),
           ("projector+llm", "projector,llm")]


def run(cmd):
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--out", default="out/ablation")
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget per configuration")
    ap.add_argument("--max_steps", type=int, default=0, help="fixed step count instead of --minutes")
    ap.add_argument("--partial_llm", default="llm:1-1", help="the LM layers of 'encoder+partial llm' (tiny has 2: 0-1)")
    ap.add_argument("--only", default="", help="comma list of configuration names to run (default all)")
    ap.add_argument("--torchrun", type=int, default=0, help="processes per run via torchrun (0 = plain python)")
    ap.add_argument("--train_args", default="", help="extra train.py arguments, e.g. '--lr 1e-4 --batch_size 8'")
    args = ap.parse_args(argv)
    launcher = [sys.executable] if not args.torchrun else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.torchrun}"]
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    rows = []
    t0 = time.time()
    for name, spec in CONFIGS:
        if only and name not in only:
            continue
        spec = spec.format(partial=args.partial_llm)
        out = os.path.join(args.out, name.replace(" ", "_").replace("+", "_"))
        budget = ["--max_steps", str(args.max_steps)] if args.max_steps else ["--max_minutes", str(args.minutes)]
        run(launcher + ["train.py", "--model", args.model, "--data", args.data, "--trainable", spec, "--out", out]
            + budget + args.train_args.split())
        run([sys.executable, "evaluate.py", "--ckpt", out, "--data", args.data])
        rows.append((f"{name} ({spec})", json.load(open(os.path.join(out, "eval_distortion.json")))))
    if not only or "untuned" in only:
        out = os.path.join(args.out, "untuned")
        run([sys.executable, "evaluate.py", "--model", args.model, "--data", args.data, "--out", out])
        rows.append(("untuned (options listed)", json.load(open(os.path.join(out, "eval_distortion.json")))))
    short = [l[:5] for l in LABELS]
    lines = [f"| configuration | accuracy | generation | {' | '.join(short)} |", "|---" * (3 + len(LABELS)) + "|"]
    for name, r in rows:
        per = " | ".join("–" if r["per_class"][l] is None else f"{100 * r['per_class'][l]:.0f}" for l in LABELS)
        gen = f"{100 * r['generation_accuracy']:.1f}" if "generation_accuracy" in r else "–"
        lines.append(f"| {name} | {100 * r['accuracy']:.1f} | {gen} | {per} |")
    table = "\n".join(lines)
    note = (f"\nmodel {args.model}, data {args.data} ({rows[0][1]['n'] if rows else 0} test samples), "
            f"{'%d steps' % args.max_steps if args.max_steps else '%.1f min' % args.minutes} per configuration, "
            f"accuracy = closed-set argmax over the {len(LABELS)} class tokens (%), generation = free answer parsed (%); "
            f"total {(time.time() - t0) / 60:.1f} min\n")
    atomic_write(os.path.join(args.out, "ablation.md"), table + "\n" + note)
    atomic_write_json(os.path.join(args.out, "ablation.json"), {name: r for name, r in rows})
    print("\n" + table + note)


if __name__ == "__main__":
    main()
