"""Reinforcement learning with GRPO on prepared score data: VisualQuality-R1's reinforcement learning to rank, or
Q-Insight's score reward (iqa_vlm/studies/grpo.py holds the prompts, rewards and objective).

    python train_grpo.py config/grpo_demo_format.py --init out/r1_perception --out out/r1_format   # the tiny demo (docs/grpo.md)
    python train_grpo.py config/grpo_demo.py --init out/r1_format --out out/r1      # then GRPO with the ranking reward
    torchrun --standalone --nproc_per_node=8 train_grpo.py config/visualquality_r1_qwen25vl.py --model /ckpt/Qwen2.5-VL-7B-Instruct
    python train_grpo.py config/visualquality_r1_qwen25vl.py --dry_run true        # memory on one 48 GB GPU
    python evaluate.py sampled-score --ckpt out/r1 --k 8                             # SRCC/PLCC by the mean of K answers

Each step, every process takes --batch_size images of one dataset (a source drawn uniformly among those with images
left in the epoch, as their sampler does), samples --num_generations answers per image, rewards them (vqr1: the
Thurstone-fidelity ranking reward among the batch's images + the format reward; qinsight: |score - MOS| < 0.35 + the
format reward), normalises the rewards within each image's group, and takes one clipped-ratio step with the k3 KL to a
frozen reference (the starting model: --init's tensors included; under --lora the base with its adapters off).
Freeze flags, --lora, DDP / --fsdp (torchrun), checkpoints, SIGTERM saves and --resume work as in train.py, and the
run folder is train.py's (trainable.safetensors, config.json, log.jsonl, resume.pt), so evaluate.py reads it.

--objective format is a supervised warm start on the answer format alone: each image's target is
`<think> ... </think> <answer> k </answer>` with k drawn at random, so the model learns to write the tags but nothing
about quality. A random tiny model never writes the tags, and without one parsed answer there is nothing to rank; a
real VLM follows the template without it. The tiny demo's choice, not either paper's.

Writes OUT/trainable.safetensors, OUT/config.json, OUT/log.jsonl, OUT/resume.pt (atomically) and OUT/grpo.png (mean
reward and held-out SRCC against step). Rank 0 alone prints and saves.
"""
import contextlib
import copy
import math
import os
import random
import signal
import sys
import time

import numpy as np
import torch

from iqa_vlm.common import apply_overrides, folder_lock, read_json, setup_distributed
from iqa_vlm.data import load_records
from iqa_vlm.metrics import plcc, srcc
from iqa_vlm.model import LORA_PARAM, enable_checkpointing, load_model, load_trained_tensors, parse_trainable, set_trainable
from iqa_vlm.run_folder import absolute_dirs, claim_run, data_fingerprint, read_resume, save_run
from iqa_vlm.studies import grpo

