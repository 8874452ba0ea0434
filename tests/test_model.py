"""Parts and freeze flags on the tiny model: exactly the chosen parameters change in one step."""

import pytest
import torch

from iqa_vlm.model import load_model, parse_trainable, part_params, set_trainable

COMBOS = ["encoder", "projector", "llm", "head", "llm:1-1", "encoder,projector", "encoder,llm:1-1", "projector,llm",
          "encoder,projector,llm,head"]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def one_step(model, processor, spec):
    import numpy as np
    from PIL import Image
    chosen = set_trainable(model, spec, verbose=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    img_ids = processor(text=["user: <image>\nwhat is it?\nassistant: the image has some blur."],
                        images=[Image.fromarray((np.random.rand(64, 64, 3) * 255).astype("uint8"))], return_tensors="pt")
    out = model(**img_ids, labels=img_ids["input_ids"])
    out.loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    no_grad = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    model.zero_grad(set_to_none=True)
    with torch.no_grad():  # restore for the next combination
        for n, p in model.named_parameters():
            p.copy_(before[n])
    return chosen, changed, no_grad


@pytest.mark.parametrize("spec", COMBOS)
def test_exactly_chosen_parameters_change(tiny, spec):
    model, processor = tiny
    chosen, changed, no_grad = one_step(model, processor, spec)
    expected = set().union(*[set(v) for v in chosen.values()])
    assert expected, spec
    # CLIP's post_layernorm only serves the pooled output, which LLaVA does not use: no gradient, no change
    assert no_grad <= {"model.vision_tower.post_layernorm.weight", "model.vision_tower.post_layernorm.bias"}
    assert changed == expected - no_grad, (spec, sorted(changed ^ (expected - no_grad))[:5])
    if "encoder" in spec:
        assert len(expected - no_grad) > 30  # the whole vision tower but that norm


def test_parts_cover_the_model_without_overlap(tiny):
    model, _ = tiny
    parts = part_params(model)
    names = [n for p in parts.values() for n in p]
    assert len(names) == len(set(names)), "a tensor belongs to two parts"
    assert set(names) == {n for n, _ in model.named_parameters()}


def test_layer_range_selects_only_those_layers(tiny):
    model, _ = tiny
    chosen = set_trainable(model, "llm:1-1", verbose=False)
    names = list(chosen["llm:1-1"])
    assert names and all(".layers.1." in n for n in names)


@pytest.mark.parametrize("bad", ["vision", "encoder,", "", "llm:3-1", "encoder:0-1", "llm:0"])
def test_parse_errors(bad):
    if bad == "encoder,":
        assert parse_trainable(bad) == [("encoder", None)]
        return
    with pytest.raises(ValueError, match="trainable"):
        parse_trainable(bad)


def test_layer_range_out_of_bounds(tiny):
    with pytest.raises(ValueError, match="has 2 layers"):
        set_trainable(tiny[0], "llm:0-5", verbose=False)


def test_unknown_family_lists_modules():
    class Cfg:
        model_type = "mystery"

    class M(torch.nn.Module):
        config = Cfg()

        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Linear(2, 2)
    from iqa_vlm.model import family_of
    with pytest.raises(ValueError, match="backbone"):
        family_of(M())


def test_summary_counts(tiny, capsys):
    model, _ = tiny
    set_trainable(model, "projector", verbose=True)
    out = capsys.readouterr().out
    n = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    assert f"{n:,}" in out and "trainable" in out
