"""Fine-tune chosen parts of a VLM on prepared JSONL data (loss on answer tokens only).

    python train.py config/demo.py --out out/demo   # the tiny demo (config/demo.py)
    torchrun --standalone --nproc_per_node=4 train.py config/distortion_llava15_7b.py --trainable encoder,projector
    python train.py config/qsit_mini.py --lr 2e-5                                  # a recipe, then overrides
    python train.py config/demo.py --data data/demo_score,data/demo_interpret --mix score:1.0,interpret:2.5 --balance true
    python train.py config/demo.py --stage 1 --data data/demo_pathway --trainable encoder,projector,llm --out out/pw_stage1
    python train.py config/demo.py --stage 2 --data data/demo_pathway --init out/pw_stage1 --trainable llm --out out/pw_stage2

The defaults below are those of a real 7B fine-tune (Q-Align's released recipe where the papers are silent: peak lr
2e-5, cosine after 3 % warmup, 3 epochs, no weight decay, no augmentation, gradient checkpointing); the tiny demo's
settings and each paper's recipe live in config/*.py. A config file is Python setting any of these keys; flags after
it override it (`--key value` or `--key=value`; booleans true / false); unknown keys are an error.

--mix samples each named source by weight per epoch (a name is a --data folder's base name or a task group:
score; interpret = describe/reason; general = vqa); with several sources, scoring questions start with Q-SiT's
"Assume you are an image quality evaluator." (scoring.EVALUATOR_INSTRUCTION). --balance evaluates the validation loss per
source every --eval_every steps and shifts the mix (from the next epoch) toward the task whose loss ratio falls behind λ.

--stage 1|2 (two-stage reasoning, two_stage.py): stage 1 learns image -> low-level description, stage 2 the description
alone (no image) -> "The quality of the image is {level}."; --data DIR reads DIR/stage1 or DIR/stage2 where they exist.
--init DIR starts from a previous run's trained tensors and saves them again with this run's, so the output folder
holds every stage. The one-stage baseline is a plain run on DIR/one_stage.

Writes OUT/trainable.safetensors (only the trainable tensors, and --init's), OUT/config.json, OUT/log.jsonl and
OUT/resume.pt (optimizer + data position for --resume true), each atomically. Rank 0 alone prints and saves.
"""
import gc
import math
import os
import random
import signal
import sys
import time

import torch

from iqa_vlm.common import apply_overrides, folder_lock, read_json, setup_distributed
from iqa_vlm.data import LABELS, LEVELS, as_trained, closed_set_token_ids, load_records, read_closed_set
from iqa_vlm.studies.deqa import deqa_batch_loss
from iqa_vlm.loader import AUGMENTS, EpochBatches, batch_loader, pair_pools
from iqa_vlm.level_ce import backend, level_cross_entropy
from iqa_vlm.model import (SupervisedLogits, enable_checkpointing, export_checkpoint, export_problem, load_model, load_trained_tensors,
                   parse_trainable, set_trainable)
from iqa_vlm.run_folder import absolute_dirs, claim_run, data_fingerprint, read_resume, save_run
from iqa_vlm.studies.data_mix import Mixer, parse_mix
from iqa_vlm.studies.scoring import EVALUATOR_INSTRUCTION

# ----------------------------------------------------------------------------- config (defaults: a real 7B fine-tune)
_before_config = set(globals())
model = "tiny"                 # 'tiny' (the CPU demo's model), 'tiny:FAMILY', a Hugging Face id, or a local path
data = "data/demo"             # prepared folder(s), comma-separated
out = "out/run"                # output folder
trainable = "encoder,projector"  # parts: encoder, projector, llm, llm:A-B, head (comma list)
batch_size = 8                 # per process, per micro-step (Q-Align's per-device 8)
grad_accum = 1                 # micro-steps per optimizer step
max_steps = 0                  # optimizer steps; 0 = run until max_minutes or epochs
max_minutes = 0.0              # wall-clock budget; the cosine schedule follows time when set
epochs = 3                     # used when neither max_steps nor max_minutes is set (Q-Align, Q-SiT: 3)
lr = 2e-5                      # peak learning rate (Q-Align's full fine-tune; its LoRA runs use 2e-4)
lr_encoder = 0.0               # peak lr of the vision encoder; 0 = same as lr
min_lr_frac = 0.0              # cosine decays to lr * min_lr_frac (transformers' cosine: to 0)
warmup_steps = 0               # linear warmup steps; 0 = warmup_frac of the run
warmup_frac = 0.03             # warmup as a share of the run's steps (or minutes), when warmup_steps is 0
weight_decay = 0.0
adam_beta1 = 0.9               # AdamW's betas and eps: the distortion and two-stage papers' (0.9, 0.98), 1e-6; Q-Align,
adam_beta2 = 0.98              # DeQA-Score and Q-SiT train with transformers' Trainer defaults (0.9, 0.999), 1e-8, which
adam_epsilon = 1e-6            # their config files set
grad_clip = 1.0
label_smoothing = 0.0          # over the vocabulary (F.cross_entropy semantics); Q-Align / Q-SiT train plain CE
score_loss = "ce"              # ce: the level word as a token (Q-Align, Q-SiT); kl: DeQA-Score's soft labels (the records'
                               # level_probs, prepare_data.py --task score) by KL at the level position (deqa.py)
