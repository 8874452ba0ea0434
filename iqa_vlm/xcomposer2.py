"""InternLM-XComposer2-VL natively on transformers 5: the fourth system of the prompting study, with no remote code.

    from iqa_vlm.model import load_model
    model, processor = load_model("internlm/internlm-xcomposer2-vl-7b")   # or a local folder in the released layout
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    enc = processor(text=[text], images=[[img]])

Parameter names are those of the released checkpoint (`model.tok_embeddings`, `model.layers.i.attention.wqkv` with its
`Plora_A`/`Plora_B`, `model.layers.i.feed_forward.w1|w2|w3`, `output`, `vit.vision_tower.vision_model.*`,
`vision_proj.0|2`), so its `pytorch_model-*.bin` shards load unchanged. Architecture (from the authors' released
modeling code, Dong et al., "InternLM-XComposer2"):
  vision   CLIP ViT-L/14 at 490 px (35 x 35 = 1225 patch tokens), the output of its last layer without the post-LayerNorm,
           CLS dropped; transformers' CLIPVisionModel, its post-LayerNorm (never applied there) left out;
  projector  Linear(1024, 4096) -> GELU -> Linear(4096, 4096) on every patch token;
  decoder  InternLM2 (LLaMA-like: RMSNorm, rotate-half RoPE with theta 1e6, grouped-query attention, SwiGLU, no biases),
           its qkv fused per key-value head as (kv head, [its query heads..., k, v], head_dim); every linear layer is a
           Partial LoRA: W x, plus B(A x) * alpha / r on the image tokens only (r = alpha = 256 in the release).
The processor expands each `<ImageHere>` of the prompt into 1225 copies of an image token whose positions the model fills
with the visual tokens and marks for Partial LoRA. Prompt ids are those of the authors' `chat()` with an image: the
prompt is split at each `<ImageHere>` and every non-empty text part is tokenized on its own, with a BOS in front.

Differences from the authors' code:
  - attention runs through SDPA, theirs eagerly: logits agree to 1e-5 in fp32, not bit for bit (in bf16, by a bf16 step);
  - positions come from the attention mask (theirs are 0..L-1 whatever the padding, so their left-padded rows are
    shifted; with right padding or none the two agree);
  - a prompt longer than the release's `max_length` (4096) is refused, where theirs is cut; positions past
    max_position_embeddings (32768), where their dynamic NTK scaling starts, are refused (not ported);
  - a text-only prompt gets one BOS (their chat() writes a literal <s> before the tokenizer's, so two);
  - the ViT's post-LayerNorm, which their code builds but never applies (and the release does not carry), is left out.
Generation with several images in one row and num_beams or num_return_sequences > 1 is not supported (transformers
repeats the pixel values image by image, not row by row); greedy and sampled decoding of one answer per row are.
"""
import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel, GenerationMixin,
                          PretrainedConfig, PreTrainedModel)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling

from iqa_vlm.native_parts import (RMSNorm, decoder_stack, images_once, lm_output, prompt_batch, rotate_half,
                                   save_processor)

IMAGE_TOKEN = "<ImageHere>"
TURN_START, TURN_END = "[UNUSED_TOKEN_146]", "[UNUSED_TOKEN_145]"  # the template's <|im_start|> / <|im_end|> pieces
# The default meta instruction of the authors' chat() (the model card's usage), lines joined by "\n".
META_INSTRUCTION = "\n".join([
    "You are an AI assistant whose name is InternLM-XComposer (浦语·灵笔).",
    "- InternLM-XComposer (浦语·灵笔) is a multi-modality conversational language model that is developed by Shanghai AI "
    "Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.",
    "- InternLM-XComposer (浦语·灵笔) can understand and communicate fluently in the language chosen by the user such as "
    "English and 中文.",
    "- InternLM-XComposer (浦语·灵笔) is capable of comprehending and articulating responses effectively based on the "
    "provided image."])
