"""Q-SiT's evaluation and data paths: LLVisionQA in its released form (reader, option marks, accuracy per type and
concern against a hand count), the demo MCQ view, Q-SiT's own scoring prompt against its released evaluation code's
construction, exclusion of test images from instruction data, and Algorithm 1 steps 1-2 on a mini demo (slow)."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from iqa_vlm.studies import qbench as Q  # noqa: E402
from iqa_vlm.studies import scoring as S  # noqa: E402
from iqa_vlm.tiny_models import build_tiny  # noqa: E402

# (type, concern, candidates, correct) in the released form: type 0/1/2, concern 0..3
FIXTURE = [(0, 0, ["Yes", "No"], "Yes"), (0, 1, ["Yes", "No"], "No"), (1, 0, ["Blur", "Noise", "Overexposure"], "Noise"),
           (1, 2, ["Left", "Right", "Center", "Top"], "Top"), (2, 1, ["High", "Medium", "Low"], "Low"),
           (2, 3, ["Good", "Poor"], "Good"), (1, 3, ["Sky", "Tree", "Road"], "Sky"), (0, 2, ["Yes", "No"], "Yes")]


def write_llvisionqa(tmp_path, hidden=False, n_missing=0):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    entries = []
    for i, (t, c, cands, ans) in enumerate(FIXTURE):
        name = f"{i:05d}.jpg"
        if i >= n_missing:
            Image.new("RGB", (16, 16), (20 * i, 40, 90)).save(images / name)
        entries.append({"img_path": name, "question": f"Question {i}?", "candidates": cands,
                        "correct_ans": "N/A" if hidden else ans, "type": t, "concern": c})
    path = tmp_path / ("llvisionqa_test.json" if hidden else "llvisionqa_dev.json")
    path.write_text(json.dumps(entries))
    return path


def test_reader_renders_options_as_the_benchmark(tmp_path):
    records, report = Q.read_llvisionqa(write_llvisionqa(tmp_path), tmp_path / "images")
    assert report == {**report, "entries": 8, "kept": 8, "missing_images": 0, "hidden_answers": 0}
    r = records[2]
    assert r["type"] == "What" and r["concern"] == "Distortion" and r["answer_index"] == 1
    assert r["conversations"][0]["value"] == ("<image>\nQuestion 2?\nChoose between one of the options as follows:\n"
                                              "A. Blur\nB. Noise\nC. Overexposure\n")
    assert r["conversations"][1]["value"] == "B. Noise"
    assert Q.render_mcq("Q?", ["x", "y"], "letter") == "Q?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly.\n"
    # the test split: answers withheld, no gpt turn; missing images counted, not silently dropped
    (tmp_path / "t").mkdir()
    records, report = Q.read_llvisionqa(write_llvisionqa(tmp_path / "t", hidden=True, n_missing=2), tmp_path / "t" / "images")
    assert report["hidden_answers"] == 6 and report["missing_images"] == 2 and len(records) == 6
    assert all(r["answer_index"] is None and len(r["conversations"]) == 1 for r in records)


@pytest.mark.parametrize("entry, says", [({"candidates": ["a"]}, "a list of 2-4 strings"),
                                         ({"correct_ans": "Maybe"}, "is not one of the candidates"),
                                         ({"type": 7}, "type is 7, expected 0..2"),
                                         ({"concern": "Global"}, "concern is 'Global'")])
def test_reader_errors_name_the_entry(tmp_path, entry, says):
    path = write_llvisionqa(tmp_path)
    entries = json.loads(path.read_text())
    entries[3].update(entry)
    path.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"llvisionqa_dev.json entry 4: .*" + says.replace("(", r"\(")):
        Q.read_llvisionqa(path, tmp_path / "images")


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}{% else %}"
          "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
          "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class ChatProcessor:
    """The two things mark_token_ids reads of a processor: its tokenizer and its chat template."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
        return self.tokenizer.apply_chat_template(messages, chat_template=CHATML, add_generation_prompt=add_generation_prompt,
                                                  tokenize=tokenize)


