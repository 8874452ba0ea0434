"""Quality scoring: closed-set scores through the op, SRCC/PLCC and the logistic fit, the score-task
parsers on the real IQA-PyTorch metadata, instruction data, the data mix and its balance, the mix-ratio fit.

    python -m pytest tests/test_scoring.py -q
"""
import csv
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from iqa_vlm import iqa_datasets as D  # noqa: E402
from iqa_vlm import level_ce  # noqa: E402
import prepare_data as P  # noqa: E402
from iqa_vlm import data as DM  # noqa: E402
from iqa_vlm import metrics as M  # noqa: E402
from iqa_vlm.studies import data_mix  # noqa: E402
from iqa_vlm.studies import scoring as S  # noqa: E402
from iqa_vlm.data import LEVELS  # noqa: E402

# the complete IQA-PyTorch metadata files when IQA_META_DIR names a folder of them (CI points it at its copy)
META = Path(os.environ.get("IQA_META_DIR") or "/nonexistent")
needs_meta = pytest.mark.skipif(not META.is_dir(), reason="IQA_META_DIR is not set: complete IQA-PyTorch metadata not at hand")


def spy_op(monkeypatch):
    """Counts calls of level_ce.level_cross_entropy (metrics calls it through the module)."""
    calls, real = [], level_ce.level_cross_entropy

    def spy(*a, **k):
        calls.append(a[2] if len(a) > 2 else k.get("level_ids"))
        return real(*a, **k)
    monkeypatch.setattr(level_ce, "level_cross_entropy", spy)
    return calls


# ============================================================================ closed-set scores
@pytest.mark.parametrize("path", ["torch", None])  # the fallback and the default (extension if built)
def test_closed_set_score_is_manual_softmax_times_weights(monkeypatch, path):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 50, generator=g) * 3
    ids = [11, 3, 40, 27, 8]
    target = torch.tensor([0, 4, 2, -1, 1, 3, 3])
    calls = spy_op(monkeypatch)
    with level_ce.force_backend(path):
        probs, score, nll = M.closed_set_scores(logits, ids, target)
    assert len(calls) == 1 and list(calls[0]) == ids  # through the op, with the level ids as its closed set
    manual = torch.softmax(logits[:, ids].double(), -1)
    torch.testing.assert_close(probs.double(), manual, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(score.double(), manual @ torch.arange(1, 6, dtype=torch.double), atol=1e-5, rtol=1e-6)
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor(ids)[target.clamp(min=0)], reduction="none")
    torch.testing.assert_close(nll[target >= 0], ce[target >= 0], atol=1e-5, rtol=1e-5)
    assert nll[3] == 0  # unknown level: ignored row
    assert torch.allclose(M.closed_set_scores(logits, ids)[1], score)


def tiny_images(folder, n=6):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_eval_score_on_tiny_model_matches_manual_and_uses_op(tmp_path, monkeypatch):
    from iqa_vlm.data import closed_set_token_ids, encode_prompts
    from iqa_vlm.model import last_token_logits, load_model
    model, processor = load_model("tiny")
    model.eval()
    recs = [S.score_record(f"x/{i}", p, LEVELS[i % 5], "x", str(i), mos=1.0 + i % 5, mos_norm=(i % 5) / 4)
            for i, p in enumerate(tiny_images(tmp_path))]
    calls = spy_op(monkeypatch)
    preds = S.eval_score(model, processor, recs, batch_size=4, instruction=S.EVALUATOR_INSTRUCTION)
    assert len(calls) == 2 and len(preds) == len(recs)
    ids = closed_set_token_ids(processor, LEVELS, DM.LEVEL_PREFIX)
    enc, last = encode_prompts(processor, [DM.with_instruction(r, S.EVALUATOR_INSTRUCTION) for r in recs], answer_prefix=DM.LEVEL_PREFIX)
    assert processor.tokenizer.decode(enc["input_ids"][0]).startswith("user : assume you are an image quality evaluator. how would")
    with torch.no_grad():
        z = last_token_logits(model, enc, last)[:, ids].double()
    manual = torch.softmax(z, -1) @ torch.arange(1, 6, dtype=torch.double)
    np.testing.assert_allclose([p["score"] for p in preds], manual.numpy(), atol=1e-4)
    assert all(abs(p["score01"] - (p["score"] - 1) / 4) < 1e-4 and abs(sum(p["probs"]) - 1) < 1e-3 for p in preds)


