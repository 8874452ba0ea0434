# The tiny demo on a CPU: the built-in 287k-parameter LLaVA (tiny_models.py) on the demo set (python prepare_data.py:
# 21 photos that scikit-image, matplotlib and scikit-learn ship, and 8 dead-leaves images), 2,700 steps (README: five
# seeds 73.6/71.0/71.6/76.2/72.7 %, against 72.7/72.5/72.3/66.3/74.2 % at 1,800). Measured settings, not a paper's: a
# random tiny model needs a high lr, and flips / 90-degree turns and shifts of up to 4 pixels multiply its few photos (no
# distortion class depends on orientation or position).
#   python train.py config/demo.py --trainable encoder,projector --max_steps 2700 --out out/demo && python evaluate.py distortion --ckpt out/demo --tta true
model = "tiny"
data = "data/demo"
batch_size = 32
epochs = 10
lr = 2e-3
min_lr_frac = 0.05
warmup_steps = 50
label_smoothing = 0.0    # measured at 600 steps (64 px model): 0.1 -> 36.6 %, 0 -> 44.0 %
augment = "flip_rot_shift"  # 1,800 steps, seeds 1337/1/2, photos only: flip_rot 72.4/65.4/67.2 %, with the shifts 71.1/71.4/70.3 % (README)
grad_ckpt = False      # 32x32 images and 2 layers: nothing to save, and recomputing costs CPU time
