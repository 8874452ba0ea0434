"""Q-SiT's data mix (Algorithm 1): steps 1-2 find the coarse-grained ratio of scoring (D1), interpreting (D2) and
general (D3) data on a small model, and the reference loss ratio λ; step 3 (Mixer, train.py --mix --balance) draws each
epoch's records at that ratio and steers it by λ.

Zhang, Wu, Jia, Lin, Zhai, "Teaching LMMs for image quality scoring and interpreting" (Sec. III-C3, IV-B, Fig. 4):
step 1 trains the small model on D2:D3 mixes (all of D2 with D3 at 0.1..1 of it, then all of D3 with D2 at 1..0.1 of
it, i.e. |D2|/|D3| from 10 down to 0.1), scores each on LLVisionQA-dev, three repeats, and takes the argmax r* of a degree-4 polynomial fit (paper: D2:D3 =
2.42); step 2 mixes |D2 + D3| (at r*) with D1 as the base, |D2+D3|:D1 in [0.1, 0.2, ..., 1, 2, ..., 10], scored on the
mean of LLVisionQA-dev accuracy and the IQA (SRCC + PLCC) / 2, again fitted (paper: 3.54). Together:
D1:D2:D3 = 1 : rB r*/(1 + r*) : rB/(1 + r*) (paper: 1.00 : 2.50 : 1.04), and λ = L_S / L_I (paper: about 1 : 4.66).

    python analyze.py mix-ratio --run true --score_data data/score --interpret_data data/qinstruct --general_data data/llava \
        --qbench_val data/llvqa_dev --model llava-hf/llava-onevision-qwen2-0.5b-ov-hf --train_args config/qsit_mini.py \
        --max_steps 2000 --out out/mix_ratio            # the paper's grids, 3 repeats (57 + 57 runs)
    python analyze.py mix-ratio --points out/mix_ratio/points_step1.csv --out out/refit   # fit only (ratio,score)
    python train.py config/qsit_mini.py out/mix_ratio/qsit_step3.py --out out/qsit_mini  # step 3, from the written file

Choices where the paper is silent (ours): each run trains --max_steps (the paper stops the small model when its
validation loss plateaus); the fit is over the ratio itself; λ is the mean of L_S / L_I over the step-2 runs at the
grid point nearest the fitted argmax, read from the validation losses each run logs at its end. The three sources are
named in the mix by their folders' base names, first D1 then D2 then D3 (train.py --balance reads them in that order).
"""
import csv
import io
import json
import math
import os
import random

import numpy as np
import torch

from iqa_vlm.common import atomic_write, atomic_write_json, atomic_write_png, pyplot, read_json, train_then_evaluate
from iqa_vlm.data import encode_batch, load_records, with_instruction

# the paper's grids: step 1 as |D2| / |D3| (D3 at 0.1..1 of D2, then D2 at 1..0.1 of D3), step 2 as |D2 + D3| / |D1|
GRID_A = sorted({round(1 / k, 4) for k in np.arange(0.1, 1.01, 0.1)} | {round(k, 4) for k in np.arange(0.1, 1.01, 0.1)})
GRID_B = [round(k, 1) for k in np.arange(0.1, 1.0, 0.1)] + [float(k) for k in range(1, 11)]
PAPER = {"r_d2_d3": 2.42, "r_d23_d1": 3.54, "mix": [1.00, 2.50, 1.04], "lambda": 1 / 4.66}


