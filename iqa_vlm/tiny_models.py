"""Tiny random VLMs for CPU runs with no download: the demo's model (`--model tiny`) and a tiny member of every
supported family (`--model tiny:FAMILY`), built from transformers' real classes at toy sizes with processors made
here (a word-level tokenizer over the project's vocabulary carrying the family's special tokens, the family's own
PIL image processor, a chat template in the family's style).

    from iqa_vlm.tiny_models import build_tiny
    model, processor = build_tiny("llava")       # the demo's model (what --model tiny loads)
    model, processor = build_tiny("idefics3")    # --model tiny:idefics3

The family members exist to exercise the code paths real checkpoints take (parts, image-token expansion, chat
templates, gradient checkpointing, LoRA, export); the demo's model is the measured default. Sizes of the family
members: hidden 32, 2 layers everywhere, images 32-64 px.
"""
from types import SimpleNamespace

import torch

from iqa_vlm.data import LABELS, LEVELS

# ----------------------------------------------------------------------------- the tiny built-in model
# Everything runs on a CPU with no download: transformers' own LLaVA class (CLIP vision + Llama text),
# random init from a fixed seed, and a word-level tokenizer over the project's own vocabulary.
# text_init_std: the frozen random LM must let visual tokens steer its output, as a pretrained one does.
# With transformers' default 0.02 the visual tokens barely steer it, so training only the encoder+projector learns
# far less; too large a std saturates the random LM (0.4 was the best of 0.1-0.8: docs/demo_history.md).
# patch 4 on 32x32 crops, not patch 8 on 64x64: the same 64 image tokens, but a distortion's local traces (block
# edges, jitter, grain) fall inside a 48-value patch the linear embedding can separate (docs/demo_history.md).
TINY = dict(image_size=32, patch_size=4, hidden=64, layers=2, heads=4, seed=0, text_init_std=0.4)

# Words of the prompts and answers the scripts write (templates, options, descriptions, numbers).
TINY_WORDS = """
user assistant system looking at the image above what is synthetic distortion in select from following
options has some a an of this how would you rate quality it its assume are evaluator describe low level
and or but with very slightly quite highly heavily strongly severely mildly moderately no not visible
noticeable clear clearly sharp sharpness blurry blurred noisy grain grainy bright brighter dark darker
darkened brightened exposure overexposed underexposed compressed compression artifacts blocky blocking
ringing low high contrast faded washed out saturated saturation colors color colorful colorfulness dull
vivid jitter jittered jittery displaced pixels edges details texture textures fine overall therefore so
thus which score from to between first second third fourth better worse same rank ranking images image
compare two four lowest highest reference distorted please answer only number think step by let us
these there be can see look looks seems overall quality rating is are was were for on as
""".split()
# the prompting study's prompts (prompting.py) and the two-stage study's (two_stage.py)
TINY_WORDS += """
perceptual best worst compared versions equal example human here now your question give get one numbers per order
if they then that where write last line starts followed separated commas
""".split()


def tiny_vocab():
    words = []
    for w in TINY_WORDS + LABELS + LEVELS + [str(i) for i in range(101)] + list(".,:;?!()/%-'\"#"):
        if w not in words:
            words.append(w)
    return words


# "role: content" lines; an assistant turn ends with </s> so the model learns where to stop.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>{{ '\\n' }}"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_tiny_processor():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast, LlavaProcessor, CLIPImageProcessorPil

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
    vocab = {w: i for i, w in enumerate(specials + tiny_vocab())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words and runs of punctuation
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins with spaces, tidies " ."
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<pad>",
                                        extra_special_tokens={"image_token": "<image>"})
    # CLIPImageProcessorPil: there is no CPU torchvision here. Resize to the tiny input, not 224.
    s = TINY["image_size"]
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=TINY["patch_size"],
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=TINY_CHAT_TEMPLATE)


