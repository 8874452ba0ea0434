"""What the native ports (mplug_owl2.py, xcomposer2.py) share: the LLaMA-style decoder's pieces (RMSNorm, rotate-half
RoPE in fp32, the additive causal mask, the layer stack with its cache), the causal-LM output and generation's image
handling, and the processor's batching and saving. Each port keeps what is its own: its layers, names and prompt ids."""
import dataclasses
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        h = x.float()
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope(position_ids, head_dim, theta, dtype):
    """cos, sin [B, L, head_dim] of rotate-half RoPE, computed in float32 as transformers' LLaMA does."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim)
    with torch.autocast(device_type=position_ids.device.type, enabled=False):
        freqs = position_ids[:, :, None].float() * inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def causal_mask(attention_mask, q_len, past, dtype, device):
    """Additive [B, 1, q_len, past + q_len] mask: causal over the whole sequence and closed to padded keys. finfo.min,
    not -inf, so that the rows of padded queries (left padding) stay finite."""
    kv_len = past + q_len
    allowed = torch.arange(kv_len, device=device)[None, :] <= torch.arange(past, kv_len, device=device)[:, None]
    allowed = allowed[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, -kv_len:].bool()
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


def with_cache(output_class, cache, **fields):
    """An output dataclass with the KV cache under the name this transformers version gives it (cache or
    past_key_values)."""
    names = {f.name for f in dataclasses.fields(output_class)}
    return output_class(**fields, **{"cache" if "cache" in names else "past_key_values": cache})


def cache_of(output):
    return getattr(output, "cache", getattr(output, "past_key_values", None))


def decoder_stack(model, inputs_embeds, route, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                  output_attentions=False, output_hidden_states=False):
    """model.layers then model.norm over inputs_embeds, with rotate-half RoPE and a causal mask, each layer called as
    layer(x, route, cos, sin, mask, cache, output_attentions) (route: what picks a token's branch, mPLUG-Owl2's visual
    mask or InternLM-XComposer2's image mask). Positions come from the mask, so left padding works too (with right
    padding or none: 0..L-1, as the authors')."""
    config = model.config
    B, L, _ = inputs_embeds.shape
    if use_cache and cache is None:
        cache = DynamicCache(config=config)
    past = cache.get_seq_length() if cache is not None else 0
    if position_ids is None:
        if attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -L:]
        else:
            position_ids = torch.arange(past, past + L, device=inputs_embeds.device)[None].expand(B, -1)
    mask = causal_mask(attention_mask, L, past, inputs_embeds.dtype, inputs_embeds.device)
    cos, sin = rope(position_ids, config.hidden_size // config.num_attention_heads, config.rope_theta, inputs_embeds.dtype)
    x, hidden, attentions = inputs_embeds, [], []
    for layer in model.layers:
        if output_hidden_states:
            hidden.append(x)
        x, weights = layer(x, route, cos, sin, mask, cache, output_attentions)
        attentions.append(weights)
    x = model.norm(x)
    return with_cache(BaseModelOutputWithPast, cache if use_cache else None, last_hidden_state=x,
                      hidden_states=tuple(hidden + [x]) if output_hidden_states else None,
                      attentions=tuple(attentions) if output_attentions else None)


def lm_output(head, out, labels=None, logits_to_keep=0, float_logits=False):
    """CausalLMOutputWithPast from a decoder's output: the head's logits (the last logits_to_keep positions, or all; in
    fp32 if float_logits), the next-token cross-entropy where labels are not -100, the cache passed on."""
    h = out.last_hidden_state
    logits = head(h[:, -logits_to_keep:] if logits_to_keep else h)
    logits = logits.float() if float_logits else logits
    loss = None
    if labels is not None:
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
    return with_cache(CausalLMOutputWithPast, cache_of(out), loss=loss, logits=logits,
                      hidden_states=out.hidden_states, attentions=out.attentions)


def images_once(inputs, pixel_values, cache_position):
    """Generation inputs with the images on the first step only; later steps read them from the cache."""
    inputs["pixel_values"] = pixel_values if cache_position is None or int(cache_position[0]) == 0 else None
    return inputs


def prompt_batch(processor, text, images, name):
    """A processor's batch from its prompt_ids and pixel_values: rows padded on the tokenizer's side with its pad id,
    the attention mask, and the pixels of the images in order (a list per prompt, or flat)."""
    texts = [text] if isinstance(text, str) else list(text)
    rows = [processor.prompt_ids(t) for t in texts]
    flat = [im for group in (images or []) for im in (group if isinstance(group, (list, tuple)) else [group])]
    n_tags = sum(t.count(processor.image_token) for t in texts)
    if n_tags != len(flat):
        raise ValueError(f"{name} processor: the prompts have {n_tags} {processor.image_token} and {len(flat)} images "
                         f"were given")
    width = max(map(len, rows))
    pad, left = processor.tokenizer.pad_token_id or 0, processor.tokenizer.padding_side == "left"
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[b, span], mask[b, span] = torch.tensor(r), 1
    out = {"input_ids": ids, "attention_mask": mask}
    if flat:
        out["pixel_values"] = processor.pixel_values(flat)
    return out


def save_processor(processor, folder):
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    if processor.sentencepiece is not None:  # the prompt ids come from it (a fast tokenizer may not write it back)
        with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
            f.write(processor.sentencepiece.serialized_model_proto())
