# Two-stage reasoning, stage 1: perception, image -> low-level description without its conclusion (Li, Sun, Chen,
# Nishida, "Building reasonable inference for vision-language models in blind image quality assessment"): 6,000
# iterations. See two_stage_one_stage.py for what the paper states and what is this repo's choice (LoRA on the
# LM) and the memory estimate. Stage 2 (two_stage_stage2.py) starts from this run's folder.
#   python train.py config/two_stage_stage1.py --out out/stage1
model = "MAGAer13/mplug-owl2-llama2-7b"
data = "data/pathway"
stage = 1
trainable = "encoder,projector,llm"
lora = 128
lora_alpha = 256
lr = 2e-4
lr_encoder = 2e-5
max_steps = 6000
batch_size = 8
label_smoothing = 0.1
grad_ckpt = True
adam_beta1 = 0.9         # the two-stage paper's AdamW (0.9, 0.98), eps 1e-6
adam_beta2 = 0.98
adam_epsilon = 1e-6
