# The tiny demo's format warm start (train_grpo.py --objective format), after its perception warm start (train.py's
# distortion demo on tiny:tags, which never sees a MOS). A random tiny model never writes <think>/<answer>, so there would
# be no score to rank; here it learns the tags with a random integer as the score, nothing about quality. Our settings
# for the demo, not a paper's.
#   python train.py config/demo.py --model tiny:tags --out out/r1_perception
#   python train_grpo.py config/grpo_demo_format.py --init out/r1_perception --out out/r1_format
model = "tiny:tags"
data = "data/demo_score"
objective = "format"
trainable = "head"       # the tags' embeddings and head rows only: trained further, the whole model would learn to ignore
                         # the image at the score (its targets are random)
batch_size = 16
max_steps = 150
lr = 2e-3
lr_scheduler = "constant"
warmup_steps = 10
grad_ckpt = False        # a 2-layer model on 32x32 images: nothing to save
log_every = 10
