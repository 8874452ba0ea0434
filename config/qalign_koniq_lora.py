# Q-Align's LoRA recipe on KonIQ-10k, for one 48 GB GPU: its scripts/l1_koniq_lora.sh run through
# q_align/train/train_mem.py (Q-Future/Q-Align, main at 14dfdff). From that code: LoRA rank 128, alpha 256, dropout
# 0.05 on the LM's q_proj and the visual branch of v_proj (v_proj.multiway.1) in every decoder layer (its
# find_all_linear_names), every other parameter frozen (with lora_enable only "lora_" tensors train, and
# --tune_visual_abstractor False keeps the abstractor frozen); lr 2e-4, cosine, warmup 3 %, no weight decay, 1 epoch,
# batch 32 per device, bf16, gradient checkpointing, transformers' AdamW defaults (the script sets none). The prompt
# and answers, the images and labels as config/qalign_koniq.py; all of them train (no validation split):
#   python prepare_data.py --task score --koniq /data/koniq10k --val_frac 0 --paraphrases true --out data/koniq
#   python train.py --dry_run true config/qalign_koniq_lora.py --model mplug-owl2-7b --seq_len 128   # the estimate
#   python train.py config/qalign_koniq_lora.py --out out/qalign_koniq_lora
#   python evaluate.py score --ckpt out/qalign_koniq_lora --data data/koniq
model = "MAGAer13/mplug-owl2-llama2-7b"
data = "data/koniq"
trainable = "llm"
lora = 128
lora_alpha = 256
lora_dropout = 0.05
lora_targets = "q_proj|v_proj.multiway.1"
epochs = 1
batch_size = 32
lr = 2e-4
warmup_frac = 0.03
weight_decay = 0.0
label_smoothing = 0.0
grad_ckpt = True
adam_beta1 = 0.9         # l1_koniq_lora.sh passes no optimizer flags: transformers' Trainer defaults
adam_beta2 = 0.999
adam_epsilon = 1e-8
# Q-Align's training code: --version v1 puts conversation v1's system prompt first in every sample, and its
# preprocess_multimodal moves the image ahead of the question ("<|image|>\n" + question); evaluation has neither
system_prompt = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions."
image_first = True