# ============================================================================ correlation metrics
def test_srcc_plcc_on_known_inputs():
    assert M.srcc([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert M.srcc([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert M.srcc([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)           # 1 - 6 * 4 / (5 * 24)
    assert M.plcc([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / np.sqrt(84))           # cov 3 / sqrt(2 * 42/9)
    assert M.srcc([1, 1, 1], [1, 2, 3]) is None and M.plcc([1, 2], [1, 2]) is None  # undefined


def test_logistic_fit_recovers_known_params():
    x = np.linspace(-3, 3, 200)
    true = [5.0, 1.0, 0.3, 0.5]
    y = M.logistic4(x, *true)
    fit = M.fit_logistic(x, y)
    np.testing.assert_allclose([fit[0], fit[1], fit[2], abs(fit[3])], true, atol=1e-3)
    assert M.plcc(x, y) < 0.97 and M.plcc(x, y, logistic=True) == pytest.approx(1.0, abs=1e-6)
    # fewer points than parameters (a --limit run): no fit, and PLCC falls back to the raw predictions
    assert M.fit_logistic([1.0, 2.0, 4.0], [1.0, 3.0, 2.0]) is None
    assert M.plcc([1.0, 2.0, 4.0], [1.0, 3.0, 2.0], logistic=True) == pytest.approx(M.plcc([1.0, 2.0, 4.0], [1.0, 3.0, 2.0]))


def test_score_metrics_per_source():
    preds = [{"source": s, "score": v, "mos": v * 2 + (0.1 if s == "b" else 0), "level": "good",
              "probs": [0, 0, 0, 1, 0], "nll": 0.5} for s in "ab" for v in (1.0, 2.0, 3.5, 4.0)]
    m = M.score_metrics(preds, logistic=True)
    assert set(m) == {"a", "b", "all"} and m["a"]["n"] == 4 and m["a"]["srcc"] == pytest.approx(1.0)
    assert m["a"]["level_accuracy"] == 1.0 and m["all"]["nll"] == pytest.approx(0.5) and "plcc_logistic" in m["b"]


# ============================================================================ score-task parsers
def placeholders(folder, names):
    for name in set(names):
        p = Path(folder) / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()


def rows_of(name):
    with open(META / name, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


@needs_meta
def test_make_score_on_real_pyiqa_metadata(tmp_path):
    """KonIQ-10k (official split), SPAQ, LIVE Challenge (t1..t7 never in test) from placeholder images."""
    koniq, spaq, livec = tmp_path / "koniq", tmp_path / "spaq", tmp_path / "livec"
    krows = rows_of("meta_info_KonIQ10kDataset.csv")
    placeholders(koniq / "512x384", [r["img_name"] for r in krows])
    placeholders(spaq / "TestImage", [r["Image name"] for r in rows_of("meta_info_SPAQDataset.csv")])
    placeholders(livec / "Images", [r["img_name"] for r in rows_of("meta_info_LIVEChallengeDataset.csv")])
    for folder, name in ((koniq, "KonIQ10k"), (spaq, "SPAQ"), (livec, "LIVEChallenge")):
        shutil.copy(META / f"meta_info_{name}Dataset.csv", folder)  # found next to the images
    out = tmp_path / "score"
    P.main(["--task", "score", "--koniq", str(koniq), "--spaq", str(spaq), "--livec", str(livec), "--out", str(out),
            "--check_images", "false"])
    meta = json.load(open(out / "meta.json"))
    splits = {s: [json.loads(l) for l in open(out / f"{s}.jsonl")] for s in ("train", "val", "test", "official_val")}
    by = {s: Counter(r["source"] for r in recs) for s, recs in splits.items()}
    # KonIQ-10k: pyiqa's split column 0/1/2 = the official training/validation/test; Q-SiT validates on 10 % of the
    # training part, so the official validation set is kept aside in official_val.jsonl
    assert (by["train"]["koniq10k"] + by["val"]["koniq10k"], by["test"]["koniq10k"], by["official_val"]["koniq10k"]) == (7046, 2010, 997)
    assert by["val"]["koniq10k"] == pytest.approx(706, abs=2)
    official = {r["img_name"]: {"0": "train", "1": "official_val", "2": "test"}[r["split"]] for r in krows}
    for s, recs in splits.items():
        assert all(official[os.path.basename(r["image"])] == ("train" if s == "val" else s) for r in recs if r["source"] == "koniq10k")
    assert meta["counts"]["official_val"]["n"] == 997
    # LIVE Challenge: t1..t7 only in train; SPAQ about 80/20
    t_ids = {r["ref"] for s in ("val", "test") for r in splits[s] if r["source"] == "livec"}
    assert not t_ids & {f"t{i}" for i in range(1, 8)}
    assert sum(r["ref"] in {f"t{i}" for i in range(1, 8)} and r["is_train_only"] for r in splits["train"]) == 7
    assert sum(by[s]["livec"] for s in by) == 1169 and sum(by[s]["spaq"] for s in by) == 11121
    assert 0.18 < by["test"]["spaq"] / 11121 < 0.22 and by["val"]["spaq"] / (11121 - by["test"]["spaq"]) == pytest.approx(0.1, abs=0.01)
    # records: Q-Align form; levels as the authors' released labels for KonIQ and SPAQ (the default), Eq. 1 over the
    # dataset's range for LIVE Challenge; one question, as the released data ask
    lo, hi = meta["score_range"]["spaq"]
    assert meta["level_rule"] == "released" and meta["datasets"]["livec"]["level_rule"].startswith("eq1")
    for r in splits["train"][:300] + splits["test"][:300] + splits["train"][-300:]:
        assert r["task"] == "score" and r["conversations"][1]["value"] == f"The quality of the image is {r['level']}."
        m, M = meta["score_range"][r["source"]]
        want = (S.released_level(r["mos"], *S.RELEASED_LEVEL_RANGE[r["source"]]) if r["source"] in S.RELEASED_LEVEL_RANGE
                else D.score_level(r["mos"], m, M))
        assert r["level"] == want and r["mos_norm"] == pytest.approx((r["mos"] - m) / (M - m))
    # KonIQ's released range: the 9th lowest and 9th highest MOS of its official training and test splits; the images
    # outside [m, M) are left out, as the released files have them: Q-Align's test_koniq.json holds 2,010 images,
    # train_koniq.json 7,046 (10 below and 10 at or above over all three splits, 3 of them in the official val); SPAQ's four at 94 or more are out (11,121 of 11,125 in Q-Align's train + test files)
    s02 = sorted(float(r["mos"]) for r in krows if r["split"] in ("0", "2"))
    assert S.RELEASED_LEVEL_RANGE["koniq10k"] == (s02[8], s02[-9])
    assert meta["datasets"]["koniq10k"]["released_range_left_out"] == {"below": 10, "at_or_above": 10}
    assert meta["datasets"]["spaq"]["released_range_left_out"] == {"below": 0, "at_or_above": 4}
    assert {r["conversations"][0]["value"] for s in ("train", "test") for r in splits[s]} == {S.SCORE_QUESTION + "\n<image>"}
    assert (lo, hi) == (2.0, 96.0) and set(meta["counts"]["test"]["by_level"]) == set(LEVELS)
    # DeQA-Score's soft labels on every record: KonIQ's spread is that of its 1-5 ratings (sigma = 4 std / the observed
    # range of the 1-5 MOS, 1.10-4.31), SPAQ has none
    soft = meta["soft_labels"]
    assert soft["spaq"] == {"density": "cdf", "spread": "std", "binary (no spread)": 11121}
    assert sum(v for k, v in soft["koniq10k"].items() if k not in ("density", "spread")) == 10053
    acr = [sum(k * float(r[f"c{k}"]) for k in range(1, 6)) for r in krows]  # KonIQ's 1-5 MOS, the scale of its std
    assert meta["datasets"]["koniq10k"]["std_scale_range"] == pytest.approx([min(acr), max(acr)], abs=1e-6)
    for r in (r for s in splits.values() for r in s if r["source"] == "koniq10k"):
        assert r["std_norm"] == pytest.approx(4 * r["std"] / (max(acr) - min(acr)), abs=1e-5) and len(r["level_probs"]) == 5
        assert sum(x * p for x, p in zip(range(1, 6), r["level_probs"])) == pytest.approx(4 * r["mos_norm"] + 1, abs=0.1)


@needs_meta
def test_level_precision_on_real_metadata(tmp_path):
    """Our MOS -> level conversion on SPAQ and KADID-10k (the numbers README reports against Q-SiT Table II)."""
    import analyze
    res = analyze.main(["level-precision", "--meta", str(META), "--out", str(tmp_path)])
    assert res["spaq"]["srcc"] == pytest.approx(0.9678, abs=5e-4) and res["spaq"]["plcc"] == pytest.approx(0.9680, abs=5e-4)
    assert res["kadid10k"]["srcc"] == pytest.approx(0.9787, abs=5e-4) and res["kadid10k"]["plcc"] == pytest.approx(0.9810, abs=5e-4)
    assert res["live"]["srcc"] > 0.9  # DMOS flipped: levels still rise with quality
    assert (tmp_path / "level_precision.json").exists()


# ============================================================================ instruction data
def test_instruction_reader_keeps_multi_turn(tmp_path):
    from iqa_vlm.data import encode_batch
    from iqa_vlm.tiny_models import build_tiny_processor
    imgs = tiny_images(tmp_path / "imgs", 2)
    entries = [
        {"id": "a", "image": "im0.png", "conversations": [
            {"from": "human", "value": "<image>\nHow is the quality of this image?"},
            {"from": "gpt", "value": "The quality of the image is good."},
            {"from": "human", "value": "Is the image blurry?"}, {"from": "gpt", "value": "No, it is sharp."},
            {"from": "human", "value": "Is there noise?"}, {"from": "gpt", "value": "Slightly noisy."}]},
        {"id": "b", "image": "missing.png", "conversations": [{"from": "human", "value": "<image>\nrate"},
                                                            {"from": "gpt", "value": "good"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "What is jitter?"}, {"from": "gpt", "value": "Displaced pixels."}]},
        {"id": "d", "image": "im1.png", "conversations": [{"from": "human", "value": "Describe the image."},
                                                         {"from": "gpt", "value": "Sharp."}]}]
    path = tmp_path / "instruct.json"
    path.write_text(json.dumps(entries))
    recs, report = DM.read_instruction(path, image_root=tmp_path / "imgs", task="describe")
    assert [r["id"] for r in recs] == ["instruct/a", "instruct/c", "instruct/d"]
    assert report["missing_images"] == 1 and report["kept"] == 3 and report["answer_turns"] == {"1": 2, "3": 1}
    assert recs[0]["conversations"] == entries[0]["conversations"] and recs[0]["image"] == imgs[0]
    assert "image" not in recs[1] and recs[2]["conversations"][0]["value"] == "<image>\nDescribe the image."
    batch = encode_batch(build_tiny_processor(), recs[:1])  # all three answers are supervised
    labels = (batch["labels"][0] != -100).int()
    assert int((labels[1:] - labels[:-1] == 1).sum()) == 3
    # every image missing: a wrong --image_root is an error, not an empty set
    with pytest.raises(ValueError, match="--image_root"):
        DM.read_instruction(path, image_root=tmp_path / "nowhere")
    P.main(["--task", "interpret", "--llava_json", str(path), "--image_root", str(tmp_path / "imgs"), "--out", str(tmp_path / "o"),
            "--val_frac", "0"])
    assert len((tmp_path / "o" / "train.jsonl").read_text().splitlines()) == 3


# ============================================================================ data mix and balance
def test_mix_weights_are_record_ratios_relative_to_the_first_source():
    sizes, mix = {"a": 100, "b": 1000, "c": 300}, data_mix.parse_mix("a:1.0,b:2.5,c:1.04")
    assert mix == {"a": 1.0, "b": 2.5, "c": 1.04} and data_mix.mix_counts(sizes, mix) == {"a": 100, "b": 250, "c": 104}
    sample = data_mix.epoch_sample(sizes, mix, seed=0, epoch=0)
    assert Counter(name for name, _ in sample) == {"a": 100, "b": 250, "c": 104}
    assert len(set(sample)) == len(sample)  # each source holds enough: no record twice
    assert sample == data_mix.epoch_sample(sizes, mix, 0, 0) and sample != data_mix.epoch_sample(sizes, mix, 0, 1)
    # more than a source holds: full passes plus a drawn rest, and the mixer says so
    small = {"score": 100, "interpret": 40}
    sample = data_mix.epoch_sample(small, {"score": 1.0, "interpret": 2.5}, 0, 0)
    per = Counter(sample)
    assert Counter(n for n, _ in sample) == {"score": 100, "interpret": 250}
    assert all(6 <= per[("interpret", i)] <= 7 for i in range(40)) and sum(per[("interpret", i)] == 7 for i in range(40)) == 10
    m = data_mix.Mixer.__new__(data_mix.Mixer)
    m.mix, m.instruction = {"score": 1.0, "interpret": 2.5}, None
    m.groups, m.val = {"score": list(range(100)), "interpret": list(range(40))}, {"score": [], "interpret": []}
    text = m.describe()
    assert "relative to score's 100" in text and "interpret: 250 of 40 (more than it holds: 6 passes + 10 drawn" in text
    for bad in ("score", "score:-1", "score:x", "score:1,score:2", "a:0"):
        with pytest.raises(ValueError):
            data_mix.parse_mix(bad)


def test_balance_grows_the_side_behind_per_eqs_9_and_10():
    mix = {"score": 1.0, "interpret": 2.5, "general": 1.04}
    new, ratio, action = data_mix.balance_mix(mix, {"score": 2.0, "interpret": 1.0}, lam=1.0, step=0.1)  # L_S/L_I > λ: |D1| up
    assert ratio == 2.0 and action == "more score" and new == {"score": 1.1, "interpret": 2.5, "general": 1.04}
    new, _, action = data_mix.balance_mix(mix, {"score": 0.5, "interpret": 1.0}, lam=1.0)  # < λ: |D2+D3| up, at their ratio
    assert action == "more interpret+general" and new == {"score": 1.0, "interpret": 2.75, "general": 1.144}
    assert data_mix.balance_mix(mix, {"score": 1.01, "interpret": 1.0}, lam=1.0)[0] == mix  # within tolerance
    # scripted epochs against λ = 1/4.66 (the paper's): records per source move by eqs 9-10, once per call
    m = data_mix.Mixer.__new__(data_mix.Mixer)
    m.mix, m.lam, m.score, m.interp = dict(mix), None, "score", "interpret"
    m.groups = {"score": list(range(1000)), "interpret": list(range(5000)), "general": list(range(5000))}
    lam = 1 / 4.66
    recs = [m.balance({"score": s, "interpret": 1.0}, lam=lam) for s in (0.15, 0.15, lam, 0.30)]
    assert [r["action"] for r in recs] == ["more interpret+general"] * 2 + ["keep", "more score"]
    assert [r["records"] for r in recs] == [{"score": 1000, "interpret": 2750, "general": 1144},
                                            {"score": 1000, "interpret": 3025, "general": 1258},
                                            {"score": 1000, "interpret": 3025, "general": 1258},
                                            {"score": 1100, "interpret": 3025, "general": 1258}]
    assert all(r["lambda"] == pytest.approx(lam, abs=1e-5) for r in recs)
    m.mix, m.lam = dict(mix), None  # no λ given: the first epoch's own ratio (not the paper's; train.py says so)
    assert m.balance({"score": 0.8, "interpret": 1.0})["lambda"] == 0.8


def mini_demo(folder, n=24):
    """A demo-like folder: train/test records with label, severity, mos; images in images/."""
    paths = tiny_images(folder / "images", n)
    recs = []
    for i, p in enumerate(paths):
        label, sev = ("clean", 0) if i % 4 == 0 else ("blur", 1 + i % 5)
        conv = [{"from": "human", "value": "<image>\nWhat distortion does this image have?"},
                {"from": "gpt", "value": f"The image has some {label}."}]
        recs.append({"id": f"demo/{i}", "image": f"images/im{i}.png", "conversations": conv, "task": "distortion",
                     "label": label, "source": "demo", "ref": f"p{i % 3}", "severity": sev, "mos": round(1 + (i % 9) / 2, 2)})
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[:18]))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[18:]))
    (folder / "meta.json").write_text(json.dumps({"score_range": {"demo": [1.0, 5.0]}}))


def test_demo_views_and_mixer(tmp_path):
    mini_demo(tmp_path / "demo")
    P.main(["--task", "score", "--demo", str(tmp_path / "demo"), "--out", str(tmp_path / "demo_score"), "--val_frac", "0.2"])
    P.main(["--task", "interpret", "--demo", str(tmp_path / "demo"), "--out", str(tmp_path / "demo_interpret")])
    sc = [json.loads(l) for l in open(tmp_path / "demo_score" / "train.jsonl")]
    it = [json.loads(l) for l in open(tmp_path / "demo_interpret" / "test.jsonl")]
    assert all(os.path.exists(tmp_path / "demo_score" / r["image"]) for r in sc)
    assert sc[0]["level"] == D.score_level(sc[0]["mos"], 1.0, 5.0) and it[0]["task"] == "describe"
    assert it[0]["conversations"][1]["value"].endswith(f"Overall, the quality of the image is {it[0]['level']}.")
    mixer = data_mix.Mixer(f"{tmp_path / 'demo_score'},{tmp_path / 'demo_interpret'}", "score:1,interpret:2", seed=0, val_frac=0.25,
                       score_instruction=S.EVALUATOR_INSTRUCTION)
    n_score = len(mixer.groups["score"])
    assert n_score + len(mixer.val["score"]) == 18 and mixer.val["score"] and mixer.val["interpret"]
    assert Counter(mixer.records[i]["task"] for i in mixer.order(0)) == {"score": n_score, "describe": 2 * n_score}
    # several sources: Q-SiT's scoring question, the instruction first in the user turn, the image where the data has it
    assert all(r["conversations"][0]["from"] == "human" and r["conversations"][0]["value"].replace("<image>\n", "")
               .startswith(S.EVALUATOR_INSTRUCTION + " How would you rate") for r in mixer.records if r["task"] == "score")
    assert all(r["conversations"][0]["from"] == "human" for r in mixer.records if r["task"] == "describe")
    by_folder = data_mix.Mixer(str(tmp_path / "demo_score"), "demo_score:1", score_instruction=S.EVALUATOR_INSTRUCTION)  # a name may be a folder's base name
    assert not by_folder.instruction and len(by_folder.records) + len(by_folder.val["demo_score"]) == 18
    # Q-SiT validates on the whole held-out share (its paper: 10 % of the training data), so by default nothing is
    # capped; val_max keeps a seeded subset of that same set (our option, quicker)
    n_val = len(mixer.val["score"])
    capped = data_mix.Mixer(f"{tmp_path / 'demo_score'},{tmp_path / 'demo_interpret'}", "score:1,interpret:2", seed=0,
                            val_frac=0.25, val_max=1, score_instruction=S.EVALUATOR_INSTRUCTION)
    assert n_val > 1 and len(capped.val["score"]) == 1 and capped.val["score"][0] in mixer.val["score"]
    assert capped.groups == mixer.groups  # the cap drops validation records, it does not move them into training


def test_train_mix_balance_end_to_end(tmp_path):
    """train.py --mix --balance on the mini demo: validation losses, ratio and mix land in log.jsonl."""
    mini_demo(tmp_path / "demo")
    for task in ("score", "interpret"):
        P.main(["--task", task, "--demo", str(tmp_path / "demo"), "--out", str(tmp_path / f"demo_{task}"), "--val_frac", "0.2"])
    out = tmp_path / "run"
    n_score = len((tmp_path / "demo_score" / "train.jsonl").read_text().splitlines())
    epoch_steps = 3 * n_score // 4  # score:1,interpret:2 draws n_score + 2 n_score records; batches of 4
    r = subprocess.run([sys.executable, "train.py", "config/demo.py", "--data", f"{tmp_path / 'demo_score'},{tmp_path / 'demo_interpret'}",
                        "--mix", "score:1,interpret:2", "--balance", "true", "--balance_lambda", "100", "--max_steps", str(epoch_steps + 1),
                        "--batch_size", "4", "--out", str(out), "--balance_step", "0.5", "--eval_every", "100"],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    evals = [json.loads(l) for l in open(out / "log.jsonl") if "val_loss" in l]
    assert [(e["step"], e["epoch"]) for e in evals] == [(epoch_steps, 0)]  # once, at the epoch's end
    assert all(set(e["val_loss"]) == {"score", "interpret"} for e in evals)
    assert evals[0]["action"] == "more interpret" and evals[0]["mix"] == {"score": 1.0, "interpret": 3.0}  # ratio < λ = 100
    assert all({"ratio", "mix", "mix_before", "action", "records"} <= set(e) for e in evals)
    assert "relative to score's" in r.stdout
    assert json.load(open(out / "config.json"))["mix"] == "score:1,interpret:2"


# ============================================================================ mix-ratio fit
def test_poly_argmax_on_known_curve():
    x = np.array([0.25, 0.5, 1, 1.5, 2, 3, 4])
    y = 3 - 0.05 * (x - 1.7) ** 4 - 0.4 * (x - 1.7) ** 2  # a degree-4 polynomial, maximum at 1.7
    best, coeffs, deg = data_mix.poly_argmax(x, y, degree=4)
    assert deg == 4 and best == pytest.approx(1.7, abs=0.003)
    np.testing.assert_allclose(np.polyval(coeffs, x), y, atol=1e-9)
    best3, _, deg3 = data_mix.poly_argmax([0, 1, 2], [0, 1, 0])  # fewer points: the degree drops
    assert deg3 == 2 and best3 == pytest.approx(1.0, abs=1e-3)


def test_mix_ratio_command_from_csv(tmp_path):
    import analyze
    pts = tmp_path / "points.csv"
    x = [0.25, 0.5, 1, 2, 4]
    pts.write_text("ratio,score\n" + "".join(f"{a},{0.8 - 0.05 * (a - 1.5) ** 2}\n" for a in x))
    res = analyze.main(["mix-ratio", "--points", str(pts), "--out", str(tmp_path / "mr")])
    assert res["argmax_ratio"] == pytest.approx(1.5, abs=0.01) and res["degree"] == 4
    assert (tmp_path / "mr" / "mix_ratio.png").stat().st_size > 1000 and (tmp_path / "mr" / "mix_ratio.json").exists()


def test_closed_set_is_read_from_meta_json(tmp_path):
    """A prepared folder's meta.json records the answer prefix and the level words; evaluation reads them there, and
    a folder without them, folders that disagree, or words other than the study's are errors naming the file."""
    mini_demo(tmp_path / "demo")
    P.main(["--task", "score", "--demo", str(tmp_path / "demo"), "--out", str(tmp_path / "score"), "--val_frac", "0.2"])
    meta = json.load(open(tmp_path / "score" / "meta.json"))
    assert (meta["answer_prefix"], meta["closed_set"]) == (DM.LEVEL_PREFIX, LEVELS)
    assert DM.read_closed_set(str(tmp_path / "score"), expect=LEVELS) == (LEVELS, DM.LEVEL_PREFIX)
    with pytest.raises(ValueError, match="this evaluation is for"):
        DM.read_closed_set(str(tmp_path / "score"), expect=["blur", "noise"])
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "score", other)
    (other / "meta.json").write_text(json.dumps({**meta, "answer_prefix": "Its quality is"}))
    with pytest.raises(ValueError, match="record different closed sets"):
        DM.read_closed_set([str(tmp_path / "score"), str(other)])
    (other / "meta.json").write_text(json.dumps({"task": "score"}))
    with pytest.raises(ValueError, match=r"other/meta.json records no closed set"):
        DM.read_closed_set(str(other))
    # the recorded prefix is the one teacher-forced: evaluate.py score on a folder whose meta.json names another
    # prefix gives the scores of that prefix, not of the default
    from iqa_vlm.model import load_model
    model, processor = load_model("tiny")
    model.eval()
    (other / "meta.json").write_text(json.dumps({**meta, "answer_prefix": "The image is"}))
    S.evaluate(model="tiny", data=str(other), out=str(tmp_path / "ev"))
    got = [json.loads(l)["score"] for l in open(tmp_path / "ev" / "predictions_score.jsonl")]
    recs = [r for r in DM.load_records(str(other), "test") if r.get("task") == "score"]
    want = [p["score"] for p in S.eval_score(model, processor, recs, answer_prefix="The image is")]
    default = [p["score"] for p in S.eval_score(model, processor, recs)]
    assert got == want and got != default


def test_level_precision_reads_agiqa3ks_released_data_csv(tmp_path):
    """Table II has an AGIQA-3K row; its MOS comes from the release's data.csv (mos_quality), the layout of
    tests/test_datasets.py::test_agiqa3k. Levels by equal intervals between the min and max: a hand count."""
    import analyze
    rows = [("a.jpg", 0.5), ("b.jpg", 1.4), ("c.jpg", 2.2), ("d.jpg", 3.1), ("e.jpg", 4.5), ("f.jpg", 4.4)]
    with open(tmp_path / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "prompt", "adj1", "adj2", "style", "mos_quality", "std_quality", "mos_align", "std_align"])
        w.writerows([(n, "a prompt", "", "", "", m, 0.5, 3.0, 0.5) for n, m in rows])
    res = analyze.main(["level-precision", "--agiqa", str(tmp_path), "--out", str(tmp_path / "o")])
    r = res["agiqa3k"]
    # (mos - 0.5) / 4.0 * 5 -> levels 1, 2, 3, 4, 5, 5 (bad .. excellent)
    assert r["n"] == 6 and list(r["levels"].values()) == [1, 1, 1, 1, 2]
    with pytest.raises(SystemExit, match="no data.csv there"):
        analyze.main(["level-precision", "--agiqa", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])


def test_deqa_soft_labels_take_the_authors_spread_for_spaq(tmp_path):
    """SPAQ's public metadata has no per-image spread, so its soft labels are binary unless DeQA-Score's released
    mos.json (Data-DeQA-Score/SPAQ/metas/mos.json: {name: {"mos", "std"}}, strings as well as numbers; read by their
    gen_soft_label.py) gives it: then their 'cdf' labels with sigma = 4 std / that file's MOS range."""
    from test_datasets import rows_of
    from iqa_vlm.studies import deqa
    rows = rows_of("meta_info_SPAQDataset.csv")  # the verbatim excerpt: 40 rows in the released layout
    spaq = tmp_path / "spaq"
    placeholders(spaq / "TestImage", [r["Image name"] for r in rows])
    shutil.copy(Path(__file__).parent / "data" / "iqa_meta" / "meta_info_SPAQDataset.csv", tmp_path / "excerpt.csv")
    (spaq / "meta_info_SPAQDataset.csv").write_text("".join(open(tmp_path / "excerpt.csv").readlines()[1:]))
    metas = tmp_path / "metas"
    metas.mkdir()
    given = {r["Image name"]: {"mos": r["MOS"], "std": f"{10 + i % 7}.5"} for i, r in enumerate(rows[:30])}
    (metas / "mos.json").write_text(json.dumps(given))  # ten images left without: counted, binary
    out = tmp_path / "score"
    P.main(["--task", "score", "--spaq", str(spaq), "--deqa_metas", f"spaq:{metas}", "--out", str(out),
            "--check_images", "false", "--val_frac", "0"])
    meta = json.load(open(out / "meta.json"))
    assert meta["datasets"]["spaq"]["authors_mos"]["matched"] == 30 and meta["datasets"]["spaq"]["authors_mos"]["unmatched"] == 10
    soft = meta["soft_labels"]["spaq"]
    assert soft["density"] == "cdf" and soft.get("binary (no spread)") == 10 and sum(
        v for k, v in soft.items() if k not in ("density", "spread", "binary (no spread)")) == 30
    m, M = min(float(v["mos"]) for v in given.values()), max(float(v["mos"]) for v in given.values())
    recs = [json.loads(l) for s in ("train", "test") for l in open(out / f"{s}.jsonl")]
    for r in recs:
        name = os.path.basename(r["image"])
        if name in given:
            sigma = 4 * float(given[name]["std"]) / (M - m)
            want, _ = deqa.soft_level_probs(4 * r["mos_norm"] + 1, sigma, "cdf")
            assert r["std_norm"] == pytest.approx(sigma, abs=1e-6) and r["level_probs"] == pytest.approx(want, abs=1e-6)
        else:
            assert r["std_norm"] is None
    with pytest.raises(SystemExit):
        P.main(["--task", "score", "--spaq", str(spaq), "--deqa_metas", f"koniq10k:{metas}", "--out", str(tmp_path / "x")])


RELEASED = Path(__file__).parent / "data" / "released"


def test_released_level_rule_reproduces_qsits_training_labels():
    """Q-SiT's (and Q-Align's) released KonIQ and SPAQ labels: the records nearest each side of every level edge
    (verbatim excerpts of Q-Future/Q-SIT training_jsons/train_{koniq,spaq}_qsit.json) get their released label from
    scoring.released_level, including SPAQ's 56.4 -> fair next to 37.6 -> fair and 75.2 -> excellent; Eq. 1 over the
    whole dataset's range (KonIQ 3.91-88.39, SPAQ 2-96 in IQA-PyTorch's metadata) labels some of them otherwise."""
    for name, source, full_range in (("train_koniq_qsit", "koniq10k", (3.91176470588, 88.3888888889)),
                                     ("train_spaq_qsit", "spaq", (2.0, 96.0))):
        doc = json.load(open(RELEASED / f"{name}.excerpt.json"))
        assert doc["source"].startswith(f"Verbatim excerpt of Q-Future/Q-SIT training_jsons/{name}.json")
        pairs = [(float(r["id"].rsplit("->", 1)[1]), r["conversations"][1]["value"].split()[-1].strip("."))
                 for r in doc["records"]]
        assert len(pairs) == 26 and {lv for _, lv in pairs} == set(LEVELS)
        assert [S.released_level(s, *S.RELEASED_LEVEL_RANGE[source]) for s, _ in pairs] == [lv for _, lv in pairs]
        assert sum(D.score_level(s, *full_range) != lv for s, lv in pairs) >= 5
    assert [S.released_level(s, 0.0, 94.0) for s in (37.6, 56.4, 75.2)] == ["fair", "fair", "excellent"]


def test_level_rule_option_and_scale_check(tmp_path):
    """--level_rule eq1 gives Eq. 1 over the dataset's own range (the paper's formula as printed); the default gives the
    released labels; metadata on another scale (KonIQ's 1-5 MOS column) is an error for the released rule."""
    from test_datasets import rows_of
    rows = rows_of("meta_info_KonIQ10kDataset.csv")  # the verbatim excerpt
    koniq = tmp_path / "koniq"
    placeholders(koniq / "512x384", [r["img_name"] for r in rows])
    (koniq / "meta_info_KonIQ10kDataset.csv").write_text(
        "".join(open(Path(__file__).parent / "data" / "iqa_meta" / "meta_info_KonIQ10kDataset.csv").readlines()[1:]))
    levels = {}
    for rule in ("released", "eq1"):
        out = tmp_path / rule
        P.main(["--task", "score", "--koniq", str(koniq), "--out", str(out), "--check_images", "false", "--val_frac", "0"]
               + (["--level_rule", rule] if rule == "eq1" else []))
        meta = json.load(open(out / "meta.json"))
        assert meta["level_rule"] == rule and meta["datasets"]["koniq10k"]["level_rule"].startswith(rule)
        recs = [json.loads(l) for s in ("train", "test") for l in open(out / f"{s}.jsonl")]
        levels[rule] = {r["id"]: (r["mos"], r["level"]) for r in recs}
        m, M = meta["score_range"]["koniq10k"]
        for mos, level in levels[rule].values():
            assert level == (S.released_level(mos, *S.RELEASED_LEVEL_RANGE["koniq10k"]) if rule == "released"
                             else D.score_level(mos, m, M))
    assert levels["released"].keys() == levels["eq1"].keys()
    assert any(levels["released"][k][1] != levels["eq1"][k][1] for k in levels["eq1"])
    info = {"source": "koniq10k", "score_range": [1.1, 4.3], "metadata_file": "k.csv", "score_column": "MOS"}
    with pytest.raises(ValueError, match=r"k\.csv.*0\.\.100 scale.*--level_rule eq1"):
        S.apply_level_rule([{"mos": 3.0}], info, "released")
    assert S.apply_level_rule([{"mos": 3.0, "level": "fair"}], info, "eq1")[0]["level"] == "fair"


def test_paraphrases_are_q_aligns_nine_training_questions(tmp_path):
    """--paraphrases true draws each training question from the nine of Q-Align's training data (verbatim excerpt of
    Q-Future/Q-Align training_sft/train_koniq.json: one record per question); val/test ask Q-SiT's one question."""
    doc = json.load(open(RELEASED / "train_koniq_qalign.excerpt.json"))
    asked = {r["conversations"][0]["value"].replace("\n<|image|>", "") for r in doc["records"]}
    assert len(asked) == 9 and asked == set(S.SCORE_PARAPHRASES) and S.SCORE_QUESTION in asked
    import random
    rng = random.Random(0)
    drawn = {S.score_record("x", "x.png", "fair", "s", "r", rng)["conversations"][0]["value"] for _ in range(200)}
    assert drawn == {q + "\n<image>" for q in S.SCORE_PARAPHRASES}