def build_tiny_model(processor):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tok = processor.tokenizer
    h, n_layers, n_heads = TINY["hidden"], TINY["layers"], TINY["heads"]
    vision = CLIPVisionConfig(image_size=TINY["image_size"], patch_size=TINY["patch_size"], hidden_size=h,
                              intermediate_size=4 * h, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                              projection_dim=h)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=h, intermediate_size=4 * h, num_hidden_layers=n_layers,
                       num_attention_heads=n_heads, num_key_value_heads=n_heads, max_position_embeddings=512,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       tie_word_embeddings=False, initializer_range=TINY["text_init_std"])
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1,  # the default -2 would leave the last vision layer without gradient
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")
    with torch.random.fork_rng():  # same weights in every process, whatever the caller's RNG state
        torch.manual_seed(TINY["seed"])
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


# ----------------------------------------------------------------------------- the other families
H = 32  # hidden size of every tiny tower

# chat templates in each family's style; IMG is replaced by the family's image placeholder text
ROLE_COLON = ("{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}"
              "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}IMG{{ '\\n' }}{% else %}{{ c['text'] }}"
              "{% endif %}{% endfor %}{% endif %}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
              "{% if add_generation_prompt %}assistant:{% endif %}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}{{ '\\n' }}{% if m['content'] is string %}{{ m['content'] }}"
          "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}IMG{% else %}{{ c['text'] }}{% endif %}"
          "{% endfor %}{% endif %}<|im_end|>{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}{{ '\\n' }}"
         "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}IMG"
         "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<end_of_turn>{{ '\\n' }}{% endfor %}"
         "{% if add_generation_prompt %}<start_of_turn>model{{ '\\n' }}{% endif %}")

CHATML_SPECIALS = ["<|im_start|>", "<|im_end|>"]
GEMMA_SPECIALS = ["<start_of_turn>", "<end_of_turn>", "model"]  # "model": the assistant role word


def _no_video(cls):
    """The processor class minus its video processor: video processors need torchvision, which has no CPU
    build here; these tests feed images only."""
    attrs = [a for a in cls.get_attributes() if a != "video_processor"]
    return type(cls.__name__, (cls,), {"get_attributes": classmethod(lambda c: attrs)})


