# The tiny demo's GRPO run: VisualQuality-R1's rewards (ranking among each batch's images + format) on the demo's
# scoring view, after the perception and format warm starts (docs/grpo.md, "The tiny demo"). The rewards, advantages,
# clipped objective and KL are the paper's. The sizes, the lr (a random tiny model needs a large one), the short
# completion (the warm start's answers are 12 tokens) and beta 0.5 are ours: at the paper's 0.04 the tiny model's
# answers collapsed to one score, which the ranking reward pays 0.707 a sample, more than guessing earns.
#   python train_grpo.py config/grpo_demo.py --init out/r1_format --out out/r1
model = "tiny:tags"
data = "data/demo_score"
reward = "vqr1"
trainable = "head"       # the score read out from the last hidden state (which the perception warm start made informative)
batch_size = 16
num_generations = 6
max_steps = 600
lr = 3e-3
lr_scheduler = "constant"
warmup_steps = 10
beta = 0.5
max_completion_length = 16
eval_every = 100
eval_limit = 256
eval_k = 4
grad_ckpt = False
log_every = 50
