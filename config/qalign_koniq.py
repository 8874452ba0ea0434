# Q-Align-style scoring on KonIQ-10k: one of the nine questions of Q-Align's training data (prepare_data.py
# --paraphrases true) -> "The quality of the image is {level}.", evaluated with "How would you rate the quality of this
# image?" by the closed-set softmax over the five level tokens. Q-Align's released scripts/l1_koniq.sh:
# lr 2e-5, cosine, warmup 3 %, no weight decay, 3 epochs, batch 8 per GPU, bf16, gradient checkpointing, every
# parameter trained (q_align/train/train_mem.py sets requires_grad on all of them without LoRA: vision model,
# abstractor, LM, lm_head and the token embeddings), on at least four A6000 (DeepSpeed ZeRO-3: here --fsdp true), from
# MAGAer13/mplug-owl2-llama2-7b (native, mplug_owl2.py), on KonIQ's official training part with the images and labels
# of Q-Align's released train_koniq.json (prepare_data.py's default --level_rule released: 7,046 images, 2,010 tested).
# On one 48 GB GPU use Q-Align's LoRA recipe instead: config/qalign_koniq_lora.py.
#   python prepare_data.py --task score --koniq /data/koniq10k --val_frac 0 --paraphrases true --out data/koniq
#   torchrun --standalone --nproc_per_node=4 train.py config/qalign_koniq.py --out out/qalign_koniq
#   python evaluate.py score --ckpt out/qalign_koniq --data data/koniq
model = "MAGAer13/mplug-owl2-llama2-7b"
data = "data/koniq"
trainable = "encoder,projector,llm,head"
fsdp = True
epochs = 3
batch_size = 8
lr = 2e-5
warmup_frac = 0.03
weight_decay = 0.0
label_smoothing = 0.0
grad_ckpt = True
adam_beta1 = 0.9         # Q-Align's scripts/l1_koniq.sh passes no optimizer flags: transformers' Trainer defaults
adam_beta2 = 0.999
adam_epsilon = 1e-8
# Q-Align's training code: --version v1 puts conversation v1's system prompt first in every sample, and its
# preprocess_multimodal moves the image ahead of the question ("<|image|>\n" + question); evaluation has neither
system_prompt = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions."
image_first = True