def _tokenizer(specials, named, bos="<s>", eos="</s>"):
    """Word-level tokenizer over the project's vocabulary plus the family's special tokens.
    named: extra attributes the family's processor reads (image_token=..., boi_token=...)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    base = ["<pad>", "<unk>", bos, eos]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(base + specials + list(named.values()) + tiny_vocab()))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    t = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="<unk>", pad_token="<pad>",
                                extra_special_tokens=named)
    t.add_special_tokens({"additional_special_tokens": specials + [v for v in named.values() if v not in specials]})
    return t


def _text(kind="llama", vocab=None, **kw):
    from transformers import GemmaConfig, Gemma3TextConfig, LlamaConfig, Qwen2Config
    common = dict(vocab_size=vocab, hidden_size=H, intermediate_size=2 * H, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.2, **kw)
    if kind in ("gemma", "gemma3"):
        common.update(num_key_value_heads=1, head_dim=16)
    return {"llama": LlamaConfig, "qwen2": Qwen2Config, "gemma": GemmaConfig, "gemma3": Gemma3TextConfig}[kind](**common)


def _vit(kind, image_size=32, patch=8):
    from transformers import CLIPVisionConfig, SiglipVisionConfig
    cls = {"clip": CLIPVisionConfig, "siglip": SiglipVisionConfig}[kind]
    return cls(image_size=image_size, patch_size=patch, hidden_size=H, intermediate_size=2 * H, num_hidden_layers=2,
               num_attention_heads=2)


def _llava_next_onevision(f):
    """LLaVA-NeXT, LLaVA-OneVision -> (config, processor, tokenizer)."""
    import transformers as T
    tok = _tokenizer([], {"image_token": "<image>"})
    img_id = tok.convert_tokens_to_ids("<image>")
    if f == "llava_next":
        ip = T.LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                          image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]])
        config = T.LlavaNextConfig(vision_config=_vit("clip"), text_config=_text("llama", len(tok)), image_token_id=img_id,
                                   image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]], vision_feature_layer=-1)
        processor = T.LlavaNextProcessor(ip, tok, patch_size=8, vision_feature_select_strategy="default",
                                         num_additional_image_tokens=1, chat_template=ROLE_COLON.replace("IMG", "<image>"))
    else:
        ip = T.LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]])
        tok = _tokenizer(CHATML_SPECIALS, {"image_token": "<image>", "video_token": "<video>"})
        img_id = tok.convert_tokens_to_ids("<image>")
        config = T.LlavaOnevisionConfig(vision_config=_vit("siglip"), text_config=_text("qwen2", len(tok)), image_token_id=img_id,
                                        video_token_id=tok.convert_tokens_to_ids("<video>"),
                                        image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]], vision_feature_layer=-1)
        processor = _no_video(T.LlavaOnevisionProcessor)(ip, tok, video_processor=None, num_image_tokens=16, vision_feature_select_strategy="full",
                                              chat_template=CHATML.replace("IMG", "<image>\n"))
    return config, processor, tok


def _qwen_vl(f):
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL -> (config, processor, tokenizer)."""
    import transformers as T
    named = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "vision_start_token": "<|vision_start|>",
             "vision_end_token": "<|vision_end|>"}
    tok = _tokenizer(CHATML_SPECIALS, named, bos="<|endoftext|>", eos="<|im_end|>")
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in named.items()}
    patch = 16 if f == "qwen3_vl" else 8
    ip = T.Qwen2VLImageProcessorPil(patch_size=patch, temporal_patch_size=2, merge_size=2,
                                    min_pixels=(2 * patch) ** 2 * 4, max_pixels=(2 * patch) ** 2 * 4)
    head_dim = H // 2
    text = dict(vocab_size=len(tok), hidden_size=H, intermediate_size=2 * H, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, initializer_range=0.2, max_position_embeddings=4096,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3]})  # t/h/w shares of head_dim / 2
    if f == "qwen2_vl":
        vision = dict(depth=2, embed_dim=H, hidden_size=H, num_heads=2, mlp_ratio=2, patch_size=patch, spatial_merge_size=2,
                      temporal_patch_size=2)
        cls = T.Qwen2VLConfig
    elif f == "qwen2_5_vl":
        vision = dict(depth=2, hidden_size=H, intermediate_size=2 * H, num_heads=2, patch_size=patch, spatial_merge_size=2,
                      temporal_patch_size=2, out_hidden_size=H, fullatt_block_indexes=[1], window_size=32)
        cls = T.Qwen2_5_VLConfig
    else:
        vision = dict(depth=2, hidden_size=H, intermediate_size=2 * H, num_heads=2, patch_size=patch, spatial_merge_size=2,
                      temporal_patch_size=2, out_hidden_size=H, deepstack_visual_indexes=[0], num_position_embeddings=64)
        text.update(head_dim=head_dim)
        text["rope_scaling"] = {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True}
        cls = T.Qwen3VLConfig
    config = cls(vision_config=vision, text_config=text, image_token_id=ids["image_token"], video_token_id=ids["video_token"],
                 vision_start_token_id=ids["vision_start_token"], vision_end_token_id=ids["vision_end_token"])
    proc_cls = _no_video(T.Qwen3VLProcessor if f == "qwen3_vl" else T.Qwen2VLProcessor)
    processor = proc_cls(image_processor=ip, tokenizer=tok, video_processor=None,
                         chat_template=CHATML.replace("IMG", "<|vision_start|><|image_pad|><|vision_end|>"))
    return config, processor, tok


