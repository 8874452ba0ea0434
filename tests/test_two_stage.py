"""Two-stage reasoning: the pathway splitter, the three views, stage 2 text-only training and --init, the
instability ratio, the logit lens and the attention shares at the quality token.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_two_stage.py
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from iqa_vlm.studies import two_stage as PW  # noqa: E402
from iqa_vlm.studies import quality_token as QT  # noqa: E402
from iqa_vlm.data import LEVELS  # noqa: E402
from iqa_vlm.metrics import mean_std  # noqa: E402


def sh(*args, ok=True):
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (r.returncode == 0) == ok, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout + r.stderr


# ============================================================================ the splitter
FLOWER = ("The image shows a close-up of a pink flower, and the focus is sharp on the petals. However, the background "
          "is noticeably blurry and there is some noise in the darker areas.")


@pytest.mark.parametrize("conclusion, level", [
    ("Overall, the quality of the image is poor.", "poor"),
    ("Therefore, the image quality is good.", "good"),
    ("In conclusion, this image has fair quality.", "fair"),
    ("Thus, the overall quality can be rated as excellent.", "excellent"),
    ("Overall, the quality of this image is very poor.", "bad"),         # the longer phrase wins
    ("To sum up, the image quality is below average.", "poor"),
    ("Overall, the low-level quality of this image is acceptable.", "fair"),  # "low-level" is no level
])
def test_splitter_on_pathway_conclusions(conclusion, level):
    text = FLOWER + " " + conclusion
    parts = PW.split_feedback(text)
    assert parts["level"] == level and parts["reason"] is None
    assert parts["description"] == FLOWER and parts["conclusion"] == conclusion and parts["position"] == "last"
    # text[:level_start] is the feedback up to the level word: the one-stage quality token's prefix
    assert text[parts["level_start"]:].lower().startswith(parts["level_phrase"].lower())
    assert text[:parts["conclusion_start"]].rstrip() == FLOWER


def test_splitter_conclusion_before_a_closing_remark_and_lowercase_generation():
    text = "The colors are vivid. Overall, the image quality is good. The main subject is a dog on the grass."
    parts = PW.split_feedback(text)
    assert parts["level"] == "good" and parts["position"] == "second to last"
    assert parts["description"] == "The colors are vivid. The main subject is a dog on the grass."
    # what the tiny model's decoder gives back: lower case, spaces around nothing
    gen = "the image is slightly blurry, and fine details are not clear. overall, the quality of the image is fair."
    assert PW.split_feedback(gen)["level"] == "fair"
    assert PW.split_feedback(gen)["description"] == "the image is slightly blurry, and fine details are not clear."


@pytest.mark.parametrize("text, reason", [
    (FLOWER, "no concluding sentence naming the quality"),
    ("The image shows a cat on a sofa. The lighting is good.", "no concluding sentence naming the quality"),
    (FLOWER + " Overall, the quality is good, but the sharpness is poor.", "several levels"),
    (FLOWER + " Overall, the quality of the image is not good.", "negates"),
    (FLOWER + " The quality is affected by the blur.", "no concluding sentence"),
    ("", "empty"),
])
def test_splitter_without_a_usable_conclusion(text, reason):
    parts = PW.split_feedback(text)
    assert parts["level"] is None and parts["description"] is None and reason in parts["reason"]


def test_every_demo_description_splits_back_into_description_and_level():
    from iqa_vlm.studies.demo_set import DEMO_DESCRIPTIONS, demo_description
    for label in DEMO_DESCRIPTIONS:
        for severity in ([0] if label == "clean" else range(1, 6)):
            for level in LEVELS:
                text = demo_description(label, severity, level)
                parts = PW.split_feedback(text)
                assert parts["level"] == level and text == parts["description"] + " " + parts["conclusion"]
                assert text[:parts["level_start"]].rstrip().endswith(PW.CONCLUSION_PREFIX)


# ============================================================================ the three views
def test_pathway_views_from_llava_json_count_and_exclude(tmp_path):
    import prepare_data
    for i in range(5):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    q = "<image>\nDescribe and evaluate the quality of the image."
    entries = [{"id": "a", "image": "0.png", "conversations": [{"from": "human", "value": q},
                                                                {"from": "gpt", "value": FLOWER + " Overall, the quality of the image is poor."}]},
               {"id": "b", "image": "1.png", "conversations": [{"from": "human", "value": q},
                                                                {"from": "gpt", "value": "Sharp and clean. Therefore, the image quality is good."}]},
               {"id": "c", "image": "2.png", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": FLOWER}]},
               {"id": "d", "image": "3.png", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": "Blurry."},
                                                                {"from": "human", "value": "And?"},
                                                                {"from": "gpt", "value": "Overall, the quality is poor."}]},
               {"id": "e", "image": "4.png", "conversations": [{"from": "human", "value": q},
                                                                {"from": "gpt", "value": "Overall, the quality is bad."}]}]
    (tmp_path / "q.json").write_text(json.dumps(entries))
    out = tmp_path / "pw"
    prepare_data.main(["--task", "pathway", "--llava_json", str(tmp_path / "q.json"), "--out", str(out), "--val_frac", "0",
                       "--pathway_split", "all"])
    meta = json.loads((out / "meta.json").read_text())
    rep = meta["split"]
    assert rep["records_in"] == 5 and rep["kept"] == 2 and rep["levels"] == {"poor": 1, "good": 1}
    assert rep["excluded"] == {"no concluding sentence naming the quality": 1, "not one question and one answer": 1,
                               "nothing before the concluding sentence": 1}
    assert rep["excluded_examples"]["no concluding sentence naming the quality"][0]["id"].endswith("/c")
    one = [json.loads(l) for l in open(out / "one_stage" / "train.jsonl")]
    s1 = [json.loads(l) for l in open(out / "stage1" / "train.jsonl")]
    s2 = [json.loads(l) for l in open(out / "stage2" / "train.jsonl")]
    assert [r["level"] for r in s2] == ["poor", "good"]
    from iqa_vlm.data import LEVEL_PREFIX, LEVELS, read_closed_set
    assert read_closed_set([str(out), str(out / "one_stage"), str(out / "stage2")]) == (LEVELS, LEVEL_PREFIX)
    with pytest.raises(ValueError, match="stage1/meta.json records no closed set"):  # descriptions end in no level
        read_closed_set(str(out / "stage1"))
    assert one[0]["conversations"][1]["value"].endswith("is poor.") and one[0]["image"]
    assert s1[0]["conversations"][1]["value"] == FLOWER and s1[0]["image"]
    assert "image" not in s2[0] and "<image>" not in s2[0]["conversations"][0]["value"]
    assert FLOWER in s2[0]["conversations"][0]["value"]
    assert s2[0]["conversations"][1]["value"] == "The quality of the image is poor."


@pytest.fixture(scope="module")
def demo_pathway(tmp_path_factory):
    import prepare_data
    root = tmp_path_factory.mktemp("pw")
    prepare_data.make_demo(str(root / "demo"), crops_per_class=4)
    prepare_data.main(["--task", "pathway", "--demo", str(root / "demo"), "--out", str(root / "demo_pathway")])
    return root / "demo_pathway"


def test_demo_pathway_views(demo_pathway):
    meta = json.loads((demo_pathway / "meta.json").read_text())
    assert meta["split"]["excluded"] == {} and meta["split"]["kept"] == meta["split"]["records_in"]
    for split in ("train", "test"):
        views = {v: [json.loads(l) for l in open(demo_pathway / v / f"{split}.jsonl")] for v in PW.VIEWS}
        assert len({len(v) for v in views.values()}) == 1 and views["stage1"]
        for a, b, c in zip(views["one_stage"], views["stage1"], views["stage2"]):
            assert a["id"] == b["id"] == c["id"] and a["level"] == c["level"]
            assert os.path.exists(demo_pathway / "stage1" / b["image"]) and "image" not in c
            assert a["conversations"][1]["value"] == b["conversations"][1]["value"] + f" {PW.CONCLUSION_PREFIX} {a['level']}."


# ============================================================================ stage 2: text-only batches and training
def test_stage2_batch_is_text_only_and_learns_only_the_answer(demo_pathway):
    from iqa_vlm.data import encode_batch, load_records
    from iqa_vlm.model import SupervisedLogits, load_model, set_trainable
    model, processor = load_model("tiny")
    recs = load_records([str(demo_pathway / "stage2")], "train")[:4]
    batch = encode_batch(processor, recs)
    assert "pixel_values" not in batch
    answer = processor.tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != -100])
    assert answer == f"the quality of the image is {recs[0]['level']}. </s>"
    set_trainable(model, "llm", verbose=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logits, targets = SupervisedLogits(model)(**batch)
    torch.nn.functional.cross_entropy(logits, targets).backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("model.language_model.") for n in changed)
    with pytest.raises(ValueError, match="mixes 1 records with an image and 1 without"):
        encode_batch(processor, [load_records([str(demo_pathway / "stage1")], "train")[0], recs[0]])


def test_stage2_with_init_end_to_end(demo_pathway, tmp_path):
    from safetensors.torch import save_file
    from iqa_vlm.model import load_model, part_params
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    # a stage-1 output folder, made here (a train.py run would take seconds more): its parts moved off the base
    model, _ = load_model("tiny")
    parts = part_params(model)
    g = torch.Generator().manual_seed(0)
    tensors = {n: p.detach() + 0.01 * torch.randn(p.shape, generator=g) for part in ("encoder", "projector", "llm")
               for n, p in parts[part].items()}
    s1.mkdir()
    save_file(tensors, s1 / "trainable.safetensors")
    (s1 / "config.json").write_text(json.dumps({"model": "tiny", "trainable": "encoder,projector,llm", "stage": 1}))
    log = sh("train.py", "config/demo.py", "--stage", "2", "--data", str(demo_pathway), "--init", str(s1), "--trainable", "llm",
             "--max_steps", "2", "--batch_size", "4", "--log_every", "1", "--out", str(s2))
    assert "--init" in log and "loss" in log
    cfg = json.loads((s2 / "config.json").read_text())
    assert cfg["stage"] == 2 and cfg["data"].endswith("stage2") and cfg["steps_done"] == 2 and cfg["init_trainable"] == "encoder,projector,llm"
    t1, t2 = load_file(s1 / "trainable.safetensors"), load_file(s2 / "trainable.safetensors")
    assert set(t2) == set(t1)  # stage 2 trains llm only, and saves stage 1's encoder and projector with it
    for name in t1:  # text-only batches leave the image side exactly as stage 1 made it
        if not name.startswith("model.language_model."):
            assert torch.equal(t1[name], t2[name]), name
    assert any(not torch.equal(t1[n], t2[n]) for n in t1 if n.startswith("model.language_model.layers"))
    # stage 2 with only image parts named would learn nothing: an error before any model loads
    out = sh("train.py", "config/demo.py", "--stage", "2", "--data", str(demo_pathway), "--trainable", "encoder,projector", "--out",
             str(tmp_path / "x"), ok=False)
    assert "--stage 2 batches carry no image" in out


# ============================================================================ the instability ratio
def test_instability_ratio_on_scripted_answers():
    answers = [["poor"] * 5,                                 # stable
               ["poor", "poor", "fair", "poor", "poor"],     # disagree
               ["good", "good", None, "good", "good"],       # one answer outside the level set
               ["bad"] * 5,                                  # stable
               ["fair", "good", None, "fair", "fair"],       # both
               ["excellent", "excellent", "superb", "excellent", "excellent"]]  # a word outside the level set
    r = PW.instability_ratio(answers)
    assert r == {"n": 6, "n_unstable": 4, "n_disagree": 2, "n_outside": 3, "ratio": 4 / 6}
    texts = ["The quality of the image is poor.", "the quality of the image is poor .", "The image is blurry.",
             "The quality of the image is very good."]
    assert [PW.answer_level(t) for t in texts] == ["poor", "poor", None, "excellent"]
    assert mean_std([0.5, 0.25, 0.75]) == (0.5, 0.25)
    assert mean_std([0.3]) == (0.3, 0.0)


def test_evaluate_two_stage_and_instability_run_on_the_tiny_model(demo_pathway, tmp_path):
    import evaluate
    base = ["--model", "tiny", "--data", str(demo_pathway), "--limit", "6", "--batch_size", "3", "--max_new_tokens", "6",
            "--out", str(tmp_path)]
    two = evaluate.main(["two-stage", "--latency_n", "1", *base])
    one = evaluate.main(["two-stage", "--pipeline", "one_stage", "--latency_n", "1", *base])
    for res in (two, one):
        assert res["n"] == 6 and res["latency_s_per_image"]["batch_1_n"] == 1
    preds = [json.loads(l) for l in open(tmp_path / "predictions_two_stage.jsonl")]
    assert all(abs(sum(p["probs"]) - 1) < 1e-4 and 1 <= p["score"] <= 5 for p in preds)
    res = evaluate.main(["instability", "--sessions", "2", "--repeats", "3", "--temperature", "1.0", *base])
    assert [s["seed"] for s in res["per_session"]] == [0, 1] and res["repeats"] == 3
    rows = [json.loads(l) for l in open(tmp_path / "instability_two_stage_answers.jsonl")]
    assert len(rows) == 12 and all(len(r["answers"]) == 3 for r in rows)
    again = evaluate.main(["instability", "--sessions", "2", "--repeats", "3", "--temperature", "1.0", *base])
    assert again["per_session"][0]["n_unstable"] == res["per_session"][0]["n_unstable"]  # seeded
    fixed = evaluate.main(["instability", "--pipeline", "one_stage", "--sessions", "1", "--repeats", "2",
                           "--fixed_description", "true", *base])
    rows = [json.loads(l) for l in open(tmp_path / "instability_one_stage_fixed_answers.jsonl")]
    assert fixed["sampled"].startswith("only what follows") and len(rows) == 6
    for r in rows:  # one description per sample, its endings sampled
        assert len(set(r["descriptions"])) == 1 and all(t.startswith(r["descriptions"][0]) for t in r["texts"])


# ============================================================================ logit lens and attention
@pytest.fixture(scope="module")
def tiny_eager():
    from iqa_vlm.model import load_model
    model, processor = load_model("tiny")
    QT.use_eager_attention(model)
    return model.eval(), processor


def items_of(model, processor, demo_pathway, mode, n=3):
    from iqa_vlm.data import load_records
    recs = load_records([str(demo_pathway / "one_stage")], "test")[:n]
    return QT.quality_inputs(model, processor, recs, mode, "reference")


@pytest.mark.parametrize("mode", ["two_stage", "one_stage"])
def test_logit_lens_at_the_last_layer_is_the_models_logits(tiny_eager, demo_pathway, mode):
    model, processor = tiny_eager
    for item in items_of(model, processor, demo_pathway, mode):
        assert item["text"].endswith("the image is") and not item["forced"]
        enc = QT.encode_item(processor, model, item, "cpu")
        layers, lens, _ = QT.logit_lens(model, enc, 4)
        assert layers == [0, 1]  # the tiny model has two decoder layers
        with torch.no_grad():
            own = model(**enc).logits[0, -1]
        torch.testing.assert_close(lens[-1], own, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(lens[0], own, atol=1e-3)


@pytest.mark.parametrize("mode", ["two_stage", "one_stage"])
def test_attention_shares_sum_to_one(tiny_eager, demo_pathway, mode):
    model, processor = tiny_eager
    for item in items_of(model, processor, demo_pathway, mode):
        enc = QT.encode_item(processor, model, item, "cpu")
        att = QT.quality_attention(model, enc)
        assert att.shape == (2, enc["input_ids"].shape[1])
        parts = QT.token_parts(processor.tokenizer, item, enc["input_ids"][0], model.config.image_token_id)
        counts = {p: parts.count(p) for p in QT.ATTENTION_PARTS}
        assert counts["image"] == (int((enc["input_ids"] == model.config.image_token_id).sum()) if mode == "one_stage" else 0)
        assert counts["prompt"] and counts["description"] and counts["conclusion"]
        described = processor.tokenizer.decode([int(t) for t, p in zip(enc["input_ids"][0], parts) if p == "description"])
        assert described == item["description"].lower()
        shares = QT.attention_shares(att, parts)
        for layer in range(2):
            assert abs(sum(s[layer] for s in shares.values()) - 1) < 1e-5
        if mode == "two_stage":
            assert all(s == 0 for s in shares["image"])


def test_logit_lens_and_attention_default_to_the_papers_settings():
    """Two-stage paper (001): Fig. 6 decodes "after 30-th layers" of mPLUG-Owl2-7B's 32 (layers 30, 31, 32: the last 3),
    Fig. 3 shows the "four most probable candidates", Fig. 5 averages attention over 720 samples."""
    import argparse
    import inspect
    import analyze
    p = argparse.ArgumentParser()
    analyze.logit_lens_args(p)
    d = vars(p.parse_args([]))
    assert (d["layers"], d["topk"], d["limit"], d["focus"]) == (3, 4, 720, "poor")
    p = argparse.ArgumentParser()
    analyze.COMMANDS["attention"][1](p)
    assert vars(p.parse_args([]))["limit"] == 720
    for fn in (QT.logit_lens_report, QT.attention_report):  # the library's defaults are the command's
        params = inspect.signature(fn).parameters
        assert params["limit"].default == 720
    assert inspect.signature(QT.logit_lens_report).parameters["layers"].default == 3


def test_pathway_split_defaults_to_the_papers_6000_and_720(tmp_path, capsys):
    """The two-stage paper (001, Sec. 4.1): "we randomly select 6,720 samples from the Q-Pathway dataset, with 6,000
    samples allocated to the training set" (the other 720 test: Fig. 5 averages 720). The draw is seeded, from the
    records that split into a description and a conclusion; too few is an error naming the counts."""
    import prepare_data
    q = "<image>\nDescribe and evaluate the quality of the image."
    entries = []
    for i in range(12):
        Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(tmp_path / f"{i}.png")
        answer = FLOWER + (" Overall, the quality of the image is poor." if i % 4 else "")  # every 4th: no conclusion
        entries.append({"id": f"r{i}", "image": f"{i}.png", "conversations": [{"from": "human", "value": q},
                                                                            {"from": "gpt", "value": answer}]})
    (tmp_path / "q.json").write_text(json.dumps(entries))
    with pytest.raises(SystemExit):  # the default 6000 + 720 cannot be drawn from 9 usable records
        prepare_data.main(["--task", "pathway", "--llava_json", str(tmp_path / "q.json"), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert "--pathway_split 6000,720: " in err and "has 9 records that split into a description and a conclusion" in err
    ids = []
    for k in range(2):
        out = tmp_path / f"pw{k}"
        prepare_data.main(["--task", "pathway", "--llava_json", str(tmp_path / "q.json"), "--out", str(out),
                           "--pathway_split", "6,2"])
        split = {s: [json.loads(l)["id"] for l in open(out / "one_stage" / f"{s}.jsonl")] for s in ("train", "val", "test")}
        assert (len(split["train"]), len(split["val"]), len(split["test"])) == (6, 0, 2)
        assert not set(split["train"]) & set(split["test"]) and not {"r0", "r4", "r8"} & set(split["train"] + split["test"])
        ids.append(split)
        meta = json.loads((out / "meta.json").read_text())
        assert meta["pathway_split"] == {"train": 6, "test": 2, "usable": 9, "read": 12}
    assert ids[0] == ids[1]  # seeded