# openai/clip-vit-large-patch14-336, the tower the authors' code builds; image_size comes from img_size (490)
CLIP_VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
                    hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------- config
class XComposer2Config(PretrainedConfig):
    """The released config.json (InternLM2 fields, img_size). What the release hard-codes in its modeling code is a
    field here with the released value as default: vision_config (CLIP ViT-L/14 at img_size), plora_rank and
    plora_alpha (256, 256), plora_dropout (0.05). image_token_index: the id the processor expands <ImageHere> into
    (default vocab_size, one past the vocabulary: never embedded, its positions take the visual tokens)."""
    model_type = "internlmxcomposer2"
    sub_configs = {"vision_config": CLIPVisionConfig}

    def __init__(self, vocab_size=92544, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, hidden_act="silu", max_position_embeddings=32768,
                 max_length=4096, initializer_range=0.02, rms_norm_eps=1e-5, use_cache=True, pad_token_id=2,
                 bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, rope_theta=1e6, rope_scaling=None, bias=False,
                 img_size=490, vision_config=None, plora_rank=256, plora_alpha=256, plora_dropout=0.05,
                 image_token_index=None, prompt_max_length=None, **kwargs):
        if rope_scaling and (rope_scaling.get("type", rope_scaling.get("rope_type")) != "dynamic"
                             or float(rope_scaling.get("factor", 1.0)) != 1.0):
            raise ValueError(f"InternLM-XComposer2: rope_scaling {rope_scaling} is not supported (the release has "
                             f"dynamic, factor 1.0)")
        if hidden_act != "silu":
            raise ValueError(f"InternLM-XComposer2: hidden_act {hidden_act!r} is not supported (the release has silu)")
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads, self.hidden_act = num_key_value_heads, hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range, self.rms_norm_eps, self.use_cache = initializer_range, rms_norm_eps, use_cache
        self.rope_theta, self.bias, self.img_size = rope_theta, bias, img_size  # rope_scaling: checked above, not kept
        self.plora_rank, self.plora_alpha, self.plora_dropout = plora_rank, plora_alpha, plora_dropout
        if isinstance(vision_config, CLIPVisionConfig):
            vision_config = vision_config.to_dict()
        self.vision_config = CLIPVisionConfig(**{**CLIP_VIT_L14, "image_size": img_size, **(vision_config or {})})
        if self.vision_config.image_size != img_size:
            raise ValueError(f"InternLM-XComposer2: vision_config.image_size {self.vision_config.image_size} != img_size "
                             f"{img_size}")
        self.image_token_index = vocab_size if image_token_index is None else image_token_index
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
        # the release's `max_length`, its prompt limit; under that name transformers 5 would take it for a generation setting
        self.prompt_max_length = prompt_max_length or max_length

    @property
    def num_visual_tokens(self):
        return (self.img_size // self.vision_config.patch_size) ** 2


# ----------------------------------------------------------------------------- the decoder
class PLoRALinear(nn.Linear):
    """A linear layer plus a low-rank update on the image tokens only (Partial LoRA): W x on every token, and
    B(A(dropout(x))) * alpha / r added where im_mask is True. Names as released: the base weight, then Plora_A, Plora_B."""

    def __init__(self, in_features, out_features, bias, rank, alpha, dropout):
        super().__init__(in_features, out_features, bias)
        self.Plora_A = nn.Linear(in_features, rank, bias=False)
        self.Plora_B = nn.Linear(rank, out_features, bias=False)
        self.lora_dropout = nn.Dropout(dropout)
        self.lora_scaling = alpha / rank

    def forward(self, x, im_mask=None):
        y = super().forward(x)
        if im_mask is not None:  # the model passes None when no token is an image token
            delta = self.Plora_B(self.Plora_A(self.lora_dropout(x[im_mask]))) * self.lora_scaling
            return y.index_put((im_mask,), y[im_mask] + delta)
        if self.training and self.Plora_A.weight.requires_grad:  # a zero update: the adapters join the graph (DDP)
            return y + (self.Plora_B(self.Plora_A(x[:, :1])) * 0).sum()
        return y


class Attention(nn.Module):
    def __init__(self, c, layer_idx):
        super().__init__()
        self.layer_idx, self.heads, self.kv_heads = layer_idx, c.num_attention_heads, c.num_key_value_heads
        self.head_dim, self.groups = c.hidden_size // c.num_attention_heads, c.num_attention_heads // c.num_key_value_heads
        lora = dict(rank=c.plora_rank, alpha=c.plora_alpha, dropout=c.plora_dropout)
        self.wqkv = PLoRALinear(c.hidden_size, (self.heads + 2 * self.kv_heads) * self.head_dim, c.bias, **lora)
        self.wo = PLoRALinear(self.heads * self.head_dim, c.hidden_size, c.bias, **lora)

    def forward(self, x, im_mask, cos, sin, mask, cache=None, output_attentions=False):
        B, L, _ = x.shape
        qkv = self.wqkv(x, im_mask).view(B, L, self.kv_heads, self.groups + 2, self.head_dim)
        q = qkv[:, :, :, :self.groups].reshape(B, L, self.heads, self.head_dim).transpose(1, 2)
        k, v = qkv[:, :, :, -2].transpose(1, 2), qkv[:, :, :, -1].transpose(1, 2)
        cos, sin = cos[:, None], sin[:, None]
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        k, v = (t.repeat_interleave(self.groups, dim=1) for t in (k, v))  # kv head h serves query heads h*g .. h*g+g-1
        weights = None
        if output_attentions:  # the weights exist only when formed by hand (attention analysis)
            weights = torch.softmax((q @ k.transpose(-1, -2) / self.head_dim ** 0.5 + mask).float(), dim=-1).to(q.dtype)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        return self.wo(out.transpose(1, 2).reshape(B, L, -1), im_mask), weights


class FeedForward(nn.Module):
    def __init__(self, c):
        super().__init__()
        lora = dict(bias=False, rank=c.plora_rank, alpha=c.plora_alpha, dropout=c.plora_dropout)
        self.w1 = PLoRALinear(c.hidden_size, c.intermediate_size, **lora)
        self.w3 = PLoRALinear(c.hidden_size, c.intermediate_size, **lora)
        self.w2 = PLoRALinear(c.intermediate_size, c.hidden_size, **lora)

    def forward(self, x, im_mask):
        return self.w2(F.silu(self.w1(x, im_mask)) * self.w3(x, im_mask), im_mask)


class DecoderLayer(GradientCheckpointingLayer):
    def __init__(self, c, layer_idx):
        super().__init__()
        self.attention, self.feed_forward = Attention(c, layer_idx), FeedForward(c)
        self.attention_norm, self.ffn_norm = RMSNorm(c.hidden_size, c.rms_norm_eps), RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, im_mask, cos, sin, mask, cache=None, output_attentions=False):
        attn, weights = self.attention(self.attention_norm(x), im_mask, cos, sin, mask, cache, output_attentions)
        x = x + attn
        return x + self.feed_forward(self.ffn_norm(x), im_mask), weights


