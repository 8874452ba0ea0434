"""Load a vision-language model, name its parts, choose which parts train.

    from iqa_vlm.model import load_model, set_trainable
    model, processor = load_model("tiny")                   # built-in, no download
    model, processor = load_model("llava-hf/llava-1.5-7b-hf", dtype=torch.bfloat16)
    set_trainable(model, "encoder,projector")               # everything else frozen

Parts (see DESIGN.md): encoder (vision tower), projector (vision -> LM embedding space), llm (decoder
layers + final norm; `llm:A-B` = layers A..B only), head (lm_head and the token embeddings).
"""
import json
import os
import re

import torch

from iqa_vlm.common import EVAL_DIR, read_json
from iqa_vlm.data import IGNORE
from iqa_vlm.tiny_models import build_tiny

# ----------------------------------------------------------------------------- parts per family
# Attribute paths (transformers 5.x) of each part, per model family. `llm_layers` is the ModuleList
# that `llm:A-B` indexes into; `llm` is everything of the language model except the embeddings,
# which belong to `head` (they are tied to lm_head in many models, so they must move together).
# Optional projector pieces may be absent (image_newline: LLaVA-NeXT/OneVision only; deepstack: Qwen3-VL).
# `exclude` removes sub-modules from a part: Qwen's merger sits inside the vision module but is the
# projector, not the encoder (Qwen3-VL's deepstack mergers too).
# For analyses: `image_features` gives the projected visual tokens entering the LM, `final_norm` and
# `lm_head` the LM's path from a hidden state to logits.
_LM = dict(llm=["model.language_model"], llm_layers="model.language_model.layers",
           head=["lm_head", "model.language_model.embed_tokens"],
           image_features="model.get_image_features", final_norm="model.language_model.norm", lm_head="lm_head")
FAMILIES = {
    # LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision (Q-SiT), InternVL, Gemma3, PaliGemma: one layout
    "llava": dict(model_types=("llava", "llava_next", "llava_onevision", "llava_next_video", "internvl", "gemma3",
                               "paligemma", "mistral3", "aya_vision"),
                  encoder=["model.vision_tower"], projector=["model.multi_modal_projector", "model.image_newline"], **_LM),
    "qwen_vl": dict(model_types=("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"),
                    encoder=["model.visual"], projector=["model.visual.merger", "model.visual.deepstack_merger_list"],
                    exclude=["model.visual.merger", "model.visual.deepstack_merger_list"], **_LM),
    "idefics3": dict(model_types=("idefics3", "smolvlm"), encoder=["model.vision_model"], projector=["model.connector"],
                     llm=["model.text_model"], llm_layers="model.text_model.layers",
                     head=["lm_head", "model.text_model.embed_tokens"],
                     image_features="model.get_image_features", final_norm="model.text_model.norm", lm_head="lm_head"),
    # mPLUG-Owl2 (native, mplug_owl2.py): the LLaMA decoder sits directly in `model`, beside the vision parts; `llm`
    # holds both multiway branches of each decoder layer
    "mplug_owl2": dict(model_types=("mplug_owl2",), encoder=["model.vision_model"], projector=["model.visual_abstractor"],
                       llm=["model.layers", "model.norm"], llm_layers="model.layers", head=["lm_head", "model.embed_tokens"],
                       image_features="model.get_image_features", final_norm="model.norm", lm_head="lm_head"),
    # InternLM-XComposer2 (native, xcomposer2.py): released names; the vision parts sit beside the decoder `model`, so the
    # whole VLM up to the final norm is the method `backbone`, not `model`. Partial LoRA adapters belong to llm.
    "xcomposer2": dict(model_types=("internlmxcomposer2",), encoder=["vit"], projector=["vision_proj"],
                       llm=["model.layers", "model.norm"], llm_layers="model.layers", head=["output", "model.tok_embeddings"],
                       image_features="get_image_features", final_norm="model.norm", lm_head="output", backbone="backbone"),
}
PART_NAMES = ("encoder", "projector", "llm", "head")


