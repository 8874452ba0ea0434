"""Distribution-based scoring (DeQA-Score, You et al., CVPR 2025): soft level labels from each image's MOS and the
spread of its ratings, trained with a KL loss at the level position (the op's soft-target mode, iqa_vlm/level_ce.py), plus
a Thurstone fidelity loss over image pairs. Evaluation is Q-Align's closed-set score, unchanged.

    python prepare_data.py --task score --koniq /data/koniq10k --out data/score    # records carry level_probs
    python train.py config/deqa_mplug_owl2.py --data data/score --out out/deqa      # KL + fidelity, the paper's recipe
    python train.py config/demo.py --data data/demo_score --score_loss kl --fidelity 1.0 --out out/demo_deqa

Soft labels, as the authors' build_soft_labels/gen_soft_label.py builds them, per dataset:
  mu = 4 (mos - m) / (M - m) + 1, sigma = 4 std / (M - m)      (m, M: the dataset's min and max MOS)
  p_x = N(x; mu, sigma) ("pdf": KonIQ, KADID)  or  Phi((x+.5-mu)/sigma) - Phi((x-.5-mu)/sigma) ("cdf": SPAQ),  x = 1..5
  mean-preserving: A = sum p, B = sum x p, alpha = (mu - 3) / (B - 3A + 1e-9), beta = (1 - alpha A) / 5,
  p'_x = max(alpha p_x + beta, 0)                                                   (not renormalised)
  fallback when sigma < 0.2 or |sum x p'_x - mu| > 0.1: the mass split between the two levels around mu in
  proportion to the distance (their get_binary_probs, eps 1e-8).
(At mu exactly 3 their alpha is 0: the labels are uniform whatever sigma; kept, since it is what their code does.)
Stored per record as level_probs in LEVELS order (bad ... excellent; their files list excellent first), with
std_norm = sigma. Not in their code, so ours (README): datasets other than KonIQ/SPAQ/KADID use "pdf"; a record
without a spread (SPAQ's public metadata and IQA-PyTorch's have none: give DeQA-Score's released mos.json with
prepare_data.py --deqa_metas spaq:DIR to use the authors' spread; AGIQA-3K's and LIVE's, CSIQ's) gets the binary
labels, counted in meta.json; KADID-10k's spread column is its ratings' variance ('var'), so sigma comes from its square root; KonIQ's
IQA-PyTorch metadata gives the spread of the 1-5 ratings beside MOS_zscore, so sigma = 4 std / (the observed range of
the 1-5 MOS, from its c1..c5 shares). --soft_density / --soft_spread override these per source.

Fidelity (their rating_loss with use_fix_std, the released recipe): for a pair (A, B) of the same dataset,
  predicted  p^ = Phi((mu^_A - mu^_B) / sqrt(2))       (mu^ = closed-set softmax over the five levels @ [1..5])
  target     p  = Phi((m_A - m_B) / sqrt(s_A^2 + s_B^2 + 1e-8))
  loss       1 - sqrt(p^ p + 1e-8) - sqrt((1 - p^)(1 - p) + 1e-8), averaged over pairs;
their total: 1.0 * fidelity + 0.05 * (CE + KL of A + CE + KL of B), CE over the answer's other tokens.
"""
import math

import torch

from iqa_vlm.data import IGNORE
from iqa_vlm.level_ce import level_cross_entropy

THRE_STD = 0.2        # their config.json, every dataset
THRE_DIFF = 0.1
DENSITY = {"koniq10k": "pdf", "kadid10k": "pdf", "spaq": "cdf"}   # their config.json; other sources: "pdf" (ours)
SPREAD = {"kadid10k": "var"}   # what a source's std field holds: "std" (default) or "var" (a variance)
LEVEL_VALUES = [1, 2, 3, 4, 5]  # LEVELS order: bad .. excellent


def _phi(x):
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _Phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def binary_probs(mu):
    """Their get_binary_probs on the 1..5 scale, in LEVELS order: the two levels around mu share the mass."""
    eps, probs = 1e-8, [0.0] * 5
    for idx in range(1, 5):
        left, right = idx - eps, idx + 1 + eps
        if left < mu <= right:
            probs[idx - 1] = (right - mu) / (right - left)
            probs[idx] = (mu - left) / (right - left)
            return probs
    raise ValueError(f"binary_probs: mu={mu} is outside the 1..5 level scale")


