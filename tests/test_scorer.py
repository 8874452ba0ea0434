"""Scoring anyone's images (studies/scorer.py, `evaluate.py score --images`) and the field's evaluation protocol
(KRCC, bootstrap intervals, the training protocol in every result file)."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import mplug_owl2_reference as R
from test_mplug_owl2 import reference_score, released_folder, sp_folder  # noqa: F401  (a fixture)
from iqa_vlm.metrics import bootstrap_ci, krcc, plcc, srcc
from iqa_vlm.studies import scorer as S
from iqa_vlm.studies.scoring import QINSTRUCT_PROMPT, SCORER_PROMPT, training_protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def photo(w, h, seed, mode="RGB"):
    rng = np.random.default_rng(seed)
    base = np.kron(rng.random((h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))[:h, :w] * 200 + rng.random((h, w, 3)) * 55
    return Image.fromarray(base.astype("uint8")).convert(mode)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """JPEG and PNG photos of several shapes, greyscale, RGBA, a 16-bit PNG, a corrupt JPEG, a text file; one subfolder."""
    d = tmp_path_factory.mktemp("mixed")
    (d / "sub").mkdir()
    for i, (w, h) in enumerate([(48, 32), (32, 48), (40, 40), (64, 24)]):
        photo(w, h, i).save(d / f"photo{i}.jpg", quality=90)
        photo(h, w, 10 + i).save(d / "sub" / f"photo{i}.png")
    photo(36, 52, 20, "L").save(d / "grey.png")
    photo(44, 44, 21, "RGBA").save(d / "sub" / "alpha.png")
    Image.fromarray((np.random.default_rng(22).random((30, 40)) * 65535).astype(np.uint16)).save(d / "deep16.png")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (d / "notes.txt").write_text("not an image")
    return d


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("model", ["tiny:mplug_owl2", "tiny:llava_onevision"])
def test_a_folder_scores_the_same_at_batch_sizes_1_3_8_and_through_the_api(model, mixed_folder, tmp_path):
    runs = {}
    for bs in (1, 3, 8):
        out = tmp_path / f"b{bs}.csv"
        res = evaluate.main(["score", "--model", model, "--images", str(mixed_folder), "--out", str(out),
                             "--batch_size", str(bs), "--workers", "0" if bs == 1 else "2"])
        assert res["n"] == 12 and res["not_scored"] == 1
        runs[bs] = read_csv(out)
    rows = runs[1]
    assert [r["image"] for r in rows] == sorted(r["image"] for r in rows)  # the folder's order, whatever the batching
    assert all(r["image"].startswith(str(mixed_folder)) for r in rows) and not any("notes" in r["image"] for r in rows)
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["image"].endswith("corrupt.jpg") and bad[0]["score"] == "" and "unreadable" in bad[0]["error"]
    good = [r for r in rows if not r["error"]]
    for r in good:
        probs = [float(r[f"p_{w}"]) for w in ("bad", "poor", "fair", "good", "excellent")]
        assert abs(sum(probs) - 1) < 1e-5 and abs(float(r["score"]) - sum(p * k for p, k in zip(probs, range(1, 6)))) < 1e-5
        assert abs(float(r["score01"]) - (float(r["score"]) - 1) / 4) < 1e-6 and 1 <= float(r["score"]) <= 5
    for bs in (3, 8):
        assert [r["image"] for r in runs[bs]] == [r["image"] for r in rows]
        for a, b in zip(rows, runs[bs]):
            assert a["error"] == b["error"] and (a["error"] or abs(float(a["score"]) - float(b["score"])) < 1e-5)
    scorer = S.Scorer(model, batch_size=5)
    assert scorer.lower_better is False and scorer.score_range == (1.0, 5.0)
    api = scorer([r["image"] for r in good])
    assert api.dtype == torch.float32 and api.shape == (len(good),)
    torch.testing.assert_close(api, torch.tensor([float(r["score"]) for r in good]), atol=2e-6, rtol=0)
    tensor = torch.from_numpy(np.stack([np.array(photo(40, 40, 30 + i)) for i in range(3)])).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(scorer(tensor), scorer([photo(40, 40, 30 + i) for i in range(3)]), atol=1e-6, rtol=0)


@pytest.mark.skipif(R.reference_dir() is None, reason="pyiqa 0.1.16 not installed (the oracle)")
def test_released_mplug_owl2_folder_scores_as_the_authors_scorers(sp_folder, tmp_path):  # noqa: F811 (the fixture)
    """A folder in the released layout, named like OneAlign, with the reference's weights: --prompt auto picks the
    released scorers' prompt, and the command's scores equal the reference's QAlignScorer / DeQA Scorer computation to
    1e-4; --prompt qinstruct equals Q-Instruct's scorer (good / average / poor, weights 1, .5, 0)."""
    ckpt, ref, ip = released_folder(sp_folder, tmp_path / "one-align")
    images = tmp_path / "images"
    images.mkdir()
    for i, (w, h) in enumerate([(48, 32), (32, 48), (40, 40), (30, 50)]):
        photo(w, h, i).save(images / f"{i}.png")
    res = evaluate.main(["score", "--model", str(ckpt), "--images", str(images), "--out", str(tmp_path / "s.csv"),
                         "--batch_size", "3"])
    assert res["prompt"] == "scorer"
    for r in read_csv(tmp_path / "s.csv"):
        want = reference_score(ref, ip, sp_folder[1], SCORER_PROMPT, Image.open(r["image"]))
        assert abs(float(r["score"]) - want) < 1e-4, (r["image"], r["score"], want)
    evaluate.main(["score", "--model", str(ckpt), "--images", str(images), "--out", str(tmp_path / "q.csv"),
                   "--prompt", "qinstruct"])
    for r in read_csv(tmp_path / "q.csv"):
        want = reference_score(ref, ip, sp_folder[1], QINSTRUCT_PROMPT, Image.open(r["image"]), ["good", "average", "poor"],
                               [1.0, 0.5, 0.0], square=False)
        assert abs(float(r["score01"]) - want) < 1e-4, (r["image"], r["score01"], want)