# ----------------------------------------------------------------------------- config (defaults: VisualQuality-R1's)
_before_config = set(globals())
model = "tiny:tags"            # 'tiny:tags' (the demo's model able to write the tags), a Hugging Face id, or a local path
data = "data/demo_score"       # prepared score folder(s) (prepare_data.py --task score), comma-separated
out = "out/grpo"
trainable = "encoder,projector,llm,head"  # their --freeze_vision_modules false: the whole model trains
objective = "grpo"             # grpo | format (the supervised warm start on the answer format; see above)
reward = "vqr1"                # vqr1 (ranking + format) | qinsight (score threshold + format)
qinsight_threshold = 0.35      # Q-Insight's --score_reward_threshold
batch_size = 8                 # images per process per micro-step (theirs: per_device_train_batch_size 48 / 6 generations)
num_generations = 6            # G answers per image (VisualQuality-R1: 6; Q-Insight: 8)
grad_accum = 1                 # micro-steps per optimizer step, each with its own images
completion_chunk = 0           # completions per forward/backward of the loss (0: all at once); memory only, same gradient
max_steps = 0                  # optimizer steps; 0 = epochs
epochs = 10                    # VisualQuality-R1 and Q-Insight: 10
lr = 1e-6                      # their GRPOConfig default, which neither launch script changes
lr_scheduler = "linear"        # transformers Trainer's default schedule (linear to 0, no warmup) | constant
warmup_steps = 0
weight_decay = 0.0             # Trainer's AdamW defaults: betas (0.9, 0.999), eps 1e-8, no decay
grad_clip = 1.0                # Trainer's max_grad_norm
beta = 0.04                    # KL coefficient (VisualQuality-R1: 0.04 (GRPOConfig); Q-Insight: 0.001)
epsilon = 0.2                  # ratio clip (their epsilon; epsilon_high 0 = the same)
epsilon_high = 0.0
temperature = 1.0              # sampling: their trainer's GenerationConfig (temperature 1), top_k / top_p transformers'
top_k = 50
top_p = 1.0
max_completion_length = 256    # their max_completion_length
eval_every = 0                 # held-out SRCC / PLCC every N steps (and at the end); 0 = at the end only
eval_limit = 256               # held-out images (a seeded subset of val, else test; 0 = all)
eval_k = 1                     # answers averaged per held-out image
lora = 0                       # LoRA rank for the llm part (peft), as train.py
lora_alpha = 0
lora_dropout = 0.0
lora_targets = ""
dtype = "auto"                 # auto = bf16 autocast on GPU, fp32 on CPU; or float32 / bfloat16
weights_dtype = "auto"         # frozen weights: bf16 on GPU, fp32 on CPU
grad_ckpt = True
fsdp = False
log_every = 1                  # a log line every N steps: the mean of their statistics
ckpt_every = 0
ckpt_minutes = 30.0
resume = False
overwrite = False
init = ""                      # start from a run's trained tensors (train.py or train_grpo.py --objective format)
seed = 42                      # their --data_seed
num_threads = 0
dry_run = False
gpu_mem = 48.0
prompt_tokens = 1024           # --dry_run: image + prompt tokens per sequence (their max_prompt_length)
allow_changed_data = False
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if k not in _before_config and not k.startswith("_")}
config = apply_overrides(dict(DEFAULTS), sys.argv[1:])
globals().update(config)
data, init = absolute_dirs(data), absolute_dirs(init)
config.update(data=data, init=init)


def require(ok, message):
    if not ok:
        raise SystemExit(f"train_grpo.py: {message}")


for key in ("batch_size", "num_generations", "grad_accum", "epochs", "log_every", "max_completion_length", "eval_k",
            "prompt_tokens"):
    require(config[key] > 0, f"--{key} must be a positive integer, got {config[key]}")
for key in ("max_steps", "warmup_steps", "ckpt_every", "ckpt_minutes", "eval_every", "eval_limit", "lora", "lora_alpha",
            "weight_decay", "beta", "epsilon_high", "completion_chunk"):
    require(math.isfinite(config[key]) and config[key] >= 0, f"--{key} must be a finite number >= 0, got {config[key]}")
for key in ("lr", "grad_clip", "epsilon", "temperature", "gpu_mem", "qinsight_threshold"):
    require(math.isfinite(config[key]) and config[key] > 0, f"--{key} must be a finite number > 0, got {config[key]}")
require(objective in ("grpo", "format"), f"--objective must be grpo or format, got {objective!r}")
require(reward in grpo.REWARDS, f"--reward must be one of {', '.join(grpo.REWARDS)}, got {reward!r}")
require(lr_scheduler in ("linear", "constant"), f"--lr_scheduler must be linear or constant, got {lr_scheduler!r}")
require(not (reward == "vqr1" and objective == "grpo" and batch_size < 2), "--reward vqr1 ranks the images of a batch: "
        "--batch_size must be at least 2")
require(num_generations > 1 or objective == "format", "--num_generations must be at least 2 (advantages are relative "
        "to the group)")
require(not (resume and overwrite), "--resume true continues OUT's run and --overwrite true replaces it: give one")
require(not (resume and fsdp), "--resume with --fsdp is not supported: resume.pt holds rank 0's optimizer shard only")
require(dry_run or all(os.path.isdir(d) for d in data.split(",")), f"--data {data}: no such folder (prepare_data.py "
        f"--task score writes one)")
require(not init or os.path.isdir(init), f"--init {init}: no such folder (expected a run folder)")
try:
    parse_trainable(trainable)
except ValueError as e:
    raise SystemExit(f"train_grpo.py: {e}") from None
recipe = grpo.REWARDS[reward]

