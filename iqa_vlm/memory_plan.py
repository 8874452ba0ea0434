"""Will it fit? Parameters per part and the estimated GPU memory of a training run, without loading weights.

    python train.py --dry_run true --model llava-onevision-7b --trainable encoder,projector --batch_size 4
    python train.py --dry_run true --model /ckpt/Qwen2.5-VL-7B-Instruct --trainable llm --lora 64 --grad_ckpt true

The model is built on the meta device from its config (a local folder or the Hugging Face cache), or from
one of PRESETS below (architecture numbers of the public checkpoints, so the README's recipes can be
checked here without a download). Parameters are counted exactly on that model; memory is napkin math:

  weights      frozen tensors in bf16 (2 B each); trained tensors in fp32 (4 B: AdamW on bf16 loses updates)
  gradients    4 B per trained parameter
  optimizer    AdamW: exp_avg + exp_avg_sq in fp32, 8 B per trained parameter
  activations  bf16 tensors saved for backward, per token and layer (SDPA/flash: no seq x seq matrix):
               decoder layer (SwiGLU) 2 * (6h + 2kv + 4i) B; vision layer (GELU MLP) 2 * (8h + 3i) B;
               only layers the gradient must cross: the vision tower when the encoder trains, decoder layers
               from the first one with a trained tensor (or from 0 when anything before it trains).
               --grad_ckpt keeps 2h B per token and layer plus one layer's full set for the recompute.
  logits       our op reads the LM head only at answer tokens (~16 a sample): N x V x 2 B, negligible
  overhead     1.0 GiB for the CUDA context, cuBLAS workspace and allocator slack
"""
from types import SimpleNamespace

import torch

GiB = 2 ** 30


def _qwen2_text(h, i, layers, heads, kv, vocab, tie=False):
    return dict(vocab_size=vocab, hidden_size=h, intermediate_size=i, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv, tie_word_embeddings=tie)


def _siglip_so400m():  # SigLIP so400m/14 at 384 px, as LLaVA-OneVision uses it (26 of its 27 layers)
    from transformers import SiglipVisionConfig
    return SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
                              image_size=384, patch_size=14)


def _preset(name):
    import transformers as T
    if name == "llava-onevision-0.5b":  # Q-SiT-mini's base: SigLIP + Qwen2-0.5B
        return T.LlavaOnevisionConfig(vision_config=_siglip_so400m(),
                                      text_config=T.Qwen2Config(**_qwen2_text(896, 4864, 24, 14, 2, 151936, tie=True)))
    if name == "llava-onevision-7b":  # Q-SiT's base: SigLIP + Qwen2-7B
        return T.LlavaOnevisionConfig(vision_config=_siglip_so400m(),
                                      text_config=T.Qwen2Config(**_qwen2_text(3584, 18944, 28, 28, 4, 152064)))
    if name == "qwen2.5-vl-7b":
        return T.Qwen2_5_VLConfig(vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                                     out_hidden_size=3584, patch_size=14, spatial_merge_size=2),
                                  text_config=_qwen2_text(3584, 18944, 28, 28, 4, 152064))
    if name == "qwen3-vl-8b":  # Qwen3-VL-8B-Instruct: its ViT (27 layers, 16 px patches, DeepStack at 8/16/24) + Qwen3-8B
        return T.Qwen3VLConfig(vision_config=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16,
                                                  out_hidden_size=4096, patch_size=16, spatial_merge_size=2,
                                                  deepstack_visual_indexes=[8, 16, 24]),
                               text_config=dict(_qwen2_text(4096, 12288, 36, 32, 8, 151936), head_dim=128))
    if name == "mplug-owl2-7b":  # the native class (mplug_owl2.py) at the released sizes: its config's defaults
        from iqa_vlm import mplug_owl2
        return mplug_owl2.MPLUGOwl2Config()
    if name == "internlm-xcomposer2-vl-7b":  # the native class (xcomposer2.py) at the released sizes: its config's defaults
        from iqa_vlm import xcomposer2
        return xcomposer2.XComposer2Config()
    return None


