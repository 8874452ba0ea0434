# Q-SiT-mini (Zhang, Wu, Jia, Lin, Zhai, "Teaching LMMs for image quality scoring and interpreting"): LLaVA-OneVision
# 0.5B trained on scoring (KonIQ + SPAQ), interpreting (Q-Instruct) and general (LLaVA-150K) data. From the paper:
# batch 64, lr 1e-5, 3 epochs; the system turn "Assume you are an image quality evaluator." on scoring data in the
# mix. From its released training config (training_jsons/single_image.yaml): KonIQ and SPAQ in full, 22 % of
# Q-Instruct, 8 % of LLaVA-150K, i.e. per-source weights 1.0 / 0.22 / 0.08 of each source's own size (train.py
# --mix); and from the LLaVA-OneVision finetune script it modifies: vision tower, projector and LM all trained,
# vision tower lr 2e-6, cosine after 3 % warmup, no weight decay. Batch 64 here: 8 per step x 8 accumulated on one GPU.
#   python prepare_data.py --task score --koniq /data/koniq10k --spaq /data/SPAQ --out data/score
#   python prepare_data.py --task interpret --llava_json q-instruct.json --image_root /data/q-instruct --out data/qinstruct
#   python prepare_data.py --task general --llava_json llava_instruct_150k.json --image_root /data/coco/train2017 --out data/llava
#   python train.py config/qsit_mini.py --out out/qsit_mini
#   python evaluate.py score --ckpt out/qsit_mini --data data/score
model = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
data = "data/score,data/qinstruct,data/llava"
mix = "score:1.0,interpret:0.22,general:0.08"
trainable = "encoder,projector,llm"
epochs = 3
batch_size = 8
grad_accum = 8
lr = 1e-5
lr_encoder = 2e-6
warmup_frac = 0.03
weight_decay = 0.0
label_smoothing = 0.0
grad_ckpt = True
