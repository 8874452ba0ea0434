"""The authors' mPLUG-Owl2 code as an oracle: Q-Align's modeling files as pyiqa 0.1.16 ships them (pyiqa/archs/q_align,
patched there for transformers 5), imported straight from the installed wheel's folder without running pyiqa's own
__init__ (pip install --no-deps pyiqa==0.1.16; .ci/run does). What transformers 5 still breaks is mended here, from
outside, and nothing of pyiqa is copied into this repo:
  - `invert_attention_mask` (gone from PreTrainedModel in transformers 5; the abstractor calls it) is given back to the
    abstractor class with the transformers-4 meaning: (1 - mask[:, None, None, :]) * finfo(dtype).min;
  - the two hub downloads in the model's constructor (tokenizer, image processor) become local stand-ins;
  - the config's hard-coded flash_attention_2 becomes eager; rope_parameters / mlp_bias / head_dim are filled in;
  - `icecream` (imported, not needed) gets an empty module;
  - importing the files rewrites transformers' LLaMA classes for the whole process: undone right after, and the
    modality-adaptive decoder layer is swapped in only while the reference model is built.
"""
import contextlib
import importlib
import importlib.util
import os
import sys
import types

import torch

IMAGE_TOKEN_INDEX = -200
_mods = {}


def reference_dir():
    """pyiqa's archs/q_align folder, or None when pyiqa is not installed."""
    spec = importlib.util.find_spec("pyiqa")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(list(spec.submodule_search_locations)[0], "archs", "q_align")
    return folder if os.path.isfile(os.path.join(folder, "modeling_mplug_owl2.py")) else None


class _StubTokenizer:
    """Stand-in for the hub tokenizer the constructor loads (its ids are never used: tests pass input_ids)."""
    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return cls()

    def __call__(self, text, **kwargs):
        rows = [[1, 3] for _ in text] if isinstance(text, (list, tuple)) else [1, 3]
        return {"input_ids": rows}


def _image_processor_stub(size):
    class Stub:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            from transformers import CLIPImageProcessorPil
            return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return Stub


def _invert_attention_mask(self, mask):
    ext = mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]
    ext = ext.to(dtype=self.dtype)
    return (1.0 - ext) * torch.finfo(self.dtype).min


def modules():
    """{name: module} of the reference files, imported once."""
    if _mods:
        return _mods
    folder = reference_dir()
    if "icecream" not in sys.modules:
        sys.modules["icecream"] = types.SimpleNamespace(ic=lambda *a, **k: None)
    import transformers.models.llama.configuration_llama as hf_cfg
    import transformers.models.llama.modeling_llama as hf
    saved = [(hf_cfg, "LlamaConfig"), (hf, "LlamaAttention"), (hf, "LlamaDecoderLayer"), (hf.LlamaModel, "forward"),
             (hf.LlamaForCausalLM, "forward"), (hf, "LlamaFlashAttention2"), (hf, "LlamaSdpaAttention")]
    saved = [(obj, attr, getattr(obj, attr, None)) for obj, attr in saved]
    spec = importlib.util.spec_from_file_location("owl2_reference", os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    package = importlib.util.module_from_spec(spec)
    sys.modules["owl2_reference"] = package
    spec.loader.exec_module(package)
    path = list(sys.path)
    try:
        for name in ["configuration_mplug_owl2", "visual_encoder", "modeling_llama2", "modeling_mplug_owl2"]:
            _mods[name] = importlib.import_module(f"owl2_reference.{name}")
    finally:
        sys.path[:] = path  # the files put their own folder first
    for obj, attr, value in saved:  # undo the process-wide rewrite of transformers' LLaMA
        if value is None:
            if hasattr(obj, attr):
                delattr(obj, attr)
        else:
            setattr(obj, attr, value)
    _mods["modeling_mplug_owl2"].MPLUGOwl2LlamaModel.forward = _mods["modeling_llama2"].model_forward
    _mods["visual_encoder"].MplugOwlVisualAbstractorModel.invert_attention_mask = _invert_attention_mask
    _mods["modeling_mplug_owl2"].LlamaTokenizer = _StubTokenizer
    return _mods


@contextlib.contextmanager
def _modality_adaptive_layers():
    import transformers.models.llama.modeling_llama as hf
    old, hf.LlamaDecoderLayer = hf.LlamaDecoderLayer, modules()["modeling_llama2"].LlamaDecoderLayer
    try:
        yield
    finally:
        hf.LlamaDecoderLayer = old


def config_dict(vocab_size=300):
    """A tiny configuration in the released config.json's form (LLaMA fields, visual_config with two parts)."""
    return dict(model_type="mplug_owl2", architectures=["MPLUGOwl2LlamaForCausalLM"],
                auto_map={"AutoConfig": "configuration_mplug_owl2.MPLUGOwl2Config",
                          "AutoModelForCausalLM": "modeling_mplug_owl2.MPLUGOwl2LlamaForCausalLM"},
                vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
                hidden_act="silu", pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                visual_config={"visual_model": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                    num_attention_heads=2, image_size=32, patch_size=8, layer_norm_eps=1e-6),
                               "visual_abstractor": dict(num_learnable_queries=4, hidden_size=32, num_hidden_layers=2,
                                                         num_attention_heads=2, intermediate_size=48, layer_norm_eps=1e-6,
                                                         encoder_hidden_size=32, grid_size=4)})


@torch.no_grad()
def build(seed=0, vocab_size=300):
    """The reference MPLUGOwl2LlamaForCausalLM at tiny size, fp32, eval mode, every tensor drawn from `seed` (norm
    weights 1 + 0.1 N so that the two multiway branches differ)."""
    m = modules()
    c = config_dict(vocab_size)
    c = {k: v for k, v in c.items() if k not in ("model_type", "architectures", "auto_map")}
    config = m["configuration_mplug_owl2"].MPLUGOwl2Config(**c)
    config._attn_implementation = "eager"
    config.rope_parameters = {"rope_type": "default", "rope_theta": float(config.rope_theta)}
    config.mlp_bias, config.head_dim = False, config.hidden_size // config.num_attention_heads
    m["modeling_mplug_owl2"].CLIPImageProcessor = _image_processor_stub(32)
    with _modality_adaptive_layers():
        model = m["modeling_mplug_owl2"].MPLUGOwl2LlamaForCausalLM(config).float().eval()
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim == 1 and name.endswith("weight"):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        elif name.endswith("bias"):
            p.copy_(0.02 * torch.randn(p.shape, generator=g))
        elif p.ndim >= 2 and not name.endswith(("cls_token", "position_embedding", "query_embeds", "vit_eos")):
            p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
        else:
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return model


def tokenizer_image_token(prompt, tokenizer):
    return modules()["modeling_mplug_owl2"].tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX)


def expand2square(image, background):
    return modules()["modeling_mplug_owl2"].expand2square(image, background)
