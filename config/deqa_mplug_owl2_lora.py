# DeQA-Score's LoRA recipe (its scripts/train_lora.sh; the released DeQA-Score-LoRA-Mix3), for one 48 GB GPU: as
# config/deqa_mplug_owl2.py, but the LM through LoRA rank 128, alpha 256, dropout 0.05 on q_proj and the visual branch
# of v_proj (v_proj.multiway.1) of every decoder layer, as their find_all_lora_names picks them; the vision model and
# the abstractor train fully; lr 2e-5 (their LoRA script keeps it). Their README runs it on 2 RTX 3090 (ZeRO-3) at 16
# pairs each: here 16 pairs x 2 accumulated on one GPU, the same 32 pairs per step.
# 16 pairs = 32 images x 128 tokens per micro-step (the dry-run estimate: docs/results.md).
#   python train.py --dry_run true config/deqa_mplug_owl2_lora.py --model mplug-owl2-7b --seq_len 128
#   python train.py config/deqa_mplug_owl2_lora.py --out out/deqa_lora --export out/deqa_lora_hf
model = "MAGAer13/mplug-owl2-llama2-7b"
data = "data/deqa"
trainable = "encoder,projector,llm"
lora = 128
lora_alpha = 256
lora_dropout = 0.05
lora_targets = "q_proj|v_proj.multiway.1"
score_loss = "kl"
kl_weight = 1.0
fidelity = 1.0
next_token_weight = 0.05
epochs = 3
batch_size = 16          # pairs (32 images) per micro-step
grad_accum = 2           # their 2 GPUs
lr = 2e-5
warmup_frac = 0.03
weight_decay = 0.0
label_smoothing = 0.0
grad_ckpt = True
adam_beta1 = 0.9         # their scripts/train_lora.sh passes no optimizer flags: transformers' Trainer defaults
adam_beta2 = 0.999
adam_epsilon = 1e-8
# DeQA-Score's training code: --version v1 puts conversation v1's system prompt first in every sample, and its
# preprocess_multimodal moves the image ahead of the question ("<|image|>\n" + question); evaluation has neither
system_prompt = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions."
image_first = True