ddp, rank, local_rank, world_size, device = setup_distributed()
master = rank == 0
print0 = print if master else (lambda *a, **k: None)
if num_threads:
    torch.set_num_threads(num_threads)
torch.manual_seed(seed + rank)
random.seed(seed + rank)
parse_rng = np.random.default_rng([seed, rank])  # answers without a score get a random one (their fallback)
on_gpu = device.startswith("cuda")
amp_dtype = {"auto": torch.bfloat16 if on_gpu else None, "float32": None, "bfloat16": torch.bfloat16}[dtype]

init_cfg = {}
if init:
    for name in ("config.json", "trainable.safetensors"):
        require(os.path.isfile(os.path.join(init, name)), f"--init {init}: {name} not found (expected a run folder)")
    init_cfg = read_json(os.path.join(init, "config.json"))
    require(not init_cfg.get("lora"), f"--init {init}: a LoRA run; export it (train.py --export) and give --model DIR")
    model_given = any(a == "--model" or a.startswith("--model=") for a in sys.argv[1:])
    require(not model_given or model == init_cfg.get("model"),
            f"--init {init} was trained from {init_cfg.get('model')!r}, not --model {model!r}")
    model = config["model"] = init_cfg["model"]

# ----------------------------------------------------------------------------- --dry_run: the memory estimate alone
if dry_run:
    from iqa_vlm.memory_plan import grpo_dry_run_report
    grpo_dry_run_report(model, trainable, images=batch_size, generations=num_generations, prompt_tokens=prompt_tokens,
                        completion_tokens=max_completion_length, completion_chunk=completion_chunk, grad_ckpt=grad_ckpt,
                        lora=lora, lora_targets=lora_targets, beta=beta, gpu_mem=gpu_mem)
    sys.exit(0)

# ----------------------------------------------------------------------------- the run folder, the data
if master:
    claim_run(out, data, resume, overwrite)
if ddp:
    torch.distributed.barrier()
for d in data.split(","):
    folder_lock(d, "train_grpo.py", shared=True)
resume_state = read_resume(out, config, world_size, allow_changed_data, print0, DEFAULTS) if resume else None
data_fingerprint_now = data_fingerprint(data)
try:
    train_records = [r for r in load_records(data, "train") if r.get("task", "score") == "score"]
    held_out = []
    for split in ("val", "test"):  # the first that has records; none: no held-out evaluation (e.g. all of KADID trains)
        if not held_out and all(os.path.isfile(os.path.join(d, f"{split}.jsonl")) for d in data.split(",")):
            held_out = [r for r in load_records(data, split) if r.get("task", "score") == "score"]
except (OSError, ValueError) as e:
    raise SystemExit(f"train_grpo.py: {e}") from None
lacking = [r.get("id") for r in train_records + held_out if not r.get("image") or r.get("mos_norm") is None]
require(not lacking, f"{len(lacking)} records in {data} have no image or no mos_norm (e.g. {lacking[:3]}): GRPO needs "
        f"score records (prepare_data.py --task score)")
missing = [r["image"] for r in train_records if not os.path.isfile(r["image"])]
require(not missing, f"{len(missing)} of {len(train_records)} training images are missing, e.g. {missing[:3]}")
if eval_limit and len(held_out) > eval_limit:
    held_out = [held_out[i] for i in sorted(random.Random(seed).sample(range(len(held_out)), eval_limit))]
mos15 = {id(r): 1 + 4 * r["mos_norm"] for r in train_records}  # the 1-5 scale both papers' labels use


def epoch_batches(epoch):
    """This epoch's batches, each `batch_size` records of one source (their sampler: a source drawn uniformly among
    those with a batch left, its records taken in a seeded random order, a remainder smaller than a batch dropped).
    Batch i of the epoch goes to rank i % world_size."""
    g = torch.Generator().manual_seed(seed + epoch)
    left = {}
    for i, r in enumerate(train_records):
        left.setdefault(r.get("source", "?"), []).append(i)
    for name in sorted(left):
        left[name] = [left[name][j] for j in torch.randperm(len(left[name]), generator=g).tolist()]
    batches = []
    while True:
        names = [n for n in sorted(left) if len(left[n]) >= batch_size]
        if not names:
            break
        name = names[torch.randint(len(names), (1,), generator=g).item()]
        batches.append(left[name][:batch_size])
        left[name] = left[name][batch_size:]
    usable = len(batches) // (world_size * grad_accum) * world_size * grad_accum
    return batches[:usable]


