# The tiny demo on a CPU: the built-in tiny LLaVA (iqa_vlm/tiny_models.py) on the demo set that `python prepare_data.py`
# makes (photos that scikit-image, matplotlib and scikit-learn ship, and procedural dead-leaves images), training the
# vision encoder and the projector. These are settings chosen for this demo, not a paper's: a random tiny model needs
# a high lr, and flips, 90-degree turns and shifts of up to 4 pixels multiply its few photos (no distortion class
# depends on orientation or position). docs/demo_history.md tells how each value was chosen.
#   python train.py config/demo.py --out out/demo && python evaluate.py distortion --ckpt out/demo --tta true
model = "tiny"
data = "data/demo"
trainable = "encoder,projector"
batch_size = 32
max_steps = 2700         # four and a half epochs of the demo set at batch 32: fixed work, so a busy machine ends later, not elsewhere
lr = 2e-3
min_lr_frac = 0.05
warmup_steps = 50
label_smoothing = 0.0    # six of the answer's seven tokens are fixed words: smoothing spreads their target for nothing
augment = "flip_rot_shift"
grad_ckpt = False        # 32x32 images and 2 layers: nothing to save, and recomputing costs CPU time
