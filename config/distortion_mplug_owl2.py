# Distortion perception, freeze by component, on the paper's backbone (Li, Sun, Chen, Nishida, "Investigate the
# low-level visual perception in vision-language based image quality assessment", Table 1): mPLUG-Owl2-7B (native,
# mplug_owl2.py). From the paper: LIVE + CSIQ + KADID-10k + TID2013 in 8 classes, split 8:2 at random; 448 px images,
# 64 visual tokens; AdamW (0.9, 0.98), eps 1e-6 (train.py's own); about 20,000 iterations; a label-smoothed NLL loss;
# four RTX A6000. Not stated in the paper, this repo's choice: lr 2e-5 (Q-Align's on the same backbone), batch 8 per
# GPU, smoothing 0.1, which LM layers "partial" trains (llm:24-31, the last quarter), and train.py's cosine schedule,
# 3 % warmup and no weight decay.
# One 48 GB GPU (--seq_len 256: 65 visual tokens + the prompt and answer stay under it) fits every row but those that
# train the whole LM (dry-run estimates: docs/results.md); those need the paper's four GPUs (--fsdp true under
# torchrun) or LoRA on one (--lora 128; then the LM learns through adapters, not as in the paper).
#   python prepare_data.py --task distortion --live ... --csiq ... --kadid ... --tid2013 ... --out data/distortion
#   python sweeps/ablation.py --config config/distortion_mplug_owl2.py --partial_llm llm:24-31 \
#       --baselines q-future/q-instruct-mplug-owl2-1031 --torchrun 4 --train_args "--fsdp true"
#   python analyze.py distortion-tables --ablation out/ablation/ablation.json --shift out/semantic_shift/semantic_shift.json
model = "MAGAer13/mplug-owl2-llama2-7b"
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
