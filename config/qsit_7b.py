# Q-SiT (the paper's primary model, LLaVA-OneVision-7B) on ONE 48 GB GPU (A6000 class). Q-SiT trains all of it (the
# tunable parts of LLaVA-NeXT's finetune_ov.sh, which its README says to modify) on 8 A800 80 GB (the paper); a full
# fine-tune does not fit one GPU (train.py --dry_run ... --lora 0; docs/results.md), so this recipe trains the vision
# tower and projector fully and the LM through LoRA (our choice where the paper has none: rank 128, alpha 256 and lr
# 2e-4 as Q-Align's LoRA recipe, the projector fully at that lr; the vision tower keeps finetune_ov.sh's 2e-6).
# Batch 4 x 8192 tokens: LLaVA-OV's anyres images take up to 7,290 visual tokens (the estimate: docs/results.md).
# Data, mix, balance and validation as config/qsit_mini.py; batch 64 = 4 per step x 16 accumulated.
#   python train.py --dry_run true config/qsit_7b.py --model llava-onevision-7b --seq_len 8192   # the memory estimate
#   python train.py config/qsit_7b.py --out out/qsit_7b
model = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
data = "data/score,data/qinstruct,data/llava"
mix = "score:1.0,interpret:2.5,general:1.04"
balance = True
balance_lambda = 0.2146      # 1 / 4.66, the paper's reference loss ratio L_S / L_I
interpret_val = "data/llvqa_dev"
trainable = "encoder,projector,llm"
lora = 128
lora_alpha = 256
epochs = 3
batch_size = 4
grad_accum = 16
lr = 2e-4
lr_encoder = 2e-6
warmup_frac = 0.03
weight_decay = 0.0
label_smoothing = 0.0
grad_ckpt = True
adam_beta1 = 0.9         # Q-SiT trains with LLaVA-OneVision's Trainer and sets no optimizer values: transformers' defaults
adam_beta2 = 0.999
adam_epsilon = 1e-8
system_prompt = "You are a helpful assistant."   # LLaVA-NeXT's preprocess_qwen, as Q-SiT trains
image_first = True                                # LLaVA-NeXT's train.py: "<image>\n" + question