def family_of(model):
    model_type = getattr(model.config, "model_type", None)
    for name, fam in FAMILIES.items():
        if model_type in fam["model_types"]:
            return name
    top = [n for n, _ in model.named_children()] + [f"model.{n}" for n, _ in getattr(model, "model", torch.nn.Module()).named_children()]
    known = sorted(t for fam in FAMILIES.values() for t in fam["model_types"])
    raise ValueError(f"unknown model family: config.model_type={model_type!r}. Known model types: {known}. "
                     f"Top-level modules found: {top}. Add an entry to FAMILIES in model.py.")


def backbone(model):
    """The callable that runs the whole VLM on a processor's output up to the final norm (last_hidden_state): `model.model`
    for most families."""
    return get_module(model, FAMILIES[family_of(model)].get("backbone", "model"))


def get_module(model, path):
    mod = model
    for attr in path.split("."):
        if not hasattr(mod, attr):
            raise AttributeError(f"{type(model).__name__} has no module {path!r} (missing {attr!r})")
        mod = getattr(mod, attr)
    return mod


def has_module(model, path):
    try:
        get_module(model, path)
        return True
    except AttributeError:
        return False


def parse_trainable(spec):
    """'encoder,llm:0-3' -> [('encoder', None), ('llm', (0, 3))]. Raises on unknown parts."""
    parts = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        m = re.fullmatch(r"(\w+)(?::(\d+)-(\d+))?", item)
        if not m or m.group(1) not in PART_NAMES:
            raise ValueError(f"--trainable: unknown part {item!r}; expected a comma list of "
                             f"{', '.join(PART_NAMES)} or llm:A-B (e.g. 'encoder,projector', 'llm:20-31')")
        name, a, b = m.group(1), m.group(2), m.group(3)
        if a is not None and name != "llm":
            raise ValueError(f"--trainable: a layer range is only allowed on llm, got {item!r}")
        rng = (int(a), int(b)) if a is not None else None
        if rng and rng[0] > rng[1]:
            raise ValueError(f"--trainable: empty layer range in {item!r} (A must be <= B)")
        for other, other_rng in parts:  # a tensor named twice would sit in two optimizer groups
            if other == name and (rng is None or other_rng is None or not (rng[1] < other_rng[0] or other_rng[1] < rng[0])):
                raise ValueError(f"--trainable: {item!r} overlaps {other + (f':{other_rng[0]}-{other_rng[1]}' if other_rng else '')!r}; "
                                 f"name each part once (llm covers every llm:A-B)")
        parts.append((name, rng))
    if not parts:
        raise ValueError("--trainable is empty; name at least one part")
    return parts


def part_params(model):
    """{part: {param_name: param}} for the four parts; the llm part excludes the head's tensors."""
    fam = FAMILIES[family_of(model)]
    name_of = {id(p): n for n, p in model.named_parameters()}
    out = {}
    excluded = {id(p) for path in fam.get("exclude", []) if has_module(model, path) for p in get_module(model, path).parameters()}
    for part in PART_NAMES:
        out[part] = {}
        for path in fam[part]:
            if part == "projector" and not has_module(model, path):
                continue
            mod = get_module(model, path)  # a module, or a bare Parameter (LLaVA-NeXT's image_newline)
            for p in [mod] if isinstance(mod, torch.nn.Parameter) else mod.parameters():
                if part == "projector" or id(p) not in excluded:
                    out[part][name_of[id(p)]] = p
    head_ids = {id(p) for p in out["head"].values()}
    out["llm"] = {n: p for n, p in out["llm"].items() if id(p) not in head_ids}
    return out


def layer_params(model, a, b):
    fam = FAMILIES[family_of(model)]
    layers = get_module(model, fam["llm_layers"])
    if b >= len(layers):
        raise ValueError(f"--trainable llm:{a}-{b}: the language model has {len(layers)} layers (0..{len(layers) - 1})")
    name_of = {id(p): n for n, p in model.named_parameters()}
    return {name_of[id(p)]: p for i in range(a, b + 1) for p in layers[i].parameters()}


