"""mPLUG-Owl2 natively on transformers 5: the backbone of the distortion and two-stage papers and of the released
Q-Instruct, Q-Align / OneAlign and DeQA-Score checkpoints, with no remote code.

    from iqa_vlm import mplug_owl2                                   # registers model_type "mplug_owl2" with the Auto classes
    model, processor = mplug_owl2.load("q-future/one-align")          # or a local folder in the released layout
    enc = processor(text=[processor.apply_chat_template(messages, add_generation_prompt=True)], images=[[img]])

Parameter names are those of the released checkpoints (`model.vision_model.*`, `model.visual_abstractor.*`,
`model.layers.i.self_attn.k_proj.multiway.{0,1}`, ...), so their `pytorch_model-*.bin` / safetensors shards load
unchanged. Architecture (from the authors' code, Ye et al., "mPLUG-Owl2"):
  vision   ViT with a CLS token, learned position embedding, pre-LayerNorm, QuickGELU MLPs, a fused qkv projection laid
           out per head (head, {q, k, v}, head_dim), post-LayerNorm over every token;
  abstractor  Q learned queries; per layer the queries (after norm1) attend to themselves and to the normed ViT tokens
           (normk), keys carry fixed sin-cos positions (1-D for queries, 2-D for patches, 0 for CLS), values none; then
           out_proj, and a SwiGLU MLP with a LayerNorm on its inner width (w2(ffn_ln(silu(w1 x) * w3 x))); visual_fc to
           the LM width and a learned vit_eos appended: Q + 1 visual tokens per image;
  decoder  LLaMA-2 whose k_proj, v_proj, input_layernorm and post_attention_layernorm have two branches, multiway.0
           for text and multiway.1 for visual tokens (vit_eos included), chosen per token; q_proj, o_proj and the MLP are
           shared; causal attention over the whole sequence, image tokens included.
The processor expands each `<|image|>` of the prompt into Q + 1 copies of an image token whose positions the model
fills with the visual tokens and routes to the visual branches. Prompt ids are those of the authors' code: BOS, then
each chunk between images tokenized on its own by the checkpoint's SentencePiece model (dummy prefix included).
"""
import functools
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling

from iqa_vlm.native_parts import (RMSNorm, decoder_stack, images_once, lm_output, prompt_batch, rotate_half,
                                   save_processor)

IMAGE_TOKEN = "<|image|>"
VISION_DEFAULTS = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=448, patch_size=14, layer_norm_eps=1e-6)
ABSTRACTOR_DEFAULTS = dict(num_learnable_queries=64, hidden_size=1024, num_hidden_layers=6, num_attention_heads=16,
                           intermediate_size=2816, layer_norm_eps=1e-6, encoder_hidden_size=1024, grid_size=32)


# ----------------------------------------------------------------------------- config
class MPLUGOwl2Config(PretrainedConfig):
    """The released config.json: LLaMA fields at the top level, `visual_config` = {visual_model: {...},
    visual_abstractor: {...}}. image_token_index: the id the processor expands <|image|> into (default vocab_size, one
    past the LM's vocabulary: never embedded, its positions take the visual tokens)."""
    model_type = "mplug_owl2"

    def __init__(self, visual_config=None, vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=None, hidden_act="silu",
                 max_position_embeddings=2048, initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True,
                 pad_token_id=None, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, rope_theta=10000.0,
                 rope_scaling=None, attention_bias=False, image_token_index=None, **kwargs):
        visual_config = visual_config or {}
        self.visual_config = {"visual_model": {**VISION_DEFAULTS, **visual_config.get("visual_model", {})},
                              "visual_abstractor": {**ABSTRACTOR_DEFAULTS, **visual_config.get("visual_abstractor", {})}}
        if rope_scaling:
            raise ValueError(f"mPLUG-Owl2: rope_scaling {rope_scaling} is not supported (the released checkpoints have none)")
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.hidden_act, self.max_position_embeddings, self.initializer_range = hidden_act, max_position_embeddings, initializer_range
        self.rms_norm_eps, self.use_cache, self.rope_theta = rms_norm_eps, use_cache, rope_theta  # rope_scaling: none
        self.attention_bias = attention_bias
        self.image_token_index = vocab_size if image_token_index is None else image_token_index
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)

    @property
    def num_visual_tokens(self):
        return self.visual_config["visual_abstractor"]["num_learnable_queries"] + 1  # + vit_eos


