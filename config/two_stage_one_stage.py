# Two-stage reasoning, the one-stage baseline (Li, Sun, Chen, Nishida, "Building reasonable inference for
# vision-language models in blind image quality assessment"): image -> the whole Q-Pathway feedback, 9,000
# iterations (= stage 1 + stage 2 of the two-stage run). From the paper: 6,000 training samples of Q-Pathway; AdamW
# (0.9, 0.98), eps 1e-6; a label-smoothed NLL loss; four RTX A6000; the backbone mPLUG-Owl2-7B (native,
# mplug_owl2.py). Not stated in the paper, this repo's choice: which parts train (every one: the encoder fully at lr
# 2e-5, the projector fully and the LM through LoRA at 2e-4; rank 128, alpha 256 and lr 2e-4 as Q-Align's LoRA script
# on the same backbone, but on every linear layer and without its dropout), batch, smoothing 0.1, and train.py's
# cosine schedule, 3 % warmup and no weight decay. One 48 GB GPU:
# train.py --dry_run true --model mplug-owl2-7b --trainable encoder,projector,llm --lora 128 --batch_size 8
# --seq_len 256 fits (docs/results.md; Q-Pathway answers are longer: --seq_len 512 for them).
#   python prepare_data.py --task pathway --llava_json q-pathway.json --image_root /data/q-pathway --out data/pathway
#   python train.py config/two_stage_one_stage.py --out out/one_stage
model = "MAGAer13/mplug-owl2-llama2-7b"
data = "data/pathway/one_stage"
trainable = "encoder,projector,llm"
lora = 128
lora_alpha = 256
lr = 2e-4
lr_encoder = 2e-5
max_steps = 9000
batch_size = 8
label_smoothing = 0.1
grad_ckpt = True
adam_beta1 = 0.9         # the two-stage paper's AdamW (0.9, 0.98), eps 1e-6
adam_beta2 = 0.98
adam_epsilon = 1e-6
