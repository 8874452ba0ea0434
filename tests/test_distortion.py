"""Distortion perception, semantic shift: the cosine and logit math on hand-built tensors, pooling shapes, V = the tokens that
enter the LM, zero shift for unchanged weights, an LM-only change that moves the logit but not the cosine, and
clear errors for bad checkpoints; the feature baseline on textures whose classes global statistics separate.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_distortion.py
"""
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import analyze  # noqa: E402
from iqa_vlm.studies import distortion as A  # noqa: E402
from iqa_vlm.data import LABELS, closed_set_meta, closed_set_token_ids  # noqa: E402
from iqa_vlm.model import load_model, lm_readout, visual_tokens  # noqa: E402


# ============================================================================ the math on hand-built tensors
def test_cosine_and_logit_by_hand():
    # one image, two tokens in D = 2; label embedding L = (1, 0); head row w = (2, -1), bias 0.5; identity norm
    tokens = torch.tensor([[3.0, 4.0], [0.0, -1.0]])
    L, w, b = torch.tensor([1.0, 0.0]), torch.tensor([2.0, -1.0]), torch.tensor(0.5)
    identity = torch.nn.Identity()
    # per token: cos = 3/5 and 0; logit = 6 - 4 + 0.5 = 2.5 and 0 + 1 + 0.5 = 1.5
    torch.testing.assert_close(A.cosine_to_label(tokens, L), torch.tensor([0.6, 0.0]))
    torch.testing.assert_close(A.label_logit(tokens, identity, w, b), torch.tensor([2.5, 1.5]))
    # mean view: the token-mean (1.5, 1.5) -> cos = 1/sqrt(2), logit = 3 - 1.5 + 0.5 = 2
    cos, logit = A.token_scores(tokens, "mean", L, identity, w, b)
    assert cos.shape == () and logit.shape == ()
    assert math.isclose(float(cos), 1 / math.sqrt(2), rel_tol=1e-6) and math.isclose(float(logit), 2.0, rel_tol=1e-6)
    # max view: the best token for each, 0.6 (token 0) and 2.5 (token 0)
    cos, logit = A.token_scores(tokens, "max", L, identity, w, b)
    assert math.isclose(float(cos), 0.6, rel_tol=1e-6) and math.isclose(float(logit), 2.5, rel_tol=1e-6)
    # relative shift: (after - before) / |before|
    torch.testing.assert_close(A.relative_shift(torch.tensor([2.5, 0.3, 1.0]), torch.tensor([-2.0, 0.6, 1.0])),
                               torch.tensor([2.25, -0.5, 0.0]))
    assert torch.isinf(A.relative_shift(torch.tensor([1.0]), torch.tensor([0.0])))[0]


def test_logit_goes_through_the_final_norm_by_hand():
    # RMSNorm(x) = x / sqrt(mean(x^2)) * g: x = (3, 4) -> rms = sqrt(12.5); g = (1, 2); w = (1, 1)
    norm = torch.nn.RMSNorm(2, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0]))
    expected = (3 * 1 + 4 * 2) / math.sqrt(12.5)
    with torch.no_grad():
        got = A.label_logit(torch.tensor([3.0, 4.0]), norm, torch.tensor([1.0, 1.0]))
    assert math.isclose(float(got), expected, rel_tol=1e-6)


def test_shift_summary_leaves_out_zero_denominators():
    s = A.shift_summary(A.relative_shift(torch.tensor([1.0, 3.0, 2.0, 5.0]), torch.tensor([1.0, 1.0, 0.0, 1.0])))
    assert s == {"mean": 2.0, "median": 2.0, "n": 3, "n_nonfinite": 1}


def test_pooling_shapes():
    tokens = torch.randn(3, 5, 4)
    assert A.pool_tokens(tokens, "mean").shape == (3, 1, 4)
    torch.testing.assert_close(A.pool_tokens(tokens, "mean")[:, 0], tokens.mean(1))
    assert A.pool_tokens(tokens, "max").shape == (3, 5, 4)
    with pytest.raises(ValueError, match="pool must be one of"):
        A.pool_tokens(tokens, "median")
    for pool in ("mean", "max"):
        cos, logit = A.token_scores(tokens[0], pool, torch.randn(4), torch.nn.Identity(), torch.randn(4))
        assert cos.shape == () and logit.shape == ()