# ----------------------------------------------------------------------------- fixed sin-cos positions (abstractor)
# MAE's recipe, computed in numpy float32 as the authors' code does (the 2-D table gets a zero row for CLS).
def _sincos_1d(dim, pos):
    omega = np.arange(dim // 2, dtype=np.float32)
    omega /= dim / 2.
    omega = 1. / 10000 ** omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


@functools.lru_cache(maxsize=8)
def abstractor_positions(dim, num_queries, grid):
    """(query positions [Q, D], key positions [grid^2 + 1, D]) as float32 tensors."""
    q = _sincos_1d(dim, np.arange(num_queries, dtype=np.float32))
    g = np.stack(np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)), 0).reshape(2, 1, grid, grid)
    k = np.concatenate([_sincos_1d(dim // 2, g[0]), _sincos_1d(dim // 2, g[1])], axis=1)
    k = np.concatenate([np.zeros([1, dim]), k], axis=0)
    return torch.from_numpy(q).float(), torch.from_numpy(k).float()


# ----------------------------------------------------------------------------- vision encoder
class VisionEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c["hidden_size"]))
        self.patch_embed = nn.Conv2d(3, c["hidden_size"], c["patch_size"], c["patch_size"], bias=False)
        self.position_embedding = nn.Parameter(torch.zeros(1, (c["image_size"] // c["patch_size"]) ** 2 + 1, c["hidden_size"]))
        self.pre_layernorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, pixel_values):
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], 1, -1).to(x.dtype), x], dim=1)
        return self.pre_layernorm(x + self.position_embedding[:, :x.shape[1]].to(x.dtype))


class VisionAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.heads = c["num_attention_heads"]
        self.query_key_value = nn.Linear(c["hidden_size"], 3 * c["hidden_size"])
        self.dense = nn.Linear(c["hidden_size"], c["hidden_size"])

    def forward(self, x):
        B, L, D = x.shape
        q, k, v = self.query_key_value(x).reshape(B, L, self.heads, 3, D // self.heads).permute(3, 0, 2, 1, 4)
        return self.dense(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, D))


class VisionLayer(GradientCheckpointingLayer):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.self_attn = VisionAttention(c)
        self.post_attention_layernorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(c["hidden_size"], c["intermediate_size"]), nn.Linear(c["intermediate_size"], c["hidden_size"])

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        h = self.mlp.fc1(self.post_attention_layernorm(x))
        return x + self.mlp.fc2(h * torch.sigmoid(1.702 * h))  # QuickGELU


class VisionModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embeddings = VisionEmbeddings(c)
        self.encoder = nn.Module()  # a bare holder: the released names are encoder.layers.i
        self.encoder.layers = nn.ModuleList(VisionLayer(c) for _ in range(c["num_hidden_layers"]))
        self.post_layernorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, pixel_values):
        x = self.embeddings(pixel_values)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


# ----------------------------------------------------------------------------- visual abstractor
class AbstractorAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.heads, self.c = c["num_attention_heads"], c
        self.query = nn.Linear(c["hidden_size"], c["hidden_size"])
        self.key = nn.Linear(c["encoder_hidden_size"], c["hidden_size"])
        self.value = nn.Linear(c["encoder_hidden_size"], c["hidden_size"])

    def forward(self, queries, kv):
        q_pos, k_pos = abstractor_positions(self.c["hidden_size"], self.c["num_learnable_queries"], self.c["grid_size"])
        q_pos, k_pos = q_pos.to(queries.device, queries.dtype), k_pos.to(queries.device, queries.dtype)
        B, Q, D = queries.shape
        split = lambda t: t.reshape(B, t.shape[1], self.heads, D // self.heads).transpose(1, 2)
        q = split(self.query(queries + q_pos))
        k = split(self.key(kv + torch.cat([q_pos, k_pos[:kv.shape[1] - Q]])))
        v = split(self.value(kv))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, Q, D)


class AbstractorMLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.w1 = nn.Linear(c["hidden_size"], c["intermediate_size"])
        self.w2 = nn.Linear(c["intermediate_size"], c["hidden_size"])
        self.w3 = nn.Linear(c["hidden_size"], c["intermediate_size"])
        self.ffn_ln = nn.LayerNorm(c["intermediate_size"], eps=c["layer_norm_eps"])

    def forward(self, x):
        return self.w2(self.ffn_ln(F.silu(self.w1(x)) * self.w3(x)))


