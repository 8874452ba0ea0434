# VisualQuality-R1's recipe (config/visualquality_r1_qwen25vl.py) on Qwen3-VL-8B-Instruct: a variant of ours, not a
# paper's (their code trains Qwen2.5-VL only). Every value but the model is the Qwen2.5-VL config's.
#   python train_grpo.py config/visualquality_r1_qwen3vl.py --dry_run true --model qwen3-vl-8b
#   python train_grpo.py config/visualquality_r1_qwen3vl.py --out out/vq_r1_qwen3
model = "Qwen/Qwen3-VL-8B-Instruct"
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
prompt_tokens = 1024
grad_ckpt = True
seed = 42
eval_every = 200
eval_limit = 256