kl_weight = 1.0                # DeQA's weight_softkl: KL against CE on the answer's other tokens
fidelity = 0.0                 # DeQA's weight_rank: its fidelity loss over image pairs (its recipe: 1.0). > 0: each batch is
                               # --batch_size pairs (an anchor, and a partner drawn from its source), as in DeQA
next_token_weight = 1.0        # weight on CE (+ KL); DeQA's recipe 0.05, summed over both images of a pair
augment = "none"               # none | flip | flip_rot (flips and 90-degree turns) | flip_rot_shift (and a shift of up to
                               # 1/8 of the side, mirrored border; the demo's, loader.shift_image)
dtype = "auto"                 # auto = bf16 autocast on GPU, fp32 on CPU; or float32 / bfloat16
grad_ckpt = True               # gradient checkpointing (non-reentrant: gradients flow with frozen inputs)
log_every = 20
ckpt_every = 0                 # save every N steps (0: by time alone)
ckpt_minutes = 30.0            # and every this many minutes (0: off); SIGTERM / SIGINT save too, then exit
resume = False                 # continue from OUT's last checkpoint (optimizer and data position too)
overwrite = False              # train into an OUT that holds a run (its evaluation outputs are removed first)
seed = 1337
num_threads = 0                # torch CPU threads; 0 = torch's default
num_workers = -1               # data loader worker processes (image loading, augmentation, processor); -1 = on a GPU the
                               # CPUs per process minus one (at most 8), on the CPU 0 (the math needs every core); 0 = in
                               # the main process
check_ddp_sync = False         # at the end, compare a hash of the trained tensors across ranks
mix = ""                       # sample the --data sources per epoch, e.g. score:1.0,interpret:2.5,general:1.04: weights are
                               # record ratios relative to the first source's size (names: a folder's base name or a task
                               # group; data.py); "" = every record once
balance = False                # with --mix: at each epoch's end, grow |D2+D3| or |D1| from the val-loss ratio (Q-SiT Alg. 1
                               # step 3, eqs 9-10)
balance_lambda = 0.0           # reference ratio λ = L_S / L_I from steps 1-2 (analyze.py mix-ratio writes it; the paper's
                               # ≈ 1/4.66); 0 = the ratio at the first epoch's end (not the paper's)
balance_step = 0.1             # a balance step multiplies the weights of the side behind by (1 + step) (our choice)
balance_tol = 0.02             # no step while the ratio is within λ (1 ± tol) (our choice: the paper says "significantly")
eval_every = 0                 # with --mix: also log the validation losses every this many steps (0: at epoch ends only)
val_frac = 0.05                # with --mix: share of a source's train records held out when it has no val.jsonl
val_max = 0                    # with --mix: validation records per source, a seeded subset (0 = all: Q-SiT validates on
                               # the whole 10 % held out of its scoring data; a cap is quicker, our option)
interpret_val = ""             # with --mix: a folder whose val.jsonl replaces the interpreting validation set (Q-SiT:
                               # LLVisionQA-dev, prepare_data.py --task qbench)
lora = 0                       # LoRA rank for the llm part (llm or llm:A-B in --trainable); 0 = train it fully. Needs peft
lora_alpha = 0                 # LoRA scale numerator; 0 = 2 * rank
lora_dropout = 0.0
lora_targets = ""              # regex on the names of a decoder layer's linear layers to adapt ("" = all; DeQA-Score:
                               # q_proj|v_proj.multiway.1)
weights_dtype = "auto"         # frozen weights: auto = bfloat16 on GPU (trained tensors stay float32), float32 on CPU
fsdp = False                   # with torchrun: shard with FSDP2 (fully_shard per decoder/vision layer) instead of DDP
trust_remote_code = False      # checkpoints whose class transformers lacks (mPLUG-Owl2 needs none: mplug_owl2.py)
export = ""                    # after training: save base + trained tensors (LoRA merged) here with save_pretrained
dry_run = False                # print parameters per part and the estimated GPU memory, then exit (memory_plan.py)
gpu_mem = 48.0                 # --dry_run: GiB of the GPU to check the estimate against (A6000: 48)
seq_len = 1024                 # --dry_run: tokens per sample (image tokens + text)
stage = 0                      # two-stage reasoning: 1 = image -> description, 2 = description (text only) -> level;
                               # a --data folder with a stage1/ or stage2/ view (prepare_data.py --task pathway) reads that
