"""InternLM-XComposer2-VL natively (xcomposer2.py). Against the authors' code as the oracle (tests/xcomposer2_reference.py,
on the same tiny random weights, when IXC2_REF_DIR holds it): logits of a chat prompt with two images, text-only logits,
greedy decoding through the KV cache, a right-padded batch, loss and gradients. Always: prompt ids from a SentencePiece
model trained here, the preprocessing, a checkpoint folder in the released layout loaded with no remote code, the
evaluations and analyses on tiny:xcomposer2, and the 7B's dry-run memory row."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import xcomposer2_reference as R
from iqa_vlm import xcomposer2 as X
from iqa_vlm.model import load_model, part_params

needs_reference = pytest.mark.skipif(R.reference_dir() is None, reason=R.skip_reason())
HIDDEN, VOCAB = 64, 400


def vision_config():
    from transformers import CLIPVisionConfig
    return CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def native_config(plora_alpha=512):
    """The oracle's tiny sizes; Partial LoRA r = 256 as released, alpha = 2r as the oracle is patched to."""
    return X.XComposer2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, img_size=32, plora_rank=256,
                              plora_alpha=plora_alpha, vision_config=vision_config().to_dict())


CORPUS = ("How would you rate the quality of this image? The quality of the image is good. excellent good fair poor bad. "
          "Please describe this image in detail. Rate the image from 1 to 5.\n"
          + X.META_INSTRUCTION + "\n")


@pytest.fixture(scope="module", params=[True, False], ids=["dummy_prefix", "no_dummy_prefix"])
def sp_model(request, tmp_path_factory):
    """A tokenizer.model with the release's special pieces: <unk> <s> </s> = 0 1 2, the two turn markers as
    user-defined pieces, byte fallback, identity normalisation (newlines survive)."""
    spm = pytest.importorskip("sentencepiece")
    folder = tmp_path_factory.mktemp("ixc2_sp")
    (folder / "corpus.txt").write_text(CORPUS * 40)
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"), vocab_size=VOCAB,
                                   model_type="bpe", byte_fallback=True, add_dummy_prefix=request.param, unk_id=0, bos_id=1,
                                   eos_id=2, pad_id=-1, user_defined_symbols=[X.TURN_END, X.TURN_START],
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   character_coverage=1.0, minloglevel=2)
    return str(folder / "tokenizer.model")


def processor_for(model_file, config):
    import sentencepiece
    tok = X.tokenizer_class()(vocab_file=model_file, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>")
    return X.XComposer2Processor(tok, X.image_processor_for(config.img_size), config.num_visual_tokens,
                                 config.image_token_index, config.prompt_max_length,
                                 sentencepiece.SentencePieceProcessor(model_file=model_file))


def photo(w, h, seed=0, mode="RGB"):
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


TWO_IMAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Rate the image. "},
                                           {"type": "image"}, {"type": "text", "text": "How would you rate the quality?"}]}]


@pytest.fixture(scope="module")
def pair():
    if R.reference_dir() is None:
        pytest.skip(R.skip_reason())
    ref = R.build(vision_config())
    nat = X.XComposer2ForCausalLM(native_config()).eval()
    missing, unexpected = nat.load_state_dict(R.native_state_dict(ref), strict=False)
    assert missing == [] and all("post_layernorm" in k for k in unexpected), (missing, unexpected)  # Identity here
    return ref, nat


# ----------------------------------------------------------------------------- against the authors' code
@needs_reference
@torch.no_grad()
def test_chat_prompt_with_two_images_equals_the_reference(pair, sp_model):
    """The authors' interleav_wrap_chat (meta instruction, per-part BOS, their tokenizer) against our template, ids and
    forward: the same embeddings, the same image mask, logits to 1e-5."""
    ref, nat = pair
    tok = R.tokenizer(sp_model)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    query = "<ImageHere>Rate the image. <ImageHere>How would you rate the quality?"
    inputs, im_mask = ref.interleav_wrap_chat(tok, query, ref.img2emb(pixels)[0], [], X.META_INSTRUCTION)
    proc = processor_for(sp_model, nat.config)
    text = proc.apply_chat_template(TWO_IMAGES, add_generation_prompt=True)
    ids = torch.tensor([proc.prompt_ids(text)])
    embeds, mask = nat.embed(ids, pixels)
    assert torch.equal(mask, im_mask) and torch.equal(embeds, inputs["inputs_embeds"])
    want = ref(inputs_embeds=inputs["inputs_embeds"], im_mask=im_mask).logits
    torch.testing.assert_close(nat(input_ids=ids, pixel_values=pixels).logits, want, atol=1e-5, rtol=0)
    for part in text.split(X.IMAGE_TOKEN):  # each text part: the authors' tokenizer's ids, BOS first
        assert [proc.tokenizer.bos_token_id] + proc.encode_text(part) == tok(part).input_ids


