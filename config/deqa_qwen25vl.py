# DeQA-Score's losses (soft labels by KL, fidelity over same-dataset pairs, CE + KL at 0.05) on Qwen2.5-VL-7B, one
# 48 GB GPU. Not a paper's recipe (DeQA-Score trains mPLUG-Owl2 only): its losses, weights, lr 2e-5, schedule and 16
# pairs per step (DeQA's per-GPU batch: its global step is 16 x GPUs); ours: the vision tower and merger trained fully, the LM through LoRA rank 128 / alpha 256 on every
# linear layer, 4 pairs x 4 accumulated per step. 1280 tokens per sample: a 1024x768 KonIQ image is about 1,000
# visual tokens at Qwen's 28-pixel patches (set --seq_len to what your processor's max_pixels gives).
# 8 images x 1280 tokens per micro-step (the dry-run estimate: docs/results.md).
#   python train.py --dry_run true config/deqa_qwen25vl.py --model qwen2.5-vl-7b --seq_len 1280
#   python train.py config/deqa_qwen25vl.py --out out/deqa_qwen
model = "Qwen/Qwen2.5-VL-7B-Instruct"
data = "data/deqa"
trainable = "encoder,projector,llm"
lora = 128
lora_alpha = 256
score_loss = "kl"
kl_weight = 1.0
fidelity = 1.0
next_token_weight = 0.05
epochs = 3
batch_size = 4           # pairs (8 images) per micro-step
grad_accum = 4           # 16 pairs per optimizer step, as DeQA's per-GPU batch
lr = 2e-5
warmup_frac = 0.03
weight_decay = 0.0
label_smoothing = 0.0
grad_ckpt = True
adam_beta1 = 0.9         # DeQA-Score's scripts/train.sh passes no optimizer flags: transformers' Trainer defaults
adam_beta2 = 0.999
adam_epsilon = 1e-8
