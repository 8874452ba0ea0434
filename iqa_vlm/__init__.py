"""IQA-VLM: fine-tune and analyse vision-language models for image quality assessment.

    from iqa_vlm import level_cross_entropy          # the fused closed-set softmax + cross-entropy op
    loss, probs = level_cross_entropy(logits, target, level_ids=level_ids)
    from iqa_vlm import Scorer                       # score any images with a released scorer or a train.py run
    scores = Scorer("q-future/one-align")(["a.jpg", "b.png"])

The entry scripts beside this package (prepare_data.py, train.py, evaluate.py, analyze.py) are thin; the library
is here. Imports only go down the list:

    studies/        one module per line of work, each owning its prompts, record builders, evaluation and analyses
      distortion      distortion perception and the semantic shift of visual tokens (seed paper 000)
      two_stage       perception -> reasoning tuning and its instability (001)
      quality_token   the quality token's logit lens and attention (001)
      prompting, prompting_paper, prompting_table, hard_samples
                      the prompting study: protocols, its prompts and tables, difficult samples (002)
      scoring, scorer, deqa, data_mix, qbench
                      Q-Align / Q-SiT scoring and level precision, scoring anyone's images (Scorer), DeQA-Score soft
                      labels, the Q-SiT mix and Algorithm 1, LLVisionQA (003)
      grpo            VisualQuality-R1's rewards and the GRPO objective (the training loop is not built yet)
      demo_set        the demo data every study can run on without a download
    model, mplug_owl2, xcomposer2, native_parts, tiny_models, memory_plan
                    families and parts, loading and checkpoints; native mPLUG-Owl2 and InternLM-XComposer2-VL and what
                    they share; tiny test members; dry-run memory
    data, loader    records, chat rendering and batching; the training data loader
    iqa_datasets, iqa_io
                    readers of the IQA datasets' official and IQA-PyTorch layouts
    metrics, pairwise, expert_iqa
                    SRCC/PLCC/KRCC with bootstrap intervals and closed-set scores; Thurstone / Bradley-Terry; PSNR / SSIM / MS-SSIM
    level_ce        the op's Python side (the compiled extension is iqa_vlm._C, built from csrc/)
    common          atomic writes, locks, config overrides, DDP setup
"""

__all__ = ["level_cross_entropy", "level_scores", "Scorer"]


def __getattr__(name):  # on demand: `import iqa_vlm.common` does not import torch
    if name == "Scorer":
        from iqa_vlm.studies.scorer import Scorer
        return Scorer
    if name in __all__:
        from iqa_vlm import level_ce
        return getattr(level_ce, name)
    raise AttributeError(f"module 'iqa_vlm' has no attribute {name!r}")
