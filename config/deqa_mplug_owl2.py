# DeQA-Score (You et al., CVPR 2025) as its authors' scripts/train.sh trains it: mPLUG-Owl2-7B, every parameter
# trained (src/train/train_mem.py without LoRA: vision model, abstractor, LM, lm_head and embeddings), KonIQ-10k +
# SPAQ + KADID-10k in one set, each batch 16 pairs per GPU (an image and a partner from the same dataset), soft level
# labels by KL at the level position (weight 1.0), the fidelity loss over the pairs (1.0), CE + KL of both images at
# 0.05; lr 2e-5, cosine, warmup 3 %, no weight decay, 3 epochs, bf16, gradient checkpointing, DeepSpeed ZeRO-3 (here
# --fsdp true). Their README: at least 8 A6000 or 4 A100. Unsharded it does not fit one GPU (--dry_run with --seq_len
# 128, 65 visual tokens and the text; docs/results.md), so FSDP shards it over 8 GPUs; on one 48 GB GPU use
# config/deqa_mplug_owl2_lora.py. Their split files (split.json, published as data in HF zhiyuanyou/Data-DeQA-Score, not in the code repo) are not read here: KonIQ keeps
# its official split here, SPAQ and KADID 80/20 by reference content; --val_frac 0: all training data trains.
#   python prepare_data.py --task score --koniq /data/koniq10k --spaq /data/SPAQ --kadid /data/kadid10k --val_frac 0 --out data/deqa
#   python train.py --dry_run true config/deqa_mplug_owl2.py --model mplug-owl2-7b --seq_len 128   # the estimate
#   torchrun --standalone --nproc_per_node=8 train.py config/deqa_mplug_owl2.py --out out/deqa
#   python evaluate.py score --ckpt out/deqa --data data/deqa
model = "MAGAer13/mplug-owl2-llama2-7b"
data = "data/deqa"
trainable = "encoder,projector,llm,head"
fsdp = True
score_loss = "kl"
kl_weight = 1.0
fidelity = 1.0
next_token_weight = 0.05
epochs = 3
batch_size = 16          # pairs (32 images) per GPU per step
lr = 2e-5
warmup_frac = 0.03
weight_decay = 0.0
label_smoothing = 0.0
grad_ckpt = True
adam_beta1 = 0.9         # their scripts/train.sh passes no optimizer flags: transformers' Trainer defaults
adam_beta2 = 0.999
adam_epsilon = 1e-8
# DeQA-Score's training code: --version v1 puts conversation v1's system prompt first in every sample, and its
# preprocess_multimodal moves the image ahead of the question ("<|image|>\n" + question); evaluation has neither
system_prompt = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions."
image_first = True
