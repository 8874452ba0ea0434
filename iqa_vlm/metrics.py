"""Numbers every study reports: closed-set scores through the op, SRCC / PLCC (optionally after the 4-parameter
logistic fit of the IQA literature), per-source tables, mean and sample standard deviation.

    from iqa_vlm.metrics import closed_set_scores, srcc, plcc, score_metrics
    probs, score, nll = closed_set_scores(logits, level_ids, target)   # probs @ [1..K], through the fused op
    srcc(pred, mos), plcc(pred, mos), plcc(pred, mos, logistic=True), krcc(pred, mos)
    bootstrap_ci(pred, mos, srcc)                                      # seeded 95 % percentile interval
"""
import statistics
import warnings

import numpy as np
import torch

from iqa_vlm.data import LEVELS
from iqa_vlm import level_ce


# ----------------------------------------------------------------------------- closed-set scores
def closed_set_scores(logits, level_ids, target=None):
    """logits [N, V] at the answer position -> (probs [N, K], score [N] = probs @ 1..K, nll [N] or None).

    Goes through level_ce.level_cross_entropy (the op): its closed-set softmax gives probs, its loss the NLL of
    the true level token over the whole vocabulary. target: [N] index into level_ids (-1 = unknown), or None."""
    ids = torch.as_tensor(level_ids, dtype=torch.long, device=logits.device)
    if target is None:
        tgt = torch.full((logits.shape[0],), -100, dtype=torch.long, device=logits.device)
    else:
        t = torch.as_tensor(target, dtype=torch.long, device=logits.device)
        tgt = torch.where(t >= 0, ids[t.clamp(min=0)], torch.full_like(t, -100))
    loss, probs = level_ce.level_cross_entropy(logits.float().contiguous(), tgt, ids)
    return probs, level_ce.level_scores(probs), (loss if target is not None else None)


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


def krcc(pred, mos):
    """Kendall rank correlation (tau-b, which counts ties as scipy does); None when undefined."""
    from scipy.stats import kendalltau
    pred, mos, ok = _valid(pred, mos)
    return float(kendalltau(pred, mos)[0]) if ok else None


def bootstrap_ci(pred, mos, statistic, n_resamples=1000, seed=0, level=0.95):
    """Percentile bootstrap interval of statistic(pred, mos) over images resampled with replacement (pairs kept
    together): scipy.stats.bootstrap with a seeded generator, so a run repeats exactly. -> [low, high], or None when
    the statistic is undefined on the sample or on a resample (a constant draw)."""
    from scipy.stats import DegenerateDataWarning, bootstrap
    pred, mos, ok = _valid(pred, mos)
    if not ok or statistic(pred, mos) is None:
        return None

    def stat(p, m):
        v = statistic(p, m)
        return np.nan if v is None else v
    with warnings.catch_warnings():  # a constant resample makes the interval undefined: None below says so
        warnings.simplefilter("ignore", DegenerateDataWarning)
        res = bootstrap((pred, mos), stat, paired=True, vectorized=False, n_resamples=n_resamples, confidence_level=level,
                        method="percentile", rng=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return None if np.isnan(low) or np.isnan(high) else [float(low), float(high)]


def logistic4(x, b1, b2, b3, b4):
    """The 4-parameter logistic of the IQA literature: (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2."""
    z = np.clip(-(np.asarray(x, dtype=float) - b3) / max(abs(b4), 1e-12), -60, 60)
    return (b1 - b2) / (1 + np.exp(z)) + b2


def fit_logistic(pred, mos):
    """Least-squares fit of logistic4 mapping pred -> mos; returns [b1, b2, b3, b4] or None if it fails (also with
    fewer than 4 points: four parameters need at least four)."""
    from scipy.optimize import curve_fit
    pred, mos = np.asarray(pred, dtype=float), np.asarray(mos, dtype=float)
    if len(pred) < 4:
        return None
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


def score_metrics(preds, logistic=False, bootstrap=0, seed=0, logistic_ci=True):
    """Per-source and overall metrics of prediction dicts (score, mos, level, nll) -> {source: {...}}: SRCC, PLCC,
    KRCC (and PLCC after the logistic fit); with bootstrap=B each also gets a 95 % interval from B resamples
    (`<metric>_ci`, seeded; the fitted PLCC's only with logistic_ci: a fit per resample costs ~70 ms at 10k images)."""
    out = {}
    sources = sorted({p["source"] for p in preds})
    for name in sources + (["all"] if len(sources) > 1 else []):
        part = [p for p in preds if name == "all" or p["source"] == name]
        score, mos = [p["score"] for p in part], [p["mos"] for p in part]
        m = {"n": len(part), "srcc": srcc(score, mos), "plcc": plcc(score, mos), "krcc": krcc(score, mos)}
        if logistic:
            m["plcc_logistic"] = plcc(score, mos, logistic=True)
        if bootstrap:
            stats = {"srcc": srcc, "plcc": plcc, "krcc": krcc,
                     **({"plcc_logistic": lambda p, q: plcc(p, q, logistic=True)} if logistic and logistic_ci else {})}
            for key, fn in stats.items():
                m[f"{key}_ci"] = bootstrap_ci(score, mos, fn, bootstrap, seed)
        lv = [p for p in part if p.get("level") in LEVELS and len(p["probs"]) == len(LEVELS)]
        if lv:
            m["level_accuracy"] = sum(LEVELS[int(np.argmax(p["probs"]))] == p["level"] for p in lv) / len(lv)
        nll = [p["nll"] for p in part if p.get("nll") is not None]
        if nll:
            m["nll"] = float(np.mean(nll))
        out[name] = m
    return out


def mean_std(values):
    """(mean, sample standard deviation with n - 1; 0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