system_prompt = ""             # a system turn put first in every training sample (Q-Align and DeQA-Score train mPLUG-Owl2
                               # with conversation "v1"'s, and evaluate without it)
image_first = False            # move the image placeholder ahead of the question in training samples ("<image>\n" +
                               # question), as Q-Align's and DeQA-Score's training code does
init = ""                      # start from a previous run's trained tensors (its trainable.safetensors, base model from its config.json)
allow_changed_data = False     # --resume on data that changed since the run began (a new prepare): warn, not refuse
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if k not in _before_config and not k.startswith("_")}
config = apply_overrides(dict(DEFAULTS), sys.argv[1:])
globals().update(config)
# every folder as an absolute path: config.json then names the data wherever an evaluation runs from
data, init, interpret_val = (absolute_dirs(v) for v in (data, init, interpret_val))
config.update(data=data, init=init, interpret_val=interpret_val)

# ----------------------------------------------------------------------------- arguments checked at the door
def require(ok, message):
    if not ok:
        raise SystemExit(f"train.py: {message}")


for key in ("batch_size", "grad_accum", "epochs", "log_every", "seq_len"):
    require(config[key] > 0, f"--{key} must be a positive integer, got {config[key]}")
for key in ("max_steps", "max_minutes", "warmup_steps", "ckpt_every", "ckpt_minutes", "eval_every", "lora", "lora_alpha",
            "weight_decay", "lr_encoder", "balance_lambda", "val_max"):
    require(math.isfinite(config[key]) and config[key] >= 0, f"--{key} must be a finite number >= 0, got {config[key]}")
for key in ("lr", "grad_clip", "balance_step", "gpu_mem"):
    require(math.isfinite(config[key]) and config[key] > 0, f"--{key} must be a finite number > 0, got {config[key]}")
for key in ("warmup_frac", "label_smoothing", "val_frac", "lora_dropout", "balance_tol"):
    require(0 <= config[key] < 1, f"--{key} must be in [0, 1), got {config[key]}")
for key in ("adam_beta1", "adam_beta2"):
    require(0 <= config[key] < 1, f"--{key} must be in [0, 1), got {config[key]}")