# ----------------------------------------------------------------------------- the models
class XComposer2PreTrainedModel(PreTrainedModel):
    config_class = XComposer2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["DecoderLayer", "CLIPEncoderLayer"]

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        else:
            super()._init_weights(module)  # the CLIP tower's LayerNorms and embeddings


class XComposer2Model(XComposer2PreTrainedModel):
    """`model` of the released checkpoint: tok_embeddings, layers, norm (InternLM2)."""

    def __init__(self, config):
        super().__init__(config)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_embeddings

    def forward(self, inputs_embeds, im_mask=None, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                output_attentions=False, output_hidden_states=False):
        if im_mask is not None and not im_mask.any():
            im_mask = None  # checked once here, not in each of the 5 x layers Partial LoRA layers (a GPU sync each)
        past = cache.get_seq_length() if cache is not None else 0
        if past + inputs_embeds.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"InternLM-XComposer2: {past + inputs_embeds.shape[1]} positions; past "
                             f"{self.config.max_position_embeddings} the release switches to dynamic NTK RoPE, which is "
                             f"not ported")
        return decoder_stack(self, inputs_embeds, im_mask, attention_mask, position_ids, cache, use_cache,
                             output_attentions, output_hidden_states)


class XComposer2ForCausalLM(XComposer2PreTrainedModel, GenerationMixin):
    """The released architecture: `model` (the decoder), `output` (untied LM head), `vit`, `vision_proj`.

    `lm_head` is `output` under the name the rest of the repo reads; `backbone(**enc)` runs the whole VLM up to the final
    norm (images included), what `model(**enc)` is for the other families (model.FAMILIES names it)."""
    _tied_weights_keys = {}
    _keys_to_ignore_on_load_unexpected = [r"post_layernorm"]

    def __init__(self, config):
        super().__init__(config)
        self.model = XComposer2Model(config)
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.vit = nn.Module()
        self.vit.vision_tower = nn.ModuleDict({"vision_model": CLIPVisionModel(config.vision_config)})
        self.vit.vision_tower.vision_model.post_layernorm = nn.Identity()  # never applied by the release's code, not in it
        width = config.vision_config.hidden_size
        self.vision_proj = nn.Sequential(nn.Linear(width, config.hidden_size), nn.GELU(),
                                         nn.Linear(config.hidden_size, config.hidden_size))
        self.post_init()

    @property
    def lm_head(self):
        return self.output

    def get_input_embeddings(self):
        return self.model.tok_embeddings

    def get_output_embeddings(self):
        return self.output

    def get_image_features(self, pixel_values, return_dict=False, **kwargs):
        """[N, 1225, hidden]: the projected patch tokens of the ViT's last layer (pooler_output: one tensor per image)."""
        vision = self.vit.vision_tower["vision_model"]
        feats = vision(pixel_values.to(vision.embeddings.patch_embedding.weight.dtype)).last_hidden_state[:, 1:]
        feats = self.vision_proj(feats.to(self.vision_proj[0].weight.dtype))
        return BaseModelOutputWithPooling(last_hidden_state=feats, pooler_output=list(feats)) if return_dict else feats

    def embed(self, input_ids, pixel_values=None):
        """(inputs_embeds, im_mask): token embeddings with the visual tokens at the image-token positions."""
        im_mask = input_ids == self.config.image_token_index
        embeds = self.model.tok_embeddings(input_ids.masked_fill(im_mask, 0))
        if pixel_values is not None and im_mask.any():
            feats = self.get_image_features(pixel_values).to(embeds.dtype)
            if feats.shape[0] * feats.shape[1] != int(im_mask.sum()):
                raise ValueError(f"InternLM-XComposer2: {int(im_mask.sum())} image-token positions for {feats.shape[0]} "
                                 f"images of {feats.shape[1]} visual tokens each (the processor expands {IMAGE_TOKEN})")
            embeds = embeds.masked_scatter(im_mask[..., None], feats.reshape(-1, feats.shape[-1]))
        elif im_mask.any():
            raise ValueError("InternLM-XComposer2: the input has image tokens but no pixel_values")
        return embeds, im_mask

    def backbone(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, cache=None,
                 inputs_embeds=None, im_mask=None, use_cache=None, output_attentions=False, output_hidden_states=False,
                 past_key_values=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds, im_mask = self.embed(input_ids, pixel_values)
        return self.model(inputs_embeds, im_mask=im_mask, attention_mask=attention_mask, position_ids=position_ids,
                          cache=cache if cache is not None else past_key_values, use_cache=use_cache,
                          output_attentions=output_attentions, output_hidden_states=output_hidden_states)

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, im_mask=None, labels=None, use_cache=None, cache_position=None, output_attentions=False,
                output_hidden_states=False, logits_to_keep=0, past_key_values=None, **kwargs):
        out = self.backbone(input_ids, pixel_values, attention_mask, position_ids, cache if cache is not None else past_key_values,
                            inputs_embeds, im_mask, use_cache, output_attentions, output_hidden_states)
        return lm_output(self.output, out, labels, logits_to_keep, float_logits=True)  # float, as the release returns

    def prepare_inputs_for_generation(self, input_ids, pixel_values=None, cache_position=None, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, cache_position=cache_position, **kwargs)
        return images_once(inputs, pixel_values, cache_position)