def soft_level_probs(mu, sigma, density="pdf"):
    """-> (level_probs in LEVELS order, kind): kind "gaussian", or "binary" (sigma None or < THRE_STD, or the adjusted
    Gaussian's mean off mu by more than THRE_DIFF)."""
    if density not in ("pdf", "cdf"):
        raise ValueError(f"soft_level_probs: density must be 'pdf' or 'cdf', got {density!r}")
    if sigma is None or not sigma >= THRE_STD:
        return binary_probs(mu), "binary"
    if density == "pdf":
        p = [_phi((x - mu) / sigma) / sigma for x in LEVEL_VALUES]
    else:
        p = [_Phi((x + 0.5 - mu) / sigma) - _Phi((x - 0.5 - mu) / sigma) for x in LEVEL_VALUES]
    A, B = sum(p), sum(x * v for x, v in zip(LEVEL_VALUES, p))
    alpha = (mu - 3) / (B - 3.0 * A + 1e-9)
    beta = (1.0 - alpha * A) / 5.0
    q = [max(alpha * v + beta, 0.0) for v in p]
    if abs(sum(x * v for x, v in zip(LEVEL_VALUES, q)) - mu) > THRE_DIFF:
        return binary_probs(mu), "binary"
    return q, "gaussian"


def parse_source_map(spec, allowed, what):
    """'koniq10k:pdf,spaq:cdf' -> {source: value}, values checked against `allowed`."""
    out = {}
    for part in filter(None, (spec or "").split(",")):
        source, _, value = part.partition(":")
        if value not in allowed:
            raise ValueError(f"{what}: {part!r} should be SOURCE:{'|'.join(allowed)}")
        out[source.strip()] = value
    return out


def read_authors_mos(path):
    """DeQA-Score's released per-dataset metadata (Data-DeQA-Score/<SET>/metas/mos.json, which their
    gen_soft_label.py reads): {image name: {"mos": .., "std": ..}}, the values numbers or numeric strings, on the
    dataset's own scale. `path` is that file or its folder. -> ({basename: (mos, std)}, [min mos, max mos]): their
    spread is normalised by the file's own MOS range."""
    import json
    import os
    path = os.path.join(path, "mos.json") if os.path.isdir(path) else path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: expected DeQA-Score's mos.json (metas/ of Data-DeQA-Score)")
    with open(path) as f:
        raw = json.load(f)
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected a non-empty object {{image name: {{mos, std}}}}")
    out = {}
    for name, v in raw.items():
        try:
            out[os.path.basename(name)] = (float(v["mos"]), float(v["std"]))
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{path}: entry {name!r} is {v!r}, expected {{'mos': number, 'std': number}}") from None
    mos = [m for m, _ in out.values()]
    return out, [min(mos), max(mos)]


def spread_scale(source, info):
    """M - m of the scale a source's std is on, as the authors normalise it (sigma = 4 std / (M - m), the observed range):
    the MOS range, except where the reader found the std on another scale (info["std_scale_range"]: KonIQ-10k's
    IQA-PyTorch metadata, MOS_zscore beside the spread of the 1-5 ratings, whose observed 1-5 MOS range is 1.10-4.31).
    KonIQ's pyiqa layout without its c1..c5 columns: the 1-5 scale's full width, 4."""
    if info.get("std_scale_range"):
        m, M = info["std_scale_range"]
        return M - m
    if source == "koniq10k" and info.get("layout") == "pyiqa":
        return 4.0
    m, M = info["score_range"]
    return M - m


def attach_soft_labels(splits, infos, density=None, spread=None):
    """Adds level_probs (LEVELS order) and std_norm (sigma, None without a spread) to every scoring record that has a
    mos_norm, in place. infos: {source: reader info} (score_range, layout). -> {source: {kind: count}} for meta.json."""
    density, spread = {**DENSITY, **(density or {})}, {**SPREAD, **(spread or {})}
    counts = {}
    for records in splits.values():
        for r in records:
            if r.get("mos_norm") is None:
                continue
            source = r["source"]
            info = infos[source]
            mu = 4 * r["mos_norm"] + 1
            std = r.get("std")
            if std is not None and spread.get(source, "std") == "var":
                std = math.sqrt(max(std, 0.0))
            sigma = None if std is None else 4 * std / spread_scale(source, info)
            probs, kind = soft_level_probs(mu, sigma, density.get(source, "pdf"))
            kind = kind if std is not None else "binary (no spread)"
            r["level_probs"] = [round(v, 6) for v in probs]
            r["std_norm"] = None if sigma is None else round(sigma, 6)
            c = counts.setdefault(source, {"density": density.get(source, "pdf"), "spread": spread.get(source, "std")})
            c[kind] = c.get(kind, 0) + 1
    return counts


# ----------------------------------------------------------------------------- training pieces (train.py)
def level_rows(targets, row_sample, level_ids, n_samples):
    """Row index of each sample's level token: the first supervised row whose target is a level id (the answer is
    "The quality of the image is {level}."), -1 when the sample has none. -> [n_samples] int64."""
    is_level = (targets[:, None] == level_ids[None, :]).any(1)
    rows = torch.full((n_samples,), -1, dtype=torch.long, device=targets.device)
    idx = is_level.nonzero().squeeze(1)
    if idx.numel():  # rows come in sample order: a sample's first level row is where the sample id changes
        s = row_sample[idx]
        first = torch.ones_like(s, dtype=torch.bool)
        first[1:] = s[1:] != s[:-1]
        rows[s[first]] = idx[first]
    return rows