def poly_argmax(x, y, degree=4, grid=2001):
    """Fits a polynomial of `degree` (lowered to the number of distinct x - 1 when there are fewer points) and returns
    (argmax over [min x, max x] on a dense grid, coefficients highest power first, degree used)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(np.unique(x)) < 2:
        raise ValueError("need at least 2 distinct ratios to fit")
    deg = min(degree, len(np.unique(x)) - 1)
    coeffs = np.polyfit(x, y, deg)
    xs = np.linspace(x.min(), x.max(), grid)
    return float(xs[int(np.argmax(np.polyval(coeffs, xs)))]), [float(c) for c in coeffs], deg


def name(folder):
    return os.path.basename(os.path.normpath(folder))


def step1_mix(r, d2, d3):
    """|D2| / |D3| = r with the larger of the two taken whole (the base, first in the spec)."""
    return f"{name(d2)}:1,{name(d3)}:{1 / r:.6g}" if r >= 1 else f"{name(d3)}:1,{name(d2)}:{r:.6g}"


def coarse_mix(r_a, r_b):
    """D1:D2:D3 from r* = |D2|/|D3| and rB = |D2 + D3|/|D1|."""
    return [1.0, r_b * r_a / (1 + r_a), r_b / (1 + r_a)]


def run_point(out, mix, data, seed, args):
    """Trains one small model on `mix` and evaluates it. -> {qbench accuracy, srcc, plcc, val losses per source}."""
    run = os.path.join(out, f"{mix.replace(':', '_').replace(',', '__')}__seed{seed}")
    point = os.path.join(run, "eval_point.json")
    settings = {k: args[k] for k in ("model", "max_steps", "train_args", "qbench_val", "qbench_split", "score_data", "iqa_split")}
    if not os.path.exists(point) or read_json(point).get("settings") != settings:  # a rerun resumes past finished points
        # each run measures its own fixed mix: no balancing, the validation sets of its own sources
        train_args = [*args["train_args"].split(), "--model", args["model"], "--data", data, "--mix", mix, "--seed", str(seed),
                      "--max_steps", str(args["max_steps"]), "--eval_every", str(args["max_steps"]), "--balance", "false",
                      "--interpret_val", "", "--overwrite", "true", "--log_every", "50"]
        evals = [("qbench", ["--data", args["qbench_val"], "--split", args["qbench_split"]])]
        if args.get("score_eval"):
            evals.append(("score", ["--data", args["score_data"], "--split", args["iqa_split"]]))
        res = train_then_evaluate(run, train_args, evals)
        with open(os.path.join(run, "log.jsonl")) as f:
            logged = [json.loads(line) for line in f if '"val_loss"' in line]
        if not logged:
            raise SystemExit(f"mix-ratio: {run} logged no validation loss (do its sources have val.jsonl or a val_frac share?)")
        result = {"settings": settings, "val_loss": logged[-1]["val_loss"],
                  "qbench_accuracy": res["qbench"].get("released_rule", res["qbench"].get("closed_set"))["overall"]["accuracy"]}
        if result["qbench_accuracy"] is None:
            raise SystemExit(f"mix-ratio: {args['qbench_val']} ({args['qbench_split']}) has no question with a known answer")
        if "score" in res:
            per = res["score"]["per_source"]
            m = per.get("all", next(iter(per.values())))
            result.update(srcc=m["srcc"], plcc=m["plcc"])
        atomic_write_json(point, result)
    return read_json(point)


def sweep(step, ratios, mixes, data, out, args, perf):
    """Every ratio x repeat; -> rows [ratio, repeat, performance, ...] written to OUT/points_stepN.csv."""
    rows = []
    for r, mix in zip(ratios, mixes):
        for seed in range(args["repeats"]):
            res = run_point(os.path.join(out, f"step{step}"), mix, data, seed, args)
            rows.append({"ratio": r, "repeat": seed, "score": perf(res), "mix": mix, **{k: v for k, v in res.items() if k != "val_loss"},
                         "val_loss": json.dumps(res["val_loss"])})
            print(f"step {step}: ratio {r:g} repeat {seed}: performance {rows[-1]['score']:.4f}", flush=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(os.path.join(out, f"points_step{step}.csv"), buf.getvalue())
    return rows


def fit(rows, degree):
    x = np.array([r["ratio"] for r in rows], dtype=float)
    y = np.array([r["score"] for r in rows], dtype=float)
    best, coeffs, deg = poly_argmax(x, y, degree)
    return {"points": [[float(a), float(b)] for a, b in zip(x, y)], "degree": deg, "coefficients": coeffs, "argmax_ratio": best,
            "fitted_score_at_argmax": float(np.polyval(coeffs, best)), "best_measured": [float(x[np.argmax(y)]), float(y.max())]}


def curve_png(path, results, labels):
    """Fig. 4's pair: measured points, the degree-4 curve and its argmax, per step."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.8), squeeze=False)
    for ax, res, (xlabel, ylabel) in zip(axes[0], results, labels):
        x = np.array([p[0] for p in res["points"]])
        y = np.array([p[1] for p in res["points"]])
        xs = np.linspace(x.min(), x.max(), 400)
        ax.plot(xs, np.polyval(res["coefficients"], xs), label=f"degree-{res['degree']} fit")
        ax.scatter(x, y, color="k", s=14, zorder=3, label="measured")
        ax.axvline(res["argmax_ratio"], ls="--", color="r", label=f"argmax {res['argmax_ratio']:.3g}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_png(path, fig)


def mix_ratio(points=None, degree=4, out="out/mix_ratio", run=False, score_data="data/demo_score",
              interpret_data="data/demo_mcq", general_data="data/demo", qbench_val="data/demo_mcq", qbench_split="val",
              iqa_split="val", model="tiny", max_steps=300, repeats=3, grid_a=None, grid_b=None, train_args="config/demo.py"):
    """analyze.py mix-ratio. With run: Algorithm 1 steps 1-2 end to end -> OUT/mix_ratio.json (both fits, the coarse
    D1:D2:D3 and λ), OUT/mix_ratio.png (Fig. 4's two curves), OUT/points_step{1,2}.csv and OUT/qsit_step3.py (mix,
    balance and λ for train.py). Without: a degree-`degree` fit of a CSV's (ratio, score) points -> OUT/mix_ratio.json, .png."""
    os.makedirs(out, exist_ok=True)
    if not run:
        if not points:
            raise SystemExit("mix-ratio: give --points CSV (columns ratio,score) or --run true")
        try:
            with open(points, newline="") as f:
                rows = [{"ratio": float(r["ratio"]), "score": float(r["score"])} for r in csv.DictReader(f)]
            if len({r["ratio"] for r in rows}) < 2:
                raise ValueError("fewer than two distinct ratios")
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise SystemExit(f"{points}: expected a CSV with columns ratio,score and at least two distinct ratios ({e})") from None
        result = fit(rows, degree)
        atomic_write_json(os.path.join(out, "mix_ratio.json"), result)
        curve_png(os.path.join(out, "mix_ratio.png"), [result], [("mix ratio", "validation performance")])
        print(f"degree-{result['degree']} fit over {len(rows)} points: argmax ratio {result['argmax_ratio']:.4g} (fitted "
              f"{result['fitted_score_at_argmax']:.4f}); best measured {result['best_measured'][0]:g} -> {out}/mix_ratio.json, .png")
        return result
    for flag, folder in (("--score_data", score_data), ("--interpret_data", interpret_data), ("--general_data", general_data),
                         ("--qbench_val", qbench_val)):
        if not os.path.isdir(folder):
            raise SystemExit(f"mix-ratio --run: {flag} {folder} is not a prepared folder")
    grid_a = [float(g) for g in grid_a.split(",")] if grid_a else GRID_A
    grid_b = [float(g) for g in grid_b.split(",")] if grid_b else GRID_B
    args = dict(model=model, max_steps=max_steps, repeats=repeats, train_args=train_args, qbench_val=qbench_val,
                qbench_split=qbench_split, score_data=score_data, iqa_split=iqa_split)
    # step 1: D2 with D3, scored on LLVisionQA-dev
    d23 = f"{interpret_data},{general_data}"
    rows1 = sweep(1, grid_a, [step1_mix(r, interpret_data, general_data) for r in grid_a], d23, out, args,
                  lambda res: res["qbench_accuracy"])
    fit1 = fit(rows1, degree)
    r_a = fit1["argmax_ratio"]
    # step 2: |D2 + D3| at r_a with D1 as the base, scored on the mean of LLVisionQA-dev and the IQA (SRCC + PLCC) / 2
    mixes = []
    for r_b in grid_b:
        w = coarse_mix(r_a, r_b)
        mixes.append(f"{name(score_data)}:1,{name(interpret_data)}:{w[1]:.6g},{name(general_data)}:{w[2]:.6g}")
    rows2 = sweep(2, grid_b, mixes, f"{score_data},{d23}", out, {**args, "score_eval": True},
                  lambda res: (res["qbench_accuracy"] + (res["srcc"] + res["plcc"]) / 2) / 2)
    fit2 = fit(rows2, degree)
    r_b = fit2["argmax_ratio"]
    nearest = min(grid_b, key=lambda g: abs(g - r_b))
    ratios = [json.loads(r["val_loss"]) for r in rows2 if r["ratio"] == nearest]
    lam = float(np.mean([v[name(score_data)] / v[name(interpret_data)] for v in ratios]))
    w = coarse_mix(r_a, r_b)
    spec = f"{name(score_data)}:1.0,{name(interpret_data)}:{w[1]:.4g},{name(general_data)}:{w[2]:.4g}"
    result = {"step1": {"what": "|D2|/|D3| vs LLVisionQA-dev accuracy", **fit1},
              "step2": {"what": "|D2+D3|/|D1| vs mean(LLVisionQA-dev accuracy, IQA (SRCC+PLCC)/2)", **fit2},
              "coarse_mix": {"D1": 1.0, "D2": w[1], "D3": w[2]}, "mix": spec, "lambda": lam,
              "lambda_from": f"L_S/L_I of the step-2 runs at |D2+D3|/|D1| = {nearest:g} (nearest grid point), mean of {len(ratios)}",
              "paper": PAPER, "settings": {k: v for k, v in args.items()}, "grid_a": grid_a, "grid_b": grid_b}
    atomic_write_json(os.path.join(out, "mix_ratio.json"), result)
    curve_png(os.path.join(out, "mix_ratio.png"), [fit1, fit2],
              [("D2:D3 ratio", "LLVisionQA-dev accuracy"), ("|D2+D3|:D1 ratio", "mean of LLVisionQA-dev and IQA")])
    data = f"{score_data},{interpret_data},{general_data}"
    atomic_write(os.path.join(out, "qsit_step3.py"),
                 f"# written by analyze.py mix-ratio (Algorithm 1 steps 1-2): the coarse mix and the reference loss ratio\n"
                 f"data = {data!r}\nmix = {spec!r}\nbalance = True\nbalance_lambda = {lam:.6g}\n")
    print(f"step 1: D2:D3 = {r_a:.3g} (paper 2.42); step 2: |D2+D3|:D1 = {r_b:.3g} (paper 3.54) -> D1:D2:D3 = "
          f"1.00 : {w[1]:.2f} : {w[2]:.2f} (paper 1.00 : 2.50 : 1.04); λ = L_S/L_I = {lam:.4g} (paper 1/4.66 = 0.2146)\n"
          f"-> {out}/mix_ratio.json, mix_ratio.png, points_step1.csv, points_step2.csv, qsit_step3.py (train.py step 3)")
    return result


# ----------------------------------------------------------------------------- the data mix (train.py --mix)
# A --mix name matches a --data folder by its base name, or records by task group (or by the task itself).
MIX_GROUPS = {"score": ("score",), "interpret": ("describe", "reason", "mcq"), "general": ("vqa",),
              "distortion": ("distortion",)}


def parse_mix(spec):
    """'score:1.0,interpret:2.5' -> {'score': 1.0, 'interpret': 2.5} (order kept; weights >= 0, one > 0)."""
    mix = {}
    for item in [s.strip() for s in str(spec).split(",") if s.strip()]:
        name, sep, w = item.partition(":")
        try:
            weight = float(w) if sep else float("nan")
        except ValueError:
            weight = float("nan")
        if not name or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"--mix: {item!r} is not NAME:WEIGHT with a weight >= 0 (e.g. score:1.0,interpret:2.5)")
        if name in mix:
            raise ValueError(f"--mix: {name!r} given twice")
        mix[name] = weight
    if not mix or not any(w > 0 for w in mix.values()):
        raise ValueError(f"--mix {spec!r}: expected NAME:WEIGHT pairs with at least one weight > 0")
    return mix


