"""Training-step benchmark on real-size architectures with random weights (no download): steps/s, samples/s, tokens/s,
peak memory next to the dry-run estimate (memory_plan.py), MFU on a GPU.

    python dev/bench_train.py --preset llava-onevision-0.5b --trainable encoder,projector,llm --batch_size 4   # on a GPU
    python dev/bench_train.py --preset llava-onevision-7b --trainable encoder,projector --grad_ckpt true --batch_size 2
    python dev/bench_train.py --model tiny:llava_onevision --steps 3 --device cpu                                # the CPU path

One step = what train.py does per micro-batch: the VLM forward on a synthetic batch (random images of the vision
tower's input size, one image per sample; random text filling --seq_len tokens with the image's tokens first; the last
16 tokens supervised), our fused loss, backward, gradient clipping, AdamW. Frozen weights in bf16 and trained ones in
fp32 on a GPU, as train.py keeps them. The batch is made once on the device, so this measures the model, not the data
path: train.py's log gives the data-wait share of real runs (`data_wait`), and `--loader true` here times the tiny
demo's DataLoader with and without worker processes in one run. Results: printed, and written with --out (JSON).

MFU = model FLOPs per second / the device's dense bf16 peak (PEAK_TFLOPS by device name), with model FLOPs = 2 x
parameters x tokens for the forward plus 4 x the parameters the backward crosses (everything from the first trained
part on) x tokens: the standard 6ND when all of it trains. Attention's own FLOPs are left out (small at these lengths).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo root: iqa_vlm/ and the entry scripts
sys.path.insert(0, ROOT)
from iqa_vlm.common import atomic_write_json

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "A6000": 154.8, "L40S": 362.0, "A800": 312.0, "4090": 165.2}
SUPERVISED = 16  # answer tokens per sample (a level word and its sentence)


def build(name, device, trainable, grad_ckpt, lora=0):
    """(model with parts set trainable, chosen parts) from a memory_plan preset (random weights) or tiny[:FAMILY]."""
    import transformers as T
    from iqa_vlm.memory_plan import _preset
    from iqa_vlm.model import enable_checkpointing, load_model, set_trainable
    on_gpu = device.startswith("cuda")
    if name.startswith("tiny"):
        model = load_model(name)[0]
    else:
        config = _preset(name)
        if config is None:
            raise SystemExit(f"--preset {name!r}: not one of memory_plan.PRESETS")
        with torch.device(device):
            try:
                model = T.AutoModelForImageTextToText.from_config(config)
            except ValueError:
                model = T.AutoModelForCausalLM.from_config(config)
    chosen = set_trainable(model, trainable, verbose=False, lora=lora)
    trained = {id(p) for params in chosen.values() for p in params.values()}
    for p in model.parameters():  # as train.py: frozen bf16 on the GPU, trained fp32
        p.data = p.data.to(device, torch.bfloat16 if on_gpu and id(p) not in trained else torch.float32)
    if grad_ckpt:
        enable_checkpointing(model)
    return model, chosen


def synthetic_batch(model, batch_size, seq_len, device):
    """One image per sample at the vision tower's input size, its tokens first, random text after; labels on the last
    SUPERVISED tokens. Image token counts come from the model's own image features."""
    from iqa_vlm.model import visual_tokens
    cfg = model.config
    vc = getattr(cfg, "vision_config", None)
    mt = cfg.model_type
    dtype = next(p for p in model.parameters()).dtype
    if mt == "mplug_owl2":
        size = cfg.visual_config["visual_model"]["image_size"]
        images = {"pixel_values": torch.randn(batch_size, 3, size, size)}
    elif mt in ("qwen2_vl", "qwen2_5_vl"):
        patch, merge, t = vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size
        grid = 28 // patch * merge if patch == 14 else 4 * merge  # a 448 x 448 image: 32 x 32 patches
        images = {"pixel_values": torch.randn(batch_size * grid * grid, 3 * t * patch * patch),
                  "image_grid_thw": torch.tensor([[1, grid, grid]] * batch_size)}
    elif mt == "llava_onevision":  # a square image of the tower's size: the base view plus its anyres crops
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches
        size = vc.image_size
        n = image_size_to_num_patches((size, size), cfg.image_grid_pinpoints, size)
        images = {"pixel_values": torch.randn(batch_size, n, 3, size, size), "image_sizes": torch.tensor([[size, size]] * batch_size)}
    else:
        size = vc.image_size
        images = {"pixel_values": torch.randn(batch_size, 3, size, size)}
    images = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in images.items()}
    with torch.no_grad():
        n_img = len(visual_tokens(model, images)[0])
    if n_img + SUPERVISED > seq_len:
        raise SystemExit(f"--seq_len {seq_len} is shorter than one image's {n_img} tokens + {SUPERVISED} answer tokens")
    image_token = getattr(cfg, "image_token_id", None) or getattr(cfg, "image_token_index")
    vocab = cfg.get_text_config().vocab_size
    ids = torch.randint(100, min(vocab, 30000), (batch_size, seq_len))
    ids[:, :n_img] = image_token
    labels = torch.full_like(ids, -100)
    labels[:, -SUPERVISED:] = ids[:, -SUPERVISED:]
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device),
            **images}, n_img