def qwen2_like_tokenizer():
    """A byte-level BPE with Qwen2's pre-tokenization (GPT-2 regex, digits single), trained here on a few lines: the
    option letters become tokens of their own as in Qwen2's vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    text = ["A. Blur\nB. Noise\nC. Overexposure\nD. Top", "Choose between one of the options as follows:"] * 20
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|im_start|>", "<|im_end|>", "<image>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>")


def test_accuracy_per_type_and_concern_equals_a_hand_count(tmp_path, monkeypatch):
    """The closed-set choice from scripted logits (the model always favours option A), counted by hand."""
    processor = ChatProcessor(qwen2_like_tokenizer())
    records, _ = Q.read_llvisionqa(write_llvisionqa(tmp_path), tmp_path / "images")
    ids = Q.mark_token_ids(processor, "ABCD")
    assert processor.tokenizer.convert_ids_to_tokens(ids) == ["A", "B", "C", "D"]

    def favour_a(model, enc, last):
        logits = torch.zeros(len(last), len(processor.tokenizer))
        logits[:, ids] = torch.tensor([3.0, 1.0, 0.5, 0.0])
        return logits
    monkeypatch.setattr(Q, "last_token_logits", favour_a)
    monkeypatch.setattr(Q, "encode_prompts", lambda processor, recs, **kw: ({}, torch.zeros(len(recs), dtype=torch.long)))
    monkeypatch.setattr(Q, "to_device", lambda enc, model, device: enc)
    preds = Q.eval_mcq(None, processor, records, batch_size=3, generate=False, closed_set=True)
    assert [p["choice"] for p in preds] == [0] * 8
    # the answer is option A at entries 0 (Yes), 5 (Good), 6 (Sky), 7 (Yes): Yes-or-No 2/3 (0, 1, 7), What 1/3 (2, 3, 6),
    # How 1/2 (4, 5); Distortion 1/2 (0, 2), Other 0/2 (1, 4), In-context Distortion 1/2 (3, 7), In-context Other 2/2
    # (5, 6); overall 4/8
    table = Q.accuracy_table(preds)
    assert table["overall"] == {"accuracy": 4 / 8, "n": 8}
    assert {t: (v["accuracy"], v["n"]) for t, v in table["per_type"].items()} == {
        "Yes-or-No": (2 / 3, 3), "What": (1 / 3, 3), "How": (0.5, 2)}
    assert {c: v["accuracy"] for c, v in table["per_concern"].items()} == {
        "Distortion": 0.5, "Other": 0.0, "In-context Distortion": 0.5, "In-context Other": 1.0}
    p = preds[2]  # three options: the softmax over those three only
    assert sum(p["probs"]) == pytest.approx(1.0, abs=1e-4) and len(p["probs"]) == 3


def test_parse_choice():
    cands = ["Blur", "Noise", "Overexposure"]
    assert Q.parse_choice("B. Noise", cands, "ABC") == 1 and Q.parse_choice("(C)", cands, "ABC") == 2
    assert Q.parse_choice("The image is mainly affected by noise.", cands, "ABC") == 1
    assert Q.parse_choice("Blur and noise", cands, "ABC") is None and Q.parse_choice("", cands, "ABC") is None


def test_evaluate_on_the_demo_mcq_view(tmp_path):
    from test_scoring import mini_demo
    import prepare_data
    mini_demo(tmp_path / "demo")
    prepare_data.main(["--task", "qbench", "--demo", str(tmp_path / "demo"), "--out", str(tmp_path / "mcq")])
    recs = [json.loads(line) for line in open(tmp_path / "mcq" / "test.jsonl")]
    assert len(recs) == 12 and {r["type"] for r in recs} == {"What", "How"} and all(len(r["candidates"]) == 4 for r in recs)
    from iqa_vlm.data import LABELS, LEVELS
    assert all(r["candidates"][r["answer_index"]] in (LABELS if r["type"] == "What" else LEVELS) for r in recs)
    assert all(set(r["candidates"]) <= set(LABELS if r["type"] == "What" else LEVELS) for r in recs)
    res = Q.evaluate(model="tiny", data=str(tmp_path / "mcq"), split="test", out=str(tmp_path / "ev"), closed_set=True,
                     max_new_tokens=4)
    assert res["closed_set"]["overall"]["n"] == 12 and res["closed_set"]["per_type"]["Yes-or-No"]["n"] == 0
    assert res["released_rule"]["overall"]["n"] == 12 and res["prompt"] == "qsit"
    assert (tmp_path / "ev" / "eval_qbench.json").exists() and len((tmp_path / "ev" / "predictions_qbench.jsonl").read_text().splitlines()) == 12


def test_marks_the_tokenizer_cannot_tell_apart_are_a_one_line_error(tmp_path):
    """The tiny model's vocabulary has no b, c or d, so LLVisionQA's A-D marks cannot be scored closed-set: evaluate.py
    qbench says so before any work, as a message and not a traceback."""
    import prepare_data
    prepare_data.main(["--task", "qbench", "--qbench_json", str(write_llvisionqa(tmp_path)), "--image_root",
                       str(tmp_path / "images"), "--out", str(tmp_path / "q")])
    with pytest.raises(SystemExit, match=r"evaluate.py qbench: tiny untuned cannot score the options of .* option marks 'ABCD' do not map to distinct"):
        Q.evaluate(model="tiny", data=str(tmp_path / "q"), out=str(tmp_path / "ev"), closed_set=True)
    assert not (tmp_path / "ev" / "eval_qbench.json").exists()
    # the released protocol generates and reads the answer: no closed set needed
    res = Q.evaluate(model="tiny", data=str(tmp_path / "q"), out=str(tmp_path / "ev"), max_new_tokens=4)
    assert res["released_rule"]["overall"]["n"] == 8 and "closed_set" not in res


def test_released_rule_judges_answers_as_q_sits_script():
    """qsit_transformers_test_q_bench.py: the answer string is what follows "assistant" in the decoded sequence, so
    it starts with a newline; correct if == mark, "<mark>." in it, == option text, or the mark is a whole line."""
    cands = ["Blur", "Noise", "Overexposure"]
    judge = lambda text: Q.released_correct(text, cands, 1, "ABCD")
    assert judge("B. Noise") and judge("B") and judge("The answer is B.") and judge("B\nbecause") 
    assert not judge("Noise")  # the option text alone: "\nNoise" != "Noise", as in their runs
    assert not judge("A. Blur") and not judge("b. noise")
    assert Q.render_mcq("Q?", cands, "qsit") == "Q?\nA. Blur\nB. Noise\nC. Overexposure\n"


# LLaVA-OneVision's chat template as the hub's llava-hf checkpoints render it: the template of transformers' own
# processor test (huggingface/transformers tests/models/llava_onevision/test_processor_llava_onevision.py,
# prepare_processor_dict), whose test_chat_template pins the real hub processor's output for one image and a question
# to HUB_RENDERING. The hub's chat_template.json cannot be downloaded here; this is what it renders.
ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{# Render all images first #}{% for content in "
    "message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}{% endfor %}{% else %}{% for content in "
    "message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}{{ '\\n' + content['text'] }}"
    "{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}")
HUB_RENDERING = "<|im_start|>user <image>\nWhat is shown in this image?<|im_end|><|im_start|>assistant\n"


def test_qsit_prompt_matches_its_released_evaluation(tmp_path):
    """evaluate.py score --prompt qsit against Q-SiT's evaluation as released (its README / eval script), rebuilt here on
    LLaVA-OneVision's hub chat template: the template over [question text, image], the processor on it, "The quality of
    this image is " tokenized alone and appended, next-token logits, softmax over the first tokens of the five
    capitalized words, weights 1, .75, .5, .25, 0."""
    model, processor = build_tiny("llava_onevision")
    model.eval()
    processor.chat_template = ONEVISION_TEMPLATE
    example = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in this image?"}]}]
    assert processor.apply_chat_template(example, add_generation_prompt=True) == HUB_RENDERING
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image)
    tok = processor.tokenizer
    toks = ["Excellent", "Good", "Fair", "Poor", "Bad"]
    ids_ = [tok(t)["input_ids"][0] for t in toks]
    conversation = [{"role": "user", "content": [{"type": "text", "text": S.QSIT_QUESTION}, {"type": "image"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == "<|im_start|>user <image>\n" + S.QSIT_QUESTION + "<|im_end|><|im_start|>assistant\n"
    from iqa_vlm.data import render, to_messages  # the repo's rendering of the record: the same text, character for character
    assert render(processor, to_messages([{"from": "human", "value": S.QSIT_QUESTION + "\n<image>"}], True),
                  add_generation_prompt=True) == prompt
    inputs = processor(images=Image.open(image).convert("RGB"), text=prompt, return_tensors="pt")
    prefix_ids = tok("The quality of this image is ", return_tensors="pt")["input_ids"]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], prefix_ids], dim=-1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    probs = torch.softmax(logits[ids_].double(), 0).numpy()
    wa5 = float(np.inner(probs, [1, 0.75, 0.5, 0.25, 0]))
    rec = {"id": "x", "image": str(image), "conversations": [{"from": "human", "value": "ignored\n<image>"}], "level": "fair",
           "mos": 3.0, "mos_norm": 0.5, "source": "t"}
    from iqa_vlm.data import encode_prompts
    enc, _ = encode_prompts(processor, [{**rec, "conversations": [{"from": "human", "value": S.QSIT_QUESTION + "\n<image>"}]}],
                            after_prompt=S.QSIT_PREFIX)
    assert enc["input_ids"][0][enc["attention_mask"][0].bool()].tolist() == inputs["input_ids"][0].tolist()
    pred = S.eval_score(model, processor, [rec], prompt="qsit")[0]
    assert S.qsit_level_ids(processor) == ids_[::-1]
    assert pred["score"] == pytest.approx(1 + 4 * wa5, abs=1e-4)  # 1..5 over bad..excellent = 1 + 4 x Q-SiT's 0..1


def test_exclude_test_images_by_name_and_content(tmp_path):
    from iqa_vlm.data import exclude_test_images, read_instruction
    test_dir, imgs = tmp_path / "score", tmp_path / "imgs"
    test_dir.mkdir(), imgs.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(test_dir / f"t{i}.png")
    (test_dir / "test.jsonl").write_text("".join(json.dumps({"id": f"t{i}", "image": f"t{i}.png", "conversations": [
        {"from": "human", "value": "<image>\nRate it."}, {"from": "gpt", "value": "Fine."}]}) + "\n"
                                                 for i in range(3)))
    (imgs / "t0.png").write_bytes(b"a different file with a test image's name")  # same name
    (imgs / "copy.png").write_bytes((test_dir / "t1.png").read_bytes())          # same content, another name
    for i in range(4):
        Image.new("RGB", (8, 8), (0, i * 40, 9)).save(imgs / f"ok{i}.png")
    names = ["t0.png", "copy.png", "ok0.png", "ok1.png", "ok2.png", "ok3.png", "ok0.png"]
    entries = [{"id": str(k), "image": n, "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                           {"from": "gpt", "value": "Fine."}]} for k, n in enumerate(names)]
    (tmp_path / "instr.json").write_text(json.dumps(entries))
    records, _ = read_instruction(tmp_path / "instr.json", imgs)
    kept, report = exclude_test_images(records, str(test_dir))
    assert [r["id"].split("/")[-1] for r in kept] == ["2", "3", "4", "5", "6"]
    assert report["dropped_by_name"] == 1 and report["dropped_by_content"] == 1 and report["test_images"] == 3
    import prepare_data
    prepare_data.main(["--task", "general", "--llava_json", str(tmp_path / "instr.json"), "--image_root", str(imgs),
                       "--exclude_test", str(test_dir), "--val_frac", "0", "--out", str(tmp_path / "o")])
    meta = json.load(open(tmp_path / "o" / "meta.json"))
    assert meta["report"]["excluded_test_images"]["dropped_by_content"] == 1 and meta["counts"]["train"]["n"] == 5


@pytest.mark.slow
def test_algorithm_1_steps_1_and_2_on_a_mini_demo(tmp_path):
    """analyze.py mix-ratio --run on the tiny model: both sweeps, both fits, the coarse mix, λ and the step-3 config."""
    import subprocess
    from test_scoring import mini_demo
    import prepare_data
    mini_demo(tmp_path / "demo")
    for task in ("score", "interpret"):
        prepare_data.main(["--task", task, "--demo", str(tmp_path / "demo"), "--out", str(tmp_path / f"demo_{task}"),
                           "--val_frac", "0.2"])
    prepare_data.main(["--task", "qbench", "--demo", str(tmp_path / "demo"), "--out", str(tmp_path / "demo_mcq")])
    general = tmp_path / "general"  # D3: VQA-form records about the same images
    general.mkdir()
    for split in ("train", "val"):
        recs = [{"id": f"g{split}{i}", "image": f"../demo/images/im{i}.png", "task": "vqa", "source": "general",
                 "conversations": [{"from": "human", "value": "<image>\nwhat is in this image?"},
                                   {"from": "gpt", "value": "an image with some colors."}]} for i in range(12 if split == "train" else 4)]
        (general / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (general / "test.jsonl").write_text("")
    out = tmp_path / "mr"
    r = subprocess.run([sys.executable, "analyze.py", "mix-ratio", "--run", "true", "--repeats", "1", "--grid_a", "0.5,1,2",
                        "--grid_b", "0.5,1,2", "--max_steps", "2", "--score_data", str(tmp_path / "demo_score"),
                        "--interpret_data", str(tmp_path / "demo_interpret"), "--general_data", str(general),
                        "--qbench_val", str(tmp_path / "demo_mcq"), "--qbench_split", "test", "--train_args",
                        "config/demo.py --batch_size 4", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.load(open(out / "mix_ratio.json"))
    assert len(res["step1"]["points"]) == 3 and len(res["step2"]["points"]) == 3 and res["step1"]["degree"] == 2
    ra, rb = res["step1"]["argmax_ratio"], res["step2"]["argmax_ratio"]
    assert 0.5 <= ra <= 2 and 0.5 <= rb <= 2
    assert res["coarse_mix"]["D2"] == pytest.approx(rb * ra / (1 + ra)) and res["coarse_mix"]["D3"] == pytest.approx(rb / (1 + ra))
    assert res["lambda"] > 0 and (out / "mix_ratio.png").stat().st_size > 1000
    step3 = {}
    exec((out / "qsit_step3.py").read_text(), {}, step3)
    assert step3["balance"] is True and step3["mix"].startswith("demo_score:1.0,demo_interpret:") and step3["balance_lambda"] > 0
