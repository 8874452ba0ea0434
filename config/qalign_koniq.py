# Q-Align-style scoring on KonIQ-10k: "How would you rate the quality of this image?" -> "The quality of the image is
# {level}.", scored by the closed-set softmax over the five level tokens. Q-Align's released scripts/l1_koniq.sh:
# lr 2e-5, cosine, warmup 3 %, no weight decay, 3 epochs, batch 8 per GPU, bf16, gradient checkpointing, every part
# trained (vision model, abstractor, LM), on at least four A6000 (DeepSpeed ZeRO-3: here --fsdp true), from
# MAGAer13/mplug-owl2-llama2-7b (native, mplug_owl2.py). On one 48 GB GPU use Q-Align's LoRA recipe instead
# (l1_koniq_lora.sh: LM through LoRA rank 128 / alpha 256, lr 2e-4, 1 epoch, abstractor frozen; 22.8 GiB estimated):
#   python train.py config/qalign_koniq.py --trainable llm --lora 128 --lora_alpha 256 --lr 2e-4 --epochs 1 --fsdp false
#   python prepare_data.py --task score --koniq /data/koniq10k --out data/koniq   # KonIQ's official split
#   torchrun --standalone --nproc_per_node=4 train.py config/qalign_koniq.py --out out/qalign_koniq
#   python evaluate.py score --ckpt out/qalign_koniq --data data/koniq
model = "MAGAer13/mplug-owl2-llama2-7b"
data = "data/koniq"
trainable = "encoder,projector,llm"
fsdp = True
epochs = 3
batch_size = 8
lr = 2e-5
warmup_frac = 0.03
weight_decay = 0.0
label_smoothing = 0.0
grad_ckpt = True