def set_trainable(model, spec, verbose=True, lora=0, lora_alpha=0, lora_dropout=0.0, lora_targets=""):
    """Freeze everything, then unfreeze the named parts. Returns {part_label: {name: param}}.
    With lora=R > 0 the llm part (or llm:A-B) is not unfrozen: its linear layers get rank-R LoRA adapters
    instead (add_lora), returned under the label 'lora(llm)' / 'lora(llm:A-B)'."""
    chosen = {}
    all_parts = part_params(model)
    lora_layers = []
    for name, rng in parse_trainable(spec):
        label = name if rng is None else f"llm:{rng[0]}-{rng[1]}"
        if lora and name == "llm":
            lora_layers.append((label, rng))
            continue
        chosen[label] = layer_params(model, *rng) if rng else all_parts[name]
    for label, rng in lora_layers:  # peft marks only adapters trainable, so this goes before the unfreezing
        chosen[f"lora({label})"] = add_lora(model, lora, lora_alpha or 2 * lora, lora_dropout, rng, lora_targets)
    for p in model.parameters():
        p.requires_grad_(False)
    for params in chosen.values():
        for p in params.values():
            p.requires_grad_(True)
    if verbose:
        print(trainable_summary(model, part_params(model) if lora_layers else all_parts))
    return chosen


# ----------------------------------------------------------------------------- LoRA (peft, optional)
def add_lora(model, rank, alpha, dropout=0.0, layer_range=None, targets_regex=""):
    """Rank-`rank` LoRA adapters (peft) on every nn.Linear of the LM's decoder layers (A..B if given), or only on those
    whose name within the layer matches targets_regex (re.search; e.g. DeQA-Score's "q_proj|v_proj.multiway.1"),
    injected in place so the model keeps its class and attribute paths. Returns {name: adapter param},
    all trainable; base weights stay frozen. peft is imported only here (pip install peft)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise SystemExit("--lora needs peft: pip install peft") from None
    layers_path = FAMILIES[family_of(model)]["llm_layers"]
    layers = get_module(model, layers_path)
    a, b = layer_range or (0, len(layers) - 1)
    if b >= len(layers):
        raise ValueError(f"--lora on llm:{a}-{b}: the language model has {len(layers)} layers (0..{len(layers) - 1})")
    targets = [f"{layers_path}.{i}.{n}" for i in range(a, b + 1) for n, m in layers[i].named_modules()
               if isinstance(m, torch.nn.Linear) and not n.endswith(PLORA_ADAPTERS)
               and (not targets_regex or re.search(targets_regex, n))]
    if not targets:
        raise ValueError(f"--lora_targets {targets_regex!r} matches no linear layer of the language model (names like "
                         f"{[n for n, m in layers[a].named_modules() if isinstance(m, torch.nn.Linear)][:4]})")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules="|".join(re.escape(t) for t in targets))  # a regex: exactly these modules
    inject_adapter_in_model(config, model)
    return {n: p for n, p in model.named_parameters() if LORA_PARAM.search(n)}


PLORA_ADAPTERS = ("Plora_A", "Plora_B")  # InternLM-XComposer2's own adapters: LoRA goes on their base layer only
LORA_PARAM = re.compile(r"\.lora_[AB]\.")  # peft's adapter tensors (`...wqkv.lora_A.default.weight`), not Plora_A


def merge_lora(model):
    """Fold every LoRA adapter into its base weight and put the plain layer back (for export)."""
    from peft.tuners.lora import LoraLayer
    for name, mod in list(model.named_modules()):
        if isinstance(mod, LoraLayer):
            mod.merge()
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, mod.get_base_layer())
    return model


def trainable_summary(model, all_parts=None):
    all_parts = all_parts or part_params(model)
    lines = [f"{'part':<10}{'tensors':>9}{'params':>14}{'trainable':>14}"]
    for part, params in all_parts.items():
        n = sum(p.numel() for p in params.values())
        t = sum(p.numel() for p in params.values() if p.requires_grad)
        lines.append(f"{part:<10}{len(params):>9}{n:>14,}{t:>14,}")
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines.append(f"{'total':<10}{sum(1 for _ in model.parameters()):>9}{total:>14,}{train:>14,}  ({100 * train / total:.1f}% trainable)")
    return "\n".join(lines)


def enable_checkpointing(model):
    """Gradient (activation) checkpointing of every layer, non-reentrant: the reentrant kind gives no gradient
    when a checkpointed block's inputs need none (a frozen encoder feeding a trained LM)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class SupervisedLogits(torch.nn.Module):
    """The VLM, returning logits only where a label is (the LM head on a few rows, not the whole sequence).

    One module so that DDP sees a single forward (it syncs the gradients of what that forward used).
    Every processor output passes through (pixel_values, image_grid_thw, image_sizes, pixel_attention_mask,
    token_type_ids, ...), so each family gets what it expects."""

    def __init__(self, vlm):
        super().__init__()
        self.vlm = vlm

    def forward(self, labels, **inputs):
        hidden = backbone(self.vlm)(**inputs).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE  # position t predicts token t+1
        return self.vlm.lm_head(hidden[:, :-1][keep]), targets[keep]


