"""Math datasets: loading prompts with gold final answers.

This module owns `DataConfig` and `load_records(cfg)`, which turns a hub dataset or a local
jsonl / json / parquet file into records `{id, question, answer, prompt}`: `answer` is the final
answer only (a GSM8K-style "... #### 18" solution becomes "18", a `\\boxed{}` solution its box)
and `prompt` is the question in the paper's prompt template. Formats:
- columns may be nested (`reward_model.ground_truth`), and a question may be a chat message list;
- `question_format: dapo` strips DAPO-Math-17k's own "Answer: $Answer" instructions, so the
  paper's boxed-answer template is the only instruction the model sees;
- `apply_chat_template(records, tokenizer)` wraps prompts in an instruct model's chat template;
  `policy_prompts(records, tokenizer, cfg)` does so when the config asks for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from sete_lite.builtins import check_hub_name, resolve_builtin
from sete_lite.config import setting
from sete_lite.semantic import extract_answer, parses_as_math

# The paper's evaluation prompt (docs/method.md, section 5), also used for training and SE scoring.
DEFAULT_PROMPT_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
QUESTION_FORMATS = ("plain", "dapo")
# DAPO-Math-17k wraps every problem in instructions for an "Answer: x" last line.
DAPO_WRAPPER = re.compile(
    r"^Solve the following math problem step by step\..*?\n\n(?P<problem>.*)\n\n"
    r"Remember to put your answer on its own line after \"Answer:\"\.?\s*$",
    re.DOTALL,
)


@dataclass
class DataConfig:
    """Which dataset, which columns, and how a question becomes a prompt."""

    dataset_name_or_path: str = setting(
        "builtin:arith-train", "hub dataset, local jsonl / json / parquet, or `builtin:NAME`"
    )
    dataset_config: str | None = setting(None, "hub dataset config (GSM8K: `main`, DAPO processed: `en`)")
    dataset_split: str = setting("train", "split to train on")
    question_column: str = setting("question", "question column (dotted for nested fields; a chat list works)")
    answer_column: str = setting("answer", "gold answer column (`#### x` and `\\boxed{x}` reduced to `x`)")
    id_column: str | None = setting("id", "unique id column; `null` uses the row number")
    prompt_template: str = setting(
        DEFAULT_PROMPT_TEMPLATE,
        '`{question}` + "Please reason step by step, and put your final answer within \\boxed{}."',
        shown="the paper's",
    )
    max_prompts: int | None = setting(None, "keep only the first N prompts")
    # A row without a usable question or gold answer (null, empty, missing, not parseable as math) is
    # refused, naming the rows; true drops such rows instead and says how many.
    drop_invalid_rows: bool = setting(
        False,
        "a row without a usable question or gold answer (null, empty, missing, not parseable as math) is refused, "
        "naming the rows; `true` drops such rows and says how many",
    )
    question_format: str = setting("plain", "`dapo` strips DAPO-Math-17k's own answer instructions")
    use_chat_template: bool = setting(False, "wrap prompts in the tokenizer's chat template")
    system_prompt: str | None = setting(None, "system message when `use_chat_template`")

    def __post_init__(self) -> None:
        if self.question_format not in QUESTION_FORMATS:
            raise ValueError(f"question_format must be one of {QUESTION_FORMATS}, got '{self.question_format}'")
        if "{question}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{question}'")
        if self.max_prompts is not None and self.max_prompts <= 0:
            raise ValueError(f"max_prompts must be positive, got {self.max_prompts}")


def column(row: dict, name: str) -> Any:
    """A row's value for `name`; a dotted name reads a nested field (`reward_model.ground_truth`)."""
    value = row
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(name)
        value = value[part]
    return value


def question_text(value: Any, question_format: str) -> str:
    """The question as plain text: a chat message list gives its last user message."""
    if isinstance(value, list):
        value = [m["content"] for m in value if m.get("role") == "user"][-1]
    text = str(value)
    if question_format == "dapo" and (match := DAPO_WRAPPER.match(text)):
        text = match.group("problem")
    return text


def gold_answer(solution: Any) -> str:
    """The final answer of a gold solution: its last box or `####` answer, else the text itself. A number
    (a JSON number in the dataset) is written out in plain digits: str() would turn 0.00001 into 1e-05,
    which math-verify does not read as that number."""
    if isinstance(solution, float):
        solution = format(Decimal(repr(solution)), "f")  # repr: the shortest digits that read back the same
    solution = str(solution)
    return extract_answer(solution) or solution.strip()


def _load_rows(cfg: DataConfig) -> list[dict]:
    import datasets  # slow to import; only needed here

    path = Path(resolve_builtin(cfg.dataset_name_or_path))
    if path.suffix in LOCAL_FORMATS:
        if not path.is_file():
            raise FileNotFoundError(f"dataset file '{path}' does not exist")
        if path.stat().st_size == 0:  # datasets fails on it with a bare StopIteration
            raise ValueError(f"dataset '{path}' is empty")
        check_utf8(path)
        try:
            dataset = datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
        except ValueError as error:  # datasets: 'Instruction "train" corresponds to no data!' for a blank file
            if "corresponds to no data" in str(error):
                raise ValueError(f"dataset '{path}' has no rows") from None
            raise
    elif path.exists():
        raise ValueError(f"dataset file '{path}' must end in one of {sorted(LOCAL_FORMATS)}")
    else:
        check_hub_name(cfg.dataset_name_or_path, "dataset", "dataset_name_or_path")  # a typo fails now, not in a minute
        dataset = datasets.load_dataset(cfg.dataset_name_or_path, cfg.dataset_config, split=cfg.dataset_split)
    return dataset.to_list()