AutoConfig.register("internlmxcomposer2", XComposer2Config)
AutoModelForCausalLM.register(XComposer2Config, XComposer2ForCausalLM)


# ----------------------------------------------------------------------------- the processor
class XComposer2Processor:
    """Chat template, prompt ids and pixel values as the authors' chat() makes them.

    Template: `[UNUSED_TOKEN_146]{role}\\n{text}[UNUSED_TOKEN_145]\\n` per turn, the open turn `[UNUSED_TOKEN_146]assistant\\n`,
    and the release's meta instruction as the system turn when the messages bring none (meta_instruction=None: no system
    turn). Inside a turn the items stand in their order with nothing between them, an image as `<ImageHere>` (the
    model card's query "<ImageHere>Please describe this image in detail."). Ids: the text is split at every
    `<ImageHere>` and each non-empty part becomes BOS + its tokens, the special tokens (<s>, </s>, <unk>) split out and
    the text between them encoded by the checkpoint's SentencePiece model; each image becomes num_visual_tokens copies
    of image_token_index. Pixels: resized to img_size x img_size (bicubic, aspect ratio not kept), CLIP-normalised."""
    image_token = IMAGE_TOKEN

    def __init__(self, tokenizer, image_processor, num_visual_tokens, image_token_index, max_length=4096,
                 sentencepiece=None, meta_instruction=META_INSTRUCTION):
        self.tokenizer, self.image_processor, self.sentencepiece = tokenizer, image_processor, sentencepiece
        self.num_visual_tokens, self.image_token_id, self.max_length = num_visual_tokens, image_token_index, max_length
        self.meta_instruction = meta_instruction
        # <ImageHere> gets the next free id, image_token_index, as in the model's ids; the turn markers stay pieces of the
        # text (the SentencePiece model's own), so that the tokenizer's ids of a text equal the prompt's
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        self._special_set = {tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token} - {None}
        self._specials = re.compile("(" + "|".join(map(re.escape, sorted(self._special_set, key=len, reverse=True))) + ")")

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False, **kwargs):
        out = []
        if self.meta_instruction and not any(m["role"] == "system" for m in messages):
            out.append(f"{TURN_START}system\n{self.meta_instruction}{TURN_END}\n")
        for m in messages:
            items = [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"]
            text = "".join(IMAGE_TOKEN if c["type"] == "image" else c["text"] for c in items)
            out.append(f"{TURN_START}{m['role']}\n{text}{TURN_END}\n")
        if add_generation_prompt:
            out.append(f"{TURN_START}assistant\n")
        return "".join(out)

    def encode_text(self, text):
        """One text part's ids without BOS: the checkpoint's SentencePiece pieces, special tokens split out first (as
        the release's slow tokenizer does); a tokenizer without a SentencePiece model (the tiny tests') encodes it."""
        if self.sentencepiece is None:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = []
        for part in self._specials.split(text):
            ids += [self.tokenizer.convert_tokens_to_ids(part)] if part in self._special_set else \
                (self.sentencepiece.encode(part) if part else [])
        return ids

    def prompt_ids(self, text):
        ids = []
        for i, part in enumerate(text.split(IMAGE_TOKEN)):
            ids += ([self.image_token_id] * self.num_visual_tokens if i else []) + \
                ([self.tokenizer.bos_token_id] + self.encode_text(part) if part else [])
        if len(ids) > self.max_length:
            raise ValueError(f"InternLM-XComposer2: a prompt of {len(ids)} tokens (images included, "
                             f"{self.num_visual_tokens} each) is longer than the model's max_length {self.max_length}")
        return ids

    def pixel_values(self, images):
        return self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]

    def __call__(self, text=None, images=None, return_tensors="pt", padding=True, **kwargs):
        return prompt_batch(self, text, images, "InternLM-XComposer2")

    def save_pretrained(self, folder):
        save_processor(self, folder)