def source_name(record, folder, names):
    """Which --mix name a record belongs to: its folder's base name, else its task's group, else its task."""
    base = os.path.basename(os.path.normpath(folder))
    if base in names:
        return base
    task = record.get("task", "distortion")
    for name in names:
        if task in MIX_GROUPS.get(name, ()) or task == name:
            return name
    return None


def mix_counts(sizes, mix):
    """Records drawn per epoch, {name: count}: a weight is a record ratio relative to the first source's size (Q-SiT's
    D1:D2:D3 = 1.00:2.50:1.04 over |D1| = 100 records draws 100, 250 and 104), whatever the other sources hold."""
    base = next((sizes.get(n, 0) for n, w in mix.items() if w > 0), 0)
    return {name: round(w * base) if sizes.get(name, 0) else 0 for name, w in mix.items()}


def epoch_sample(sizes, mix, seed, epoch):
    """[(name, index in that source)] for one epoch, shuffled, mix_counts(sizes, mix) records per source: a seeded
    sample without repeats, or, for a count above what the source holds, full passes plus a seeded sample of the rest
    (records repeat; Mixer.describe says so). A new draw each epoch."""
    rng = random.Random(f"mix:{seed}:{epoch}")
    out = []
    for name, count in mix_counts(sizes, mix).items():
        n = sizes.get(name, 0)
        if count <= 0:
            continue
        passes, rest = divmod(count, n)
        out += [(name, i) for _ in range(passes) for i in range(n)]
        out += [(name, i) for i in rng.sample(range(n), rest)]
    rng.shuffle(out)
    return out


