# DeQA-Score's losses (soft labels by KL, fidelity over same-dataset pairs, CE + KL at 0.05) on LLaVA-OneVision-7B, one
# 48 GB GPU. Not a paper's recipe (DeQA-Score trains mPLUG-Owl2 only): its losses, weights, lr 2e-5, schedule and 16
# pairs per step (DeQA's per-GPU batch: its global step is 16 x GPUs); ours: the vision tower and projector trained fully, the LM through LoRA rank 128 / alpha 256 on every
# linear layer (as config/qsit_7b.py), 2 pairs x 8 accumulated per step so the anyres images fit.
# 4 images x 8192 tokens per micro-step: anyres images take up to 7,290 visual tokens each. The dry-run estimate is in
# docs/results.md.
#   python train.py --dry_run true config/deqa_llava_ov.py --model llava-onevision-7b --seq_len 8192
#   python train.py config/deqa_llava_ov.py --out out/deqa_ov
model = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
data = "data/deqa"
trainable = "encoder,projector,llm"
lora = 128
lora_alpha = 256
score_loss = "kl"
kl_weight = 1.0
fidelity = 1.0
next_token_weight = 0.05
epochs = 3
batch_size = 2           # pairs (4 images) per micro-step
grad_accum = 8           # 16 pairs per optimizer step, as DeQA's per-GPU batch
lr = 2e-5
warmup_frac = 0.03
weight_decay = 0.0
label_smoothing = 0.0
grad_ckpt = True
adam_beta1 = 0.9         # DeQA-Score's scripts/train.sh passes no optimizer flags: transformers' Trainer defaults
adam_beta2 = 0.999
adam_epsilon = 1e-8