# ----------------------------------------------------------------------------- pieces for analyses
def last_token_logits(model, enc, last, exact_ids=None):
    """Next-token logits at each row's `last` position (the LM head on those rows only). exact_ids: columns recomputed
    in fp32 from the model's own hidden state when it runs in lower precision (a closed set read from bf16 logits would
    carry their 3 significant digits into the score); the result is then fp32."""
    hidden = backbone(model)(**enc).last_hidden_state
    h = hidden[torch.arange(hidden.shape[0]), last.to(hidden.device)]
    logits = model.lm_head(h)
    if exact_ids is not None and h.dtype != torch.float32:
        ids = torch.as_tensor(exact_ids, device=h.device)
        head = model.lm_head
        bias = head.bias[ids].float() if getattr(head, "bias", None) is not None else None
        logits = logits.float()
        logits[:, ids] = torch.nn.functional.linear(h.float(), head.weight[ids].float(), bias)
    return logits


def to_device(enc, model, device):
    """A processor's output on `device`, floating tensors (pixel values) in the model's dtype."""
    return {k: v.to(device, model.dtype) if v.is_floating_point() else v.to(device) for k, v in enc.items()}


def eval_device():
    """(device, dtype) for evaluation: bf16 on a GPU, fp32 on the CPU."""
    on_gpu = torch.cuda.is_available()
    return ("cuda", torch.bfloat16) if on_gpu else ("cpu", torch.float32)


def eval_out(out, ckpt, model):
    """Where an evaluation writes: `out`, else the checkpoint folder's eval/, else out/untuned_MODEL."""
    return out or (os.path.join(ckpt, EVAL_DIR) if ckpt else os.path.join("out", "untuned_" + os.path.basename(model.rstrip("/"))))


def load_evaluated(ckpt=None, model=None, device="cpu", dtype=torch.float32, allow_unfinished=False):
    """What an evaluation runs on: a train.py output folder (`ckpt`) or an untuned model (`model`: tiny, a hub id or a
    path). -> (model in eval mode, processor, the run's config ({} untuned), a name for tables). A run that did not
    finish (killed, diverged, or a periodic checkpoint) is refused unless allow_unfinished."""
    if ckpt:
        check_finished(read_run_config(ckpt), ckpt, allow_unfinished)
        vlm, processor, cfg = load_checkpoint(ckpt, dtype=dtype, device=device)
        name = f"{cfg['model']} [{cfg['trainable']}]"
    elif model:
        (vlm, processor), cfg, name = load_model(model, dtype=dtype, device=device), {}, f"{model} untuned"
    else:
        raise SystemExit("give --ckpt DIR (a train.py output folder) or --model NAME (untuned)")
    return vlm.eval(), processor, cfg, name


def image_inputs(processor, images):
    """The pixel inputs of `images` (PIL) exactly as the processor makes them for a prompt, so that the visual tokens
    compared are the ones the model trains and evaluates on: mPLUG-Owl2's processor pads to a square with the mean
    colour first (its pixel_values), the others hand the images to their image processor."""
    if hasattr(processor, "pixel_values"):
        return {"pixel_values": processor.pixel_values(images)}
    return processor.image_processor(images=images, return_tensors="pt")


