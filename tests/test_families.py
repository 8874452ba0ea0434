"""Every supported VLM family, as a tiny random member of transformers' real class (tiny_models.py):
parts, freeze flags through the training path, chat templates and image-token expansion, closed-set
probabilities, gradient checkpointing with a frozen encoder, LoRA, export."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from iqa_vlm.data import LEVELS, closed_set_token_ids, encode_batch, encode_prompts
from iqa_vlm.level_ce import level_cross_entropy
from iqa_vlm.model import FAMILIES, LORA_PARAM, SupervisedLogits, backbone, enable_checkpointing, family_of, part_params, set_trainable
from iqa_vlm.metrics import closed_set_scores
from iqa_vlm.data import LEVEL_PREFIX
from iqa_vlm.studies.scoring import score_record
from iqa_vlm.tiny_models import TINY_FAMILIES, build_tiny

# tensors that get no gradient by design: pooling heads and norms that serve only a pooled output the VLM ignores
# mPLUG-Owl2: the last decoder layer's visual-branch MLP norm shapes only the visual positions' final states, which no
# supervised position reads; InternLM-XComposer2: the last layer's Partial LoRA after attention (wo, MLP) likewise
NO_GRAD_BY_DESIGN = re.compile(r"post_layernorm\.(weight|bias)|vision_tower\.head\.|vision_tower\.layernorm|"
                               r"layers\.1\.post_attention_layernorm\.multiway\.1\.|"
                               r"layers\.1\.(attention\.wo|feed_forward\.w[123])\.Plora_")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fam_images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        p = folder / f"im{i}.png"
        Image.fromarray((rng.random((40 + 8 * i, 48, 3)) * 255).astype("uint8")).save(p)
        paths.append(str(p))
    return paths


def records(paths):
    return [score_record(f"t/{i}", p, LEVELS[i + 2], "t", str(i)) for i, p in enumerate(paths)]


_cache = {}


def tiny(family):
    if family not in _cache:
        _cache[family] = build_tiny(family)
    return _cache[family]


def train_step(model, processor, recs, spec, grad_ckpt=False, lora=0):
    """One optimizer step through train.py's path (encode_batch -> SupervisedLogits -> fused loss).
    Returns (chosen names, changed names, names without a gradient). Restores the weights after."""
    if lora:  # adapters change the module tree: work on a copy
        import copy
        model = copy.deepcopy(model)
    chosen = set_trainable(model, spec, verbose=False, lora=lora)
    if grad_ckpt:
        enable_checkpointing(model)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    logits, targets = SupervisedLogits(model)(**encode_batch(processor, recs))
    level_cross_entropy(logits, targets, label_smoothing=0.1)[0].mean().backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    no_grad = {n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())}
    model.zero_grad(set_to_none=True)
    if grad_ckpt:
        model.activation_checkpointing_disable()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(before[n])
    return set().union(*[set(v) for v in chosen.values()]), changed, no_grad


def test_at_least_eight_families_and_each_maps():
    assert len(TINY_FAMILIES) >= 8
    for f in TINY_FAMILIES:
        model, _ = tiny(f)
        assert family_of(model) in FAMILIES
        parts = part_params(model)
        names = [n for p in parts.values() for n in p]
        assert len(names) == len(set(names)), f"{f}: a tensor in two parts"
        assert set(names) == {n for n, _ in model.named_parameters()}, f"{f}: a tensor in no part"
        assert all(parts[k] for k in ("encoder", "projector", "llm", "head")), f


def test_qwen_merger_counts_as_projector_not_encoder():
    for f in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        parts = part_params(tiny(f)[0])
        assert parts["projector"] and all(n.startswith("model.visual.merger") or "deepstack" in n for n in parts["projector"])
        assert not any("merger" in n for n in parts["encoder"]) and all(n.startswith("model.visual.") for n in parts["encoder"])


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("spec", ["encoder", "projector", "llm", "llm:1-1", "head"])
def test_one_step_changes_exactly_the_chosen_part(family, spec, images):
    model, processor = tiny(family)
    expected, changed, no_grad = train_step(model, processor, records(images), spec)
    assert not {n for n in no_grad if not NO_GRAD_BY_DESIGN.search(n)}, (family, spec, sorted(no_grad)[:4])
    assert changed == expected - no_grad and changed, (family, spec, sorted(changed ^ (expected - no_grad))[:4])


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_grad_ckpt_with_frozen_encoder_still_trains_llm(family, images):
    """The classic pitfall: reentrant checkpointing of blocks whose inputs need no grad yields no gradient."""
    model, processor = tiny(family)
    expected, changed, no_grad = train_step(model, processor, records(images), "projector,llm:0-0", grad_ckpt=True)
    assert changed == expected - no_grad and not no_grad, (family, sorted(no_grad)[:4])
    assert any(".layers.0." in n for n in changed)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_lora_trains_only_the_adapters_and_the_chosen_parts(family, images):
    model, processor = tiny(family)
    expected, changed, no_grad = train_step(model, processor, records(images), "projector,llm:1-1", lora=4, grad_ckpt=True)
    lora_names = {n for n in expected if LORA_PARAM.search(n)}
    assert lora_names and all(".layers.1." in n for n in lora_names)  # adapters on layer 1 only
    # lora_B starts at zero, so lora_A gets no gradient on the first step (by LoRA's design); B and the projector move
    assert changed == expected - no_grad and no_grad <= {n for n in lora_names if "lora_A" in n}, (family, sorted(no_grad)[:4])
    assert any("lora_B" in n for n in changed) and not any(".base_layer." in n for n in changed)
    assert {n for n in expected if not LORA_PARAM.search(n)} == set(part_params(model)["projector"])


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_labels_cover_exactly_the_answer(family, images):
    model, processor = tiny(family)
    batch = encode_batch(processor, records(images))
    tok = processor.tokenizer
    for b, rec in enumerate(records(images)):
        answer = tok.decode(batch["labels"][b][batch["labels"][b] != -100], skip_special_tokens=True)
        assert answer.replace(" .", ".").strip().lower() == rec["conversations"][1]["value"].lower(), (family, answer)
        image_id = getattr(model.config, "image_token_id", getattr(model.config, "image_token_index", None))  # mPLUG: _index
        n_image = int((batch["input_ids"][b] == image_id).sum())
        assert n_image > 0, f"{family}: the <image> placeholder was not expanded"


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_closed_set_probs_match_a_manual_forward(family, images):
    model, processor = tiny(family)
    model.eval()
    level_ids = closed_set_token_ids(processor, LEVELS, LEVEL_PREFIX)
    enc, last = encode_prompts(processor, records(images), answer_prefix=LEVEL_PREFIX)
    with torch.no_grad():
        hidden = backbone(model)(**enc).last_hidden_state
        probs, score, _ = closed_set_scores(model.lm_head(hidden[torch.arange(len(last)), last]), level_ids)
        full = model(**enc).logits.double()
    manual = torch.softmax(full[torch.arange(len(last)), last][:, level_ids], -1)
    torch.testing.assert_close(probs.double(), manual, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(score.double(), manual @ torch.arange(1, 6, dtype=torch.double), atol=1e-4, rtol=1e-5)
    assert processor.tokenizer.decode(enc["input_ids"][0][last[0]]).strip().lower() == "is"  # "...of the image is|"


def test_shared_first_token_is_an_error():
    _, processor = tiny("qwen2_vl")
    with pytest.raises(ValueError, match="share a first token"):
        closed_set_token_ids(processor, ["good", "good"], LEVEL_PREFIX)


def test_mplug_owl2_module_tree_maps():
    """mPLUG-Owl2 ships remote code; its module names are enough to check the parts table."""
    class Owl2(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "mplug_owl2"})()
            self.model = torch.nn.Module()
            self.model.vision_model = torch.nn.Sequential(torch.nn.Linear(4, 4))
            self.model.visual_abstractor = torch.nn.Sequential(torch.nn.Linear(4, 4))
            self.model.embed_tokens = torch.nn.Embedding(10, 4)
            self.model.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)])
            self.model.norm = torch.nn.LayerNorm(4)
            self.lm_head = torch.nn.Linear(4, 10)
    m = Owl2()
    parts = part_params(m)
    assert set(parts["encoder"]) == {"model.vision_model.0.weight", "model.vision_model.0.bias"}
    assert set(parts["projector"]) == {"model.visual_abstractor.0.weight", "model.visual_abstractor.0.bias"}
    assert set(parts["head"]) == {"lm_head.weight", "lm_head.bias", "model.embed_tokens.weight"}
    assert len(parts["llm"]) == 8  # 3 layers x (weight, bias) + norm
    chosen = set_trainable(m, "llm:2-2", verbose=False)
    assert set(chosen["llm:2-2"]) == {"model.layers.2.weight", "model.layers.2.bias"}
    assert {n for n, p in m.named_parameters() if p.requires_grad} == set(chosen["llm:2-2"])


def test_unknown_family_lists_modules():
    m = torch.nn.Module()
    m.config = type("C", (), {"model_type": "weird"})()
    m.backbone = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="backbone"):
        family_of(m)