PRESETS = ["llava-onevision-0.5b", "llava-onevision-7b", "qwen2.5-vl-7b", "qwen3-vl-8b", "mplug-owl2-7b", "internlm-xcomposer2-vl-7b"]


def meta_model(name, trust_remote_code=False):
    """The model's architecture on the meta device (no memory, no weights): a preset, 'tiny[:FAMILY]', or a
    config from a local folder / the Hugging Face cache."""
    import transformers as T
    if name == "tiny" or name.startswith("tiny:"):
        from iqa_vlm.model import load_model
        return load_model(name)[0]
    config = _preset(name)
    if config is None:
        try:
            config = T.AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        except OSError as e:
            raise SystemExit(f"--dry_run: no config for {name!r} (not a preset {PRESETS}, a local folder, or in the "
                             f"Hugging Face cache): {e}") from None
    with torch.device("meta"):
        try:
            return T.AutoModelForImageTextToText.from_config(config, trust_remote_code=trust_remote_code)
        except ValueError:
            return T.AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def _dims(cfg):
    """(hidden, kv width, intermediate, layers) of a text or vision config."""
    h = getattr(cfg, "hidden_size", None) or getattr(cfg, "embed_dim")
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "num_heads", 1)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    i = getattr(cfg, "intermediate_size", None) or int(h * getattr(cfg, "mlp_ratio", 4))
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "depth")
    return h, kv * (getattr(cfg, "head_dim", None) or h // heads), i, layers


def estimate(model, chosen, batch_size, seq_len, grad_ckpt=False, image_tokens=None):
    """Bytes per item of a training step on one GPU -> dict (see the module docstring for the formulas)."""
    trained = {id(p) for params in chosen.values() for p in params.values()}
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if id(p) in trained)
    out = {"params": n_all, "trained_params": n_train, "weights": 2 * (n_all - n_train) + 4 * n_train,
           "gradients": 4 * n_train, "optimizer": 8 * n_train}
    # activations
    text_cfg = getattr(model.config, "text_config", model.config)
    vision_cfg = getattr(model.config, "vision_config", None)
    if vision_cfg is None and hasattr(model.config, "visual_config"):  # mPLUG-Owl2: a dict per visual part
        vision_cfg = SimpleNamespace(**model.config.visual_config["visual_model"])
    h, kv, i, n_layers = _dims(text_cfg)
    labels = set(chosen)
    first = n_layers
    if labels & {"encoder", "projector", "head", "llm", "lora(llm)"}:
        first = 0
    for lab in labels:
        if lab.startswith(("llm:", "lora(llm:")):
            first = min(first, int(lab.split(":")[1].split("-")[0]))
    tokens = batch_size * seq_len
    per_layer = 2 * (6 * h + 2 * kv + 4 * i) * tokens
    stored = n_layers - first
    act = (stored * 2 * h * tokens + per_layer) if grad_ckpt and stored else stored * per_layer
    if vision_cfg is not None and "encoder" in labels:
        vh, _, vi, vl = _dims(vision_cfg)
        v_tokens = batch_size * (image_tokens or (vision_cfg.image_size // vision_cfg.patch_size) ** 2
                                 if hasattr(vision_cfg, "image_size") else seq_len)
        v_layer = 2 * (8 * vh + 3 * vi) * v_tokens
        act += (vl * 2 * vh * v_tokens + v_layer) if grad_ckpt else vl * v_layer
    out["activations"] = act
    out["overhead"] = 1 * GiB
    out["total"] = sum(out[k] for k in ("weights", "gradients", "optimizer", "activations", "overhead"))
    out["decoder_layers_storing_activations"] = stored
    return out


def dry_run_report(name, trainable, batch_size=1, seq_len=1024, grad_ckpt=False, lora=0, gpu_mem=48.0,
                   trust_remote_code=False, lora_targets=""):
    from iqa_vlm.model import set_trainable, trainable_summary
    model = meta_model(name, trust_remote_code)
    chosen = set_trainable(model, trainable, verbose=False, lora=lora, lora_targets=lora_targets)
    print(f"{name}: --trainable {trainable}{f' --lora {lora}' if lora else ''}, batch {batch_size} x {seq_len} tokens, "
          f"grad_ckpt {grad_ckpt}")
    print(trainable_summary(model))
    est = estimate(model, chosen, batch_size, seq_len, grad_ckpt)
    print(f"{'estimated GPU memory':<24}{'GiB':>8}")
    for k in ("weights", "gradients", "optimizer", "activations", "overhead", "total"):
        print(f"{k:<24}{est[k] / GiB:>8.1f}")
    fits = est["total"] <= gpu_mem * GiB
    print(f"fits a {gpu_mem:g} GiB GPU: {'yes' if fits else 'NO'} ({est['decoder_layers_storing_activations']} decoder layers "
          f"store activations)")
    return {**est, "fits": fits}


def grpo_dry_run_report(name, trainable, images, generations, prompt_tokens, completion_tokens, completion_chunk=0,
                        grad_ckpt=True, lora=0, lora_targets="", beta=0.04, gpu_mem=48.0):
    """train_grpo.py --dry_run: train.py's estimate for one loss forward (images x generations sequences, or
    completion_chunk of them, of prompt + completion tokens), plus what GRPO adds:
      reference   a frozen copy of the model in bf16 (beta > 0 without --lora); under --lora the model with its
                  adapters off, and fp32 copies of the starting values of the parts trained fully (4 B each)
      logits      the LM head at the completion tokens of one forward, bf16, kept for backward (the fused op's in-place
                  gradient) plus the reference's transient copy: 2 x rows x completion x V x 2 B
      rollout     the KV cache of generating every sequence at once: rows x tokens x layers x 2 x kv width x 2 B
    The rollout and the loss's forward/backward do not overlap: the larger of the two counts."""
    from iqa_vlm.model import set_trainable, trainable_summary
    model = meta_model(name)
    chosen = set_trainable(model, trainable, verbose=False, lora=lora, lora_targets=lora_targets)
    rows = images * generations
    per_forward = min(completion_chunk or rows, rows)
    seq = prompt_tokens + completion_tokens
    print(f"{name}: --trainable {trainable}{f' --lora {lora}' if lora else ''}, {images} images x {generations} answers, "
          f"{per_forward} sequences of {prompt_tokens} + {completion_tokens} tokens per loss forward, grad_ckpt {grad_ckpt}")
    print(trainable_summary(model))
    est = estimate(model, chosen, per_forward, seq, grad_ckpt, image_tokens=prompt_tokens)
    text_cfg = getattr(model.config, "text_config", model.config)
    h, kv, _, layers = _dims(text_cfg)
    n_all = sum(p.numel() for p in model.parameters())
    full = sum(p.numel() for label, params in chosen.items() if not label.startswith("lora(") for p in params.values())
    est["reference"] = 0 if beta == 0 else 4 * full if lora else 2 * n_all
    est["logits"] = 2 * per_forward * completion_tokens * text_cfg.vocab_size * 2
    est["rollout_kv_cache"] = rows * seq * layers * 2 * kv * 2
    step = max(est["activations"] + est["logits"], est["rollout_kv_cache"])
    est["total"] = est["weights"] + est["gradients"] + est["optimizer"] + est["reference"] + step + est["overhead"]
    print(f"{'estimated GPU memory':<24}{'GiB':>8}")
    for k in ("weights", "gradients", "optimizer", "reference", "activations", "logits", "rollout_kv_cache", "overhead", "total"):
        print(f"{k:<24}{est[k] / GiB:>8.1f}")
    fits = est["total"] <= gpu_mem * GiB
    print(f"fits a {gpu_mem:g} GiB GPU: {'yes' if fits else 'NO'} (activations + logits and the rollout's KV cache do not "
          f"overlap: the larger counts)")
    return {**est, "fits": fits}
