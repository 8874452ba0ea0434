"""mPLUG-Owl2 natively (mplug_owl2.py) against the authors' code as the oracle (tests/mplug_owl2_reference.py: Q-Align's
modeling files from the pyiqa 0.1.16 wheel), on the same tiny random weights: logits, generation, pixel values, prompt
ids from a SentencePiece model trained here, a checkpoint folder in the released layout scored end to end; and training
steps on tiny:mplug_owl2 that move exactly the chosen tensors."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from iqa_vlm import mplug_owl2 as M
import mplug_owl2_reference as R
from iqa_vlm.data import LEVELS, closed_set_token_ids, encode_batch
from iqa_vlm.model import SupervisedLogits, load_model, part_params, set_trainable
from iqa_vlm.data import LEVEL_PREFIX
from iqa_vlm.studies.scoring import eval_score, score_record

needs_reference = pytest.mark.skipif(R.reference_dir() is None, reason="pyiqa 0.1.16 not installed (the oracle)")
N_VISUAL = 5  # 4 queries + vit_eos at the tiny size


def native_twin(ref):
    """The native model with the reference's weights: every name must match; only the abstractor's fixed sin-cos
    tables (buffers the native model computes) are left over."""
    model = M.MPLUGOwl2LlamaForCausalLM(M.MPLUGOwl2Config(**R.config_dict(ref.config.vocab_size))).eval()
    missing, unexpected = model.load_state_dict(ref.state_dict(), strict=False)
    assert missing == [] and all(k.endswith(("q_pos_embed", "k_pos_embed", "inv_freq")) for k in unexpected), unexpected
    return model


def expand(ids, image_id):
    """Reference ids (-200 per image) -> native ids (each image as N_VISUAL image tokens)."""
    out = []
    for i in ids:
        out += [image_id] * N_VISUAL if i == R.IMAGE_TOKEN_INDEX else [i]
    return out


@pytest.fixture(scope="module")
def pair():
    if R.reference_dir() is None:
        pytest.skip("pyiqa 0.1.16 not installed (the oracle)")
    ref = R.build(seed=0)
    return ref, native_twin(ref)


@needs_reference
@torch.no_grad()
def test_logits_equal_for_a_scoring_prompt_and_text_only(pair):
    ref, nat = pair
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(1, 3, 32, 32, generator=g)
    ids = [1, 11, 12, 13, 14, R.IMAGE_TOKEN_INDEX, 15, 16, 17, 18]
    want = ref(input_ids=torch.tensor([ids]), images=pixels, use_cache=False).logits
    got = nat(input_ids=torch.tensor([expand(ids, nat.config.image_token_index)]), pixel_values=pixels).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    text = torch.tensor([[1, 20, 21, 22, 23]])
    torch.testing.assert_close(nat(input_ids=text).logits, ref(input_ids=text, use_cache=False).logits, atol=1e-5, rtol=0)


@needs_reference
@torch.no_grad()
def test_a_batch_of_two_prompts_of_different_lengths(pair):
    """Right padding with a mask on the native side; each row against the reference run alone."""
    ref, nat = pair
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    rows = [[1, 11, R.IMAGE_TOKEN_INDEX, 12, 13, 14, 15, 16], [1, 21, 22, 23, R.IMAGE_TOKEN_INDEX, 24]]
    native = [expand(r, nat.config.image_token_index) for r in rows]
    width = max(map(len, native))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in native])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in native])
    got = nat(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
    for b, r in enumerate(rows):
        want = ref(input_ids=torch.tensor([r]), images=pixels[b:b + 1], use_cache=False).logits[0]
        torch.testing.assert_close(got[b, :len(native[b])], want, atol=1e-5, rtol=0)


@needs_reference
@torch.no_grad()
def test_greedy_generation_of_8_tokens(pair):
    ref, nat = pair
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ids = [1, 31, 32, R.IMAGE_TOKEN_INDEX, 33, 34]
    want = ref.generate(input_ids=torch.tensor([ids]), images=pixels, attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                        max_new_tokens=8, min_new_tokens=8, do_sample=False)[0, len(ids):]
    native = torch.tensor([expand(ids, nat.config.image_token_index)])
    got = nat.generate(input_ids=native, pixel_values=pixels, attention_mask=torch.ones_like(native), max_new_tokens=8,
                       min_new_tokens=8, do_sample=False)[0, native.shape[1]:]
    assert got.tolist() == want.tolist() and len(got) == 8


def photo(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def clip_448():
    from transformers import CLIPImageProcessorPil
    return CLIPImageProcessorPil(size={"shortest_edge": 448}, crop_size={"height": 448, "width": 448}, resample=3,
                                 image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])


@needs_reference
def test_pixel_values_equal_the_reference_preprocessing(tmp_path):
    from transformers import CLIPImageProcessorPil
    ip = clip_448()
    ip.save_pretrained(tmp_path)  # preprocessor_config.json, read back as a checkpoint folder's
    processor = M.MPLUGOwl2Processor(_word_tokenizer(), CLIPImageProcessorPil.from_pretrained(tmp_path), N_VISUAL, 300)
    for w, h in [(300, 200), (200, 300), (256, 256), (333, 97)]:
        img = photo(w, h, seed=w)
        bg = tuple(int(x * 255) for x in ip.image_mean)
        want = ip(images=[R.expand2square(img, bg)], return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(processor.pixel_values([img]), want, atol=0, rtol=0)
        # the analyses (semantic shift, hard samples' vlm features) take the same path, pad to square included
        from iqa_vlm.model import image_inputs
        torch.testing.assert_close(image_inputs(processor, [img])["pixel_values"], want, atol=0, rtol=0)
        if (w, h) != (256, 256):  # the image processor alone (resize + centre crop) sees other pixels
            assert not torch.equal(ip(images=[img], return_tensors="pt")["pixel_values"], want)


# ============================================================================ prompt ids from a SentencePiece model
CORPUS = ("USER: How would you rate the quality of this image? ASSISTANT: The quality of the image is good. "
          "excellent good fair poor bad. Looking at the image above, what is the synthetic distortion in the image? "
          "The image has some blur noise compression. Describe the low level quality of this image.\n")


@pytest.fixture(scope="module")
def sp_folder(tmp_path_factory):
    """A LLaMA-style tokenizer.model trained here (BPE, byte fallback, dummy prefix, <unk> <s> </s> = 0 1 2) and the
    tokenizer_config.json of the released checkpoints."""
    spm = pytest.importorskip("sentencepiece")
    folder = tmp_path_factory.mktemp("sp")
    (folder / "corpus.txt").write_text(CORPUS * 50)
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"), vocab_size=400,
                                   model_type="bpe", byte_fallback=True, add_dummy_prefix=True, unk_id=0, bos_id=1,
                                   eos_id=2, pad_id=-1, normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   split_digits=True, character_coverage=1.0, minloglevel=2)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None, "legacy": True, "model_max_length": 2048}))
    clip_448().save_pretrained(folder)
    return folder, spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


class SlowLlama:
    """What the authors' code tokenized with (transformers 4.36's slow LlamaTokenizer): BOS + SentencePiece's own ids."""
    bos_token_id = 1

    def __init__(self, sp):
        self.sp = sp

    def __call__(self, text):
        return type("Encoding", (), {"input_ids": [1] + self.sp.encode(text)})


