"""Quality scoring (Q-Align / Q-SiT): prompts, closed-set scores, SRCC/PLCC, data mix and its balance.

    import scoring as S
    rec = S.score_record("koniq10k/1.jpg", "/data/koniq/512x384/1.jpg", "good", "koniq10k", "1", rng)
    probs, score, nll = S.closed_set_scores(logits, level_ids, target)   # through kernels.level_cross_entropy
    S.srcc(pred, mos), S.plcc(pred, mos), S.plcc(pred, mos, logistic=True)
    mixer = S.Mixer(["data/demo_score", "data/demo_interpret"], "score:1.0,interpret:2.5")  # train.py --mix
    new_mix, ratio, action = S.balance_mix(mix, {"score": 0.9, "interpret": 1.2}, lam=0.8)
    x_best, coeffs = S.poly_argmax(ratios, scores, degree=4)             # analyze.py mix-ratio

Used by prepare_data.py (--task score / interpret), train.py (--mix, --balance), evaluate.py (--task score) and
analyze.py (mix-ratio, level-precision). Formulas: ../shared/DESIGN.md ("Levels", "Scores", "Mix ratio").
"""
import math
import os
import random

import numpy as np
import torch

from data import LEVELS

# ----------------------------------------------------------------------------- prompts (Q-Align form)
SCORE_QUESTION = "How would you rate the quality of this image?"   # the canonical question (val/test)
SCORE_PARAPHRASES = [SCORE_QUESTION, "Can you rate the quality of this image?", "How is the quality of this image?",
                     "Please rate the quality of this image.", "What is the quality of this image?",
                     "Rate the quality of the image."]
SCORE_PREFIX = "The quality of the image is"    # the answer is "The quality of the image is {level}."
SYSTEM_PREFIX = "Assume you are an image quality evaluator."   # system turn for scoring data in a mix
LEVEL_WEIGHTS = [1.0, 2.0, 3.0, 4.0, 5.0]       # score = probs @ weights (1..5); on [0, 1]: (score - 1) / 4


def score_record(rid, image, level, source, ref, rng=None, **extra):
    """One scoring record. rng (random.Random) picks a paraphrase of the question; None = the canonical one."""
    question = rng.choice(SCORE_PARAPHRASES) if rng is not None else SCORE_QUESTION
    return {"id": rid, "image": image,
            "conversations": [{"from": "human", "value": "<image>\n" + question},
                              {"from": "gpt", "value": f"{SCORE_PREFIX} {level}."}],
            "task": "score", "source": source, "ref": ref, "level": level, **extra}


def with_system(record, text=SYSTEM_PREFIX):
    """A copy of the record with a system turn first (unchanged if it already has one)."""
    if record["conversations"] and record["conversations"][0]["from"] == "system":
        return record
    return {**record, "conversations": [{"from": "system", "value": text}] + record["conversations"]}


# ----------------------------------------------------------------------------- closed-set scores
def closed_set_scores(logits, level_ids, target=None):
    """logits [N, V] at the answer position -> (probs [N, K], score [N] = probs @ 1..K, nll [N] or None).

    Goes through kernels.level_cross_entropy (the op): its closed-set softmax gives probs, its loss the NLL of
    the true level token over the whole vocabulary. target: [N] index into level_ids (-1 = unknown), or None."""
    from kernels import level_cross_entropy, level_scores
    ids = torch.as_tensor(level_ids, dtype=torch.long, device=logits.device)
    if target is None:
        tgt = torch.full((logits.shape[0],), -100, dtype=torch.long, device=logits.device)
    else:
        t = torch.as_tensor(target, dtype=torch.long, device=logits.device)
        tgt = torch.where(t >= 0, ids[t.clamp(min=0)], torch.full_like(t, -100))
    loss, probs = level_cross_entropy(logits.float().contiguous(), tgt, ids)
    return probs, level_scores(probs), (loss if target is not None else None)


# ----------------------------------------------------------------------------- correlation metrics
def _valid(pred, mos):
    pred, mos = np.asarray(pred, dtype=float), np.asarray(mos, dtype=float)
    if pred.shape != mos.shape:
        raise ValueError(f"pred has {pred.shape} values, mos {mos.shape}")
    ok = len(pred) >= 3 and np.ptp(pred) > 0 and np.ptp(mos) > 0
    return pred, mos, ok


def srcc(pred, mos):
    """Spearman rank correlation; None when undefined (fewer than 3 points or a constant input)."""
    from scipy.stats import spearmanr
    pred, mos, ok = _valid(pred, mos)
    return float(spearmanr(pred, mos)[0]) if ok else None


