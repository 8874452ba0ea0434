"""DeQA-Score (deqa.py): soft level labels, the fidelity loss, the batch loss train.py uses, image pairs, and
train.py --score_loss kl --fidelity end to end on a tiny scoring set."""
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from iqa_vlm.studies import deqa  # noqa: E402
from iqa_vlm import level_ce  # noqa: E402
from iqa_vlm import loader  # noqa: E402
import prepare_data as P  # noqa: E402
from test_scoring import mini_demo  # noqa: E402


# ----------------------------------------------------------------------------- soft labels
# Expected values: the authors' construction (build_soft_labels/gen_soft_label.py) evaluated with scipy.stats.norm, as
# their script does, for these (mu, sigma, density); LEVELS order (bad .. excellent), their lists reversed.
AUTHORS = [
    ((4.0, 0.5, "pdf"), [0.0, 0.0001584375, 0.1064294705, 0.7870882463, 0.1064294705]),
    ((3.5, 0.6, "cdf"), [4e-10, 0.0470535976, 0.4529464022, 0.4529464022, 0.0470535976]),
    ((2.6, 1.1, "pdf"), [0.1182542489, 0.3404817184, 0.3725464716, 0.1604449068, 0.0082726541]),
    ((1.8, 0.45, "cdf"), [0.2514329944, 0.6926507345, 0.0588784991, 0.0, 0.0]),
    ((3.0, 0.7, "pdf"), [0.2] * 5),  # mu exactly 3: their alpha = 0 / (0 + 1e-9) = 0, uniform labels
]


@pytest.mark.parametrize("args, expected", AUTHORS)
def test_soft_labels_equal_the_authors_construction(args, expected):
    probs, kind = deqa.soft_level_probs(*args)
    assert kind == "gaussian" and probs == pytest.approx(expected, abs=1e-9)
    mu = args[0]
    assert sum(x * p for x, p in zip(range(1, 6), probs)) == pytest.approx(mu, abs=deqa.THRE_DIFF)


def test_soft_label_fallbacks_by_hand():
    # sigma below 0.2: the mass of mu = 2.2 split between poor (2) and fair (3) by distance: 0.8 / 0.2
    probs, kind = deqa.soft_level_probs(2.2, 0.15)
    assert kind == "binary" and probs == pytest.approx([0, 0.8, 0.2, 0, 0], abs=1e-7)
    # mu = 1, sigma 0.5: the adjusted Gaussian's mean is 1.152 (> 0.1 off), so the binary labels: all on bad
    p = [math.exp(-0.5 * ((x - 1) / 0.5) ** 2) / (0.5 * math.sqrt(2 * math.pi)) for x in range(1, 6)]
    A, B = sum(p), sum(x * v for x, v in zip(range(1, 6), p))
    alpha = (1 - 3) / (B - 3 * A + 1e-9)
    q = [max(alpha * v + (1 - alpha * A) / 5, 0) for v in p]
    assert sum(x * v for x, v in zip(range(1, 6), q)) - 1 > deqa.THRE_DIFF
    probs, kind = deqa.soft_level_probs(1.0, 0.5)
    assert kind == "binary" and probs == pytest.approx([1, 0, 0, 0, 0], abs=1e-7)
    assert deqa.soft_level_probs(4.5, None) == (pytest.approx([0, 0, 0, 0.5, 0.5]), "binary")
    with pytest.raises(ValueError, match="outside the 1..5"):
        deqa.binary_probs(5.5)


def test_attach_soft_labels_scales_the_spread_per_source():
    """KonIQ's IQA-PyTorch metadata: MOS_zscore beside the spread of 1-5 ratings (sigma = 4 std / the observed range of
    the 1-5 MOS, which the reader records; 4 when it could not); KADID-10k's column is a variance (sigma from its
    square root, on its 1-5 range); a record without a spread: binary, counted."""
    recs = [{"source": "koniq10k", "mos_norm": 0.5, "std": 0.6}, {"source": "kadid10k", "mos_norm": 0.5, "std": 0.49},
            {"source": "spaq", "mos_norm": 0.5}, {"source": "livec", "mos_norm": 0.25, "std": 20.0},
            {"source": "livec", "mos_norm": None}]
    infos = {"koniq10k": {"layout": "pyiqa", "score_range": [3.0, 95.0]}, "kadid10k": {"score_range": [1.0, 5.0]},
             "spaq": {"score_range": [2.0, 96.0]}, "livec": {"score_range": [3.0, 93.0]}}
    counts = deqa.attach_soft_labels({"train": recs}, infos)
    assert [r.get("std_norm") for r in recs] == [pytest.approx(0.6), pytest.approx(0.7), None, pytest.approx(80 / 90),
                                                 None]
    assert recs[0]["level_probs"] == pytest.approx(deqa.soft_level_probs(3.0, 0.6)[0], abs=1e-6)
    assert recs[3]["level_probs"] == pytest.approx(deqa.soft_level_probs(2.0, 80 / 90)[0], abs=1e-6)
    assert counts["spaq"] == {"density": "cdf", "spread": "std", "binary (no spread)": 1}
    infos["koniq10k"]["std_scale_range"] = [1.1, 4.3]
    deqa.attach_soft_labels({"train": recs[:1]}, infos)
    assert recs[0]["std_norm"] == pytest.approx(4 * 0.6 / 3.2)
    assert counts["kadid10k"]["spread"] == "var" and "level_probs" not in recs[4]
    deqa.attach_soft_labels({"train": recs[:2]}, infos, density={"koniq10k": "cdf"}, spread={"kadid10k": "std"})
    assert recs[1]["std_norm"] == pytest.approx(0.49) and recs[0]["level_probs"] == pytest.approx(
        deqa.soft_level_probs(3.0, 0.6, "cdf")[0], abs=1e-6)
    with pytest.raises(ValueError, match="SOURCE:pdf"):
        deqa.parse_source_map("koniq10k=pdf", ("pdf", "cdf"), "--soft_density")