PROMPTS = ["USER: How would you rate the quality of this image?\n<|image|> ASSISTANT: The quality of the image is",
           "USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The quality of the image is",
           "USER: <|image|>\nLooking at the image above, what is the synthetic distortion in the image? ASSISTANT:",
           "USER: Compare <|image|> and <|image|> . ASSISTANT:", "USER: Describe the low level quality. ASSISTANT: Good."]


@needs_reference
def test_prompt_ids_equal_the_authors_for_a_sentencepiece_tokenizer(sp_folder):
    folder, sp = sp_folder
    config = M.MPLUGOwl2Config(**{**_tiny_kw(), "vocab_size": sp.get_piece_size()})
    processor = M.load_processor(str(folder), config)
    for prompt in PROMPTS:
        want = R.tokenizer_image_token(prompt, SlowLlama(sp))
        assert processor.prompt_ids(prompt) == expand(want, config.image_token_index), prompt
    # the level ids as Q-Align picks them: id_[1] of tokenizer(word), the word's first piece after BOS
    assert closed_set_token_ids(processor, LEVELS, LEVEL_PREFIX) == [SlowLlama(sp)(w).input_ids[1] for w in LEVELS]


def test_chat_template_is_the_conversation_of_the_authors_code(sp_folder):
    folder, sp = sp_folder
    processor = M.load_processor(str(folder), M.MPLUGOwl2Config(**{**_tiny_kw(), "vocab_size": sp.get_piece_size()}))
    rec = score_record("x", "x.png", "good", "t", "0")
    from iqa_vlm.data import answer_prefix_text, to_messages
    msgs = to_messages(rec["conversations"], True)
    assert processor.apply_chat_template(msgs) == ("USER: How would you rate the quality of this image?\n<|image|> "
                                                   "ASSISTANT: The quality of the image is good.</s>")
    assert answer_prefix_text(processor, msgs[:1], LEVEL_PREFIX) == PROMPTS[0]  # Q-Align's iqa_eval.py prompt


