# Q-SiT-mini (Zhang, Wu, Jia, Lin, Zhai, "Teaching LMMs for image quality scoring and interpreting"): LLaVA-OneVision
# 0.5B trained on scoring D1 (KonIQ + SPAQ), interpreting D2 (Q-Instruct) and general D3 (LLaVA-150K) data.
# From the paper (Sec. IV-A, IV-B): batch 64, lr 1e-5; D1:D2:D3 = 1.00:2.50:1.04 as record ratios relative to |D1|
# (train.py --mix); "Assume you are an image quality evaluator." opening each scoring question. The paper trains the
# 0.5B model until the validation loss plateaus and its 7B primary model 3 epochs: 3 epochs here is our choice. Once
# per epoch the mix is moved by the validation-loss ratio against λ ≈ 1/4.66 (Alg. 1 step 3, which the paper applies
# to the 7B primary model, with λ from its 0.5B runs: balance on this mini model is our choice; for other data, find
# λ with analyze.py mix-ratio --run and pass its qsit_step3.py after this file). Validation: 10 % of the scoring train data (prepare_data.py --val_frac) and LLVisionQA-dev for interpreting
# (--interpret_val; the paper's 10 %: its released training JSONs hold no such split). From the LLaVA-OneVision
# finetune script Q-SiT modifies (LLaVA-NeXT's finetune_ov.sh and train.py): vision tower, projector and the whole LM
# trained, lm_head and embeddings included (mm_tunable_parts ... mm_language_model), vision tower lr 2e-6, cosine after
# 3 % warmup, no weight decay; its training code puts the system message "You are a helpful assistant." first and the
# image ahead of the question (system_prompt, image_first below). Batch 64 here: 8 per step x 8 accumulated.
# D1's levels: those of the released train_{koniq,spaq}_qsit.json by default (prepare_data.py --level_rule released;
# --level_rule eq1 is the paper's Eq. 1 over each dataset's min and max, which differs on 582 KonIQ and 958 SPAQ labels).
# Q-SiT's released data config (training_jsons/single_image.yaml: all of KonIQ/SPAQ, 22 % of Q-Instruct, 8 % of
# LLaVA-150K) is the alternative mix "score:1.0,interpret:X,general:Y" with X, Y those shares times |D2|/|D1|, |D3|/|D1|.
#   python prepare_data.py --task score --koniq /data/koniq10k --spaq /data/SPAQ --val_frac 0.1 --out data/score
#   python prepare_data.py --task interpret --llava_json q-instruct.json --image_root /data/q-instruct --exclude_test data/score --out data/qinstruct
#   python prepare_data.py --task general --llava_json llava_instruct_150k.json --image_root /data/coco/train2017 --exclude_test data/score --out data/llava
#   python prepare_data.py --task qbench --qbench_json llvisionqa_dev.json --image_root /data/qbench/images --out data/llvqa_dev
#   python train.py config/qsit_mini.py --out out/qsit_mini
#   python evaluate.py score --ckpt out/qsit_mini --data data/score --prompt qsit && python evaluate.py qbench --ckpt out/qsit_mini --data data/llvqa_dev
model = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
data = "data/score,data/qinstruct,data/llava"
mix = "score:1.0,interpret:2.5,general:1.04"
balance = True
balance_lambda = 0.2146      # 1 / 4.66, the paper's reference loss ratio L_S / L_I
interpret_val = "data/llvqa_dev"
trainable = "encoder,projector,llm,head"
epochs = 3
batch_size = 8
grad_accum = 8
lr = 1e-5
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