def _idefics3_smolvlm(f):
    """Idefics3, SmolVLM -> (config, processor, tokenizer)."""
    import transformers as T
    named = {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>"}
    rows = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    tok = _tokenizer(["<end_of_utterance>"] + rows, named)
    img_id = tok.convert_tokens_to_ids("<image>")
    vision = dict(image_size=32, patch_size=8, hidden_size=H, intermediate_size=2 * H, num_hidden_layers=2, num_attention_heads=2)
    tmpl = ROLE_COLON.replace("IMG", "<image>")
    if f == "idefics3":
        ip = T.Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=False)
        config = T.Idefics3Config(vision_config=vision, text_config=_text("llama", len(tok)), image_token_id=img_id, scale_factor=2)
        processor = T.Idefics3Processor(ip, tok, image_seq_len=4, chat_template=tmpl)
    else:
        ip = T.SmolVLMImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=False)
        config = T.SmolVLMConfig(vision_config=vision, text_config=_text("llama", len(tok)), image_token_id=img_id, scale_factor=2)
        processor = _no_video(T.SmolVLMProcessor)(ip, tok, video_processor=None, image_seq_len=4, chat_template=tmpl)
        processor.video_processor = SimpleNamespace(num_frames=None, fps=None)  # its chat template reads these
    return config, processor, tok


def _gemma_paligemma_internvl(f):
    """Gemma3, PaliGemma, InternVL -> (config, processor, tokenizer)."""
    import transformers as T
    if f == "gemma3":
        named = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
        tok = _tokenizer(GEMMA_SPECIALS, named, bos="<bos>", eos="<eos>")
        ids = {k: tok.convert_tokens_to_ids(v) for k, v in named.items()}
        ip = T.Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
        config = T.Gemma3Config(vision_config=_vit("siglip"), text_config=_text("gemma3", len(tok)), mm_tokens_per_image=4,
                                image_token_index=ids["image_token"], boi_token_index=ids["boi_token"], eoi_token_index=ids["eoi_token"])
        processor = T.Gemma3Processor(ip, tok, image_seq_length=4, chat_template=GEMMA.replace("IMG", "<start_of_image>"))
    elif f == "paligemma":
        tok = _tokenizer([], {"image_token": "<image>"}, bos="<bos>", eos="<eos>")
        ip = T.SiglipImageProcessorPil(size={"height": 32, "width": 32})
        ip.image_seq_length = (32 // 8) ** 2  # patches per image: PaliGemma's processor repeats <image> this often
        config = T.PaliGemmaConfig(vision_config=_vit("siglip"), text_config=_text("gemma", len(tok)).to_dict(),
                                   image_token_index=tok.convert_tokens_to_ids("<image>"), projection_dim=H)
        processor = T.PaliGemmaProcessor(ip, tok, chat_template=ROLE_COLON.replace("IMG", ""))
    elif f == "internvl":
        named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                 "video_token": "<video>"}
        tok = _tokenizer(CHATML_SPECIALS, named)
        ip = T.GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=False)
        vision = dict(image_size=32, patch_size=8, hidden_size=H, intermediate_size=2 * H, num_hidden_layers=2, num_attention_heads=2)
        config = T.InternVLConfig(vision_config=vision, text_config=_text("qwen2", len(tok)),
                                  image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), downsample_ratio=0.5)
        processor = _no_video(T.InternVLProcessor)(ip, tok, video_processor=None, image_seq_length=4, chat_template=CHATML.replace("IMG", "<IMG_CONTEXT>\n"))
    return config, processor, tok