def model_flops_per_token(model, chosen):
    n_all = sum(p.numel() for p in model.parameters())
    crossed = n_all if chosen else 0  # the backward crosses (nearly) everything after the first trained part
    return 2 * n_all + 4 * crossed


def bench(name, trainable="encoder,projector", batch_size=1, seq_len=1024, grad_ckpt=True, lora=0, steps=10, warmup=3,
          device=None):
    from iqa_vlm.level_ce import level_cross_entropy
    from iqa_vlm.memory_plan import estimate
    from iqa_vlm.model import SupervisedLogits
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")
    model, chosen = build(name, device, trainable, grad_ckpt, lora)
    batch, n_img = synthetic_batch(model, batch_size, seq_len, device)
    net = SupervisedLogits(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.98), eps=1e-6)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type="cuda" if on_gpu else "cpu", dtype=torch.bfloat16, enabled=on_gpu):
            logits, targets = net(**batch)
            loss = level_cross_entropy(logits, targets, inplace_backward=True)[0].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if on_gpu:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    tokens = batch_size * seq_len
    est = estimate(model, chosen, batch_size, seq_len, grad_ckpt, image_tokens=n_img)
    result = {"model": name, "device": torch.cuda.get_device_name() if on_gpu else "cpu", "trainable": trainable, "lora": lora,
              "batch_size": batch_size, "seq_len": seq_len, "image_tokens": n_img, "grad_ckpt": grad_ckpt,
              "step_s": step_s, "steps_per_s": 1 / step_s, "samples_per_s": batch_size / step_s, "tokens_per_s": tokens / step_s,
              "estimated_gib": est["total"] / 2 ** 30, "params": est["params"], "trained_params": est["trained_params"]}
    if on_gpu:
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        result["measured_over_estimated"] = result["peak_gib"] / result["estimated_gib"]
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in result["device"]), None)
        if peak:
            result["mfu"] = model_flops_per_token(model, chosen) * tokens / step_s / (peak * 1e12)
    return result


def loader_bench(steps=60, workers=(0, 1)):
    """The tiny demo through train.py with and without data-loader workers, in this one run: samples/s and data wait."""
    out = {}
    for w in workers:
        run = f"out/bench_loader_w{w}"
        cmd = [sys.executable, os.path.join(ROOT, "train.py"), os.path.join(ROOT, "config", "demo.py"), "--max_steps", str(steps), "--log_every", str(steps // 3),
               "--num_workers", str(w), "--out", run, "--overwrite", "true"]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        log = [json.loads(line) for line in open(os.path.join(run, "log.jsonl")) if '"loss"' in line][1:]  # after step 1
        out[f"workers_{w}"] = {"samples_per_s": sum(r["samples_per_s"] for r in log) / len(log),
                               "data_wait": sum(r["data_wait"] for r in log) / len(log)}
        print(f"num_workers {w}: {out[f'workers_{w}']['samples_per_s']:.1f} samples/s, data wait "
              f"{out[f'workers_{w}']['data_wait']:.0%}", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None, help="a memory_plan preset (random weights)")
    ap.add_argument("--model", default=None, help="tiny or tiny:FAMILY (CPU-sized)")
    ap.add_argument("--trainable", default="encoder,projector")
    ap.add_argument("--lora", type=int, default=0)
    ap.add_argument("--batch_size", type=int, default=1)
    ap.add_argument("--seq_len", type=int, default=1024)
    ap.add_argument("--grad_ckpt", default="true", choices=["true", "false"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--loader", default="false", choices=["true", "false"], help="also time the demo's data loader")
    ap.add_argument("--out", default=None, help="write the results as JSON")
    args = ap.parse_args(argv)
    results = {}
    if args.preset or args.model:
        r = bench(args.preset or args.model, args.trainable, args.batch_size, args.seq_len, args.grad_ckpt == "true", args.lora,
                  args.steps, args.warmup, args.device)
        print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
        results["step"] = r
    if args.loader == "true":
        results["loader"] = loader_bench()
    if not results:
        ap.error("give --preset NAME or --model tiny[:FAMILY], and/or --loader true")
    if args.out:
        atomic_write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