def balance_mix(mix, val_loss, lam, step=0.1, tol=0.02, score="score", interp="interpret"):
    """Q-SiT Alg. 1, step 3 (eqs 9-10), once per epoch: ratio = val_loss[score] / val_loss[interp] against the reference
    lam. Below lam, interpreting falls behind: |D2 + D3| grows, i.e. every source but `score` is multiplied by
    (1 + step), keeping their ratio; above lam, |D1| (`score`) grows by (1 + step). Within lam * (1 +- tol): unchanged.
    The paper says "increase" without a size; step and tol are our choices. -> (new mix, ratio, action)."""
    ratio = val_loss[score] / max(val_loss[interp], 1e-12)
    new = dict(mix)
    if ratio < lam * (1 - tol):
        new = {k: w if k == score else w * (1 + step) for k, w in mix.items()}
        action = f"more {'+'.join(k for k in mix if k != score)}"
    elif ratio > lam * (1 + tol):
        new[score], action = mix[score] * (1 + step), f"more {score}"
    else:
        action = "keep"
    return {k: round(v, 6) for k, v in new.items()}, ratio, action


def uses_instruction(mix_spec):
    """Scoring data starts its question with scoring.EVALUATOR_INSTRUCTION when the mix draws on more than one source
    (Q-SiT's released scoring data)."""
    return bool(mix_spec) and sum(w > 0 for w in parse_mix(mix_spec).values()) > 1