steps_per_epoch = len(epoch_batches(0)) // (world_size * grad_accum)
require(steps_per_epoch > 0, f"{len(train_records)} training records are too few for {world_size} x {batch_size} x "
        f"{grad_accum} per step (images of one source per batch)")
total_steps = max_steps or epochs * steps_per_epoch

# ----------------------------------------------------------------------------- the model, its reference
frozen_dtype = {"auto": torch.bfloat16 if on_gpu else torch.float32, "float32": torch.float32,
                "bfloat16": torch.bfloat16}[weights_dtype]
vlm, processor = load_model(model, dtype=frozen_dtype, device=device)
try:
    parts = set_trainable(vlm, trainable, verbose=master, lora=lora, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                          lora_targets=lora_targets)
except ValueError as e:
    raise SystemExit(f"train_grpo.py: {e}") from None
for p in vlm.parameters():
    if p.requires_grad:
        p.data = p.data.float()
init_names = set()
if init:
    try:
        init_names = set(load_trained_tensors(vlm, os.path.join(init, "trainable.safetensors"), model))
    except KeyError as e:
        raise SystemExit(f"--init {init}: {e.args[0]}") from None
    print0(f"--init {init}: {len(init_names)} trained tensors loaded (its trainable {init_cfg.get('trainable')!r})")
# the reference is the starting point: the model now (base + --init), before any step of this run (a resumed run rebuilds
# it the same way before loading its own tensors). Without --lora, a frozen copy; under --lora the model itself with its
# adapters off and the parts trained fully (e.g. the encoder) swapped back to their starting values for that forward
# (under --fsdp, whose shards cannot be swapped so, a frozen copy of the whole unsharded model on every rank)
ref_model, ref_tensors = None, {}
if objective == "grpo" and beta > 0 and (not lora or (ddp and fsdp)):  # under FSDP a LoRA run keeps a copy too: its
    ref_model = copy.deepcopy(vlm).requires_grad_(False).eval().to(frozen_dtype)  # adapters start at zero (peft's B)
if grad_ckpt:
    enable_checkpointing(vlm)


def reference_logps(enc, comp, mask):
    with torch.no_grad(), autocast():
        if ref_model is None:
            with grpo.reference_weights(vlm, ref_tensors):
                return grpo.completion_logps(vlm, enc, comp, mask)
        return grpo.completion_logps(ref_model, enc, comp, mask)


def autocast():
    return torch.autocast(device_type="cuda" if on_gpu else "cpu", dtype=amp_dtype or torch.float32,
                          enabled=amp_dtype is not None)


class CompletionLogps(torch.nn.Module):
    """The policy's per-token log-probs as one module, so DDP and FSDP see one forward."""

    def __init__(self, vlm):
        super().__init__()
        self.vlm = vlm

    def forward(self, enc, comp, mask):
        return grpo.completion_logps(self.vlm, enc, comp, mask)


net = CompletionLogps(vlm)
if ddp and fsdp:
    from torch.distributed.fsdp import fully_shard
    for p in vlm.parameters():  # rank 0's values everywhere, as DDP does (peft draws LoRA's A on each rank)
        if p.requires_grad:
            torch.distributed.broadcast(p.data, 0)
    for mod in vlm.modules():
        if isinstance(mod, torch.nn.ModuleList):
            for layer in mod:
                fully_shard(layer)
    fully_shard(net)
elif ddp:
    from torch.nn.parallel import DistributedDataParallel
    net = DistributedDataParallel(net, device_ids=[local_rank] if on_gpu else None, find_unused_parameters=True)

named = dict(vlm.named_parameters())  # by name: FSDP2 replaces each parameter it shards with a new one
if objective == "grpo" and beta > 0 and lora and ref_model is None:  # the starting values of the parts trained fully
    ref_tensors = {n: p.detach().clone() for n, p in named.items() if p.requires_grad and not LORA_PARAM.search(n)}
groups = [{"params": [named[n] for n in params], "lr": lr, "name": label} for label, params in parts.items() if params]
optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)