# ============================================================================ on the tiny model
def write_images_and_records(folder, n=6):
    """n random 64x64 images and a test.jsonl of distortion records, labels cycling through LABELS; meta.json records
    the closed set, as prepare_data.py writes it."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        name = f"images/im{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / name)
        label = LABELS[i % len(LABELS)]
        lines.append(json.dumps({"id": f"t/{i}", "image": name, "task": "distortion", "label": label, "conversations": [
            {"from": "human", "value": "<image>\nLooking at the image above, what is the synthetic distortion in the image?"},
            {"from": "gpt", "value": f"The image has some {label}."}]}))
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "meta.json").write_text(json.dumps({"task": "distortion", **closed_set_meta(LABELS, A.DISTORTION_PREFIX)}))
    return str(folder)


def write_checkpoint(folder, trainable, data, tensors):
    """A train.py-like output folder: config.json and trainable.safetensors with the given tensors."""
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model": "tiny", "trainable": trainable, "data": data}))
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(folder / "trainable.safetensors"))
    return str(folder)


@pytest.fixture(scope="module")
def tiny():
    model, processor = load_model("tiny")
    return model.eval(), processor


def test_visual_tokens_are_what_enters_the_lm_and_logit_matches_the_head(tiny, tmp_path):
    from iqa_vlm.data import encode_prompts, load_records
    model, processor = tiny
    recs = load_records([write_images_and_records(tmp_path, n=2)], "test")
    enc, _ = encode_prompts(processor, recs)
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True)
    with torch.no_grad():
        model(**enc)
        hook.remove()
        V = visual_tokens(model, processor.image_processor(images=[Image.open(r["image"]).convert("RGB") for r in recs],
                                                           return_tensors="pt"))
        is_image = enc["input_ids"] == model.config.image_token_id
        for b in range(len(recs)):
            torch.testing.assert_close(seen["embeds"][b][is_image[b]], V[b])  # V = the projected tokens entering the LM
        norm, head = lm_readout(model)
        label_id = closed_set_token_ids(processor, LABELS, A.DISTORTION_PREFIX)[0]
        torch.testing.assert_close(A.label_logit(V[0], norm, head.weight[label_id]), head(norm(V[0]))[:, label_id])


def run_cmd(*argv):
    return analyze.main(["semantic-shift", *argv])


def test_unchanged_weights_give_exactly_zero_shift(tiny, tmp_path):
    model, _ = tiny
    data = write_images_and_records(tmp_path / "data")
    projector = {n: p for n, p in model.named_parameters() if "multi_modal_projector" in n}
    ckpt = write_checkpoint(tmp_path / "same", "projector", data, projector)
    moved = write_checkpoint(tmp_path / "moved", "projector", data, {n: p + 0.05 for n, p in projector.items()})
    out = tmp_path / "out"
    result = run_cmd("--ckpt", ckpt, "--ckpt", moved, "--out", str(out), "--pool", "both")
    assert result["columns"] == ["projector", "projector (moved)"] and result["n"] == 6
    for pool in ("mean", "max"):
        for row in ("Similarity", "Logits"):
            assert result["table"][pool][row]["projector"] == {"mean": 0.0, "median": 0.0, "n": 6, "n_nonfinite": 0}
            assert result["table"][pool][row]["projector (moved)"]["mean"] != 0.0  # a changed projector moves V
    assert (out / "semantic_shift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((out / "semantic_shift.json").read_text())
    assert on_disk["table"] == result["table"] and set(on_disk["pooling"]) == {"mean", "max"}
    assert "raw logit" in on_disk["p"]
    samples = [json.loads(l) for l in (out / "semantic_shift_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and samples[0]["projector/mean/cos_init"] == samples[0]["projector/mean/cos_tuned"]


def test_lm_only_change_moves_the_logit_not_the_cosine(tiny, tmp_path):
    # the final norm belongs to the llm part; doubling its weight doubles every logit exactly (a power of two)
    # and leaves V untouched: Similarity = 0, Logits = (2p - p) / |p| = sign(p)
    model, _ = tiny
    data = write_images_and_records(tmp_path / "data")
    norm_weight = dict(model.named_parameters())["model.language_model.norm.weight"]
    ckpt = write_checkpoint(tmp_path / "llm", "llm", data, {"model.language_model.norm.weight": 2 * norm_weight})
    out = tmp_path / "out"
    result = run_cmd("--ckpt", ckpt, "--out", str(out), "--pool", "mean")
    assert list(result["table"]) == ["mean"]  # only the asked-for pool
    assert result["table"]["mean"]["Similarity"]["llm"]["mean"] == 0.0
    samples = [json.loads(l) for l in (out / "semantic_shift_samples.jsonl").read_text().splitlines()]
    signs = [math.copysign(1.0, s["llm/mean/logit_init"]) for s in samples]
    for s in samples:
        assert s["llm/mean/logit_tuned"] == pytest.approx(2 * s["llm/mean/logit_init"], rel=1e-6, abs=3e-6)  # JSONL keeps 6 decimals
    assert result["table"]["mean"]["Logits"]["llm"]["mean"] == pytest.approx(sum(signs) / len(signs), abs=1e-12)
    assert not result["checkpoints"]["llm"]["label_embedding_changed_by_tuning"]


def test_an_lm_run_moves_similarity_only_when_l_is_read_from_the_tuned_model(tiny, tmp_path):
    """Eq. 1 as printed keeps one L: an LM-only run (V untouched) has Similarity 0. With --label_embedding own the
    'after' cosine reads L from the tuned model's embedding, which a run that trains the embeddings (head) moved."""
    model, _ = tiny
    data = write_images_and_records(tmp_path / "data")
    emb = model.get_input_embeddings().weight
    name = next(n for n, p in model.named_parameters() if p is emb)
    ckpt = write_checkpoint(tmp_path / "lm", "llm,head", data, {name: emb + 0.1 * torch.randn_like(emb)})
    base = run_cmd("--ckpt", ckpt, "--out", str(tmp_path / "base"), "--pool", "mean")
    own = run_cmd("--ckpt", ckpt, "--out", str(tmp_path / "own"), "--pool", "mean", "--label_embedding", "own")
    assert base["table"]["mean"]["Similarity"]["llm,head"]["mean"] == 0.0
    assert own["table"]["mean"]["Similarity"]["llm,head"]["mean"] != 0.0
    assert own["checkpoints"]["llm,head"]["label_embedding_changed_by_tuning"] and own["label_embedding"] == "own"