# ============================================================================ a checkpoint folder in the released layout
def released_folder(sp_folder, folder, seed=4):
    """A checkpoint folder in the released layout (config.json, tokenizer files, preprocessor_config.json, two .bin
    shards and their index) holding the reference's weights. -> (folder, reference model, its image processor)."""
    sp_dir, sp = sp_folder
    ref = R.build(seed=seed, vocab_size=sp.get_piece_size())
    folder.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json"):
        (folder / name).write_bytes((sp_dir / name).read_bytes())
    (folder / "config.json").write_text(json.dumps(R.config_dict(sp.get_piece_size())))
    from transformers import CLIPImageProcessorPil
    ip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, resample=3,
                               image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    ip.save_pretrained(folder)
    state = ref.state_dict()
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[:len(names) // 2], "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    for shard, keys in shards.items():
        torch.save({k: state[k] for k in keys}, folder / shard)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}))
    return folder, ref, ip


def reference_score(ref, ip, sp, prompt, image, words=("excellent", "good", "fair", "poor", "bad"),
                    weights=(5.0, 4.0, 3.0, 2.0, 1.0), square=True):
    """A released scorer's score of one PIL image by the reference model, as those scorers compute it: the prompt's ids
    by tokenizer_image_token, expand2square (Q-Align's and DeQA-Score's; Q-Instruct's gives the image as it is), the
    level ids as tokenizer(word).input_ids[1], softmax @ weights (by default Q-Align's on 1..5)."""
    level_ids = [SlowLlama(sp)(w).input_ids[1] for w in words]
    ids = torch.tensor([R.tokenizer_image_token(prompt, SlowLlama(sp))])
    image = image.convert("RGB")
    pixels = ip(images=[R.expand2square(image, tuple(int(x * 255) for x in ip.image_mean)) if square else image],
                return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = ref(input_ids=ids, images=pixels, use_cache=False).logits[0, -1, level_ids]
    return float(torch.softmax(logits, -1) @ torch.tensor(weights))


@needs_reference
@torch.no_grad()
def test_released_layout_folder_scores_as_the_reference(sp_folder, tmp_path):
    ckpt, ref, ip = released_folder(sp_folder, tmp_path / "one-align-tiny")
    model, processor = load_model(str(ckpt))
    model.eval()
    assert isinstance(model, M.MPLUGOwl2LlamaForCausalLM)
    records = []
    for i, (w, h) in enumerate([(48, 32), (32, 48), (40, 40)]):
        photo(w, h, seed=i).save(tmp_path / f"{i}.png")
        records.append(score_record(f"x/{i}", str(tmp_path / f"{i}.png"), "good", "x", str(i)))
    preds = eval_score(model, processor, records, batch_size=2)
    for p, r in zip(preds, records):
        want = reference_score(ref, ip, sp_folder[1], PROMPTS[0], Image.open(r["image"]))
        assert abs(p["score"] - want) < 1e-3, (p["score"], want)


# ============================================================================ training on tiny:mplug_owl2
def _tiny_kw():
    return {k: v for k, v in R.config_dict().items() if k not in ("model_type", "architectures", "auto_map")}


def _word_tokenizer():
    from iqa_vlm.tiny_models import _tokenizer
    return _tokenizer([], {})


@pytest.fixture(scope="module")
def score_records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("owl_imgs")
    recs = []
    for i in range(4):
        photo(40 + 8 * i, 32, seed=i).save(folder / f"{i}.png")
        recs.append(score_record(f"t/{i}", str(folder / f"{i}.png"), LEVELS[i], "t", str(i)))
    return recs


@pytest.mark.parametrize("spec,lora,ckpt", [("encoder", 0, False), ("projector", 0, False), ("llm", 0, False),
                                            ("head", 0, False), ("encoder,projector", 0, True), ("llm:1-1", 0, True),
                                            ("projector,llm", 4, False), ("encoder,llm", 4, True)])
def test_one_step_moves_exactly_the_chosen_tensors(score_records, spec, lora, ckpt):
    from iqa_vlm.level_ce import level_cross_entropy
    from iqa_vlm.model import enable_checkpointing
    model, processor = load_model("tiny:mplug_owl2")
    chosen = set_trainable(model, spec, verbose=False, lora=lora)
    if ckpt:
        enable_checkpointing(model)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for params in chosen.values() for p in params.values()], lr=0.1)
    batch = encode_batch(processor, score_records)
    for _ in range(2):  # two steps: LoRA's A matrices get a gradient only once B has left zero
        logits, targets = SupervisedLogits(model)(**batch)
        level_cross_entropy(logits, targets)[0].mean().backward()
        opt.step()
        opt.zero_grad()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    wanted = {n for params in chosen.values() for n in params}
    # the last layer's visual-branch MLP norm only shapes the visual positions' final states, which no supervised
    # position reads (attention is over by then): no gradient reaches it, in the real model too
    idle = {f"model.layers.{len(model.model.layers) - 1}.post_attention_layernorm.multiway.1.weight"}
    assert moved <= wanted and wanted - moved <= idle, (sorted(moved - wanted)[:4], sorted(wanted - moved)[:4])
    branches = {b for n in moved if ".multiway." in n for b in (n.split(".multiway.")[1][0],)}
    if spec in ("llm", "llm:1-1"):
        assert branches == {"0", "1"}  # the text and the visual branch both learn (visual tokens flow through .1)
    if spec == "encoder,projector":
        assert not branches