def lr_factor(step):
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if lr_scheduler == "constant":
        return 1.0
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


@contextlib.contextmanager
def gathered():
    """Generation calls the model outside `net`: under FSDP the root's own tensors are gathered for it."""
    if ddp and fsdp:
        net.unshard()
        try:
            yield
        finally:
            net.reshard()
    else:
        yield


def format_targets(n):
    """--objective format: an answer in the format with a random integer score and no reasoning about the image."""
    return [f"<think> let us look at the image </think> <answer> {random.randint(1, 5)} </answer>" for _ in range(n)]


def micro_step(records):
    """Rollout, rewards, advantages and the loss's backward for one micro-batch. -> its statistics."""
    tok = processor.tokenizer
    if objective == "format":
        prompts = [grpo.prompt_record(r, recipe["question"], recipe["system"]) for r in records]
        enc, _ = grpo.encode_prompts(processor, prompts, padding_side="left")
        enc = grpo.to_device(enc, vlm, device)
        stop = grpo.stop_ids_of(vlm)[0]
        targets = [tok(t, add_special_tokens=False)["input_ids"] + [stop] for t in format_targets(len(records))]
        width = max(map(len, targets))
        comp = torch.tensor([t + [tok.pad_token_id] * (width - len(t)) for t in targets], device=device)
        mask = (torch.arange(width, device=device)[None] < torch.tensor([len(t) for t in targets], device=device)[:, None]).long()
        with autocast():
            logps = net(enc, comp, mask)
        loss = -((logps * mask).sum(1) / mask.sum(1)).mean()
        (loss / grad_accum).backward()
        return {"loss": loss.item()}
    vlm.eval()
    with gathered(), autocast():
        enc, comp, mask, texts = grpo.rollout(vlm, processor, records, recipe["question"], num_generations,
                                              max_completion_length, temperature, top_k, top_p, device, recipe["system"],
                                              synced_gpus=ddp and fsdp)
    vlm.train()
    rewards, parts_mean, unparsed = grpo.batch_rewards(reward, texts, [mos15[id(r)] for r in records], num_generations,
                                                       parse_rng, qinsight_threshold)
    adv = grpo.group_advantages(rewards).flatten().to(device)
    rows = comp.shape[0]
    chunk = completion_chunk or rows
    loss_sum, stats = 0.0, {}
    for a in range(0, rows, chunk):  # the loss is a mean over completions: chunks add up to the same gradient
        sl = slice(a, min(a + chunk, rows))
        part_enc = grpo.row_slice(enc, rows, sl)
        ref = reference_logps(part_enc, comp[sl], mask[sl]) if beta > 0 else None
        with autocast():
            logps = net(part_enc, comp[sl], mask[sl])
        loss, st = grpo.grpo_loss(logps, logps.detach(), ref, adv[sl], mask[sl], beta, epsilon, epsilon_high or None)
        share = comp[sl].shape[0] / rows
        (loss * share / grad_accum).backward()
        loss_sum += loss.item() * share
        for k, v in st.items():
            stats[k] = stats.get(k, 0.0) + v * share
    return {"loss": loss_sum, "reward": float(rewards.mean()), "reward_std": float(rewards.std(1).mean()),
            **{f"reward_{k}": v for k, v in parts_mean.items()}, "unparsed": unparsed / rows,
            "completion_tokens": float(mask.sum(1).float().mean()), **stats}


def held_out_eval():
    """SRCC / PLCC of the mean of eval_k sampled answers on the held-out images. Every rank scores them all, with the
    same draws (no rank waits alone past a collective's timeout; FSDP needs all of them); rank 0 records."""
    if not held_out:
        return None
    vlm.eval()
    # its own random stream: the same draws at every evaluation, and the training's stream untouched (a resumed run,
    # whose evaluations fall elsewhere, equals an uninterrupted one)
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if on_gpu else []), gathered(), autocast():
        torch.manual_seed(seed)
        scores, unparsed, first = grpo.sampled_scores(vlm, processor, held_out, reward, eval_k, batch_size, device,
                                                      np.random.default_rng(seed), temperature, top_k, top_p,
                                                      max_completion_length, synced_gpus=ddp and fsdp)
    vlm.train()
    target = [r["mos_norm"] for r in held_out]
    return {"eval_srcc": srcc(scores, target), "eval_plcc": plcc(scores, target),
            "eval_unparsed": unparsed / (len(held_out) * eval_k), "eval_n": len(held_out), "eval_example": first[0]}