def tokenizer_class():
    """The release's tokenizer (remote code there) on transformers' SentencePiece backend: text split at <s>, </s>,
    <unk> (and <ImageHere>), every other stretch encoded by the SentencePiece model as it is (its turn markers are its
    own pieces), BOS in front; decoding by SentencePiece (byte pieces joined), and with skip_special_tokens the turn
    markers dropped too, as the release's chat() cuts its answer at them."""
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    class InternLM2Tokenizer(SentencePieceBackend):
        def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
            return [self.bos_token_id] + token_ids_0 + ([self.bos_token_id] + token_ids_1 if token_ids_1 else [])

        def convert_tokens_to_string(self, tokens):
            out, piece = [], []
            for t in tokens:
                if t in self.all_special_tokens:
                    out += [self.sp_model.decode(piece), t]
                    piece = []
                else:
                    piece.append(t)
            return "".join(out + [self.sp_model.decode(piece)])

        def _decode(self, token_ids, skip_special_tokens=False, **kwargs):
            if skip_special_tokens:
                markers = {self.sp_model.piece_to_id(TURN_START), self.sp_model.piece_to_id(TURN_END)}
                token_ids = [t for t in ([token_ids] if isinstance(token_ids, int) else token_ids) if t not in markers]
            return super()._decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)
    return InternLM2Tokenizer