require(adam_epsilon > 0, f"--adam_epsilon must be positive, got {adam_epsilon}")
require(num_workers >= -1, f"--num_workers must be -1 (auto), 0 or a positive count, got {num_workers}")
require(0 <= min_lr_frac <= 1, f"--min_lr_frac must be in [0, 1], got {min_lr_frac}")
require(augment in AUGMENTS, f"--augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
require(score_loss in ("ce", "kl"), f"--score_loss must be ce or kl, got {score_loss!r}")
for key in ("kl_weight", "fidelity", "next_token_weight"):
    require(math.isfinite(config[key]) and config[key] >= 0, f"--{key} must be a finite number >= 0, got {config[key]}")
require(not (fidelity and mix), "--fidelity draws pairs from the scoring records of one --data set, not a --mix")
require(not interpret_val or os.path.isfile(os.path.join(interpret_val, "val.jsonl")),
        f"--interpret_val {interpret_val}: no val.jsonl there (prepare_data.py --task qbench writes one)")
require(not interpret_val or mix, "--interpret_val replaces the interpreting source's validation set of a --mix: give --mix")
require(not (resume and overwrite), "--resume true continues OUT's run and --overwrite true replaces it: give one")
require(not (resume and fsdp), "--resume with --fsdp is not supported: resume.pt holds rank 0's optimizer shard only")
require(dry_run or all(os.path.isdir(d) for d in data.split(",")), "--data " + ", ".join(
    d for d in data.split(",") if not os.path.isdir(d)) + ": no such folder (prepare_data.py writes one)")
require(len({os.path.realpath(d) for d in data.split(",")}) == len(data.split(",")),
        f"--data {data} names a folder twice (its records would train twice as often)")
require(not init or os.path.isdir(init), f"--init {init}: no such folder (expected a train.py output folder)")
require(not export or not export_problem(export), export_problem(export) if export else "")
try:
    parse_trainable(trainable)
    if mix:
        parse_mix(mix)
except ValueError as e:
    raise SystemExit(f"train.py: {e}") from None

ddp, rank, local_rank, world_size, device = setup_distributed()
local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
# on a CPU-only run a worker takes a core from the math (dev/bench_train.py --loader true measures it), so 0 there
workers = num_workers if num_workers >= 0 else \
    min(8, max(0, (os.cpu_count() or 1) // local_world - 1)) if torch.cuda.is_available() else 0
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer is used inside forked workers
master = rank == 0
print0 = print if master else (lambda *a, **k: None)
if num_threads:
    torch.set_num_threads(num_threads)
torch.manual_seed(seed + rank)
random.seed(seed + rank)
on_gpu = device.startswith("cuda")
amp_dtype = {"auto": torch.bfloat16 if on_gpu else None, "float32": None, "bfloat16": torch.bfloat16}[dtype]

# ----------------------------------------------------------------------------- two-stage reasoning: --stage, --init
# Stage 1 teaches perception (image -> low-level description), stage 2 inference (the description alone -> the level).
# The one-stage baseline is a plain run on the one_stage view. Stage 2 batches carry no image (data.encode_batch
# tokenizes them without the image processor), so only the language model's parts can learn from them.
if stage not in (0, 1, 2):
    raise SystemExit(f"--stage must be 1 or 2 (0: no stage), got {stage}")
if stage:
    data = ",".join(os.path.join(d, f"stage{stage}") if os.path.isdir(os.path.join(d, f"stage{stage}")) else d
                    for d in data.split(",") if d)
    config["data"] = data
if stage == 2:
    named = [name for name, _ in parse_trainable(trainable)]
    if not {"llm", "head"} & set(named):
        raise SystemExit(f"--stage 2 batches carry no image, so --trainable {trainable} would learn nothing: "
                         f"name llm, llm:A-B or head")
    if {"encoder", "projector"} & set(named):
        print0(f"--stage 2: {', '.join(n for n in named if n in ('encoder', 'projector'))} get no gradient from "
               f"text-only batches and stay as they are")
init_cfg = {}
if init:
    for name in ("config.json", "trainable.safetensors"):
        if not os.path.isfile(os.path.join(init, name)):
            raise SystemExit(f"--init {init}: {name} not found (expected a train.py output folder)")
    init_cfg = read_json(os.path.join(init, "config.json"))
    if not init_cfg.get("model"):
        raise SystemExit(f"--init {init}: config.json names no base model ('model')")
    if init_cfg.get("lora"):
        raise SystemExit(f"--init {init}: a LoRA run; --export it and start from the exported model (--model DIR)")
    model_given = model != "tiny" or any(a == "--model" or a.startswith("--model=") for a in sys.argv[1:])
    if model != init_cfg["model"] and model_given:
        raise SystemExit(f"--init {init} was trained from {init_cfg['model']!r}, not --model {model!r}")
    model = config["model"] = init_cfg["model"]

# ----------------------------------------------------------------------------- --dry_run: the memory estimate alone
if dry_run:  # no weights are loaded: the model is built on the meta device from its config
    from iqa_vlm.memory_plan import dry_run_report
    dry_run_report(model, trainable, batch_size=batch_size * (2 if fidelity else 1), seq_len=seq_len, grad_ckpt=grad_ckpt,
                   lora=lora, lora_targets=lora_targets, gpu_mem=gpu_mem, trust_remote_code=trust_remote_code)
    sys.exit(0)
# ----------------------------------------------------------------------------- the output folder, resume, the data
# all checked before the model loads: a mistake costs seconds, not the minutes a 7B takes to load
if master:
    claim_run(out, data, resume, overwrite)
if ddp:
    torch.distributed.barrier()
for d in data.split(","):  # no prepare_data.py may rewrite a folder this run reads
    folder_lock(d, "train.py", shared=True)
resume_state = read_resume(out, config, world_size, allow_changed_data, print0, DEFAULTS) if resume else None
data_fingerprint_now = data_fingerprint(data)
mixer = None
if mix:  # named sources sampled by weight per epoch, validation sets, --balance (data_mix.Mixer)
    held_out = load_records(interpret_val, "val") if interpret_val else None
    unanswered = [r.get("id") for r in held_out or [] if not any(c["from"] in ("gpt", "assistant") for c in r["conversations"])]
    if not held_out and interpret_val or unanswered:
        raise SystemExit(f"--interpret_val {interpret_val}: val.jsonl has {len(held_out)} records, {len(unanswered)} without an "
                         f"answer (e.g. {unanswered[:2]}): a validation loss needs answers (LLVisionQA-dev, not -test)")
    try:
        mixer = Mixer(data, mix, seed=seed, val_frac=val_frac, val_max=val_max, score_instruction=EVALUATOR_INSTRUCTION,
                      interpret_val=held_out)
    except ValueError as e:
        raise SystemExit(f"train.py: {e}") from None
    print0(mixer.describe())
elif balance:
    raise SystemExit("--balance needs --mix (e.g. --mix score:1.0,interpret:1.0)")
try:
    train_records = mixer.records if mixer else load_records(data, "train")
except (OSError, ValueError) as e:
    raise SystemExit(f"train.py: {e}") from None
if system_prompt or image_first:  # in place: a mixer's epoch order indexes this list
    train_records[:] = [as_trained(r, system_prompt, image_first) for r in train_records]
if stage:
    with_image = sum(bool(r.get("image")) for r in train_records)
    if stage == 1 and with_image < len(train_records):
        raise SystemExit(f"--stage 1 learns image -> description: {len(train_records) - with_image} of "
                         f"{len(train_records)} training records in {data} have no image")
    if stage == 2 and with_image:
        raise SystemExit(f"--stage 2 is text only: {with_image} of {len(train_records)} training records in {data} "
                         f"have an image (use the stage2 view of prepare_data.py --task pathway)")
missing = [r["image"] for r in train_records if r.get("image") and not os.path.isfile(r["image"])]
if missing:  # met mid-epoch, hours in, a missing image would end the run; it ends it now
    raise SystemExit(f"train.py: {len(missing)} of {len(train_records)} training images in {data} are missing, e.g. "
                     f"{missing[:3]}")
deqa_losses = score_loss == "kl" or fidelity > 0
pools, level_ids = None, None
if deqa_losses:  # DeQA-Score: soft labels and/or pairs need scoring records with their MOS (and level_probs for kl)
    need = "level_probs" if score_loss == "kl" else "mos_norm"
    lacking = [r.get("id") for r in train_records if r.get(need) is None]
    require(not lacking, f"--score_loss {score_loss} --fidelity {fidelity}: {len(lacking)} of {len(train_records)} training "
            f"records have no {need} (e.g. {lacking[:2]}); prepare_data.py --task score writes it")
    if fidelity:
        try:
            pools = pair_pools(train_records)
        except ValueError as e:
            raise SystemExit(f"train.py: --fidelity: {e}") from None

# ----------------------------------------------------------------------------- the model
frozen_dtype = {"auto": torch.bfloat16 if on_gpu else torch.float32, "float32": torch.float32,
                "bfloat16": torch.bfloat16}[weights_dtype]
vlm, processor = load_model(model, dtype=frozen_dtype, device=device, trust_remote_code=trust_remote_code)
try:
    parts = set_trainable(vlm, trainable, verbose=master, lora=lora, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                          lora_targets=lora_targets)
except ValueError as e:
    raise SystemExit(f"train.py: {e}") from None
for p in vlm.parameters():  # trained tensors in float32 (AdamW on bf16 weights loses small updates); autocast runs bf16
    if p.requires_grad:
        p.data = p.data.float()
init_names = set()
if init:  # after the float32 copies are made, so the tensors trained here start from the init's exact values
    try:
        init_names = set(load_trained_tensors(vlm, os.path.join(init, "trainable.safetensors"), model))
    except KeyError as e:  # LoRA adapters rename the layers they wrap (q_proj.weight -> q_proj.base_layer.weight)
        raise SystemExit(f"--init {init}: {e.args[0]}" + (" (--lora renames the llm layers' weights; give the llm "
                         "parts the init trained no --lora)" if lora else "")) from None
    print0(f"--init {init}: {len(init_names)} trained tensors loaded (its trainable {init_cfg.get('trainable')!r}, "
           f"stage {init_cfg.get('stage', 0)}); saved again with this run's")
if grad_ckpt:
    enable_checkpointing(vlm)
if deqa_losses:
    try:  # the level words and their answer prefix, as the score folders' meta.json records them
        level_ids = torch.tensor(closed_set_token_ids(processor, *read_closed_set(data, expect=LEVELS)), device=device)
    except (OSError, ValueError) as e:
        raise SystemExit(f"train.py: --score_loss {score_loss} --fidelity {fidelity}: {e}") from None
context = getattr(vlm.config.get_text_config(), "max_position_embeddings", 0)
if context:  # a record longer than the model's context would fail (or take all memory) at its batch, hours in
    tokenizer = getattr(processor, "tokenizer", processor)
    too_long = [r.get("id") for r in train_records  # only records of more than context/2 bytes can exceed it: tokenize those
                if sum(len(t["value"].encode()) for t in r["conversations"]) > context // 2
                and len(tokenizer("\n".join(t["value"] for t in r["conversations"]))["input_ids"]) > context]
    require(not too_long, f"{len(too_long)} of {len(train_records)} training records in {data} are longer than {model}'s "
            f"context ({context} tokens), e.g. {too_long[:3]}; prepare_data.py leaves out records over "
            f"--max_chars characters")
print0(f"{len(train_records)} training records from {data}; {world_size} process(es) x {batch_size}"
       f"{' pairs' if fidelity else ''} x {grad_accum} accum; loss kernel: {backend(device)}; data loader workers: {workers}"
       + (f"; score loss {score_loss}, fidelity {fidelity}, next-token weight {next_token_weight}" if deqa_losses else ""))


net = SupervisedLogits(vlm)
if ddp and fsdp:  # FSDP2: each layer's parameters sharded across ranks, gathered for its forward/backward
    from torch.distributed.fsdp import fully_shard
    for p in vlm.parameters():  # rank 0's values everywhere, as DDP does (peft draws LoRA's A on each rank)
        if p.requires_grad:
            torch.distributed.broadcast(p.data, 0)
    for mod in vlm.modules():
        if isinstance(mod, torch.nn.ModuleList):  # decoder layers and vision blocks
            for layer in mod:
                fully_shard(layer)
    fully_shard(net)
elif ddp:
    from torch.nn.parallel import DistributedDataParallel
    # find_unused_parameters: some chosen tensors get no gradient by design (CLIP's post_layernorm
    # serves only the pooled output LLaVA ignores; the whole encoder on text-only batches)
    net = DistributedDataParallel(net, device_ids=[local_rank] if on_gpu else None, find_unused_parameters=True)

lr_of = {label: (lr_encoder if label == "encoder" and lr_encoder > 0 else lr) for label in parts}
named = dict(vlm.named_parameters())  # by name: FSDP2 replaces each parameter it shards with a new one
groups = [{"params": [named[n] for n in params], "lr": lr_of[label], "peak_lr": lr_of[label], "name": label}
          for label, params in parts.items() if params]
optimizer = torch.optim.AdamW(groups, betas=(adam_beta1, adam_beta2), eps=adam_epsilon, weight_decay=weight_decay)

# each rank walks its own slice of one seeded permutation per epoch; all slices have equal length,
# so every rank takes the same number of steps
per_rank = (mixer.epoch_size() if mixer else len(train_records)) // world_size
steps_per_epoch = per_rank // (batch_size * grad_accum)
if steps_per_epoch == 0:
    raise SystemExit(f"{len(train_records)} records are too few for {world_size} x {batch_size} x {grad_accum} per step")


def epoch_order(epoch):
    if mixer:  # the epoch's sample under the current mix (its length follows the mix)
        perm = mixer.order(epoch)
        return perm[rank::world_size][:len(perm) // world_size]
    g = torch.Generator().manual_seed(seed + epoch)
    perm = torch.randperm(len(train_records), generator=g).tolist()
    return perm[rank::world_size][:per_rank]


def epoch_batches(epoch, start):
    """(the epoch's order, an iterator over its batches from `start`): a DataLoader whose workers prepare the batches
    (loader.EpochBatches; the same batches whatever --num_workers)."""
    order = epoch_order(epoch)
    n_batches = len(order) // (batch_size * grad_accum) * grad_accum  # = steps_per_epoch * grad_accum without --mix
    dataset = EpochBatches(processor, train_records, order, batch_size, n_batches, start, augment, f"{seed}:{rank}:{epoch}",
                           partners=pools, score_targets=deqa_losses)
    return n_batches, iter(batch_loader(dataset, workers, pin_memory=on_gpu))


total_steps = max_steps or (0 if max_minutes else epochs * steps_per_epoch)


def evaluate_mix(when, rebalance):
    """Validation loss per --mix source into the log; with rebalance, one balance step (data_mix.Mixer.balance) whose new mix
    the next epoch samples."""
    val_loss = mixer.val_losses(net, processor, batch_size, device, amp_dtype)
    rec = {"step": step, "epoch": epoch, "val_loss": {k: round(v, 5) for k, v in val_loss.items()}, "mix": dict(mixer.mix)}
    if rebalance:
        rec.update(mixer.balance(val_loss, balance_lambda, balance_step, balance_tol, ddp=ddp))
    log.append(rec)
    print0(f"{when} | val loss " + ", ".join(f"{k} {v:.4f}" for k, v in val_loss.items()) +
           (f" | ratio {rec['ratio']:.4f} vs λ {rec['lambda']:.4f} -> {rec['action']}; next epoch "
            + mixer.describe().split(": ", 1)[1] if rebalance else ""))


def lr_factor(step, elapsed_min):
    """Linear warmup (warmup_steps, else the first warmup_frac of the run), then cosine to min_lr_frac, over steps or
    over wall-clock time with max_minutes."""
    progress = min(1.0, max(step / total_steps if total_steps else 0.0, elapsed_min / max_minutes if max_minutes else 0.0))
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if not warmup_steps and progress < warmup_frac:  # the first step must not run at lr 0
        done = (step + 1) / total_steps if total_steps else max(progress, 1e-3)
        return min(1.0, done / warmup_frac)
    progress = (progress - (0 if warmup_steps else warmup_frac)) / (1 - (0 if warmup_steps else warmup_frac))
    return min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- resume (checked before the model loaded)
step, epoch, batch_in_epoch, elapsed_before, log = 0, 0, 0, 0.0, []
if resume_state is not None:
    state = resume_state
    load_trained_tensors(vlm, os.path.join(out, "trainable.safetensors"), model)
    optimizer.load_state_dict(state["optimizer"])
    step, epoch, batch_in_epoch, elapsed_before = state["step"], state["epoch"], state["batch_in_epoch"], state["elapsed_min"]
    log = state["log"]
    if mixer:
        mixer.restore(log)  # the balanced mix and its reference λ, from the last balance record
    rng = state.get("rng", {}).get(rank)
    if rng:  # the augmentation draws continue where they stopped: a resumed CPU run equals an uninterrupted one
        torch.set_rng_state(rng["torch"].cpu())
        random.setstate(rng["python"])
        if on_gpu and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"].cpu())
    del state, resume_state
    print0(f"resumed from {out} at step {step} (epoch {epoch}, batch {batch_in_epoch})")


saved_step = step  # a resumed run's checkpoint is already on disk


def save(final=False):
    global saved_step
    # with --init, the init's tensors are saved too: the folder is then the whole model (base + every stage)
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "cuda": torch.cuda.get_rng_state() if on_gpu else None}
    run_config = {**config, "base_model": model, "parts": list(parts), "labels": LABELS, "world_size": world_size,
                  "init_trainable": init_cfg.get("trainable"), "init_tensors": len(init_names),
                  "data_fingerprint": data_fingerprint_now, "steps_done": step, "finished": final,
                  "trainable_params": sum(p.numel() for p in vlm.parameters() if p.requires_grad)}
    save_run(out, vlm, init_names, optimizer, {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
             "elapsed_min": elapsed_min}, log, run_config, rng, ddp, world_size, master, "train.py", saved_step)
    saved_step = step


def curves_png(path, log):
    """Training loss (and validation losses with --mix) against step, the learning rate on a second axis."""
    from iqa_vlm.common import atomic_write_png, pyplot
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    steps = [r for r in log if "loss" in r]
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1, label="train loss")
    for name in sorted({k for r in log for k in r.get("val_loss", {})}):
        pts = [(r["step"], r["val_loss"][name]) for r in log if name in r.get("val_loss", {})]
        ax.plot(*zip(*pts), "o-", ms=3, lw=1, label=f"val loss {name}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8, loc="upper right")
    lr_ax = ax.twinx()
    lr_ax.plot([r["step"] for r in steps], [r["lr"] for r in steps], color="0.6", lw=1, ls="--")
    lr_ax.set_ylabel("lr (dashed)")
    fig.tight_layout()
    atomic_write_png(path, fig)


# ----------------------------------------------------------------------------- training loop
signalled = []  # SIGTERM (a preemption) or SIGINT (Ctrl-C): finish the step, save, exit


def on_signal(signum, frame):
    signalled.append(signum)


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
vlm.train()
t_start = time.time()
last_save = time.time()
t_log, samples_since_log, elapsed_min, data_wait = time.time(), 0, elapsed_before, 0.0
epoch_len, batches = epoch_batches(epoch, batch_in_epoch)
while True:
    elapsed_min = elapsed_before + (time.time() - t_start) / 60
    stop = (max_steps and step >= max_steps) or (max_minutes and elapsed_min >= max_minutes) or \
           (not max_steps and not max_minutes and epoch >= epochs)
    due = bool(step) and ((ckpt_every and step % ckpt_every == 0) or (ckpt_minutes and time.time() - last_save >= 60 * ckpt_minutes))
    interrupted = bool(signalled)
    if ddp:  # rank 0's clock and signals decide, so all ranks stop and save at the same step and share the lr
        flag = torch.tensor([float(stop), elapsed_min, float(due), float(interrupted)], device=device)
        torch.distributed.broadcast(flag, 0)
        stop, elapsed_min, due, interrupted = bool(flag[0]), float(flag[1]), bool(flag[2]), bool(flag[3])
    if stop:
        break
    if interrupted:
        save()
        print0(f"signal {signalled[0] if signalled else ''}: saved step {step} to {out} (finished: false); continue it "
               f"with --resume true")
        raise SystemExit(128 + (signalled[0] if signalled else signal.SIGTERM))
    if due and saved_step != step:
        save()
        last_save = time.time()
    factor = lr_factor(step, elapsed_min)
    for g in optimizer.param_groups:
        g["lr"] = g["peak_lr"] * factor
    loss_sum, n_tokens, loss_parts = 0.0, 0, {}
    if batch_in_epoch >= epoch_len:
        if mixer:  # the epoch's end: validation losses per source; --balance sets the next epoch's mix (eqs 9-10)
            evaluate_mix(f"epoch {epoch} end", balance)
        epoch, batch_in_epoch = epoch + 1, 0
        if not max_steps and not max_minutes and epoch >= epochs:
            break  # the last epoch is done (its evaluation too): no step of an epoch that will not run
        epoch_len, batches = epoch_batches(epoch, 0)
        if not max_steps and not max_minutes:  # a balanced mix changes the epochs' length: the schedule follows
            total_steps = step + (epochs - epoch) * (epoch_len // grad_accum)
    for micro in range(grad_accum):
        t_wait = time.time()
        batch, n_samples = next(batches)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        data_wait += time.time() - t_wait
        batch_in_epoch += 1
        sync = (not ddp) or micro == grad_accum - 1
        ctx = net.no_sync() if not sync else torch.enable_grad()
        with ctx, torch.autocast(device_type="cuda" if on_gpu else "cpu", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            score = {k: batch.pop(k) for k in ("score_level_probs", "score_mos", "score_std") if k in batch}
            logits, targets = net(**batch)
            # fused op: one pass over each [V] row for the loss, one more for the gradient (iqa_vlm/level_ce.py);
            # the gradient overwrites the logits, a fresh lm_head output nothing else reads (saves N x V)
            if deqa_losses:
                loss, parts_now = deqa_batch_loss(logits, targets, batch["labels"], score, level_ids, score_loss, kl_weight,
                                                  fidelity, next_token_weight, label_smoothing)
                for k, v in parts_now.items():
                    loss_parts[k] = loss_parts.get(k, 0.0) + v / grad_accum
            else:
                loss = level_cross_entropy(logits, targets, label_smoothing=label_smoothing, inplace_backward=True)[0].mean()
        (loss / grad_accum).backward()
        loss_sum += loss.item() / grad_accum
        samples_since_log += n_samples
    grad_norm = torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], grad_clip)
    if not (math.isfinite(loss_sum) and math.isfinite(float(grad_norm))):  # a diverged run stops before the update
        raise SystemExit(f"train.py: non-finite {'loss' if not math.isfinite(loss_sum) else 'gradient norm'} at step "
                         f"{step + 1} (loss {loss_sum}, grad norm {float(grad_norm)}); nothing of this step was applied. "
                         f"{out} keeps its last checkpoint (step {saved_step}, finished: false)" if saved_step else
                         f"train.py: non-finite loss or gradient norm at step {step + 1} (loss {loss_sum}, grad norm "
                         f"{float(grad_norm)}); no checkpoint was written (lower --lr, or --ckpt_every N to keep one)")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step += 1
    if step % log_every == 0 or step == 1:
        dt = time.time() - t_log
        mem = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else \
            __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss / 2**20
        rec = {"step": step, "epoch": epoch, "loss": round(loss_sum, 5), "lr": optimizer.param_groups[0]["lr"],
               "grad_norm": round(float(grad_norm), 4), "samples_per_s": round(samples_since_log * world_size / dt, 1),
               "data_wait": round(data_wait / dt, 3), "mem_gb": round(mem, 3), "minutes": round(elapsed_min, 2),
               **{k: round(v, 5) for k, v in loss_parts.items()}}
        log.append(rec)
        print0(f"step {step:5d} | epoch {epoch} | loss {loss_sum:.4f} | " +
               "".join(f"{k.replace('loss_', '')} {v:.4f} | " for k, v in loss_parts.items()) + f"lr {rec['lr']:.2e} | "
               f"{rec['samples_per_s']:.0f} samples/s | data wait {rec['data_wait']:.0%} | {rec['minutes']:.1f} min")
        t_log, samples_since_log, data_wait = time.time(), 0, 0.0
    if mixer and eval_every and step % eval_every == 0 and batch_in_epoch < epoch_len:  # between epoch ends (an epoch's
        evaluate_mix(f"step {step:5d}", False)                                          # end evaluates anyway)
save(final=True)
if master:
    curves_png(os.path.join(out, "loss.png"), log)
print0(f"done: {step} steps in {elapsed_min:.1f} min -> {out} (loss.png: the curves)")
if export and master:
    export_checkpoint(out, export)
if ddp and check_ddp_sync:  # DDP keeps replicas equal by construction; this proves it, bit for bit
    import hashlib
    digest = hashlib.sha256(b"".join(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() for p in vlm.parameters() if p.requires_grad)).hexdigest()
    digests = [None] * world_size
    torch.distributed.all_gather_object(digests, digest)
    print0(f"trained tensors per rank: {[d[:12] for d in digests]}; ranks identical: {len(set(digests)) == 1}")
if ddp:
    # the DDP reducer holds the process group: left alive past destroy_process_group, the group is torn down at
    # interpreter exit, where a gloo rank can abort ("terminate called without an active exception")
    del net
    gc.collect()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
