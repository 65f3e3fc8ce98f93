"""Loading math datasets into {id, question, answer, prompt} records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sete_lite.data import DEFAULT_PROMPT_TEMPLATE, DataConfig, load_records
from sete_lite.semantic import grade_answers

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "champ_math.jsonl"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_shipped_champ_problems() -> None:
    records = load_records(DataConfig(dataset_name_or_path=str(SHIPPED)))
    assert len(records) == 48
    assert len({r["id"] for r in records}) == 48
    first = records[0]
    assert first["id"] == "P_Combinatorics_1" and first["answer"] == "239"
    assert first["prompt"] == (
        first["question"] + "\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    # every gold answer is one math-verify can read: it grades its own boxed form as correct
    for record in records:
        assert grade_answers(record["answer"], [record["answer"]]) == [True], record


def test_gsm8k_and_boxed_solutions_reduce_to_the_final_answer(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "gsm.jsonl",
        [
            {"q": "How many clips?", "a": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"},
            {"q": "Half of one?", "a": "Halving gives $\\boxed{\\frac{1}{2}}$."},
            {"q": "Plain", "a": " 18 "},
        ],
    )
    cfg = DataConfig(dataset_name_or_path=str(path), question_column="q", answer_column="a", id_column=None)
    records = load_records(cfg)
    assert [r["answer"] for r in records] == ["72", "\\frac{1}{2}", "18"]
    assert [r["id"] for r in records] == ["0", "1", "2"]  # row numbers without an id column


def test_json_and_parquet_files_and_max_prompts(tmp_path: Path) -> None:
    import datasets

    rows = [{"id": i, "question": f"q{i}", "answer": str(i)} for i in range(5)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    for name in ["d.json", "d.parquet"]:
        records = load_records(DataConfig(dataset_name_or_path=str(tmp_path / name), max_prompts=3))
        assert [(r["id"], r["answer"]) for r in records] == [("0", "0"), ("1", "1"), ("2", "2")]


def test_custom_prompt_template(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "question": "1+1?", "answer": "2"}])
    records = load_records(DataConfig(dataset_name_or_path=str(path), prompt_template="Q: {question}\nA:"))
    assert records[0]["prompt"] == "Q: 1+1?\nA:"
    assert "{question}" in DEFAULT_PROMPT_TEMPLATE
    with pytest.raises(ValueError, match="question"):
        DataConfig(prompt_template="no placeholder")


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_records(DataConfig(dataset_name_or_path=str(tmp_path / "missing.jsonl")))
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "problem": "1+1?", "answer": "2"}])
    with pytest.raises(KeyError, match=r"\['question'\].*problem"):
        load_records(DataConfig(dataset_name_or_path=str(path)))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_records(DataConfig(dataset_name_or_path=str(tmp_path / "empty.jsonl")))
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "question": "x", "answer": "1"}] * 2)
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        load_records(DataConfig(dataset_name_or_path=str(dup)))
    (tmp_path / "d.csv").write_text("id,question,answer\n")
    with pytest.raises(ValueError, match="must end in"):
        load_records(DataConfig(dataset_name_or_path=str(tmp_path / "d.csv")))


DAPO_INSTRUCTIONS = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)


def test_dapo_math_17k_original_layout(tmp_path: Path) -> None:
    """BytedTsinghua-SIA/DAPO-Math-17k: the prompt is a chat list, the answer a nested field."""
    import datasets

    problem = "Let $x^2 = 16$ with $x > 0$. Find $x$."
    rows = [
        {
            "data_source": "math_dapo",
            "prompt": [{"role": "user", "content": DAPO_INSTRUCTIONS.format(problem=problem)}],
            "reward_model": {"ground_truth": "4", "style": "rule-lighteval/MATH_v2"},
            "extra_info": {"index": "a1"},
        }
    ]
    path = tmp_path / "dapo.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    cfg = DataConfig(
        dataset_name_or_path=str(path),
        question_column="prompt",
        answer_column="reward_model.ground_truth",
        id_column="extra_info.index",
        question_format="dapo",
    )
    [record] = load_records(cfg)
    assert record == {
        "id": "a1",
        "question": problem,
        "answer": "4",
        "prompt": DEFAULT_PROMPT_TEMPLATE.replace("{question}", problem),
    }


def test_dapo_processed_layout_and_plain_format_keeps_the_text(tmp_path: Path) -> None:
    """open-r1/DAPO-Math-17k-Processed: `prompt` is the wrapped text, `solution` the answer."""
    problem = "Compute $1+1$."
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": DAPO_INSTRUCTIONS.format(problem=problem), "solution": "2"}])
    base = dict(dataset_name_or_path=str(path), question_column="prompt", answer_column="solution", id_column=None)
    assert load_records(DataConfig(**base, question_format="dapo"))[0]["question"] == problem
    assert load_records(DataConfig(**base))[0]["question"] == DAPO_INSTRUCTIONS.format(problem=problem)
    with pytest.raises(KeyError, match=r"reward_model\.ground_truth"):
        load_records(DataConfig(**{**base, "answer_column": "reward_model.ground_truth"}))
    with pytest.raises(ValueError, match="question_format"):
        DataConfig(question_format="gsm")


def test_chat_template_wraps_the_prompt(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from sete_lite.data import apply_chat_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = [{"id": "0", "question": "q", "answer": "1", "prompt": "What is 0+1?"}]
    [wrapped] = apply_chat_template(records, tokenizer, system_prompt="Be brief.")
    assert wrapped["prompt"] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 0+1?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert wrapped["answer"] == "1" and records[0]["prompt"] == "What is 0+1?"
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        apply_chat_template(records, tokenizer)


def test_policy_prompts_follow_the_config(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from sete_lite.data import policy_prompts

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = [{"id": "0", "question": "q", "answer": "1", "prompt": "What is 0+1?"}]
    assert policy_prompts(records, tokenizer, DataConfig(use_chat_template=False)) == records
    [wrapped] = policy_prompts(records, tokenizer, DataConfig(use_chat_template=True, system_prompt="Be brief."))
    assert wrapped["prompt"].startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 0+1?")


def test_rows_without_a_usable_gold_answer_are_refused_or_dropped(tmp_path: Path) -> None:
    # Before: a null answer became the gold string "None" and its prompt was graded 0 whatever the model said.
    rows = [{"id": f"p{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(8)]
    rows[1]["answer"] = None
    rows[3]["answer"] = "   "
    rows[5]["answer"] = "\\boxed{"  # an unterminated box: math-verify reads nothing
    rows[6]["question"] = ""
    del rows[7]["answer"]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=r"5 rows have no usable question or gold answer") as error:
        load_records(DataConfig(dataset_name_or_path=str(path)))
    message = str(error.value)
    expected = [
        "row 1 (id 'p1'): answer is null",
        "row 3 (id 'p3'): answer is empty",
        "not parseable as math",
        "row 6 (id 'p6'): question is empty",
        "drop_invalid_rows: true",
    ]
    assert all(part in message for part in expected), message
    kept = load_records(DataConfig(dataset_name_or_path=str(path), drop_invalid_rows=True))
    assert [r["id"] for r in kept] == ["p0", "p2", "p4"]