def visual_tokens(model, image_inputs):
    """The projected visual tokens that enter the LM, one (tokens, hidden) tensor per image.

    image_inputs: the image processor's output (pixel_values; image_sizes for families that need it).
    transformers 5.x returns them as `pooler_output`, a list with one tensor per image."""
    fam = family_of(model)
    if "image_features" not in FAMILIES[fam]:
        raise ValueError(f"visual_tokens: no image_features path for family {fam!r} in model.FAMILIES")
    get_features = get_module(model, FAMILIES[fam]["image_features"])
    return list(get_features(**image_inputs, return_dict=True).pooler_output)


def lm_readout(model):
    """(final norm, lm_head): what the model applies to a last hidden state to get its logits."""
    fam = FAMILIES[family_of(model)]
    return get_module(model, fam["final_norm"]), get_module(model, fam["lm_head"])


# ----------------------------------------------------------------------------- loading
def load_model(name="tiny", dtype=torch.float32, device="cpu", trust_remote_code=False):
    """Returns (model, processor). `name`: 'tiny' (the demo's model), 'tiny:FAMILY' (a tiny random member of
    another family; tiny_models.py), a Hugging Face id or a local path. mPLUG-Owl2 checkpoints (Q-Instruct, Q-Align,
    OneAlign, DeQA-Score) load through the native class of mplug_owl2.py, with no remote code."""
    if name == "tiny" or name.startswith("tiny:"):
        model, processor = build_tiny(name.split(":", 1)[1] if ":" in name else "llava")
    else:
        try:
            model, processor = load_released(name, dtype, trust_remote_code)
        except Exception as e:  # a broken config.json or truncated weights (SafetensorError names no file): say which folder
            if not os.path.isdir(name):
                raise
            raise SystemExit(f"--model {name}: cannot load it ({type(e).__name__}: {e})") from None
    family_of(model)  # fail early, with the list of modules found, on an unknown family
    return model.to(device=device, dtype=dtype), processor


def load_released(name, dtype, trust_remote_code):
    """A published checkpoint (hub id or folder) with its processor, each through the class its authors' code uses."""
    from iqa_vlm import mplug_owl2, xcomposer2  # here, not at the top: transformers' model machinery (~6 s), which --help never needs
    if mplug_owl2.is_mplug_owl2(name):
        model = mplug_owl2.MPLUGOwl2LlamaForCausalLM.from_pretrained(name, dtype=dtype)
        processor = mplug_owl2.load_processor(name, model.config)
    elif xcomposer2.is_xcomposer2(name):
        model = xcomposer2.XComposer2ForCausalLM.from_pretrained(name, dtype=dtype)
        processor = xcomposer2.load_processor(name, model.config)
        model.generation_config.eos_token_id = xcomposer2.stop_ids(processor.tokenizer)
        model.generation_config.use_cache = True  # the release's config.json says false, which would recompute every step
    else:
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
        try:
            model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype, trust_remote_code=trust_remote_code)
        except ValueError:  # remote-code VLMs register themselves as causal LMs
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, trust_remote_code=trust_remote_code)
    return model, processor


def current_checkpoint(ckpt):
    """A train.py run folder's current checkpoint folder, resolved once (its files are links through OUT/current, which
    a running train.py may switch between two reads), or the folder itself (runs written before)."""
    link = os.path.join(ckpt, "current")
    return os.path.realpath(link) if os.path.islink(link) else ckpt


def check_finished(cfg, ckpt, allow_unfinished=False):
    """A train.py run whose config.json says finished: false is refused (a clear error) unless allow_unfinished."""
    if cfg.get("finished") is False and not allow_unfinished:
        raise SystemExit(f"--ckpt {ckpt}: an unfinished run (step {cfg.get('steps_done')} of its schedule; killed, diverged "
                         f"or a periodic checkpoint). Evaluate it anyway with --allow_unfinished true")


