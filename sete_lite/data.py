"""Math datasets: loading prompts with gold final answers.

This module owns `DataConfig` and `load_records(cfg)`, which turns a hub dataset or a local
jsonl / json / parquet file into records `{id, question, answer, prompt}`: `answer` is the final
answer only (a GSM8K-style "... #### 18" solution becomes "18", a `\\boxed{}` solution its box)
and `prompt` is the question in the paper's prompt template.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sete_lite.semantic import extract_answer

# The paper's evaluation prompt (SENT.md section 4), also used for training and SE scoring.
DEFAULT_PROMPT_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class DataConfig:
    """Which dataset, which columns, and how a question becomes a prompt."""

    dataset_name_or_path: str = "data/champ_math.jsonl"
    dataset_config: str | None = None  # hub datasets with several configs (GSM8K: "main")
    dataset_split: str = "train"
    question_column: str = "question"
    answer_column: str = "answer"
    id_column: str | None = "id"  # None: the row number is the id
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    max_prompts: int | None = None  # the first N rows only (quick runs)

    def __post_init__(self) -> None:
        if "{question}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{question}'")
        if self.max_prompts is not None and self.max_prompts <= 0:
            raise ValueError(f"max_prompts must be positive, got {self.max_prompts}")


def gold_answer(solution: str) -> str:
    """The final answer of a gold solution: its last box or `####` answer, else the text itself."""
    return extract_answer(solution) or solution.strip()


def _load_rows(cfg: DataConfig) -> list[dict]:
    import datasets  # slow to import; only needed here

    path = Path(cfg.dataset_name_or_path)
    if path.suffix in LOCAL_FORMATS:
        if not path.is_file():
            raise FileNotFoundError(f"dataset file '{path}' does not exist")
        if path.stat().st_size == 0:  # datasets fails on it with a bare StopIteration
            raise ValueError(f"dataset '{path}' is empty")
        dataset = datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
    elif path.exists():
        raise ValueError(f"dataset file '{path}' must end in one of {sorted(LOCAL_FORMATS)}")
    else:
        dataset = datasets.load_dataset(cfg.dataset_name_or_path, cfg.dataset_config, split=cfg.dataset_split)
    return dataset.to_list()


def load_records(cfg: DataConfig) -> list[dict]:
    """Records {id, question, answer, prompt} in dataset order; clear errors for bad input.

    Ids are strings and must be unique: the SE cache and the curriculum key on them.
    """
    rows = _load_rows(cfg)
    if not rows:
        raise ValueError(f"dataset '{cfg.dataset_name_or_path}' is empty")
    required = [cfg.question_column, cfg.answer_column] + ([cfg.id_column] if cfg.id_column else [])
    missing = [column for column in required if column not in rows[0]]
    if missing:
        raise KeyError(
            f"dataset '{cfg.dataset_name_or_path}' has no column(s) {missing}; its columns are {sorted(rows[0])}"
        )
    rows = rows[: cfg.max_prompts]
    records = []
    for index, row in enumerate(rows):
        question = str(row[cfg.question_column])
        records.append(
            {
                "id": str(row[cfg.id_column]) if cfg.id_column else str(index),
                "question": question,
                "answer": gold_answer(str(row[cfg.answer_column])),
                # replace, not format: the template's own \boxed{} braces would break str.format
                "prompt": cfg.prompt_template.replace("{question}", question),
            }
        )
    ids = [record["id"] for record in records]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"column '{cfg.id_column}' has duplicate id '{duplicate}'; ids must be unique")
    return records