class AbstractorOutput(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.out_proj = nn.Linear(c["hidden_size"], c["hidden_size"])
        self.norm2 = nn.LayerNorm(c["hidden_size"])  # eps 1e-5 in the authors' code, unlike ffn_ln
        self.mlp = AbstractorMLP(c)


class AbstractorCrossAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attention = AbstractorAttention(c)
        self.output = AbstractorOutput(c)
        self.norm1, self.normk = nn.LayerNorm(c["hidden_size"]), nn.LayerNorm(c["hidden_size"])

    def forward(self, queries, vit):
        queries = self.norm1(queries)  # the residual starts from the normed queries, as in the authors' code
        x = queries + self.output.out_proj(self.attention(queries, torch.cat([queries, self.normk(vit)], dim=1)))
        return x + self.output.mlp(self.output.norm2(x))


class AbstractorLayer(GradientCheckpointingLayer):
    def __init__(self, c):
        super().__init__()
        self.crossattention = AbstractorCrossAttention(c)

    def forward(self, queries, vit):
        return self.crossattention(queries, vit)


class VisualAbstractor(nn.Module):
    def __init__(self, c, text_hidden):
        super().__init__()
        self.query_embeds = nn.Parameter(torch.zeros(1, c["num_learnable_queries"], c["hidden_size"]))
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(AbstractorLayer(c) for _ in range(c["num_hidden_layers"]))
        self.visual_fc = nn.Linear(c["hidden_size"], text_hidden)
        self.vit_eos = nn.Parameter(torch.zeros(1, 1, text_hidden))

    def forward(self, vit):
        x = self.query_embeds.expand(vit.shape[0], -1, -1).to(vit.dtype)
        for layer in self.encoder.layers:
            x = layer(x, vit)
        x = self.visual_fc(x)
        return torch.cat([x, self.vit_eos.expand(x.shape[0], -1, -1).to(x.dtype)], dim=1)


# ----------------------------------------------------------------------------- the modality-adaptive LLaMA decoder
class Multiway(nn.Module):
    """Two copies of a module: multiway.0 for text tokens, multiway.1 for visual tokens (names as released)."""

    def __init__(self, make):
        super().__init__()
        self.multiway = nn.ModuleList([make(), make()])

    def forward(self, x, visual):
        if visual is None or not visual.any():
            return self.multiway[0](x)
        if visual.all():
            return self.multiway[1](x)
        text_out, visual_out = self.multiway[0](x[~visual]), self.multiway[1](x[visual])
        out = text_out.new_empty(*x.shape[:-1], text_out.shape[-1])
        out[~visual], out[visual] = text_out, visual_out
        return out


class DecoderAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx, self.heads, self.kv_heads = layer_idx, config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        h, kv, bias = config.hidden_size, self.kv_heads * self.head_dim, config.attention_bias
        self.q_proj = nn.Linear(h, h, bias=bias)
        self.k_proj = Multiway(lambda: nn.Linear(h, kv, bias=bias))
        self.v_proj = Multiway(lambda: nn.Linear(h, kv, bias=bias))
        self.o_proj = nn.Linear(h, h, bias=bias)

    def forward(self, x, visual, cos, sin, mask, cache=None, output_attentions=False):
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x, visual).view(B, L, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x, visual).view(B, L, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos[:, None], sin[:, None]
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if self.kv_heads != self.heads:
            k, v = (t.repeat_interleave(self.heads // self.kv_heads, dim=1) for t in (k, v))
        weights = None
        if output_attentions:  # the weights exist only when formed by hand (attention analysis)
            scores = q @ k.transpose(-1, -2) / self.head_dim ** 0.5 + mask
            weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        return self.o_proj(out.transpose(1, 2).reshape(B, L, -1)), weights


class DecoderMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(h, i, bias=False), nn.Linear(h, i, bias=False), nn.Linear(i, h, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        norm = lambda: RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DecoderAttention(config, layer_idx)
        self.mlp = DecoderMLP(config)
        self.input_layernorm, self.post_attention_layernorm = Multiway(norm), Multiway(norm)

    def forward(self, x, visual, cos, sin, mask, cache=None, output_attentions=False):
        attn, weights = self.self_attn(self.input_layernorm(x, visual), visual, cos, sin, mask, cache, output_attentions)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x, visual)), weights


# ----------------------------------------------------------------------------- the models
class MPLUGOwl2PreTrainedModel(PreTrainedModel):
    config_class = MPLUGOwl2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["DecoderLayer", "VisionLayer", "AbstractorLayer"]

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (VisionEmbeddings, VisualAbstractor)):  # cls_token, positions; queries, vit_eos
            for p in module.parameters(recurse=False):
                nn.init.normal_(p, std=std)


class MPLUGOwl2Model(MPLUGOwl2PreTrainedModel):
    """`model` of the released checkpoints: embed_tokens, layers, norm (the LLaMA decoder) beside vision_model and
    visual_abstractor."""

    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.vision_model = VisionModel(config.visual_config["visual_model"])
        self.visual_abstractor = VisualAbstractor(config.visual_config["visual_abstractor"], config.hidden_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def get_image_features(self, pixel_values, return_dict=False, **kwargs):
        """[N, Q + 1, hidden]: the visual tokens that enter the LM (pooler_output: one tensor per image)."""
        feats = self.visual_abstractor(self.vision_model(pixel_values.to(self.vision_model.embeddings.patch_embed.weight.dtype)))
        return BaseModelOutputWithPooling(last_hidden_state=feats, pooler_output=list(feats)) if return_dict else feats

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, use_cache=None, cache_position=None, output_attentions=False,
                output_hidden_states=False, past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values  # transformers renamed it (5.2x: cache)
        visual = None
        if inputs_embeds is None:
            visual = input_ids == self.config.image_token_index
            inputs_embeds = self.embed_tokens(input_ids.masked_fill(visual, 0))
            if pixel_values is not None and visual.any():
                feats = self.get_image_features(pixel_values).to(inputs_embeds.dtype)
                if feats.shape[0] * feats.shape[1] != int(visual.sum()):
                    raise ValueError(f"mPLUG-Owl2: {int(visual.sum())} image-token positions for {feats.shape[0]} images "
                                     f"of {feats.shape[1]} visual tokens each (the processor expands <|image|>)")
                inputs_embeds = inputs_embeds.masked_scatter(visual[..., None], feats.reshape(-1, feats.shape[-1]))
            elif visual.any():
                raise ValueError("mPLUG-Owl2: the input has image tokens but no pixel_values")
        return decoder_stack(self, inputs_embeds, visual, attention_mask, position_ids, cache, use_cache, output_attentions,
                             output_hidden_states)


class MPLUGOwl2LlamaForCausalLM(MPLUGOwl2PreTrainedModel, GenerationMixin):
    """The released architecture name; `model` + an untied `lm_head`."""
    _tied_weights_keys = {}

    def __init__(self, config):
        super().__init__(config)
        self.model = MPLUGOwl2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, labels=None, use_cache=None, cache_position=None, output_attentions=False,
                output_hidden_states=False, logits_to_keep=0, past_key_values=None, **kwargs):
        out = self.model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                         position_ids=position_ids, cache=cache if cache is not None else past_key_values,
                         inputs_embeds=inputs_embeds,
                         use_cache=use_cache, cache_position=cache_position, output_attentions=output_attentions,
                         output_hidden_states=output_hidden_states)
        return lm_output(self.lm_head, out, labels, logits_to_keep)

    def prepare_inputs_for_generation(self, input_ids, pixel_values=None, cache_position=None, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, cache_position=cache_position, **kwargs)
        return images_once(inputs, pixel_values, cache_position)


