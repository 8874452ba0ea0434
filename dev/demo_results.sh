#!/usr/bin/env bash
# Regenerates every number docs/results.md quotes from the demo: the demo itself, the feature baseline, the
# freeze-flag ablation with the semantic shift, the two-stage path, scoring, the prompting table with hard samples,
# CE against DeQA-Score's losses, Q-SiT Table II's level precision, and the dry-run memory estimate of every recipe the
# docs quote. From the root of a clean clone, after the
# README's install (it writes data/ and out/ with the docs' own commands; a run folder that exists is refused):
#
#   bash dev/demo_results.sh 2>&1 | tee results.log                  # about 1.5 hours on 2 CPU cores
#   SECTIONS="demo ablation" bash dev/demo_results.sh                # some sections (names below)
#   IQA_META_DIR=DIR bash dev/demo_results.sh                        # level_precision needs IQA-PyTorch's meta_info_*.csv
#
# Every step prints "## $ COMMAND" before it and "## N s" after it, so the log shows what made each number and how long
# it took. Sections: demo features ablation two_stage scoring prompting score_losses level_precision seeds grpo memory.
set -euo pipefail
SECTIONS=${SECTIONS:-"demo features ablation two_stage scoring prompting score_losses level_precision seeds grpo memory"}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
step() { echo "## $ $*"; local t0=$SECONDS; "$@"; echo "## $((SECONDS - t0)) s"; }
echo "## commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%F), $(nproc) cores:" \
     "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

if [[ "$SECTIONS" != memory ]] && { want demo || [ ! -f data/demo/meta.json ]; }; then
    step python prepare_data.py
fi
if want demo; then
    step python train.py config/demo.py --out out/demo
    step python evaluate.py distortion --ckpt out/demo --tta true
fi
if want features; then
    step python analyze.py feature-baseline --data data/demo --out out/feature_baseline
fi
if want ablation; then  # Table 1 and Table 2 of the distortion paper, on the demo
    step python sweeps/ablation.py --max_steps 1500 --out out/ablation
    step python analyze.py semantic-shift --ckpt out/ablation/encoder --ckpt out/ablation/projector \
        --ckpt out/ablation/llm --data data/demo --out out/semantic_shift
    step python analyze.py distortion-tables --ablation out/ablation/ablation.json \
        --shift out/semantic_shift/semantic_shift.json
fi
if want two_stage; then
    step python prepare_data.py --task pathway --demo data/demo --out data/demo_pathway
    step python train.py config/demo.py --data data/demo_pathway/one_stage --trainable encoder,projector,llm \
        --max_steps 600 --out out/pw_one_stage
    step python train.py config/demo.py --stage 1 --data data/demo_pathway --trainable encoder,projector,llm \
        --max_steps 600 --out out/pw_stage1
    step python train.py config/demo.py --stage 2 --data data/demo_pathway --init out/pw_stage1 --trainable llm \
        --max_steps 300 --out out/pw_stage2
    step python evaluate.py two-stage --pipeline one_stage --ckpt out/pw_one_stage --data data/demo_pathway \
        --out out/pw_eval/one_stage
    step python evaluate.py two-stage --ckpt out/pw_stage2 --describer out/pw_stage1 --data data/demo_pathway \
        --out out/pw_eval/two_stage
    step python evaluate.py score --ckpt out/pw_stage2 --data data/demo_pathway/stage2 --out out/pw_eval/stage2_reference
    for fixed in false true; do
        step python evaluate.py instability --pipeline one_stage --sessions 3 --repeats 5 --temperature 0.5 \
            --fixed_description $fixed --ckpt out/pw_one_stage --data data/demo_pathway \
            --out out/pw_eval/one_stage/T0.5_fixed_$fixed
        step python evaluate.py instability --sessions 3 --repeats 5 --temperature 0.5 --fixed_description $fixed \
            --ckpt out/pw_stage2 --describer out/pw_stage1 --data data/demo_pathway \
            --out out/pw_eval/two_stage/T0.5_fixed_$fixed
    done
    step python analyze.py two-stage-tables --one_stage out/pw_eval/one_stage --two_stage out/pw_eval/two_stage \
        --instability demo=out/pw_eval/one_stage/T0.5_fixed_false,out/pw_eval/two_stage/T0.5_fixed_false
    for mode in one_stage two_stage; do
        ckpt=out/pw_$mode; [ $mode = two_stage ] && ckpt=out/pw_stage2
        step python analyze.py attention --ckpt $ckpt --mode $mode --data data/demo_pathway --description reference \
            --limit 0 --out out/pw_attention/$mode
        step python analyze.py logit-lens --ckpt $ckpt --mode $mode --data data/demo_pathway --description reference \
            --limit 0 --out out/pw_lens/$mode
    done
fi
if want scoring || want prompting || want score_losses || want grpo; then
    [ -f data/demo_score/meta.json ] || step python prepare_data.py --task score --demo data/demo --out data/demo_score
fi
if want scoring || want prompting; then
    [ -f out/score_untuned/eval_score.json ] || \
        step python evaluate.py score --model tiny --data data/demo_score --out out/score_untuned
fi
if want scoring; then
    step python train.py config/demo.py --data data/demo_score --trainable encoder,projector --max_steps 3000 \
        --out out/score
    step python evaluate.py score --ckpt out/score --logistic true