# ----------------------------------------------------------------------------- resume
step, epoch, batch_in_epoch, elapsed_before, log = 0, 0, 0, 0.0, []
if resume_state is not None:
    load_trained_tensors(vlm, os.path.join(out, "trainable.safetensors"), model)
    optimizer.load_state_dict(resume_state["optimizer"])
    step, epoch, batch_in_epoch = resume_state["step"], resume_state["epoch"], resume_state["batch_in_epoch"]
    elapsed_before, log = resume_state["elapsed_min"], resume_state["log"]
    rng = resume_state.get("rng", {}).get(rank)
    if rng:  # sampling, the format targets and the parse fallback continue their streams
        torch.set_rng_state(rng["torch"].cpu())
        random.setstate(rng["python"])
        parse_rng.bit_generator.state = rng["numpy"]
        if on_gpu and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"].cpu())
    del resume_state
    print0(f"resumed from {out} at step {step} (epoch {epoch}, batch {batch_in_epoch})")
saved_step = step


def save(final=False):
    global saved_step
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": parse_rng.bit_generator.state,
           "cuda": torch.cuda.get_rng_state() if on_gpu else None}
    run_config = {**config, "base_model": model, "parts": list(parts), "world_size": world_size, "task": "grpo",
                  "init_trainable": init_cfg.get("trainable"), "init_tensors": len(init_names),
                  "data_fingerprint": data_fingerprint_now, "steps_done": step, "finished": final,
                  "trainable_params": sum(p.numel() for p in vlm.parameters() if p.requires_grad)}
    save_run(out, vlm, init_names, optimizer, {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
             "elapsed_min": elapsed_min}, log, run_config, rng, ddp, world_size, master, "train_grpo.py", saved_step)
    saved_step = step


def curves_png(path, log):
    """Mean reward (its parts dashed) and the held-out SRCC against step."""
    from iqa_vlm.common import atomic_write_png, pyplot
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.6))
    rows = [r for r in log if "loss" in r]
    key = "reward" if objective == "grpo" else "loss"
    ax.plot([r["step"] for r in rows], [r[key] for r in rows], lw=1, label=f"mean {key}")
    for part in sorted({k for r in rows for k in r if k.startswith("reward_") and k != "reward_std"}):
        ax.plot([r["step"] for r in rows], [r[part] for r in rows], lw=1, ls="--", label=part.replace("reward_", ""))
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.legend(fontsize=8)
    evals = [r for r in log if "eval_srcc" in r and r["eval_srcc"] is not None]
    bx.plot([r["step"] for r in evals], [r["eval_srcc"] for r in evals], "o-", ms=3, lw=1, label="SRCC")
    bx.plot([r["step"] for r in evals], [r["eval_plcc"] for r in evals], "s--", ms=3, lw=1, label="PLCC")
    bx.set_xlabel("step")
    bx.set_ylabel(f"held-out (K={eval_k})")
    bx.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_png(path, fig)


def fmt(x):
    return "n/a (constant scores)" if x is None else f"{x:.4f}"


def record_eval(when):
    global evaluated_at
    evaluated_at = step
    rec = held_out_eval()
    if rec and master:
        log.append({"step": step, **rec})
        print0(f"{when} | held-out SRCC {fmt(rec['eval_srcc'])} PLCC {fmt(rec['eval_plcc'])} (n {rec['eval_n']}, K "
               f"{eval_k}, answers without a score {rec['eval_unparsed']:.1%}) | e.g. {rec['eval_example'][:80]!r}")


# ----------------------------------------------------------------------------- training loop
signalled = []
signal.signal(signal.SIGTERM, lambda s, f: signalled.append(s))
signal.signal(signal.SIGINT, lambda s, f: signalled.append(s))
print0(f"{len(train_records)} training records from {data}: {steps_per_epoch} steps per epoch of {world_size} x "
       f"{batch_size} images x {grad_accum} accum" + (f", {num_generations} answers each, reward {reward}"
                                                       if objective == "grpo" else ", format warm start"))
