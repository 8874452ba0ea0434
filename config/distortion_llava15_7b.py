# Distortion perception, freeze by component (Li, Sun, Chen, Nishida, "Investigate the low-level visual
# perception in vision-language based image quality assessment", Table 1). From the paper: LIVE + CSIQ + KADID-10k
# + TID2013 in 8 classes, split 8:2 at random; AdamW (0.9, 0.98), eps 1e-6 (train.py's own); about 20,000
# iterations; a label-smoothed NLL loss; four RTX A6000. The paper's backbone, mPLUG-Owl2-7B, is
# distortion_mplug_owl2.py; this file runs the same study on LLaVA-1.5-7B (a CLIP ViT-L/14 encoder and a
# LLaMA-2-7B-class decoder), the question being whether the finding holds on another VLM. Not stated in the paper,
# this repo's choice: lr 2e-5 (Q-Align's), batch 8 per GPU, smoothing 0.1, train.py's cosine schedule, 3 % warmup
# and no weight decay.
#   python prepare_data.py --task distortion --live ... --csiq ... --kadid ... --tid2013 ... --out data/distortion
#   python sweeps/ablation.py --config config/distortion_llava15_7b.py --torchrun 4 --partial_llm llm:24-31 --train_args "--fsdp true"
#   torchrun --standalone --nproc_per_node=4 train.py config/distortion_llava15_7b.py --trainable encoder --out out/enc
model = "llava-hf/llava-1.5-7b-hf"
data = "data/distortion"
trainable = "encoder,projector"   # ablation.py sets each of Table 1's configurations
max_steps = 20000
batch_size = 8
lr = 2e-5
label_smoothing = 0.1
grad_ckpt = True
adam_beta1 = 0.9         # the distortion paper's AdamW (0.9, 0.98), eps 1e-6
adam_beta2 = 0.98
adam_epsilon = 1e-6