def test_parts_table_and_export_reload_same_logits(score_records, tmp_path):
    from iqa_vlm.model import export_checkpoint
    model, processor = load_model("tiny:mplug_owl2")
    parts = part_params(model)
    assert all(n.startswith("model.vision_model.") for n in parts["encoder"])
    assert all(n.startswith("model.visual_abstractor.") for n in parts["projector"])
    assert any(".k_proj.multiway.1." in n for n in parts["llm"]) and "model.norm.weight" in parts["llm"]
    assert set(parts["head"]) == {"lm_head.weight", "model.embed_tokens.weight"}
    run = tmp_path / "run"
    run.mkdir()
    from safetensors.torch import save_file
    tensors = {n: p.detach() + 0.01 for n, p in model.named_parameters() if n in parts["projector"]}
    save_file(tensors, run / "trainable.safetensors")
    (run / "config.json").write_text(json.dumps({"model": "tiny:mplug_owl2", "trainable": "projector"}))
    export_checkpoint(str(run), str(tmp_path / "hf"))
    reloaded, reprocessor = load_model(str(tmp_path / "hf"))
    from iqa_vlm.model import load_checkpoint
    tuned = load_checkpoint(str(run))[0]
    enc = encode_batch(processor, score_records)
    enc.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(**enc).logits, tuned.eval()(**enc).logits, atol=1e-5, rtol=0)
    assert os.path.isfile(tmp_path / "hf" / "config.json")