# ----------------------------------------------------------------------------- losses
def test_fidelity_loss_by_hand():
    """mu^ 4 vs 3: p^ = Phi(1/sqrt 2); MOS 4 vs 3 with spreads 0.5: p = Phi(1/sqrt(0.5)); a spread of 0: which is
    better (p = 1)."""
    t = lambda *v: torch.tensor(v, dtype=torch.float64)
    Phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
    ph, p = Phi(1 / math.sqrt(2)), Phi(1 / math.sqrt(0.5 + 1e-8))  # their eps 1e-8 in the variance
    want = 1 - math.sqrt(ph * p + 1e-8) - math.sqrt((1 - ph) * (1 - p) + 1e-8)
    assert deqa.fidelity_loss(t(4.0), t(3.0), t(4.0), t(0.5), t(3.0), t(0.5)).item() == pytest.approx(want, abs=1e-12)
    want0 = 1 - math.sqrt(ph + 1e-8) - math.sqrt(1e-8)
    assert deqa.fidelity_loss(t(4.0), t(3.0), t(2.0), t(0.0), t(1.0), t(0.0)).item() == pytest.approx(want0, abs=1e-6)


def batch_case(n=4, V=50, seed=0, uneven=False):
    """labels [n, T] with a 3-token answer per sample whose middle token is a level (uneven: sample 0's answer has one
    more token, so the pair halves differ in token count); its supervised rows' logits."""
    g = torch.Generator().manual_seed(seed)
    level_ids = torch.tensor([7, 3, 11, 20, 5])
    labels = torch.full((n, 8), -100)
    for b in range(n):
        labels[b, 4:7] = torch.tensor([30 + b, int(level_ids[b % 5]), 40])
    if uneven:
        labels[0, 7] = 41
    keep = labels[:, 1:] != -100
    targets = labels[:, 1:][keep]
    logits = torch.randn(len(targets), V, generator=g) * 2
    probs = torch.distributions.Dirichlet(torch.ones(5)).sample((n,))
    score = {"score_level_probs": probs, "score_mos": torch.tensor([4.0, 2.0, 3.5, 1.5])[:n],
             "score_std": torch.tensor([0.5, 0.7, 0.0, 0.6])[:n]}
    return logits, targets, labels, level_ids, score


def test_level_rows_and_soft_targets():
    logits, targets, labels, L, score = batch_case()
    row_sample = (labels[:, 1:] != -100).nonzero()[:, 0]
    rows = deqa.level_rows(targets, row_sample, L, 4)
    assert rows.tolist() == [1, 4, 7, 10] and all(int(targets[r]) in L.tolist() for r in rows)
    lp = score["score_level_probs"].clone()
    lp[2] = float("nan")  # no soft label: stays one-hot
    P = deqa.soft_targets(targets, L, rows, lp)
    assert torch.equal(P[rows[[0, 1, 3]]], lp[[0, 1, 3]]) and P[rows[2]].tolist() == [0, 0, 1, 0, 0]
    assert P[0].sum() == 0  # a non-level row: not read by the op