def check_utf8(path: Path) -> None:
    """A text dataset file that is not UTF-8 is named with the line where it stops being so."""
    if path.suffix == ".parquet":
        return
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(f"dataset '{path}', line {line}: not UTF-8 text; save the file as UTF-8") from None


def load_records(cfg: DataConfig) -> list[dict]:
    """Records {id, question, answer, prompt} in dataset order; clear errors for bad input.

    Ids are strings and must be unique: the SE cache and the curriculum key on them. A row whose
    question or gold answer cannot be used (see `unusable`) is an error naming the rows, before any
    model is loaded, or is dropped (with a printed count) when `drop_invalid_rows`.
    """
    rows = _load_rows(cfg)
    if not rows:
        raise ValueError(f"dataset '{cfg.dataset_name_or_path}' is empty")
    required = [cfg.question_column, cfg.answer_column] + ([cfg.id_column] if cfg.id_column else [])
    missing = [name for name in required if not _has_column(rows[0], name)]
    if missing:
        hint = " (id_column: null numbers the rows instead)" if cfg.id_column in missing else ""
        raise KeyError(
            f"dataset '{cfg.dataset_name_or_path}' has no column(s) {missing}{hint}; its columns are {sorted(rows[0])}"
        )
    records, invalid = [], []
    for index, row in enumerate(rows[: cfg.max_prompts]):
        if cfg.id_column and column(row, cfg.id_column) is None:
            raise ValueError(
                f"dataset '{cfg.dataset_name_or_path}' row {index}: its id ('{cfg.id_column}') is null; ids must be "
                "unique values (id_column: null numbers the rows instead)"
            )
        record_id = str(column(row, cfg.id_column)) if cfg.id_column else str(index)
        problem = unusable(row, cfg)
        if problem:
            invalid.append(f"row {index} (id {record_id!r}): {problem}")
            continue
        question = question_text(column(row, cfg.question_column), cfg.question_format)
        records.append(
            {
                "id": record_id,
                "question": question,
                "answer": gold_answer(column(row, cfg.answer_column)),
                # replace, not format: the template's own \boxed{} braces would break str.format
                "prompt": cfg.prompt_template.replace("{question}", question),
            }
        )
    if invalid and not cfg.drop_invalid_rows:
        shown = "; ".join(invalid[:5]) + ("; ..." if len(invalid) > 5 else "")
        raise ValueError(
            f"dataset '{cfg.dataset_name_or_path}': {len(invalid)} rows have no usable question or gold answer "
            f"({shown}); fix them, or set drop_invalid_rows: true to leave them out"
        )
    if invalid:
        print(f"dataset '{cfg.dataset_name_or_path}': dropped {len(invalid)} rows without a usable question or answer")
    if not records:
        raise ValueError(f"dataset '{cfg.dataset_name_or_path}' has no usable rows")
    ids = [record["id"] for record in records]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"column '{cfg.id_column}' has duplicate id '{duplicate}'; ids must be unique")
    return records


def unusable(row: dict, cfg: DataConfig) -> str | None:
    """Why a row cannot train or evaluate anything, or None: its question or gold answer is missing,
    null or empty, or the gold answer is not math that math-verify can parse (every sample would
    then be graded wrong, right or not)."""
    for name, key in (("question", cfg.question_column), ("answer", cfg.answer_column)):
        if not _has_column(row, key):
            return f"no {name} ('{key}' missing)"
        value = column(row, key)
        if value is None:
            return f"{name} is null"
        if not str(value).strip():
            return f"{name} is empty"
    if not parses_as_math(gold_answer(column(row, cfg.answer_column))):
        return f"gold answer {str(column(row, cfg.answer_column))[:40]!r} is not parseable as math"
    return None


def _has_column(row: dict, name: str) -> bool:
    try:
        column(row, name)
    except KeyError:
        return False
    return True


def apply_chat_template(records: list[dict], tokenizer: Any, system_prompt: str | None = None) -> list[dict]:
    """Records whose prompt is wrapped in the tokenizer's chat template, ready for generation."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("use_chat_template is set but the tokenizer has no chat template; set it to false")
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [
        {
            **record,
            "prompt": tokenizer.apply_chat_template(
                [*system, {"role": "user", "content": record["prompt"]}], tokenize=False, add_generation_prompt=True
            ),
        }
        for record in records
    ]


def policy_prompts(records: list[dict], tokenizer: Any, cfg: DataConfig) -> list[dict]:
    """The training records as the policy sees them (chat template when `use_chat_template`).

    Scoring and training must both go through this: SE scores are cached per exact prompt text, so
    prompts scored one way cannot be reused by a run that prompts the other way.
    """
    return apply_chat_template(records, tokenizer, cfg.system_prompt) if cfg.use_chat_template else records