def soft_targets(targets, level_ids, rows, level_probs):
    """Per-row soft targets for the op: every level-target row one-hot on its level (then KL = CE), each sample's level
    row its level_probs (rows of NaN = none: stays one-hot). -> [N, K] float32."""
    hit = targets[:, None] == level_ids[None, :]
    P = hit.float()
    has = (rows >= 0) & ~torch.isnan(level_probs).any(1)
    P[rows[has]] = level_probs[has].to(P)
    return P


def fidelity_loss(score_a, score_b, mos_a, std_a, mos_b, std_b):
    """Their continuous fidelity loss with the fixed predicted std (use_fix_std), mean over pairs. score_*: predicted
    closed-set scores (1..5, differentiable); mos_*, std_*: ground truth in any one unit per pair (std 0 = none)."""
    eps = 1e-8
    pred = 0.5 * (1 + torch.erf((score_a - score_b) / 2))  # 2 = sqrt(2 * (1 + 1))
    gt = 0.5 * (1 + torch.erf((mos_a - mos_b) / torch.sqrt(2 * (std_a ** 2 + std_b ** 2 + eps))))
    return (1 - (pred * gt + eps).sqrt() - ((1 - pred) * (1 - gt) + eps).sqrt()).mean()


def deqa_batch_loss(logits, targets, labels, score, level_ids, score_loss="kl", kl_weight=1.0, fidelity=0.0,
                    next_token_weight=1.0, label_smoothing=0.0):
    """DeQA-Score's losses on one batch (train.py): next_token_weight * (CE on the answer's other tokens + kl_weight * KL
    at the level position) + fidelity * the fidelity loss of the pairs. logits/targets: the supervised rows
    (model.SupervisedLogits); labels [B, T]; score: loader.score_targets' tensors. With fidelity the batch is B/2
    anchors then their partners, and CE and KL are summed over a pair's two images, as DeQA sums them
    (CE_A + KL_A + CE_B + KL_B; CE per image = the mean over its tokens). score_loss "ce": no KL, the level word is one
    more CE token; with "kl", label_smoothing applies to the other tokens only (the op's soft rows take none).
    -> (loss, {loss_ce, loss_kl (per image), loss_fidelity} as floats)."""
    n, pair_factor = labels.shape[0], 2 if fidelity else 1
    row_sample = (labels[:, 1:] != IGNORE).nonzero()[:, 0]  # SupervisedLogits' rows, in sample order
    rows = level_rows(targets, row_sample, level_ids, n)
    if not bool((rows >= 0).all()):
        raise ValueError("a training answer has no level word (DeQA-Score's losses read the level position)")
    P = soft_targets(targets, level_ids, rows, score["score_level_probs"]) if score_loss == "kl" else None
    scores = None
    if fidelity:  # closed-set scores at the level rows, read before the op's backward overwrites the logits (this
        # indexing keeps no view of them; its gradient comes back as one more [N, V] tensor autograd adds)
        levels = torch.arange(1, len(level_ids) + 1, device=logits.device, dtype=torch.float32)
        scores = torch.softmax(logits[rows][:, level_ids].float(), 1) @ levels
    per_row = level_cross_entropy(logits, targets, level_ids if P is not None else None, label_smoothing,
                                  inplace_backward=True, target_probs=P)[0]
    soft = torch.zeros_like(per_row, dtype=torch.bool)
    if P is not None:  # the level rows given soft labels: KL; every other row: CE
        soft[rows[~torch.isnan(score["score_level_probs"]).any(1)]] = True
    half = row_sample < n // pair_factor  # without pairs: every row
    ce_parts = [per_row[~soft & m] for m in ((half, ~half) if fidelity else (half,))]
    ce = sum(c.mean() if c.numel() else per_row.sum() * 0 for c in ce_parts)  # CE_A + CE_B, each over its own tokens
    kl = per_row[soft].sum() / (n // pair_factor)  # batchmean per image, both images of a pair summed
    loss = next_token_weight * (ce + kl_weight * kl)
    parts = {"loss_ce": ce.item() / pair_factor, **({"loss_kl": kl.item() / pair_factor} if P is not None else {})}
    if fidelity:
        h = n // 2
        fid = fidelity_loss(scores[:h], scores[h:], score["score_mos"][:h], score["score_std"][:h],
                            score["score_mos"][h:], score["score_std"][h:])
        parts["loss_fidelity"] = fid.item()
        loss = loss + fidelity * fid
    return loss, parts