def read_run_config(ckpt, who=""):
    """config.json of a train.py output folder, checked before any model is loaded. Errors name the command (`who`),
    the folder or file and the field."""
    say = f"{who}: " if who else ""
    if not os.path.isdir(ckpt):
        raise SystemExit(f"{say}--ckpt {ckpt}: no such folder (expected a train.py output folder)")
    path = os.path.join(current_checkpoint(ckpt), "config.json")
    for name in ("config.json", "trainable.safetensors"):
        if not os.path.isfile(os.path.join(ckpt, name)):
            raise SystemExit(f"{say}--ckpt {ckpt}: {name} not found (expected a train.py output folder)")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{say}{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    for field in ("model", "trainable"):
        if not isinstance(cfg, dict) or not cfg.get(field):
            raise SystemExit(f"{say}{path}: field {field!r} missing or empty")
    return cfg


def load_checkpoint(ckpt_dir, dtype=torch.float32, device="cpu"):
    """A train.py output folder -> (model with the trained tensors loaded, processor, its config)."""
    folder = current_checkpoint(ckpt_dir)  # one checkpoint's config and weights, even while a run saves the next
    cfg_path = os.path.join(folder, "config.json")
    weights = os.path.join(folder, "trainable.safetensors")
    for path in (cfg_path, weights):
        if not os.path.exists(path):
            raise FileNotFoundError(f"--ckpt {ckpt_dir}: {os.path.basename(path)} not found (expected a train.py output folder)")
    cfg = read_json(cfg_path)
    model, processor = load_model(cfg["model"], dtype=dtype, device=device)
    if cfg.get("lora"):  # the adapters must exist before their trained values can be loaded
        set_trainable(model, cfg["trainable"], verbose=False, lora=cfg["lora"], lora_alpha=cfg.get("lora_alpha", 0))
        model.requires_grad_(False)
    load_trained_tensors(model, weights, cfg["model"])
    return model, processor, cfg


def load_trained_tensors(model, weights, model_name):
    """Copy the tensors of a train.py trainable.safetensors into `model` (each name must exist there with the same
    shape). -> the names loaded. Used by load_checkpoint and by train.py --init."""
    from safetensors.torch import load_file
    try:
        state = load_file(weights, device=str(next(model.parameters()).device))
    except Exception as e:  # SafetensorError on a truncated file names no file
        raise SystemExit(f"{weights}: cannot read the trained tensors ({type(e).__name__}: {e})") from None
    own = dict(model.named_parameters())
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise KeyError(f"{weights}: {len(unknown)} tensors not in {model_name}, e.g. {unknown[:3]}")
    with torch.no_grad():
        for k, v in state.items():
            if own[k].shape != v.shape:
                raise ValueError(f"{weights}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
            own[k].copy_(v)
    return sorted(state)


EXPORTED = ".exported"  # the marker of a folder export_checkpoint wrote (it replaces only such a folder)


def export_problem(out_dir):
    """Why `out_dir` cannot take an export, or None: it must be absent, empty, or an earlier export."""
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, EXPORTED)):
        return f"--export {out_dir} holds files it did not write; give a new or empty folder"
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        return f"--export {out_dir} is a file, not a folder"
    return None


def export_checkpoint(ckpt_dir, out_dir):
    """A train.py output folder -> a plain Hugging Face folder (save_pretrained): the base model with the
    trained tensors in place and LoRA merged, loadable by from_pretrained with no code from this repo. Written into a
    temporary folder beside it, its files given the umask's modes, then swapped in whole."""
    import shutil
    import tempfile
    from iqa_vlm.common import UMASK, swap_in
    problem = export_problem(out_dir)
    if problem:
        raise SystemExit(f"export: {problem}")
    model, processor, cfg = load_checkpoint(ckpt_dir)
    if cfg.get("lora"):
        merge_lora(model)
    out_dir = os.path.realpath(out_dir)
    parent, base = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{base}.partial-")
    try:
        model.save_pretrained(tmp)
        try:
            processor.save_pretrained(tmp)
        except Exception as e:  # the tiny test processors are assembled here and may not serialise; real ones do
            print(f"export: processor not saved ({type(e).__name__}: {e}); load it from {cfg['model']}")
        with open(os.path.join(tmp, EXPORTED), "w") as f:
            f.write(f"exported from {os.path.abspath(ckpt_dir)}\n")
        for root, dirs, files in os.walk(tmp):  # save_pretrained's temporary files are 0600: the umask decides
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~UMASK)
            os.chmod(root, 0o777 & ~UMASK)
        swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"exported {ckpt_dir} ({cfg['model']} + {cfg['trainable']}{' LoRA merged' if cfg.get('lora') else ''}) -> {out_dir}")
    return out_dir
