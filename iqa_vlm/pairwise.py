"""Scores from paired comparisons: Thurstone's Case V by MAP (the prompting study's aggregation, as its authors fit it)
and Bradley-Terry (an alternative).

    C = comparison_counts(pairs, items)       # pairs [(a, b, s)]: s = 1 a better, 0 b better, 0.5 the same
    s = thurstone_map(C)                      # one score per item, higher = better, scaled to [0, 100]
    s = bradley_terry(pairs)                  # {item: log strength}

Wu et al. (ECCV 2024, the MLLM-for-IQA study; released code TianheWu/MLLMs-for-IQA, utils.optimize_score): C[i, j]
counts the times i was judged better than j, a tie adds one to both C[i, j] and C[j, i]; the scores maximise
sum_ij C_ij log max(Phi(s_i - s_j), 1e-6) - sum_i s_i^2 / 2 (unit-variance Case V, a standard normal prior on each
score) subject to sum_i s_i = 0, and are min-max scaled to [0, 100]. Without the clip the objective is strictly convex;
the clip only bites at differences beyond about 4.75 standard deviations. We start from zeros where the authors start
from a seeded random vector, and say so on stderr when the optimiser reports no convergence.
"""
import sys

import numpy as np
from scipy.optimize import minimize
from scipy.stats import norm

BT_PRIOR = 1.0  # virtual tied games of every item against an average one (bradley_terry)


def comparison_counts(pairs, items=None):
    """[(a, b, s)] -> (C [n, n], items): C[i, j] += 1 when i beat j; a tie (s = 0.5) adds 1 to both directions."""
    items = list(items) if items is not None else sorted({a for a, _, _ in pairs} | {b for _, b, _ in pairs}, key=str)
    ix = {it: k for k, it in enumerate(items)}
    C = np.zeros((len(items), len(items)))
    for a, b, s in pairs:
        i, j = ix[a], ix[b]
        if s == 1:
            C[i, j] += 1
        elif s == 0:
            C[j, i] += 1
        else:
            C[i, j] += 1
            C[j, i] += 1
    return C, items


def thurstone_objective(s, C):
    """The negative log posterior and its gradient (the clip at 1e-6 as the authors': its gradient is 0 there)."""
    d = s[:, None] - s[None, :]
    cdf = norm.cdf(d)
    clipped = cdf < 1e-6
    nll = -(C * np.log(np.maximum(cdf, 1e-6))).sum() + 0.5 * (s ** 2).sum()
    w = np.where(clipped, 0.0, C * norm.pdf(d) / np.maximum(cdf, 1e-300))  # d(-C log Phi(d_ij)) / d d_ij = -w_ij
    grad = -(w.sum(1) - w.sum(0)) + s
    return nll, grad


def thurstone_map(C, scale=True):
    """Case V scores by MAP from the count matrix C (see the module docstring) -> [n] array; scale=True maps them to
    [0, 100] (min-max, as the authors report them), False returns the latent scores (sum 0)."""
    C = np.asarray(C, dtype=float)
    n = len(C)
    if n == 0:
        return np.zeros(0)
    res = minimize(thurstone_objective, np.zeros(n), args=(C,), jac=True, method="SLSQP",
                   constraints=[{"type": "eq", "fun": lambda s: s.sum(), "jac": lambda s: np.ones_like(s)}],
                   options={"maxiter": 1000, "ftol": 1e-12})
    if not res.success:
        print(f"thurstone_map: SLSQP did not converge ({res.message}); using its last point", file=sys.stderr)
    s = res.x - res.x.mean()
    if not scale:
        return s
    span = s.max() - s.min()
    return (s - s.min()) / span * 100 if span > 0 else np.full(n, 50.0)


def bradley_terry(pairs, prior=BT_PRIOR, iters=10000, tol=1e-10):
    """Bradley-Terry strengths from pairwise outcomes [(a, b, s)] -> {item: log strength} (higher = better).

    Model: P(a beats b) = p_a / (p_a + p_b). A tie counts half a win for each side. Fitted by Hunter's (2004) MM
    update p_i <- W_i / sum_j n_ij / (p_i + p_j) (W_i: wins, n_ij: games between i and j). `prior` adds that many
    tied games of every item against a virtual item of strength 1: the maximum-likelihood estimate then exists
    even for an item that won (or lost) every game, and items never compared with each other (different groups)
    sit on one scale. prior=0 is the plain MLE (needs every item to have won and lost; scale: geometric mean 1)."""
    items = sorted({a for a, _, _ in pairs} | {b for _, b, _ in pairs}, key=str)
    ix = {it: k for k, it in enumerate(items)}
    n = len(items)
    wins, games = np.zeros(n), np.zeros((n, n))
    for a, b, s in pairs:
        i, j = ix[a], ix[b]
        wins[i] += s
        wins[j] += 1 - s
        games[i, j] += 1
        games[j, i] += 1
    if prior == 0 and ((wins <= 0) | (wins >= games.sum(1))).any():
        raise ValueError("Bradley-Terry without a prior needs every item to have won and lost at least once")
    p = np.ones(n)
    for _ in range(iters):
        new = (wins + prior / 2) / ((games / (p[:, None] + p[None, :])).sum(1) + prior / (p + 1))
        if prior == 0:
            new /= np.exp(np.log(new).mean())
        change = np.abs(np.log(new) - np.log(p)).max()
        p = new
        if change < tol:
            break
    return {it: float(np.log(p[k])) for it, k in ix.items()}