def _mplug_owl2(f):
    """mPLUG-Owl2 (native, mplug_owl2.py): ViT 32 px / patch 8, an abstractor of 4 queries, a 2-layer decoder."""
    import transformers as T
    from iqa_vlm import mplug_owl2
    tok = _tokenizer([], {})
    vision = dict(hidden_size=H, intermediate_size=2 * H, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    abstractor = dict(num_learnable_queries=4, hidden_size=H, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=48, encoder_hidden_size=H, grid_size=4)
    config = mplug_owl2.MPLUGOwl2Config(visual_config={"visual_model": vision, "visual_abstractor": abstractor},
                                        vocab_size=len(tok), hidden_size=H, intermediate_size=2 * H, num_hidden_layers=2,
                                        num_attention_heads=2, initializer_range=0.2, pad_token_id=tok.pad_token_id,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    ip = T.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return config, mplug_owl2.MPLUGOwl2Processor(tok, ip, config.num_visual_tokens, config.image_token_index), tok


def _xcomposer2(f):
    """InternLM-XComposer2 (native, xcomposer2.py): CLIP ViT 32 px / patch 8 (16 visual tokens), a 2-layer decoder with
    4 query heads on 2 key-value heads (the fused qkv's grouping), Partial LoRA of rank 4 and alpha 8 (scaling 2)."""
    from iqa_vlm import xcomposer2 as X
    tok = _tokenizer([X.TURN_START, X.TURN_END], {})
    config = X.XComposer2Config(vocab_size=len(tok), hidden_size=H, intermediate_size=2 * H, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                                initializer_range=0.2, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, img_size=32, plora_rank=4, plora_alpha=8,
                                vision_config=_vit("clip").to_dict())
    processor = X.XComposer2Processor(tok, X.image_processor_for(32), config.num_visual_tokens, config.image_token_index,
                                      config.prompt_max_length)
    return config, processor, tok


_BUILDERS = {**dict.fromkeys(("llava_next", "llava_onevision"), _llava_next_onevision),
             "mplug_owl2": _mplug_owl2, "xcomposer2": _xcomposer2,
             **dict.fromkeys(("qwen2_vl", "qwen2_5_vl", "qwen3_vl"), _qwen_vl),
             **dict.fromkeys(("idefics3", "smolvlm"), _idefics3_smolvlm),
             **dict.fromkeys(("gemma3", "paligemma", "internvl"), _gemma_paligemma_internvl)}


# The reasoning answer's tags (VisualQuality-R1, Q-Insight): `tiny:tags` is the demo's model with these four words added
# to its vocabulary (its other weights unchanged; the new embedding and head rows drawn from their own seed)
R1_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def build_tiny(family, seed=0):
    """(model, processor) for a tiny random member of `family` (a key of model.FAMILIES, or a model type);
    'llava' is the demo's model (TINY), 'tags' the demo's model able to write R1_TAGS."""
    import transformers as T
    f = family
    if f in ("llava", "tags"):
        processor = build_tiny_processor()
        model = build_tiny_model(processor)
        if f == "tags":
            n = len(processor.tokenizer)
            processor.tokenizer.add_tokens(list(R1_TAGS))
            model.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
            with torch.random.fork_rng(), torch.no_grad():
                torch.manual_seed(TINY["seed"] + 1)
                for m in (model.get_input_embeddings(), model.get_output_embeddings()):
                    m.weight[n:].normal_(0, TINY["text_init_std"])
        return model, processor
    if f not in _BUILDERS:
        raise ValueError(f"no tiny build for family {family!r}; have {TINY_FAMILIES}")
    config, processor, tok = _BUILDERS[f](f)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = (T.AutoModelForCausalLM if f in ("mplug_owl2", "xcomposer2") else T.AutoModelForImageTextToText).from_config(config)
        if f == "gemma3":  # transformers starts this projection at zero: no gradient would reach the encoder
            torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.2)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    if f == "xcomposer2":
        from iqa_vlm.xcomposer2 import stop_ids
        model.generation_config.eos_token_id = stop_ids(tok)
    return model, processor


TINY_FAMILIES = ["llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "smolvlm",
                 "gemma3", "paligemma", "internvl", "mplug_owl2", "xcomposer2"]