AutoConfig.register("mplug_owl2", MPLUGOwl2Config)
AutoModelForCausalLM.register(MPLUGOwl2Config, MPLUGOwl2LlamaForCausalLM)


# ----------------------------------------------------------------------------- the processor
def expand2square(image, background):
    """Pad to a square, the image centred, with `background` (the CLIP mean colour), as the authors' code does."""
    from PIL import Image
    w, h = image.size
    if w == h:
        return image
    square = Image.new(image.mode, (max(w, h),) * 2, background)
    square.paste(image, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
    return square


class MPLUGOwl2Processor:
    """Chat template, prompt ids and pixel values as the authors' code makes them.

    Template ("mplug_owl2" conversation of the released code): no system prompt, `USER: {question} ASSISTANT: {answer}</s>`
    between turns, the open turn `ASSISTANT:`; inside a user turn the items stand in their order, an image as
    `<|image|>`, joined by newlines (Q-Align's data: "How would you rate the quality of this image?\\n<|image|>"). A
    system turn, which the template has no place for, is written ahead of the first USER as `{system} ` (the "two"
    separator style of the same code): this repo's choice. Ids: BOS, then every chunk between `<|image|>`s tokenized on
    its own without BOS by the checkpoint's SentencePiece model, as the slow LlamaTokenizer of transformers 4.36 did
    (its dummy prefix on each chunk; a leading space kept as its own "▁"), each image as num_visual_tokens copies of
    image_token_index. Pixels: expand2square with the processor's mean colour, then its CLIP preprocessing."""
    image_token = IMAGE_TOKEN

    def __init__(self, tokenizer, image_processor, num_visual_tokens, image_token_index, sentencepiece=None):
        self.tokenizer, self.image_processor, self.sentencepiece = tokenizer, image_processor, sentencepiece
        self.num_visual_tokens, self.image_token_id = num_visual_tokens, image_token_index
        if IMAGE_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})  # one token in whole-text encodes
        self._special_set = {t for t in tokenizer.all_special_tokens if t != IMAGE_TOKEN}
        self._specials = re.compile("(" + "|".join(map(re.escape, sorted(self._special_set, key=len, reverse=True))) + ")")

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False, **kwargs):
        out = []
        for m in messages:
            items = [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"]
            text = "\n".join(IMAGE_TOKEN if c["type"] == "image" else c["text"] for c in items
                             if c["type"] == "image" or c["text"])
            if m["role"] == "system":
                out.append(text + " ")
            elif m["role"] == "user":
                out.append(f"USER: {text} ")
            else:
                out.append(f"ASSISTANT: {text}{self.tokenizer.eos_token}")
        if add_generation_prompt:
            out.append("ASSISTANT:")
        return "".join(out)

    def prompt_ids(self, text):
        chunks = text.split(IMAGE_TOKEN)
        ids = [self.tokenizer.bos_token_id]
        for i, chunk in enumerate(chunks):
            if not chunk:
                piece = []
            elif self.sentencepiece is not None:  # the slow tokenizer's ids: transformers' fast one differs on leading spaces
                piece = []  # like the slow tokenizer, special tokens (</s>) first, each text between them encoded alone
                for part in self._specials.split(chunk):
                    piece += [self.tokenizer.convert_tokens_to_ids(part)] if part in self._special_set else \
                        (self.sentencepiece.encode(part) if part else [])
            else:
                piece = self.tokenizer(chunk, add_special_tokens=False)["input_ids"]
            ids += ([self.image_token_id] * self.num_visual_tokens if i else []) + piece
        return ids

    def pixel_values(self, images):
        background = tuple(int(x * 255) for x in self.image_processor.image_mean)
        squares = [expand2square(im.convert("RGB"), background) for im in images]
        return self.image_processor(images=squares, return_tensors="pt")["pixel_values"]

    def __call__(self, text=None, images=None, return_tensors="pt", padding=True, **kwargs):
        return prompt_batch(self, text, images, "mPLUG-Owl2")

    def save_pretrained(self, folder):
        save_processor(self, folder)


def load_processor(folder, config):
    """The checkpoint's (a folder or a hub id) tokenizer (tokenizer.model, SentencePiece) and preprocessor_config.json."""
    import sentencepiece
    from transformers import AutoTokenizer, CLIPImageProcessorPil
    from transformers.utils import cached_file
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model_file = cached_file(folder, "tokenizer.model", _raise_exceptions_for_missing_entries=False)
    spm = sentencepiece.SentencePieceProcessor(model_file=model_file) if model_file else None
    if tokenizer.pad_token is None:  # LLaMA has none; the authors' code pads with unk
        tokenizer.pad_token = tokenizer.unk_token
    image_processor = CLIPImageProcessorPil.from_pretrained(folder)  # PIL: the authors' resize, not torchvision's
    return MPLUGOwl2Processor(tokenizer, image_processor, config.num_visual_tokens, config.image_token_index, spm)


def is_mplug_owl2(name):
    """Whether a local folder or a cached hub id holds an mPLUG-Owl2 checkpoint (its config.json says so)."""
    try:
        return AutoConfig.from_pretrained(name).model_type == "mplug_owl2"
    except Exception:
        return False
