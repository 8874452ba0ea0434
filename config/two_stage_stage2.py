# Two-stage reasoning, stage 2: inference, the description alone (text only) -> "The quality of the image is
# {level}." (Li, Sun, Chen, Nishida, "Building reasonable inference for vision-language models in blind image
# quality assessment"): 3,000 iterations after stage 1. Text-only batches train the LM alone. --init takes stage 1's
# trained tensors; a LoRA stage 1 must be exported first (train.py refuses --init from LoRA runs), so this recipe
# starts from stage 1's export: run stage 1 with --export out/stage1_hf, then
#   python train.py config/two_stage_stage2.py --out out/stage2
model = "out/stage1_hf"
data = "data/pathway"
stage = 2
trainable = "llm"
lora = 128
lora_alpha = 256
lr = 2e-4
max_steps = 3000
batch_size = 8
label_smoothing = 0.1
grad_ckpt = True
adam_beta1 = 0.9         # the two-stage paper's AdamW (0.9, 0.98), eps 1e-6
adam_beta2 = 0.98
adam_epsilon = 1e-6
