"""The authors' InternLM-XComposer2-VL code as an oracle, for tests/test_xcomposer2.py.

No installable package ships it, and it is not copied into this repo. Point IXC2_REF_DIR at a folder holding the five
files of the release (`python dev/fetch_xcomposer2_reference.py DIR` downloads them at a pinned commit); without it the
oracle tests are skipped and say so. They also need `einops` (pip install einops), which the release imports.

What transformers 5 and this machine break is mended here, from outside:
  - torchvision (only the constructor's `vis_processor` uses it; no CPU build here) gets a stand-in module;
  - the vision tower's hub download becomes a tiny CLIPVisionModel, its 24 -> 35 position resize a no-op (the
    released weights carry the resized table), and the projector's hard-coded 1024/4096 the tiny widths;
  - `config.max_length`, which transformers 5 no longer keeps on a config, is set after the config is built;
  - Partial LoRA's hard-coded alpha = r = 256 becomes alpha = 2r, so that a scaling other than 1 is checked.
The model class does not inherit GenerationMixin under transformers 5, so tests drive its greedy decoding by hand.
"""
import importlib.util
import os
import sys
import types

import torch

FILES = ["configuration_internlm_xcomposer2.py", "build_mlp.py", "modeling_internlm2.py", "modeling_internlm_xcomposer2.py",
         "tokenization_internlm_xcomposer2.py"]  # import order: each file's relative imports come first
PACKAGE = "ixc2_reference"
_mods = {}


def reference_dir():
    folder = os.environ.get("IXC2_REF_DIR")
    if not folder or not all(os.path.isfile(os.path.join(folder, f)) for f in FILES):
        return None
    return folder if importlib.util.find_spec("einops") else None


def skip_reason():
    if not os.environ.get("IXC2_REF_DIR"):
        return "IXC2_REF_DIR not set (the authors' InternLM-XComposer2 code: dev/fetch_xcomposer2_reference.py)"
    if importlib.util.find_spec("einops") is None:
        return "einops not installed (the authors' InternLM-XComposer2 code imports it)"
    return f"IXC2_REF_DIR={os.environ['IXC2_REF_DIR']} lacks one of {FILES}"


def _torchvision_stand_in():
    import transformers.modeling_utils  # noqa: F401  (transformers probes torchvision's spec: import it before the stand-in)
    tv = types.ModuleType("torchvision")
    tv.__path__ = []
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    for name in ("Compose", "Resize", "ToTensor", "Normalize"):
        setattr(transforms, name, lambda *a, **k: None)
    functional.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic")
    transforms.functional, tv.transforms = functional, transforms
    return {"torchvision": tv, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}


def modules():
    """The release's modules, imported once as the package ixc2_reference."""
    if _mods:
        return _mods
    folder = reference_dir()
    stand_ins = {} if importlib.util.find_spec("torchvision") else _torchvision_stand_in()
    saved = {k: sys.modules.get(k) for k in stand_ins}
    sys.modules.update(stand_ins)
    try:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [folder]
        sys.modules[PACKAGE] = package
        for f in FILES:
            name = f"{PACKAGE}.{f[:-3]}"
            spec = importlib.util.spec_from_file_location(name, os.path.join(folder, f))
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            _mods[f[:-3]] = module
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return _mods


def build(vision_config, hidden=64, heads=4, kv_heads=2, intermediate=96, layers=2, vocab=400, seed=0, init_std=0.05):
    """The release's InternLMXComposer2ForCausalLM at a tiny size with random weights (fp32, eval mode)."""
    from transformers import CLIPVisionModel
    m = modules()
    bm, mx = m["build_mlp"], m["modeling_internlm_xcomposer2"]

    def load_model(self):
        self.vision_tower = CLIPVisionModel(vision_config)
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def projector():
        return torch.nn.Sequential(torch.nn.Linear(vision_config.hidden_size, hidden), torch.nn.GELU(),
                                   torch.nn.Linear(hidden, hidden))

    plora_init = bm.PLoRA.__init__

    def plora_alpha_2r(self, *args, lora_r=8, lora_alpha=16, **kwargs):
        plora_init(self, *args, lora_r=lora_r, lora_alpha=2 * lora_r, **kwargs)

    bm.CLIPVisionTower.load_model, bm.CLIPVisionTower.resize_pos = load_model, lambda self: None
    bm.build_vision_projector = mx.build_vision_projector = projector
    bm.PLoRA.__init__ = plora_alpha_2r
    config = m["configuration_internlm_xcomposer2"].InternLMXcomposer2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_theta=1e6, rope_scaling={"type": "dynamic", "factor": 1.0}, bias=False, pad_token_id=2, bos_token_id=1,
        eos_token_id=2, tie_word_embeddings=False, initializer_range=init_std)
    config.max_length, config.img_size = 4096, vision_config.image_size
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = mx.InternLMXComposer2ForCausalLM(config)
    finally:
        bm.PLoRA.__init__ = plora_init
    return model.float().eval()


def native_state_dict(ref):
    """The reference's weights under the released names: transformers 5's CLIPVisionModel lost the `vision_model` level
    that the release's keys (`vit.vision_tower.vision_model.*`) carry."""
    return {k.replace("vit.vision_tower.", "vit.vision_tower.vision_model.", 1) if k.startswith("vit.") else k: v
            for k, v in ref.state_dict().items()}


def tokenizer(model_file):
    return modules()["tokenization_internlm_xcomposer2"].InternLMXComposer2Tokenizer(vocab_file=model_file)
