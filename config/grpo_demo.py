# The tiny demo's GRPO run: VisualQuality-R1's rewards (ranking among each batch's images + format) on the demo's
# scoring view, from the format warm start. Rewards, advantages, the clipped objective and the KL are the paper's; the
# sizes and the lr are ours for a 2-core CPU (a random tiny model needs a large lr), as is the short completion: the
# warm start's answers are 12 tokens.
#   python train_grpo.py config/grpo_demo.py --init out/r1_format --out out/r1
model = "tiny:tags"
data = "data/demo_score"
reward = "vqr1"
trainable = "head"       # a linear read-out of the score from the random LM's last hidden state, steered by the image
batch_size = 16
num_generations = 6
max_steps = 300
lr = 3e-3
lr_scheduler = "constant"
warmup_steps = 10
beta = 0.04
max_completion_length = 16
eval_every = 100
eval_limit = 256
eval_k = 4
grad_ckpt = False
log_every = 25