def image_processor_for(img_size):
    """The release's preprocessing (it ships no preprocessor_config.json): resize to img_size x img_size with PIL's
    bicubic filter, scale to [0, 1], normalise with CLIP's mean and std."""
    from PIL import Image
    from transformers import CLIPImageProcessorPil
    return CLIPImageProcessorPil(size={"height": img_size, "width": img_size}, do_center_crop=False,
                                 resample=Image.BICUBIC, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def load_processor(folder, config):
    """The checkpoint's (a folder or a hub id) SentencePiece tokenizer.model, read by transformers' SentencePieceBackend
    (the release's tokenizer class is remote code) with the release's special tokens; pixels as image_processor_for
    (or an export's preprocessor_config.json)."""
    import sentencepiece
    from transformers import CLIPImageProcessorPil
    from transformers.utils import cached_file
    model_file = cached_file(folder, "tokenizer.model", _raise_exceptions_for_missing_entries=False)
    if model_file:
        tokenizer = tokenizer_class()(vocab_file=model_file, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                      pad_token="</s>", padding_side="right", clean_up_tokenization_spaces=False)
        spm = sentencepiece.SentencePieceProcessor(model_file=model_file)
    else:  # an export of a model whose tokenizer is not SentencePiece (the tiny test model's)
        from transformers import AutoTokenizer
        tokenizer, spm = AutoTokenizer.from_pretrained(folder), None
    if cached_file(folder, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False):  # an export
        image_processor = CLIPImageProcessorPil.from_pretrained(folder)
    else:
        image_processor = image_processor_for(config.img_size)
    return XComposer2Processor(tokenizer, image_processor, config.num_visual_tokens, config.image_token_index,
                               config.prompt_max_length, spm)


def stop_ids(tokenizer):
    """Generation stops at </s> or at the end of the assistant's turn, as the release's chat() does."""
    return [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(TURN_END)]


def is_xcomposer2(name):
    """Whether a local folder or a cached hub id holds an InternLM-XComposer2 checkpoint (its config.json says so)."""
    try:
        return AutoConfig.from_pretrained(name).model_type == XComposer2Config.model_type
    except Exception:
        return False