fi
if want prompting; then  # the prompting study's Table 1 shape and Table 3's hard samples, untuned tiny model
    step python evaluate.py prompting-table --model tiny --data data/demo --limit 32 --out out/prompting_table_demo
    step python analyze.py hard-samples --data data/demo_score --pred out/score_untuned/predictions_score.jsonl \
        --features vlm:tiny --out out/hard_demo
    step python analyze.py hard-samples --data data/demo_score --pred out/score_untuned/predictions_score.jsonl \
        --features vlm:tiny --fr true --n_refs 4 --per_ref 4 --out out/hard_demo
fi
if want score_losses; then  # Q-Align's CE against DeQA-Score's soft labels and fidelity, one seed
    step python sweeps/compare_score_losses.py --max_steps 1500 --seeds 0 --out out/score_losses
fi
if want level_precision && [ -n "${IQA_META_DIR:-}" ]; then  # Q-SiT Table II's question on the real metadata
    step python analyze.py level-precision --meta "$IQA_META_DIR" --out out/level_precision
fi
if want seeds; then  # the demo's spread over training seeds (1337, the default, is the demo section's run)
    for s in 1 2 3 4; do
        step python train.py config/demo.py --out out/demo_s$s --seed $s
        step python evaluate.py distortion --ckpt out/demo_s$s --tta true
    done
fi
if want grpo; then  # docs/grpo.md, "The tiny demo": perception, format, then GRPO with VisualQuality-R1's rewards
    step python train.py config/demo.py --model tiny:tags --out out/r1_perception
    step python train_grpo.py config/grpo_demo_format.py --init out/r1_perception --out out/r1_format
    step python train_grpo.py config/grpo_demo.py --init out/r1_format --out out/r1
fi
if want memory; then  # train.py --dry_run true: the model on the meta device, no weights, no download
    dry() { echo "## $ python train.py $* --dry_run true"; HF_HUB_OFFLINE=1 python train.py "$@" --dry_run true |
            grep -E "^(total|weights|gradients|optimizer|activations) +[0-9.]+$|^fits a"; }
    for t in encoder projector encoder,projector encoder,llm:24-31 llm projector,llm; do  # distortion, Table 1
        dry config/distortion_mplug_owl2.py --model mplug-owl2-7b --seq_len 256 --trainable $t
    done
    for t in llm projector,llm; do
        dry config/distortion_mplug_owl2.py --model mplug-owl2-7b --seq_len 256 --trainable $t --lora 128
    done
    dry --model mplug-owl2-7b --trainable encoder,projector,llm --lora 128 --batch_size 8 --seq_len 256  # two-stage
    dry config/qsit_7b.py --model llava-onevision-7b --seq_len 8192 --interpret_val ""
    dry config/qsit_7b.py --model llava-onevision-7b --seq_len 8192 --interpret_val "" --lora 0 \
        --trainable encoder,projector,llm
    dry config/qsit_mini.py --model llava-onevision-0.5b --interpret_val ""
    dry config/qalign_koniq_lora.py --model mplug-owl2-7b --seq_len 128   # Q-Align's LoRA recipe
    dry config/qalign_koniq.py --model mplug-owl2-7b --seq_len 128        # its full recipe, unsharded (4 GPUs: FSDP)
    dry config/deqa_mplug_owl2_lora.py --model mplug-owl2-7b --seq_len 128
    dry config/deqa_mplug_owl2.py --model mplug-owl2-7b --seq_len 128
    dry config/deqa_llava_ov.py --model llava-onevision-7b --seq_len 8192
    dry config/deqa_qwen25vl.py --model qwen2.5-vl-7b --seq_len 1280
    # docs/training.md's A6000 table: batch 4 x 1024 tokens unless said
    dry --model llava-onevision-0.5b --trainable encoder,projector,llm,head --batch_size 8 --grad_ckpt true
    dry --model llava-onevision-7b --trainable encoder,projector --batch_size 4 --grad_ckpt false
    for m in llava-onevision-7b qwen2.5-vl-7b mplug-owl2-7b; do
        [ $m = llava-onevision-7b ] || dry --model $m --trainable encoder,projector --batch_size 4 --grad_ckpt true
        last=llm:24-27; [ $m != mplug-owl2-7b ] || last=llm:24-31
        dry --model $m --trainable encoder,projector,$last --batch_size 4 --grad_ckpt true
        dry --model $m --trainable encoder,projector,llm --lora 64 --batch_size 4 --grad_ckpt true
    done
    dry --model qwen2.5-vl-7b --trainable encoder,projector --batch_size 4 --grad_ckpt false
    dry --model qwen2.5-vl-7b --trainable encoder,projector,llm:20-27 --batch_size 4 --grad_ckpt true
    for g in true false; do dry --model llava-onevision-7b --trainable encoder,projector,llm,head --batch_size 4 --grad_ckpt $g; done
    step python train_grpo.py config/visualquality_r1_qwen25vl.py --dry_run true --model qwen2.5-vl-7b
    step python train_grpo.py config/visualquality_r1_qwen25vl.py --dry_run true --model qwen2.5-vl-7b --lora 0 \
        --trainable encoder,projector,llm,head --completion_chunk 0    # their full tuning, for comparison
    step python train_grpo.py config/visualquality_r1_qwen3vl.py --dry_run true --model qwen3-vl-8b
    step python train_grpo.py config/qinsight_qwen25vl.py --dry_run true --model qwen2.5-vl-7b
fi
echo "## done"
