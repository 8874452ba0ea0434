# VisualQuality-R1 (Wu et al., arXiv 2505.14460) on Qwen2.5-VL-7B-Instruct, trained on KADID-10K, on one 48 GB GPU.
# Theirs (run_scripts/KADID-10K/one_node_run_kadid.sh, grpo_jsonl.py, GRPOConfig defaults): 8 GPUs x 48 completions = 8
# images x 6 answers each, the whole model trained (vision not frozen) under ZeRO-3, lr 1e-6, beta 0.04, epsilon 0.2,
# sampling at temperature 1, 256 completion tokens, 10 epochs, data seed 42. The rewards, prompt, advantages and
# objective are theirs (grpo.py).
# Ours, because full tuning cannot fit one 48 GB GPU (the dry run: 176.7 GiB): the language model through LoRA rank 64 /
# alpha 128 on every linear layer (its reference: the adapters off), the vision tower and merger trained fully as theirs;
# 8 accumulated micro-steps of 8 images keep their 64 images per optimizer step, each micro-step ranking its own 8 images
# as each of their GPUs does; losses in chunks of 12 completions (the same gradient, less memory).
#   python prepare_data.py --task score --kadid /data/kadid10k --test_frac 0 --val_frac 0 --out data/kadid_all  # all of it trains
#   python train_grpo.py config/visualquality_r1_qwen25vl.py --dry_run true --model qwen2.5-vl-7b
#   python train_grpo.py config/visualquality_r1_qwen25vl.py --out out/vq_r1
#   python evaluate.py sampled-score --ckpt out/vq_r1 --data data/koniq_all,data/spaq_all,data/livec_all --k 1
model = "Qwen/Qwen2.5-VL-7B-Instruct"
data = "data/kadid_all"
reward = "vqr1"
trainable = "encoder,projector,llm"
lora = 64
lora_alpha = 128
batch_size = 8
num_generations = 6
grad_accum = 8
completion_chunk = 12
epochs = 10
lr = 1e-6
lr_scheduler = "linear"
beta = 0.04
epsilon = 0.2
temperature = 1.0
max_completion_length = 256
prompt_tokens = 1024     # their max_prompt_length (a KADID-10K image is ~250 visual tokens at Qwen's default pixels)
grad_ckpt = True
seed = 42
eval_every = 200
eval_limit = 256