def test_bad_ckpt_gives_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match=r"--ckpt .*nope: no such folder"):
        run_cmd("--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"empty: config\.json not found"):
        run_cmd("--ckpt", str(tmp_path / "empty"), "--out", str(tmp_path / "out"))
    ckpt = write_checkpoint(tmp_path / "nofield", "projector", "data/demo", {})
    (tmp_path / "nofield" / "config.json").write_text(json.dumps({"model": "tiny", "data": "data/demo"}))
    with pytest.raises(SystemExit, match=r"nofield/config\.json: field 'trainable' missing"):
        run_cmd("--ckpt", ckpt, "--out", str(tmp_path / "out"))
    (tmp_path / "nofield" / "config.json").write_text("{not json")
    with pytest.raises(SystemExit, match=r"nofield/config\.json: not valid JSON"):
        run_cmd("--ckpt", ckpt, "--out", str(tmp_path / "out"))


def _write_split(folder, split, per_class, labels, rng):
    """Textures in `labels`' classes, distorted strongly enough that global statistics separate them."""
    from iqa_vlm.common import atomic_write_jsonl
    from iqa_vlm.studies.demo_set import distort, to_uint8
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    records = []
    for label in labels:
        for k in range(per_class):
            ref = f"{split}{k % 3}"
            base = gaussian_filter(rng.random((32, 32, 3)), (1.5, 1.5, 0)).astype(np.float32)
            base = (base - base.min()) / (base.max() - base.min())
            x = distort(base, label, 5, rng)
            name = f"images/{split}_{label}_{k}.png"
            Image.fromarray(to_uint8(x)).save(os.path.join(folder, name))
            records.append(A.distortion_record(f"t/{name}", name, label, "t", ref))
    atomic_write_jsonl(os.path.join(folder, f"{split}.jsonl"), records)


def test_feature_baseline_separates_global_distortions(tmp_path):
    rng = np.random.default_rng(0)
    labels = ["clean", "blur", "noise", "contrast"]
    _write_split(str(tmp_path / "d"), "train", 30, labels, rng)
    _write_split(str(tmp_path / "d"), "test", 12, labels, rng)
    res = A.feature_baseline(str(tmp_path / "d"), out=str(tmp_path / "fb"))
    assert res["n"] == 48 and res["n_train"] == 120
    assert res["accuracy"] >= 0.9, res  # blur, noise and contrast at severity 5 change every statistic they touch
    assert sum(map(sum, res["confusion"])) == 48
    assert res["per_class"]["jitter"] is None and set(res["per_ref"]) == {"test0", "test1", "test2"}
    assert json.load(open(tmp_path / "fb" / "feature_baseline.json"))["accuracy"] == res["accuracy"]
    assert (tmp_path / "fb" / "confusion.png").stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="val.jsonl"):
        A.feature_baseline(str(tmp_path / "d"), split="val", out=str(tmp_path / "fb"))
    bad = [json.loads(line) for line in open(tmp_path / "d" / "test.jsonl")]
    bad[3]["label"] = "haze"
    (tmp_path / "d" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(SystemExit, match=r"val\): labels \['haze'\] are not among"):
        A.feature_baseline(str(tmp_path / "d"), split="val", out=str(tmp_path / "fb"))