def test_a_killed_run_resumes_with_only_the_missing_images(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(600):
        photo(24, 24, i).save(folder / f"{i:04d}.png")
    out = tmp_path / "scores.csv"
    cmd = [sys.executable, "evaluate.py", "score", "--model", "tiny:mplug_owl2", "--images", str(folder), "--out", str(out),
           "--batch_size", "1", "--workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") > 40:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed mid-folder"
    partial = out.read_bytes()
    n_before = partial.count(b"\n") - 1
    assert 40 <= n_before < 600
    with open(out, "ab") as f:  # as if killed inside a write: half a row
        f.write(str(folder / "0599.png").encode() + b",3.1")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"({n_before} already in" in r.stdout
    rows = read_csv(out)
    assert [row["image"] for row in rows] == [str(folder / f"{i:04d}.png") for i in range(600)]
    assert all(row["score"] and not row["error"] for row in rows)
    fresh = tmp_path / "fresh.csv"
    subprocess.run([*cmd[:-6], "--out", str(fresh), "--batch_size", "8"], cwd=ROOT, env=env, check=True, capture_output=True)
    for a, b in zip(rows, read_csv(fresh)):
        assert a["image"] == b["image"] and abs(float(a["score"]) - float(b["score"])) < 1e-5


def test_batch_invariant_flag_failed_rows_and_odd_names(tmp_path):
    """--batch_invariant true gives the batch-1 scores exactly; a row that failed is tried again on the next run; a file
    name that is not UTF-8 and one with a comma and quotes go through the CSV unchanged; another scorer or prompt on the
    same --out is refused, and a CSV that is not ours is refused and left as it was."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = ["a.png", 'b, "c".png', os.fsdecode(b"caf\xe9.png")]
    for i, n in enumerate(names):
        photo(30 + 4 * i, 30, i).save(folder / n)
    (folder / "late.png").write_bytes(b"not yet")
    base = ["score", "--model", "tiny:mplug_owl2", "--images", str(folder)]
    evaluate.main([*base, "--out", str(tmp_path / "one.csv"), "--batch_size", "1"])
    res = evaluate.main([*base, "--out", str(tmp_path / "inv.csv"), "--batch_size", "8", "--batch_invariant", "true"])
    assert res["not_scored"] == 1
    with open(tmp_path / "one.csv", newline="", errors="surrogateescape") as f:
        one = list(csv.DictReader(f))
    with open(tmp_path / "inv.csv", newline="", errors="surrogateescape") as f:
        inv = list(csv.DictReader(f))
    assert [r["score"] for r in one] == [r["score"] for r in inv] and len(one) == 4
    assert {os.path.basename(r["image"]) for r in one} == set(names) | {"late.png"}
    photo(30, 30, 9).save(folder / "late.png")  # the file arrives: the next run scores it, and only it
    res = evaluate.main([*base, "--out", str(tmp_path / "inv.csv"), "--batch_invariant", "true"])
    assert res["scored_now"] == 1 and res["not_scored"] == 0
    with pytest.raises(SystemExit, match="holds the scores of"):
        evaluate.main([*base, "--out", str(tmp_path / "inv.csv"), "--prompt", "qalign"])
    foreign = tmp_path / "mine.csv"
    foreign.write_bytes(b"id,value\n1,2")  # no final newline: must not be cut
    with pytest.raises(SystemExit, match="not a scores CSV"):
        evaluate.main([*base, "--out", str(foreign)])
    assert foreign.read_bytes() == b"id,value\n1,2"


def test_image_lists_and_clear_errors(mixed_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(mixed_folder)
    paths, repeats = S.list_images("*.jpg")
    assert paths == ["corrupt.jpg"] + [f"photo{i}.jpg" for i in range(4)] and repeats == 0
    (tmp_path / "list.txt").write_text("# my picks\nphoto1.jpg\n\nsub/alpha.png\nphoto1.jpg\n")
    assert S.list_images(str(tmp_path / "list.txt")) == (["photo1.jpg", "sub/alpha.png"], 1)
    assert S.list_images("grey.png") == (["grey.png"], 0)
    with pytest.raises(SystemExit, match="no images there"):
        S.list_images("nothing_*.png")
    with pytest.raises(SystemExit, match="give --out FILE.csv"):
        evaluate.main(["score", "--model", "tiny:mplug_owl2", "--images", "grey.png", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="not both"):
        evaluate.main(["score", "--model", "tiny:mplug_owl2", "--images", "grey.png", "--data", str(tmp_path),
                       "--out", str(tmp_path / "o.csv")])
    (tmp_path / "other.csv").write_text("id,value\n1,2\n")
    with pytest.raises(SystemExit, match="not a scores CSV"):
        evaluate.main(["score", "--model", "tiny:mplug_owl2", "--images", "grey.png", "--out", str(tmp_path / "other.csv")])
    with pytest.raises(SystemExit, match="released mPLUG-Owl2 scorer's prompt"):
        S.Scorer("tiny:llava_onevision", prompt="scorer")([photo(32, 32, 0)])


def test_krcc_against_scipy_and_by_hand():
    from scipy.stats import kendalltau
    pred, mos = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0]
    # 10 pairs: (0,1) and (2,3) discordant, 8 concordant -> (8 - 2) / 10
    assert krcc(pred, mos) == pytest.approx(0.6)
    tied_pred, tied_mos = [1, 1, 2, 3], [1, 2, 2, 3]
    # tau-b: concordant 4, discordant 0, ties only in pred 1, only in mos 1: 4 / sqrt((6 - 1)(6 - 1))
    assert krcc(tied_pred, tied_mos) == pytest.approx(4 / 5)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=200), rng.normal(size=200)
    assert krcc(x, x + y) == pytest.approx(kendalltau(x, x + y)[0], abs=1e-12)
    assert krcc([1, 1, 1], [1, 2, 3]) is None


def test_bootstrap_interval_equals_a_hand_resampling():
    """scipy.stats.bootstrap's percentile interval, paired, seeded: the same as resampling by hand with the same
    generator (1,000 draws of n indices) and taking the 2.5th and 97.5th percentiles."""
    rng = np.random.default_rng(3)
    pred = rng.normal(size=60)
    mos = pred + rng.normal(size=60)
    for stat in (srcc, plcc, krcc):
        got = bootstrap_ci(pred, mos, stat, n_resamples=1000, seed=5)
        idx = np.random.default_rng(5).integers(0, 60, (1000, 60))
        hand = np.percentile([stat(pred[i], mos[i]) for i in idx], [2.5, 97.5])
        assert got == pytest.approx(list(hand), abs=1e-12)
        assert got[0] < stat(pred, mos) < got[1]
    assert bootstrap_ci([1, 2], [1, 2], srcc) is None  # undefined on the sample itself
    assert bootstrap_ci([1, 2, 3, 4], [1, 1, 1, 2], srcc, seed=0) is None  # some resamples are constant


def test_result_files_record_the_training_protocol(tmp_path):
    for name, sources in (("koniq", {"koniq10k": 7000}), ("mixed", {"koniq10k": 7000, "spaq": 8000})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_text(json.dumps({"counts": {"train": {"n": 1, "by_source": sources}}}))
    one = training_protocol({"data": str(tmp_path / "koniq"), "trainable": "llm"}, "out/run")
    assert one["kind"] == "one dataset" and one["training_sources"] == {"koniq10k": 7000}
    mix = training_protocol({"data": f"{tmp_path / 'koniq'},{tmp_path / 'mixed'}", "mix": "1:1:1"}, "out/run")
    assert mix["kind"] == "a mix" and mix["training_sources"] == {"koniq10k": 14000, "spaq": 8000} and mix["mix"] == "1:1:1"
    assert training_protocol({}, "q-future/one-align")["trained_on"].startswith("KonIQ-10k, SPAQ, KADID-10k")
    assert training_protocol({}, "tiny")["kind"] == "untuned"


def test_evaluate_score_reports_krcc_and_intervals(tmp_path):
    from iqa_vlm.data import LEVELS
    from iqa_vlm.studies.scoring import score_record
    d = tmp_path / "data"
    (d / "images").mkdir(parents=True)
    recs = []
    for i in range(10):
        photo(40, 32, i).save(d / "images" / f"{i}.png")
        recs.append(score_record(f"t/{i}", f"images/{i}.png", LEVELS[i % 5], "t", str(i), mos=1 + i % 5))
    (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    from iqa_vlm.data import closed_set_meta
    (d / "meta.json").write_text(json.dumps({"task": "score", **closed_set_meta()}))
    evaluate.main(["score", "--model", "tiny", "--data", str(d), "--out", str(tmp_path / "o"), "--bootstrap", "200"])
    saved = json.load(open(tmp_path / "o" / "eval_score.json"))
    m = saved["per_source"]["t"]
    assert m["krcc"] == pytest.approx(krcc(*zip(*[(p["score"], p["mos"]) for p in map(json.loads, open(
        tmp_path / "o" / "predictions_score.jsonl"))])))
    assert all(len(m[f"{k}_ci"]) == 2 for k in ("srcc", "plcc", "krcc"))
    assert saved["bootstrap"] == {"resamples": 200, "seed": 0, "level": 0.95}
    assert saved["training_protocol"]["kind"] == "untuned"


def test_level_logits_of_a_bf16_model_are_computed_in_fp32():
    """In bf16 the closed set's logits are recomputed in fp32 from the hidden state (bf16 logits carry ~3 digits)."""
    from iqa_vlm.data import encode_prompts
    from iqa_vlm.model import backbone, last_token_logits, load_model
    model, processor = load_model("tiny:mplug_owl2", dtype=torch.bfloat16)
    model.eval()
    recs = [{"id": "a", "image": photo(40, 30, 0), "conversations": [{"from": "human", "value": "Rate.\n<image>"}]}]
    enc, last = encode_prompts(processor, recs)
    enc["pixel_values"] = enc["pixel_values"].to(torch.bfloat16)
    ids = [5, 9, 11]
    with torch.no_grad():
        logits = last_token_logits(model, enc, last, exact_ids=ids)
        h = backbone(model)(**enc).last_hidden_state[0, last[0]]
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits[0, ids], h.float() @ model.lm_head.weight[ids].float().T, atol=1e-5, rtol=0)
    others = [i for i in range(logits.shape[1]) if i not in ids]
    assert torch.equal(logits[0, others], model.lm_head(h[None]).float()[0, others])
