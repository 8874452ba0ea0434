# Q-Insight's scoring task (Li et al., arXiv 2503.22679; bytedance/Q-Insight run_qinsight_score_and_dist.sh) on
# Qwen2.5-VL-7B-Instruct, KonIQ-10k's training images, one 48 GB GPU. Theirs: 8 answers per image, 8 completions per GPU
# per micro-step (one image), 2 accumulated, beta 0.001, lr 1e-6, epsilon 0.2, temperature 1, 256 completion tokens,
# 10 epochs, score threshold 0.35, the whole model trained under ZeRO-3, and a degradation task mixed in (not built here).
# Ours: LoRA rank 64 on the language model as in config/visualquality_r1_qwen25vl.py, 16 accumulated micro-steps of one
# image to keep their 16 images per optimizer step on 8 GPUs.
#   python prepare_data.py --task score --koniq /data/koniq10k --out data/koniq
#   python train_grpo.py config/qinsight_qwen25vl.py --out out/qinsight
model = "Qwen/Qwen2.5-VL-7B-Instruct"
data = "data/koniq"
reward = "qinsight"
trainable = "encoder,projector,llm"
lora = 64
lora_alpha = 128
batch_size = 1
num_generations = 8
grad_accum = 16
epochs = 10
lr = 1e-6
beta = 0.001
epsilon = 0.2
temperature = 1.0
max_completion_length = 256
qinsight_threshold = 0.35
grad_ckpt = True
seed = 42
eval_every = 200
eval_limit = 256