@needs_reference
@torch.no_grad()
def test_text_only_logits_equal_the_reference(pair):
    ref, nat = pair
    ids = torch.tensor([[1, 1, 20, 21, 22, 23, 24]])  # the authors' text-only chat starts with two BOS
    torch.testing.assert_close(nat(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-5, rtol=0)


@needs_reference
@torch.no_grad()
def test_greedy_generation_of_8_tokens_equals_the_reference(pair):
    """The reference decoded by hand (its class has no generate() under transformers 5): a prefill of embeddings and
    image mask, then one id at a time through its tuple cache; ours through generate()."""
    ref, nat = pair
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ids = torch.tensor([[1, 30, 31] + [nat.config.image_token_index] * nat.config.num_visual_tokens + [1, 32, 33, 34]])
    embeds, im_mask = nat.embed(ids, pixels)
    out = ref(inputs_embeds=embeds, im_mask=im_mask, use_cache=True)
    want = []
    for _ in range(8):
        want.append(int(out.logits[0, -1].argmax()))
        out = ref(input_ids=torch.tensor([[want[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    got = nat.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=8, do_sample=False, eos_token_id=[],
                       pad_token_id=2)[0, ids.shape[1]:]
    assert got.tolist() == want


@needs_reference
@torch.no_grad()
def test_a_right_padded_batch_equals_each_prompt_alone(pair):
    ref, nat = pair
    n, img = nat.config.num_visual_tokens, nat.config.image_token_index
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    rows = [[1, 11] + [img] * n + [1, 12, 13, 14, 15, 16], [1, 21, 22, 23] + [img] * n + [1, 24]]
    width = max(map(len, rows))
    ids = torch.tensor([r + [2] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    got = nat(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
    for b, r in enumerate(rows):
        embeds, im_mask = nat.embed(torch.tensor([r]), pixels[b:b + 1])
        want = ref(inputs_embeds=embeds, im_mask=im_mask).logits[0]
        torch.testing.assert_close(got[b, :len(r)], want, atol=1e-5, rtol=0)


@needs_reference
def test_loss_and_gradients_equal_the_reference(pair):
    """A training step's loss and the gradients of every decoder tensor (Partial LoRA included), the LM head and the
    final norm match; eval mode, so that Partial LoRA's dropout is off on both sides."""
    ref, nat = pair
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    ids = torch.tensor([[1, 40, 41] + [nat.config.image_token_index] * nat.config.num_visual_tokens + [1, 42, 43, 44, 45]])
    labels = torch.full_like(ids, -100)
    labels[0, -3:] = ids[0, -3:]
    for m in (ref, nat):
        m.zero_grad(set_to_none=True)
        m.requires_grad_(True)
    embeds, im_mask = nat.embed(ids, pixels)
    ref_embeds, _ = nat.embed(ids, pixels)  # nat's ViT builds the reference's input too: compare the LM's grads there
    want = ref(inputs_embeds=ref_embeds.detach(), im_mask=im_mask, labels=labels).loss
    got = nat(input_ids=ids, pixel_values=pixels, labels=labels).loss
    want.backward()
    got.backward()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    ref_grads = dict(ref.named_parameters())
    for name, p in nat.named_parameters():
        if name.startswith("model.layers.") or name in ("output.weight", "model.norm.weight"):
            torch.testing.assert_close(p.grad, ref_grads[name].grad, atol=1e-5, rtol=1e-4, msg=name)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in nat.named_parameters() if "Plora_B" in n)
    nat.zero_grad(set_to_none=True)
    ref.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- without the oracle
def test_prompt_ids_are_bos_and_sentencepiece_per_part(sp_model):
    import sentencepiece
    sp = sentencepiece.SentencePieceProcessor(model_file=sp_model)
    proc = processor_for(sp_model, native_config())
    text = proc.apply_chat_template(TWO_IMAGES, add_generation_prompt=True)
    assert text == (f"{X.TURN_START}system\n{X.META_INSTRUCTION}{X.TURN_END}\n{X.TURN_START}user\n<ImageHere>Rate the "
                    f"image. <ImageHere>How would you rate the quality?{X.TURN_END}\n{X.TURN_START}assistant\n")
    parts = text.split(X.IMAGE_TOKEN)
    n, img = proc.num_visual_tokens, proc.image_token_id
    want = [1] + sp.encode(parts[0]) + [img] * n + [1] + sp.encode(parts[1]) + [img] * n + [1] + sp.encode(parts[2])
    assert proc.prompt_ids(text) == want
    assert sp.piece_to_id(X.TURN_END) in want and sp.piece_to_id(X.TURN_START) in want  # atomic pieces
    no_system = X.XComposer2Processor(proc.tokenizer, proc.image_processor, n, img, sentencepiece=sp, meta_instruction=None)
    assert no_system.apply_chat_template([{"role": "user", "content": "hi"}]) == f"{X.TURN_START}user\nhi{X.TURN_END}\n"
    # the tokenizer's ids of a text are the prompt's (training finds each answer's tokens by them), BOS in front
    turn = f"{X.TURN_START}assistant\nThe quality is good.{X.TURN_END}\n"
    assert proc.tokenizer(parts[2] + turn)["input_ids"] == [1] + proc.encode_text(parts[2] + turn)
    assert proc.tokenizer(X.IMAGE_TOKEN + "Rate")["input_ids"][:2] == [1, img]  # <ImageHere>: the image token's id
    # decoding is SentencePiece's (byte pieces joined), and drops the turn markers, which end an answer
    answer = "The quality is good.\n浦语 ☃"
    ids = sp.encode(answer) + [sp.piece_to_id(X.TURN_END)]
    assert any(sp.id_to_piece(i).startswith("<0x") for i in ids)  # the snowman is not in the vocabulary: bytes
    assert proc.tokenizer.decode(ids, skip_special_tokens=True) == sp.decode(ids[:-1]) == answer


def test_training_batches_with_the_release_tokenizer(sp_model, tmp_path):
    """The answer's tokens are found in the processed ids (labels on exactly the answer); a text-only batch (two-stage
    stage 2) starts with BOS."""
    from iqa_vlm.data import encode_batch, tokenize_batch
    from iqa_vlm.studies.scoring import score_record
    proc = processor_for(sp_model, native_config())
    photo(40, 30).save(tmp_path / "a.png")
    rec = score_record("x/0", str(tmp_path / "a.png"), "good", "x", "0")
    batch = encode_batch(proc, [rec])
    labels = batch["labels"][0]
    answer = rec["conversations"][1]["value"]  # labelled through the turn's end marker and newline, as the release's
    assert proc.tokenizer.decode(labels[labels != -100]) == answer + X.TURN_END + "\n"  # training targets are
    assert tokenize_batch(proc, ["The quality is good."], [])["input_ids"][0, 0].item() == 1


def test_pixel_values_are_the_release_preprocessing():
    """Resize to img_size x img_size with PIL's bicubic filter (no crop, aspect ratio not kept), /255, CLIP mean/std:
    what the release's torchvision transforms do on a PIL image. Greyscale and RGBA become RGB first."""
    proc = X.XComposer2Processor(load_model("tiny:xcomposer2")[1].tokenizer, X.image_processor_for(49), 49, 999)
    for im in (photo(70, 30), photo(20, 50, 1, "L"), photo(64, 64, 2, "RGBA")):
        rgb = im.convert("RGB").resize((49, 49), Image.BICUBIC)
        t = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float().div(255)
        want = (t - torch.tensor(X.CLIP_MEAN)[:, None, None]) / torch.tensor(X.CLIP_STD)[:, None, None]
        torch.testing.assert_close(proc.pixel_values([im])[0], want, atol=1e-6, rtol=0)


def released_config(config):
    """config.json as the release writes it (its fields and values), at the tiny sizes, plus vision_config, the field
    that carries the tiny tower (the release hard-codes CLIP ViT-L/14)."""
    return {"architectures": ["InternLMXComposer2ForCausalLM"],
            "auto_map": {"AutoConfig": "configuration_internlm_xcomposer2.InternLMXcomposer2Config",
                         "AutoModel": "modeling_internlm_xcomposer2.InternLMXComposer2ForCausalLM",
                         "AutoModelForCausalLM": "modeling_internlm_xcomposer2.InternLMXComposer2ForCausalLM"},
            "bias": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": config.hidden_size,
            "initializer_range": 0.02, "intermediate_size": config.intermediate_size, "max_length": 4096,
            "max_position_embeddings": 32768, "model_type": "internlmxcomposer2",
            "num_attention_heads": config.num_attention_heads, "num_hidden_layers": config.num_hidden_layers,
            "num_key_value_heads": config.num_key_value_heads, "pad_token_id": 2, "rms_norm_eps": 1e-05,
            "rope_scaling": {"factor": 1.0, "type": "dynamic"}, "rope_theta": 1000000, "tie_word_embeddings": False,
            "torch_dtype": "bfloat16", "transformers_version": "4.33.1", "use_cache": False,
            "vocab_size": config.vocab_size, "img_size": config.img_size, "vision_config": vision_config().to_dict()}


def test_released_layout_folder_loads_without_remote_code(sp_model, tmp_path):
    """Two pytorch_model-*.bin shards with their index, config.json and the tokenizer files as released: load_model reads
    them with the native class, the same weights give the same logits, and generation stops at the turn's end."""
    import shutil
    source = X.XComposer2ForCausalLM(native_config(plora_alpha=256)).eval()  # the release's r = alpha = 256
    state = source.state_dict()
    names = list(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[:len(names) // 2], "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    for file, keys in shards.items():
        torch.save({k: state[k].to(torch.bfloat16) for k in keys if "post_layernorm" not in k}, tmp_path / file)
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys if "post_layernorm" not in k}}))
    (tmp_path / "config.json").write_text(json.dumps(released_config(source.config)))
    shutil.copy(sp_model, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_internlm_xcomposer2.InternLMXComposer2Tokenizer", None]},
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>", "padding_side": "right",
        "tokenizer_class": "InternLMXComposer2Tokenizer", "model_max_length": 1000000000000000019884624838656}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}))
    model, proc = load_model(str(tmp_path))
    assert isinstance(model, X.XComposer2ForCausalLM) and model.config.prompt_max_length == 4096
    assert isinstance(proc, X.XComposer2Processor) and proc.num_visual_tokens == 16
    assert model.generation_config.eos_token_id == [2, proc.sentencepiece.piece_to_id(X.TURN_END)]
    assert model.generation_config.use_cache  # the released config.json says use_cache false
    enc = proc(text=[proc.apply_chat_template(TWO_IMAGES, add_generation_prompt=True)], images=[[photo(40, 30), photo(30, 40, 1)]])
    with torch.no_grad():
        want = source.to(torch.bfloat16).float()(**enc).logits  # the weights as stored (bf16)
        torch.testing.assert_close(model.eval()(**enc).logits, want, atol=1e-5, rtol=0)


def test_errors_name_what_is_wrong():
    model, proc = load_model("tiny:xcomposer2")
    with pytest.raises(ValueError, match="2 <ImageHere> and 1 images"):
        proc(text=["<ImageHere><ImageHere>"], images=[[photo(8, 8)]])
    with pytest.raises(ValueError, match="longer than the model's max_length 4096"):
        proc.prompt_ids("<ImageHere>" * 300)
    with pytest.raises(ValueError, match="image tokens but no pixel_values"):
        model(input_ids=torch.tensor([[1, model.config.image_token_index]]))
    with pytest.raises(ValueError, match="rope_scaling"):
        X.XComposer2Config(rope_scaling={"type": "linear", "factor": 2.0})


def test_parts_table_gradient_checkpointing_and_lora(tmp_path):
    """Parts as released names; Partial LoRA belongs to llm; checkpointing gives the same loss and gradients; peft LoRA
    wraps the base layers, never the Partial LoRA adapters, and the image mask still reaches them."""
    from iqa_vlm.model import add_lora, enable_checkpointing
    model, proc = load_model("tiny:xcomposer2")
    parts = part_params(model)
    assert all(n.startswith("vit.vision_tower.vision_model.") for n in parts["encoder"])
    assert set(parts["projector"]) == {f"vision_proj.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
    assert "model.layers.0.attention.wqkv.Plora_A.weight" in parts["llm"] and "model.norm.weight" in parts["llm"]
    assert set(parts["head"]) == {"output.weight", "model.tok_embeddings.weight"}
    enc = proc(text=[proc.apply_chat_template(TWO_IMAGES, add_generation_prompt=True) + "good"],
               images=[[photo(40, 30), photo(30, 40, 1)]])
    labels = enc["input_ids"].masked_fill(enc["input_ids"] == model.config.image_token_index, -100)
    model.eval()  # dropout off: the two runs must see the same network

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    plain = loss_and_grads()
    enable_checkpointing(model)
    model.train()
    model.apply(lambda m: setattr(m, "p", 0.0) if isinstance(m, torch.nn.Dropout) else None)
    ckpt = loss_and_grads()
    torch.testing.assert_close(ckpt[0], plain[0])
    assert set(ckpt[1]) == set(plain[1]) and all(torch.allclose(ckpt[1][n], plain[1][n], atol=1e-6) for n in plain[1])
    adapters = add_lora(model, 4, 8)
    assert adapters and not any("Plora" in n.split("lora_")[-1] for n in adapters)
    assert not any(".Plora_A.lora_" in n or ".Plora_B.lora_" in n for n in adapters)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**enc).logits, model(**enc).logits)  # runs with the mask through peft


def test_train_with_lora_export_and_reload_same_logits(tmp_path):
    """train.py on tiny:xcomposer2 (projector and LoRA on the LM), its export reloaded by load_model: same logits."""
    import subprocess
    import sys
    from iqa_vlm.data import LEVEL_PREFIX, LEVELS, encode_prompts
    from iqa_vlm.model import load_checkpoint
    from iqa_vlm.studies.scoring import score_record
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data, out, hf = tmp_path / "data", tmp_path / "run", tmp_path / "hf"
    os.makedirs(data / "images")
    recs = []
    for i in range(8):
        photo(40, 36, i).save(data / "images" / f"{i}.png")
        recs.append(score_record(f"t/{i}", f"images/{i}.png", LEVELS[i % 5], "t", str(i), mos=1 + i % 5))
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (data / "meta.json").write_text("{}")
    r = subprocess.run([sys.executable, "train.py", "config/demo.py", "--model", "tiny:xcomposer2", "--data", str(data),
                        "--out", str(out), "--trainable", "projector,llm", "--lora", "4", "--max_steps", "2", "--batch_size",
                        "4", "--lr", "1e-2", "--warmup_steps", "1", "--export", str(hf)], cwd=root, capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    tuned, processor, cfg = load_checkpoint(str(out))
    assert set(cfg["parts"]) == {"projector", "lora(llm)"}
    exported, _ = load_model(str(hf))
    assert isinstance(exported, X.XComposer2ForCausalLM) and not any("lora_" in n.replace("Plora_", "") for n, _ in exported.named_parameters())
    enc, _ = encode_prompts(processor, [score_record("q", str(data / "images" / "0.png"), "good", "t", "0")],
                            answer_prefix=LEVEL_PREFIX)
    with torch.no_grad():
        torch.testing.assert_close(exported.eval()(**enc).logits, tuned.eval()(**enc).logits, atol=1e-4, rtol=1e-4)


def test_evaluations_and_analyses_run_on_tiny_xcomposer2(tmp_path):
    """The studies that take a model, through the native class: scoring, distortion, two-stage, the prompting study
    (several images in one prompt), attention over the image-token span and the logit lens."""
    import analyze
    import evaluate
    import prepare_data
    from iqa_vlm.studies import demo_set
    demo_set.make_demo(str(tmp_path / "demo"), crops_per_class=4)
    prepare_data.main(["--task", "pathway", "--demo", str(tmp_path / "demo"), "--out", str(tmp_path / "pw")])
    prepare_data.main(["--task", "score", "--demo", str(tmp_path / "demo"), "--out", str(tmp_path / "sc")])
    base = ["--model", "tiny:xcomposer2", "--limit", "4", "--out", str(tmp_path / "o")]
    scored = evaluate.main(["score", "--data", str(tmp_path / "sc"), *base])["untuned tiny:xcomposer2"]["results"]
    assert scored["demo"]["n"] == 4
    assert evaluate.main(["distortion", "--data", str(tmp_path / "demo"), *base])["n"] == 4
    assert evaluate.main(["two-stage", "--data", str(tmp_path / "pw"), "--max_new_tokens", "6", "--latency_n", "1", *base])["n"] == 4
    for protocol in ("single", "double"):
        res = evaluate.main(["prompting", "--data", str(tmp_path / "sc"), "--protocol", protocol, "--max_new_tokens", "6", *base])
        assert res["parsed"] + res["unparsed"] == res["n_queries"] > 0
    att = analyze.main(["attention", "--data", str(tmp_path / "pw"), "--max_new_tokens", "6", "--mode", "one_stage",
                        "--limit", "2", "--model", "tiny:xcomposer2", "--out", str(tmp_path / "att")])
    assert att["mean_tokens"]["image"] == 16 and abs(att["shares_sum"] - 1) < 1e-4
    lens = analyze.main(["logit-lens", "--data", str(tmp_path / "pw"), "--description", "reference", "--limit", "2",
                         "--model", "tiny:xcomposer2", "--out", str(tmp_path / "lens")])
    assert lens["last_layer_vs_model_logits_max_abs_diff"] < 1e-4


def test_dry_run_memory_of_the_7b(capsys):
    """The release's sizes from the config's defaults: parameters counted on the meta device, per part."""
    from iqa_vlm.memory_plan import dry_run_report
    est = dry_run_report("internlm-xcomposer2-vl-7b", "encoder,projector", batch_size=1, seq_len=1400, grad_ckpt=True)
    text = capsys.readouterr().out
    assert "encoder" in text and "fits a 48 GiB GPU" in text
    c = X.XComposer2Config()
    h, i, r, kv = c.hidden_size, c.intermediate_size, c.plora_rank, c.num_key_value_heads * 128
    per_layer = (h * (h + 2 * kv) + r * (h + h + 2 * kv)) + (h * h + r * 2 * h) + 2 * (h * i + r * (h + i)) + (i * h + r * (i + h)) + 2 * h
    w = 1024  # CLIP ViT-L/14 at 490 px: CLS, patch conv (no bias), 1226 positions, pre-LN, 24 layers; no post-LayerNorm
    vit = w + 3 * 14 * 14 * w + 1226 * w + 2 * w + 24 * (4 * (w * w + w) + 2 * 2 * w + (w * 4096 + 4096) + (4096 * w + w))
    proj = 1024 * h + h + h * h + h
    assert est["params"] == 32 * per_layer + h + 2 * c.vocab_size * h + vit + proj


def test_fetch_script_refuses_a_file_whose_hash_differs(tmp_path, monkeypatch):
    """dev/fetch_xcomposer2_reference.py writes only files with the pinned SHA-256 (the download is faked here)."""
    import hashlib
    import importlib.util
    import io
    spec = importlib.util.spec_from_file_location("fetch_ixc2", os.path.join(os.path.dirname(__file__), "..", "dev",
                                                                             "fetch_xcomposer2_reference.py"))
    fetch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch)
    monkeypatch.setattr(fetch.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"not the authors' code"))
    with pytest.raises(SystemExit, match="SHA-256 .* expected"):
        fetch.main(str(tmp_path))
    assert os.listdir(tmp_path) == []
    payload = b"print('hello')\n"
    monkeypatch.setattr(fetch, "SHA256", {"one.py": hashlib.sha256(payload).hexdigest()})
    monkeypatch.setattr(fetch.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    fetch.main(str(tmp_path))
    assert (tmp_path / "one.py").read_bytes() == payload