def test_evaluations_and_analyses_run_on_tiny_mplug_owl2(tmp_path):
    """The repo's evaluations and analyses through the native model: distortion, two-stage, attention over the
    image-token span, logit lens, semantic shift on V = the abstractor's output tokens."""
    import analyze
    from iqa_vlm.studies import demo_set
    import evaluate
    import prepare_data
    demo_set.make_demo(str(tmp_path / "demo"), crops_per_class=4)
    prepare_data.main(["--task", "pathway", "--demo", str(tmp_path / "demo"), "--out", str(tmp_path / "pw")])
    base = ["--model", "tiny:mplug_owl2", "--limit", "4", "--out", str(tmp_path / "o")]
    assert evaluate.main(["distortion", "--data", str(tmp_path / "demo"), *base])["n"] == 4
    res = evaluate.main(["two-stage", "--data", str(tmp_path / "pw"), "--max_new_tokens", "6", "--latency_n", "1", *base])
    assert res["n"] == 4
    att = analyze.main(["attention", "--data", str(tmp_path / "pw"), "--max_new_tokens", "6", "--mode", "one_stage", "--limit", "2",
                        "--model", "tiny:mplug_owl2", "--out", str(tmp_path / "att")])
    assert att["mean_tokens"]["image"] == N_VISUAL and abs(att["shares_sum"] - 1) < 1e-4
    lens = analyze.main(["logit-lens", "--data", str(tmp_path / "pw"), "--description", "reference", "--limit", "2",
                         "--model", "tiny:mplug_owl2", "--out", str(tmp_path / "lens")])
    assert lens["last_layer_vs_model_logits_max_abs_diff"] < 1e-4
    from iqa_vlm.model import visual_tokens
    model, processor = load_model("tiny:mplug_owl2")
    pixels = processor.image_processor(images=[photo(32, 32)], return_tensors="pt")
    assert [tuple(t.shape) for t in visual_tokens(model, pixels)] == [(N_VISUAL, model.config.hidden_size)]


def test_paper_tables_in_the_papers_shape(tmp_path, capsys):
    """The two commands that print a run beside the distortion and two-stage papers' tables, on hand-made outputs."""
    import analyze
    ablation = {"encoder (encoder)": {"accuracy": 0.5, "generation_accuracy": 0.4},
                "untuned (options listed)": {"accuracy": 0.125, "generation_accuracy": 0.1},
                "untuned q-future/q-instruct-mplug-owl2-1031 (options listed)": {"accuracy": 0.0905}}
    (tmp_path / "ablation.json").write_text(json.dumps(ablation))
    shift = {"columns": ["encoder", "llm"], "table": {"mean": {"Similarity": {"encoder": {"mean": 1.5}, "llm": {"mean": 0.0}},
                                                               "Logits": {"encoder": {"mean": 0.1}, "llm": {"mean": None}}}}}
    (tmp_path / "shift.json").write_text(json.dumps(shift))
    text = analyze.main(["distortion-tables", "--ablation", str(tmp_path / "ablation.json"), "--shift", str(tmp_path / "shift.json")])
    # the paper's metric (the generated answer) first, the closed set second, the paper's number last
    rows = {line[:40].strip(): line.split()[-3:] for line in text.splitlines() if line[:1].isalpha()}
    assert rows["encoder (encoder)"] == ["40.00", "50.00", "83.43"] and rows["untuned (options listed)"] == ["10.00", "12.50", "14.92"]
    assert rows["untuned q-future/q-instruct-mplug-owl2-1"] == ["nan", "9.05", "9.05"]  # beside the paper's Q-Instruct
    assert "150.00  181.00" in text and "10.00   10.96" in text
    assert "0.00    0.42" in text and "nan    2.04" in text  # an LM-only Similarity of 0 is 0.00; a missing mean nan
    for mode, srcc in (("one_stage", 0.3), ("two_stage", 0.6)):
        d = tmp_path / mode
        d.mkdir()
        (d / f"eval_{mode}.json").write_text(json.dumps({"per_source": {"live": {"srcc": srcc, "plcc": srcc + 0.01}}}))
        (d / f"instability_{mode}.json").write_text(json.dumps({"ratio_mean": srcc / 2, "ratio_std": 0.01}))
    text = analyze.main(["two-stage-tables", "--one_stage", str(tmp_path / "one_stage"), "--two_stage", str(tmp_path / "two_stage"),
                         "--instability", f"LIVE={tmp_path / 'one_stage'},{tmp_path / 'two_stage'}"])
    live = [line for line in text.splitlines() if line.startswith("LIVE")]
    assert live[0].split()[1:3] == ["0.3000/0.3100", "0.6000/0.6100"] and "0.7006/0.7161" in live[0]
    assert live[1].split()[1] == "15.00" and "16.27 (+-0.47), 4.09 (+-0.11)" in live[1]
    # all four of the paper's columns, and its inference-time row
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "eval_one_stage.json").write_text(json.dumps({"per_source": {"live": {"srcc": 0.05, "plcc": 0.06}},
                                                                       "latency_s_per_image": {"batch_1_median": 0.25}}))
    (tmp_path / "qalign").mkdir()
    (tmp_path / "qalign" / "eval_score.json").write_text(json.dumps({"per_source": {"live": {"srcc": 0.9, "plcc": 0.8}}}))
    text = analyze.main(["two-stage-tables", "--one_stage", str(tmp_path / "one_stage"), "--two_stage", str(tmp_path / "two_stage"),
                         "--baseline", str(tmp_path / "base"), "--q_align", str(tmp_path / "qalign")])
    live = next(line for line in text.splitlines() if line.startswith("LIVE")).split()
    assert live[1:5] == ["0.0500/0.0600", "0.3000/0.3100", "0.9000/0.8000", "0.6000/0.6100"]
    times = next(line for line in text.splitlines() if line.startswith("Inference")).split()
    assert times[1:5] == ["0.2500s", "-", "-", "-"] and "0.2044s" in times