def logistic4(x, b1, b2, b3, b4):
    """The 4-parameter logistic of the IQA literature: (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2."""
    z = np.clip(-(np.asarray(x, dtype=float) - b3) / max(abs(b4), 1e-12), -60, 60)
    return (b1 - b2) / (1 + np.exp(z)) + b2


def fit_logistic(pred, mos):
    """Least-squares fit of logistic4 mapping pred -> mos; returns [b1, b2, b3, b4] or None if it fails."""
    from scipy.optimize import curve_fit
    pred, mos = np.asarray(pred, dtype=float), np.asarray(mos, dtype=float)
    p0 = [mos.max(), mos.min(), float(np.median(pred)), float(pred.std()) or 1.0]

    def jac(x, b1, b2, b3, b4):  # analytic: MINPACK's finite-difference step is |b|*eps, ~0 for a b3 near 0
        s = abs(b4) if abs(b4) > 1e-12 else 1e-12
        sig = 1 / (1 + np.exp(np.clip(-(x - b3) / s, -60, 60)))
        d = (b1 - b2) * sig * (1 - sig)
        return np.stack([sig, 1 - sig, -d / s, -d * (x - b3) / s ** 2 * np.sign(b4 or 1.0)], axis=1)
    try:
        params, _ = curve_fit(logistic4, pred, mos, p0=p0, jac=jac, maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return [float(p) for p in params]


def plcc(pred, mos, logistic=False):
    """Pearson linear correlation, after mapping pred through the fitted logistic4 when logistic=True
    (falls back to the raw predictions if the fit fails). None when undefined."""
    from scipy.stats import pearsonr
    pred, mos, ok = _valid(pred, mos)
    if not ok:
        return None
    if logistic:
        params = fit_logistic(pred, mos)
        if params is not None:
            fitted = logistic4(pred, *params)
            pred = fitted if np.ptp(fitted) > 0 else pred
    return float(pearsonr(pred, mos)[0])


def score_metrics(preds, logistic=False):
    """Per-source and overall metrics of prediction dicts (score, mos, level, nll) -> {source: {...}}."""
    out = {}
    sources = sorted({p["source"] for p in preds})
    for name in sources + (["all"] if len(sources) > 1 else []):
        part = [p for p in preds if name == "all" or p["source"] == name]
        score, mos = [p["score"] for p in part], [p["mos"] for p in part]
        m = {"n": len(part), "srcc": srcc(score, mos), "plcc": plcc(score, mos)}
        if logistic:
            m["plcc_logistic"] = plcc(score, mos, logistic=True)
        lv = [p for p in part if p.get("level") in LEVELS]
        if lv:
            m["level_accuracy"] = sum(LEVELS[int(np.argmax(p["probs"]))] == p["level"] for p in lv) / len(lv)
        nll = [p["nll"] for p in part if p.get("nll") is not None]
        if nll:
            m["nll"] = float(np.mean(nll))
        out[name] = m
    return out


def level_precision(scores, direction="higher_better"):
    """How much the 5-level conversion keeps: SRCC/PLCC between the level index (1..5) and the scores, the
    levels from iqa_datasets.norm_scores (equal intervals between the scores' min and max)."""
    import iqa_datasets as D
    items = [{"source": "x", "mos": float(s)} for s in scores]
    D.norm_scores(items, {"source": "x", "direction": direction})
    idx = [LEVELS.index(it["level"]) + 1 for it in items]
    oriented = [-s for s in scores] if direction == "lower_better" else list(scores)
    return {"n": len(items), "srcc": srcc(idx, oriented), "plcc": plcc(idx, oriented),
            "levels": {lv: idx.count(i + 1) for i, lv in enumerate(LEVELS)}}


# ----------------------------------------------------------------------------- polynomial fit (mix ratio)
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


# ----------------------------------------------------------------------------- data mix (train.py --mix)
# A --mix name matches a --data folder by its base name, or records by task group (or by the task itself).
MIX_GROUPS = {"score": ("score",), "interpret": ("describe", "reason"), "general": ("vqa",),
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


def epoch_sample(sizes, mix, seed, epoch):
    """[(name, index in that source)] for one epoch, shuffled: weight w gives floor(w) full passes over the
    source plus a seeded random round(frac(w) * n) of its records (so n * w records in all)."""
    rng = random.Random(f"mix:{seed}:{epoch}")
    out = []
    for name, w in mix.items():
        n = sizes.get(name, 0)
        if n == 0 or w <= 0:
            continue
        full = int(w)
        out += [(name, i) for _ in range(full) for i in range(n)]
        out += [(name, i) for i in rng.sample(range(n), min(n, round((w - full) * n)))]
    rng.shuffle(out)
    return out


def balance_mix(mix, val_loss, lam, step=0.1, tol=0.02, score="score", interp="interpret"):
    """Q-SiT Alg. 1, step 3: ratio = val_loss[score] / val_loss[interp] against the reference lam. A ratio above
    lam * (1 + tol) means scoring falls behind: its weight is multiplied by (1 + step) and interpreting's divided
    by it; below lam * (1 - tol) the other way round; else unchanged. -> (new mix, ratio, action)."""
    ratio = val_loss[score] / max(val_loss[interp], 1e-12)
    new = dict(mix)
    if ratio > lam * (1 + tol):
        new[score], new[interp], action = mix[score] * (1 + step), mix[interp] / (1 + step), f"more {score}"
    elif ratio < lam * (1 - tol):
        new[score], new[interp], action = mix[score] / (1 + step), mix[interp] * (1 + step), f"more {interp}"
    else:
        action = "keep"
    return {k: round(v, 6) for k, v in new.items()}, ratio, action


def uses_system_prefix(mix_spec):
    """Scoring data gets the system turn when the mix draws on more than one source."""
    return bool(mix_spec) and sum(w > 0 for w in parse_mix(mix_spec).values()) > 1


class Mixer:
    """train.py --mix: the --data folders as named sources, a per-epoch sampled order, validation sets, --balance.

    Validation records of a source come from its folder's val.jsonl, else a seeded val_frac of its train
    records (held out of training). With more than one source, scoring records get the system turn."""

    def __init__(self, data_dirs, spec, seed=0, val_frac=0.05, val_max=256, score="score", interp="interpret"):
        from data import load_records
        dirs = [d for d in data_dirs.split(",") if d] if isinstance(data_dirs, str) else list(data_dirs)
        self.mix, self.seed, self.score, self.interp = parse_mix(spec), seed, score, interp
        self.system = uses_system_prefix(spec)
        names = list(self.mix)
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
                    if self.system and r.get("task") == "score":
                        r = with_system(r)
                    if split == "val" or (not has_val and rng.random() < val_frac):
                        self.val[name].append(r)
                    else:
                        self.groups[name].append(len(self.records))
                        self.records.append(r)
        empty = [n for n in names if not self.groups[n] and self.mix[n] > 0]
        if empty:
            raise ValueError(f"--mix: no training records for {empty} in {dirs}")
        for n in names:  # a fixed, seeded subset keeps each evaluation comparable and quick
            random.Random(f"valpick:{seed}:{n}").shuffle(self.val[n])
            self.val[n] = self.val[n][:val_max]
        self.lam = None  # the balance reference; set by the first evaluation unless given

    def sizes(self):
        return {n: len(ix) for n, ix in self.groups.items()}

    def epoch_size(self):
        return len(epoch_sample(self.sizes(), self.mix, self.seed, 0))

    def order(self, epoch):
        """Indices into self.records for one epoch under the current mix."""
        return [self.groups[name][i] for name, i in epoch_sample(self.sizes(), self.mix, self.seed, epoch)]

    def describe(self):
        return "mix: " + ", ".join(f"{n} x{w:g} ({len(self.groups[n])} train, {len(self.val[n])} val)"
                                   for n, w in self.mix.items()) + ("; system turn on scoring data" if self.system else "")

    def restore(self, log):
        """After --resume: the mix and reference of the last balance record in the log."""
        for rec in reversed(log):
            if "mix" in rec:
                self.mix, self.lam = dict(rec["mix"]), rec.get("lambda")
                return

    @torch.no_grad()
    def val_losses(self, net, processor, batch_size=32, device="cpu", amp_dtype=None):
        """Mean answer-token NLL (no label smoothing) per source with validation records."""
        from data import encode_batch
        from kernels import level_cross_entropy
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
        """One balance step from the validation losses; returns the log record (mix before -> after)."""
        for k in (self.score, self.interp):
            if k not in val_loss:
                raise ValueError(f"--balance needs validation records of {self.score!r} and {self.interp!r}; "
                                 f"have {sorted(val_loss)} (--mix names: {list(self.mix)})")
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
                "mix_before": before, "mix": new}