if ddp and fsdp:  # FSDP2 initialises its sharded layers from the root's first forward: one before any generation
    with torch.no_grad(), autocast():
        first, _ = grpo.encode_prompts(processor, [grpo.prompt_record(train_records[0], recipe["question"], recipe["system"])],
                                       padding_side="left")
        net(grpo.to_device(first, vlm, device), torch.full((1, 1), processor.tokenizer.pad_token_id, device=device),
            torch.ones(1, 1, dtype=torch.long, device=device))
evaluated_at = -1
if not held_out:
    print0(f"{data} has no val or test records: no held-out evaluation (evaluate.py sampled-score does it after)")
if step == 0 and objective == "grpo":
    record_eval("step     0")
t_start, last_save, elapsed_min = time.time(), time.time(), elapsed_before
batches = epoch_batches(epoch)
since_log = {}
while True:
    elapsed_min = elapsed_before + (time.time() - t_start) / 60
    stop = step >= total_steps
    due = bool(step) and ((ckpt_every and step % ckpt_every == 0) or (ckpt_minutes and time.time() - last_save >= 60 * ckpt_minutes))
    interrupted = bool(signalled)
    if ddp:
        flag = torch.tensor([float(stop), float(due), float(interrupted)], device=device)
        torch.distributed.broadcast(flag, 0)
        stop, due, interrupted = bool(flag[0]), bool(flag[1]), bool(flag[2])
    if stop:
        break
    if interrupted:
        save()
        print0(f"signal: saved step {step} to {out} (finished: false); continue it with --resume true")
        raise SystemExit(128 + (signalled[0] if signalled else signal.SIGTERM))
    if due and saved_step != step:
        save()
        last_save = time.time()
    if batch_in_epoch >= len(batches) // world_size:
        epoch, batch_in_epoch = epoch + 1, 0
        batches = epoch_batches(epoch)
    for g in optimizer.param_groups:
        g["lr"] = lr * lr_factor(step)
    stats = {}
    for micro in range(grad_accum):
        records = [train_records[i] for i in batches[batch_in_epoch * world_size + rank]]
        batch_in_epoch += 1
        for k, v in micro_step(records).items():
            stats[k] = stats.get(k, 0.0) + v / grad_accum
    grad_norm = torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], grad_clip)
    require(math.isfinite(stats["loss"]) and math.isfinite(float(grad_norm)),
            f"non-finite loss or gradient norm at step {step + 1} (loss {stats['loss']}, grad norm {float(grad_norm)}); "
            f"nothing of this step was applied; {out} keeps its last checkpoint (step {saved_step})")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step += 1
    if ddp:  # the logged statistics: every rank's mean
        keys = sorted(stats)
        t = torch.tensor([stats[k] for k in keys], device=device, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        stats = dict(zip(keys, (t / world_size).tolist()))
    for k, v in stats.items():  # each log line: the mean over the steps since the last one
        since_log[k] = since_log.get(k, 0.0) + v
    since_log["steps"] = since_log.get("steps", 0) + 1
    if step % log_every == 0 or step == 1:
        n = since_log.pop("steps")
        mean = {k: v / n for k, v in since_log.items()}
        rec = {"step": step, "epoch": epoch, "steps_averaged": n, **{k: round(v, 5) for k, v in mean.items()},
               "lr": optimizer.param_groups[0]["lr"], "grad_norm": round(float(grad_norm), 4), "minutes": round(elapsed_min, 2)}
        log.append(rec)
        print0(f"step {step:5d} | " + " | ".join(f"{k} {v:.4f}" for k, v in mean.items()) + f" | lr {rec['lr']:.2e} | "
               f"{elapsed_min:.1f} min")
        since_log = {}
    if objective == "grpo" and eval_every and step % eval_every == 0 and step < total_steps:
        record_eval(f"step {step:5d}")
if objective == "grpo" and evaluated_at != step:
    record_eval(f"step {step:5d}")
save(final=True)
if master:
    curves_png(os.path.join(out, "grpo.png"), log)
print0(f"done: {step} steps in {elapsed_min:.1f} min -> {out} (grpo.png: the curves)")
if ddp:
    del net
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