@pytest.mark.parametrize("fidelity", [0.0, 1.0])
def test_batch_loss_is_deqas_sum(fidelity):
    """CE (mean over the other tokens) + KL (F.kl_div over the whole-vocabulary log-softmax, batchmean per image of a
    pair) weighted as DeQA, plus the fidelity loss of anchors (first half) vs partners."""
    logits, targets, labels, L, score = batch_case(uneven=True)
    x = logits.clone().requires_grad_()
    loss, parts = deqa.deqa_batch_loss(x * 1, targets, labels, score, L, "kl", 1.0, fidelity, 0.05)
    logp = torch.log_softmax(logits.double(), 1)
    rows = torch.tensor([1, 5, 8, 11])  # sample 0 has 4 supervised rows
    sample = (labels[:, 1:] != -100).nonzero()[:, 0]
    other = [i for i in range(len(targets)) if i not in rows.tolist()]
    k = 2 if fidelity else 1
    halves = [[i for i in other if sample[i] < 2], [i for i in other if sample[i] >= 2]] if fidelity else [other]
    ce = sum(F.nll_loss(logp[h], targets[h]) for h in halves)  # CE_A + CE_B, each a mean over its own tokens
    dense = torch.zeros(4, logits.shape[1], dtype=torch.float64)
    dense[:, L] = score["score_level_probs"].double()
    kl = F.kl_div(logp[rows], dense, reduction="sum") / (4 // k)
    want = 0.05 * (ce + kl)
    if fidelity:
        s = torch.softmax(logits[rows][:, L].double(), 1) @ torch.arange(1.0, 6.0, dtype=torch.float64)
        m, sd = score["score_mos"].double(), score["score_std"].double()
        want = want + deqa.fidelity_loss(s[:2], s[2:], m[:2], sd[:2], m[2:], sd[2:])
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert parts["loss_ce"] == pytest.approx(ce.item() / k, rel=1e-5) and parts["loss_kl"] == pytest.approx(kl.item() / k, rel=1e-5)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_pairs_come_from_the_same_source_never_the_image_itself():
    recs = [{"source": "a"}] * 5 + [{"source": "b"}] * 3
    pools = loader.pair_pools(recs)
    anchors = list(range(8)) * 20
    partners = loader.pair_partners(recs, anchors, pools, random.Random(0))
    assert all(i != j and recs[i]["source"] == recs[j]["source"] for i, j in zip(anchors, partners))
    assert partners == loader.pair_partners(recs, anchors, pools, random.Random(0))  # seeded: resumes exactly
    with pytest.raises(ValueError, match="c has one"):
        loader.pair_pools(recs + [{"source": "c"}])


# ----------------------------------------------------------------------------- end to end
def test_train_kl_fidelity_then_score(tmp_path):
    """The demo's scoring view carries soft labels; train.py --score_loss kl --fidelity 1 logs the three losses and
    evaluate.py score reads the checkpoint as any other."""
    mini_demo(tmp_path / "demo")
    P.main(["--task", "score", "--demo", str(tmp_path / "demo"), "--out", str(tmp_path / "score"), "--val_frac", "0.2"])
    meta = json.load(open(tmp_path / "score" / "meta.json"))
    recs = [json.loads(l) for l in open(tmp_path / "score" / "train.jsonl")]
    assert sum(v for k, v in meta["soft_labels"]["demo"].items() if k not in ("density", "spread")) == len(recs) + \
        sum(1 for _ in open(tmp_path / "score" / "val.jsonl")) + sum(1 for _ in open(tmp_path / "score" / "test.jsonl"))
    assert all(len(r["level_probs"]) == 5 and r["std"] > 0 for r in recs)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "train.py", "config/demo.py", "--data", str(tmp_path / "score"), "--score_loss", "kl",
                        "--fidelity", "1.0", "--next_token_weight", "0.05", "--batch_size", "3", "--max_steps", "4",
                        "--log_every", "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    log = [json.loads(l) for l in open(out / "log.jsonl")]
    assert all({"loss_ce", "loss_kl", "loss_fidelity"} <= set(rec) for rec in log) and len(log) == 4
    assert "3 pairs" in r.stdout
    e = subprocess.run([sys.executable, "evaluate.py", "score", "--ckpt", str(out), "--data", str(tmp_path / "score")],
                       cwd=ROOT, capture_output=True, text=True, env=env)
    assert e.returncode == 0, e.stdout[-2000:] + e.stderr[-3000:]
    bad = subprocess.run([sys.executable, "train.py", "config/demo.py", "--data", str(tmp_path / "demo"), "--score_loss", "kl",
                          "--max_steps", "1", "--out", str(tmp_path / "bad")], cwd=ROOT, capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "have no level_probs" in bad.stdout + bad.stderr


def test_lora_targets_pick_deqas_layers():
    """DeQA-Score's LoRA: q_proj and the visual branch of v_proj in every decoder layer of mPLUG-Owl2, nothing else."""
    pytest.importorskip("peft")
    from iqa_vlm.model import set_trainable
    from iqa_vlm.tiny_models import build_tiny
    vlm, _ = build_tiny("mplug_owl2")
    chosen = set_trainable(vlm, "llm", verbose=False, lora=4, lora_targets="q_proj|v_proj.multiway.1")
    adapted = {n.split(".lora_")[0] for n in chosen["lora(llm)"]}
    layers = len(vlm.model.layers)
    assert adapted == {f"model.layers.{i}.self_attn.{m}" for i in range(layers) for m in ("q_proj", "v_proj.multiway.1")}
    with pytest.raises(ValueError, match="matches no linear layer"):
        set_trainable(build_tiny("mplug_owl2")[0], "llm", verbose=False, lora=4, lora_targets="nothing_here")