def test_training_batches_from_a_sentencepiece_checkpoint(sp_folder):
    """The answer ends in </s>: the prompt ids must hold its id (as the slow tokenizer made them), so that the answer's
    tokens are found and labelled."""
    folder, sp = sp_folder
    processor = M.load_processor(str(folder), M.MPLUGOwl2Config(**{**_tiny_kw(), "vocab_size": sp.get_piece_size()}))
    img = folder / "x.png"
    photo(40, 30).save(img)
    batch = encode_batch(processor, [score_record("x", str(img), "good", "t", "0")])
    labelled = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert labelled[-1] == 2 and sp.decode(labelled[:-1]) == "The quality of the image is good."


def test_training_samples_of_the_q_align_and_deqa_recipes_are_the_authors_v1_prompts(sp_folder):
    """Q-Align's and DeQA-Score's scripts train with --version v1: conv_vicuna_v1's system prompt, the TWO separator
    style (system + " " + "USER: " + q + " " + "ASSISTANT: " + a + "</s>"), and preprocess_multimodal puts the image
    first ("<|image|>\\n" + question). Their evaluation (conv_mplug_owl2) has no system prompt and the image after the
    question, as test_chat_template_is_the_conversation_of_the_authors_code checks."""
    from iqa_vlm.common import apply_overrides
    from iqa_vlm.data import as_trained, to_messages
    from test_pipeline import train_defaults
    v1_system = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")  # conv_vicuna_v1, their conversation.py
    for recipe in ("qalign_koniq.py", "qalign_koniq_lora.py", "deqa_mplug_owl2.py", "deqa_mplug_owl2_lora.py"):
        cfg = apply_overrides(train_defaults(), [os.path.join(os.path.dirname(__file__), "..", "config", recipe)])
        assert cfg["system_prompt"] == v1_system and cfg["image_first"] is True, recipe
    folder, sp = sp_folder
    processor = M.load_processor(str(folder), M.MPLUGOwl2Config(**{**_tiny_kw(), "vocab_size": sp.get_piece_size()}))
    rec = as_trained(score_record("x", "x.png", "good", "t", "0"), v1_system, image_first=True)
    q, a = "How would you rate the quality of this image?", "The quality of the image is good."
    want = v1_system + " " + "USER: " + "<|image|>\n" + q + " " + "ASSISTANT: " + a + "</s>"
    assert processor.apply_chat_template(to_messages(rec["conversations"], True)) == want