class Mixer:
    """train.py --mix: the --data folders as named sources, a per-epoch sampled order, validation sets, --balance
    (which reads the first source as D1, scoring, and the second as D2, interpreting; the others grow with D2).

    Validation records of a source come from its folder's val.jsonl, else a seeded val_frac of its train
    records (held out of training), all of them unless val_max caps each source. With more than one source, scoring
    records' questions start with `score_instruction` (train.py passes scoring.EVALUATOR_INSTRUCTION)."""

    def __init__(self, data_dirs, spec, seed=0, val_frac=0.05, val_max=0, score_instruction=None, interpret_val=None):
        dirs = [d for d in data_dirs.split(",") if d] if isinstance(data_dirs, str) else list(data_dirs)
        self.mix, self.seed = parse_mix(spec), seed
        if interpret_val is not None and sum(w > 0 for w in self.mix.values()) < 2:
            raise ValueError(f"--interpret_val: the mix {spec!r} has no second (interpreting) source")
        self.instruction = score_instruction if score_instruction and uses_instruction(spec) else None
        names = list(self.mix)
        # Algorithm 1's D1 (scoring) and D2 (interpreting): the mix's first and second sources of weight > 0 (the first is
        # also the base of the record ratios, mix_counts); D3.. the rest
        drawn = [n for n in names if self.mix[n] > 0]
        self.score, self.interp = drawn[0], drawn[1] if len(drawn) > 1 else None
        self.records, self.groups, self.val = [], {n: [] for n in names}, {n: [] for n in names}
        for d in dirs:
            has_val = os.path.exists(os.path.join(d, "val.jsonl"))
            rng = random.Random(f"val:{seed}:{os.path.basename(os.path.normpath(d))}")
            for split in (["train", "val"] if has_val else ["train"]):
                for r in load_records([d], split):
                    name = source_name(r, d, names)
                    if name is None:
                        raise ValueError(f"--mix {spec!r}: a record of {d} (task {r.get('task', 'distortion')!r}) matches "
                                         f"no name; names match a --data folder's base name or a task group "
                                         f"{ {k: list(v) for k, v in MIX_GROUPS.items()} }")
                    if self.instruction and r.get("task") == "score":
                        r = with_instruction(r, self.instruction)
                    replaced = interpret_val is not None and name == self.interp  # its val comes from interpret_val
                    if split == "val" or (not has_val and not replaced and rng.random() < val_frac):
                        self.val[name].append(r)
                    else:
                        self.groups[name].append(len(self.records))
                        self.records.append(r)
        empty = [n for n in names if not self.groups[n] and self.mix[n] > 0]
        if empty:
            raise ValueError(f"--mix: no training records for {empty} in {dirs}")
        if interpret_val is not None:  # Q-SiT validates interpreting on LLVisionQA-dev, not on a share of D2
            self.val[self.interp] = list(interpret_val)
        for n in names:  # val_max > 0: a fixed, seeded subset, quicker (ours); 0: all of it, as Q-SiT validates
            random.Random(f"valpick:{seed}:{n}").shuffle(self.val[n])
            self.val[n] = self.val[n][:val_max] if val_max else self.val[n]
        self.lam = None  # the balance reference; set by the first evaluation unless given

    def sizes(self):
        return {n: len(ix) for n, ix in self.groups.items()}

    def epoch_size(self):
        return len(epoch_sample(self.sizes(), self.mix, self.seed, 0))

    def order(self, epoch):
        """Indices into self.records for one epoch under the current mix."""
        return [self.groups[name][i] for name, i in epoch_sample(self.sizes(), self.mix, self.seed, epoch)]

    def describe(self):
        """Records drawn per source per epoch, e.g. 'score: 100, interpret: 250 of 1000, general: 104 of 300'."""
        sizes, counts = self.sizes(), mix_counts(self.sizes(), self.mix)
        parts = []
        for n in self.mix:
            part = f"{n}: {counts[n]}" + (f" of {sizes[n]}" if counts[n] != sizes[n] else "")
            if counts[n] > sizes[n] > 0:
                part += f" (more than it holds: {counts[n] // sizes[n]} passes + {counts[n] % sizes[n]} drawn, records repeat)"
            parts.append(part + f", {len(self.val[n])} val")
        first = next(n for n, w in self.mix.items() if w > 0)
        return (f"mix (records per epoch, weights relative to {first}'s {sizes[first]}): " + "; ".join(parts)
                + ("; the evaluator instruction on scoring data" if self.instruction else ""))

    def restore(self, log):
        """After --resume: the mix and reference λ of the last balance record in the log (records of plain evaluations
        carry the mix but no λ)."""
        for rec in reversed(log):
            if "lambda" in rec:
                self.mix, self.lam = dict(rec["mix"]), rec["lambda"]
                return

    @torch.no_grad()
    def val_losses(self, net, processor, batch_size=32, device="cpu", amp_dtype=None):
        """Mean answer-token NLL (no label smoothing) per source with validation records."""
        from iqa_vlm.level_ce import level_cross_entropy
        module = getattr(net, "module", net)  # past DDP: every rank evaluates the same records itself
        was_training = module.training
        module.eval()
        out = {}
        for name, recs in self.val.items():
            if not recs:
                continue
            total, count = 0.0, 0
            for s in range(0, len(recs), batch_size):
                batch = {k: v.to(device) for k, v in encode_batch(processor, recs[s:s + batch_size]).items()}
                with torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    logits, targets = module(**batch)
                    loss = level_cross_entropy(logits.float(), targets)[0]
                total, count = total + float(loss.sum()), count + loss.numel()
            out[name] = total / max(count, 1)
        module.train(was_training)
        return out

    def balance(self, val_loss, lam=0.0, step=0.1, tol=0.02, ddp=False):
        """One balance step from the validation losses (balance_mix); returns the log record (mix before -> after,
        records per source of the next epoch)."""
        for k in (self.score, self.interp):
            if k is None or k not in val_loss:
                raise ValueError(f"--balance needs validation records of the mix's first (scoring) and second "
                                 f"(interpreting) sources; have {sorted(val_loss)} (--mix names: {list(self.mix)})")
        ratio = val_loss[self.score] / max(val_loss[self.interp], 1e-12)
        if self.lam is None:
            self.lam = lam if lam > 0 else ratio
        new, ratio, action = balance_mix(self.mix, val_loss, self.lam, step, tol, self.score, self.interp)
        if ddp:  # rank 0's decision, so every rank samples the same mix
            names = list(new)
            t = torch.tensor([new[n] for n in names], dtype=torch.float64,
                             device="cuda" if torch.cuda.is_available() else "cpu")
            torch.distributed.broadcast(t, 0)
            new = {n: float(v) for n, v in zip(names, t.tolist())}
        before, self.mix = self.mix, new
        return {"ratio": round(ratio, 5), "lambda": round(self.lam, 5), "action": action,
                "mix_before": before, "mix": new, "records": mix_counts(self.sizes(), new)}
