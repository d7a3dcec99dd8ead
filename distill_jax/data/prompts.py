"""Prompt sources: JSONL files in the formats of GSM8K, MATH-500, AIME 2024,
HumanEval, GPQA, AIME 2025, LiveCodeBench/Codeforces (benchmark_formats.py), or any
JSONL with configurable fields.

Each record becomes a `Prompt` with a stable id (the sampler seeds from it, so
results do not depend on batching), the problem text, and what a verifier needs
later (`reference`: the gold answer, or HumanEval's test code and entry point).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from distill_jax import storage
from distill_jax.fileio import iter_jsonl
from distill_jax.filters.io_judge import io_cases_from_reference

R1_MATH_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_SUFFIX = ("Complete the following Python function. Reason step by step, then give the "
               "complete function in one ```python code block.")
# stdin/stdout problems (LiveCodeBench, Codeforces): a whole program, not a function.
CODE_IO_SUFFIX = ("Solve the problem in Python 3: read the input from standard input and write "
                  "the answer to standard output. Reason step by step, then give the complete "
                  "program in one ```python code block.")
CHOICE_SUFFIX = ("Please reason step by step, and put the letter of your final answer within "
                 "\\boxed{}.")

FORMATS = ("gsm8k", "math500", "aime24", "humaneval", "gpqa", "aime", "code_io", "jsonl")


@dataclasses.dataclass(frozen=True)
class Prompt:
    id: str
    problem: str
    kind: str                      # "math" | "code" | "choice"
    source: str
    reference: dict[str, Any]

    def user_message(self, suffix: str | None = None) -> str:
        function = self.kind == "code" and "entry_point" in self.reference
        if suffix is None:
            suffix = {"math": R1_MATH_SUFFIX, "choice": CHOICE_SUFFIX}.get(
                self.kind, CODE_SUFFIX if function else CODE_IO_SUFFIX)
        if not suffix:
            return self.problem
        if function:                 # the prompt is the function's header and docstring
            return f"{suffix}\n\n```python\n{self.problem}```"
        return f"{self.problem}\n{suffix}"


def gsm8k_gold(answer_text: str) -> str:
    """GSM8K's final answer: what follows '####', thousands separators removed."""
    if "####" not in answer_text:
        raise ValueError("no '####' final answer")
    return answer_text.split("####")[-1].strip().replace(",", "")


def _field(row: dict, name: str, where: str):
    if name not in row:
        raise ValueError(f"{where}: missing field {name!r} (has {sorted(row)})")
    return row[name]


def load_prompts(path: str, fmt: str = "jsonl", id_field: str | None = "id",
                 problem_field: str = "problem", answer_field: str | None = "answer",
                 kind: str = "math", limit: int | None = None) -> list[Prompt]:
    """Reads prompts; errors name the file and line. `fmt="jsonl"` uses the *_field args."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown prompt format {fmt!r}; choose from {FORMATS}")
    if kind == "choice" and fmt == "jsonl":
        raise ValueError(f"{path}: kind 'choice' needs the options of each problem: use "
                         "format 'gpqa' (or convert the file to its layout)")
    if not storage.exists(path):
        raise FileNotFoundError(f"prompt file {path} does not exist")
    source = os.path.splitext(storage.basename(path))[0]
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    if limit is not None and limit <= 0:
        return prompts
    for line_no, row in iter_jsonl(path):
        where = f"{path}:{line_no}"
        try:
            prompt = _parse(row, fmt, where, source, line_no, id_field, problem_field,
                            answer_field, kind)
        except ValueError as e:
            raise ValueError(str(e) if str(e).startswith(where) else f"{where}: {e}") from e
        if prompt.id in seen:
            raise ValueError(f"{where}: duplicate prompt id {prompt.id!r} "
                             f"(first on line {seen[prompt.id]})")
        seen[prompt.id] = line_no
        prompts.append(prompt)
        if limit is not None and len(prompts) >= limit:
            break   # before the generator parses the next line
    return prompts


def _parse(row, fmt, where, source, line_no, id_field, problem_field, answer_field, kind):
    if fmt == "gsm8k":
        return Prompt(id=f"{source}-{line_no - 1}", problem=_field(row, "question", where),
                      kind="math", source=source,
                      reference={"answer": gsm8k_gold(_field(row, "answer", where))})
    if fmt == "math500":
        return Prompt(id=str(_field(row, "unique_id", where)), problem=_field(row, "problem", where),
                      kind="math", source=source,
                      reference={"answer": str(_field(row, "answer", where))})
    if fmt == "aime24":
        return Prompt(id=f"aime24-{_field(row, 'id', where)}", problem=_field(row, "problem", where),
                      kind="math", source=source,
                      reference={"answer": str(_field(row, "answer", where))})
    from distill_jax.data import benchmark_formats   # its rows become our Prompt
    if fmt == "gpqa":
        return benchmark_formats.parse_gpqa(row, where, source, line_no)
    if fmt == "aime":
        return benchmark_formats.parse_aime(row, where, source, line_no)
    if fmt == "code_io":
        return benchmark_formats.parse_code_io(row, where, source, line_no)
    if fmt == "humaneval":
        return Prompt(id=str(_field(row, "task_id", where)), problem=_field(row, "prompt", where),
                      kind="code", source=source,
                      reference={"test": _field(row, "test", where),
                                 "entry_point": _field(row, "entry_point", where)})
    prompt_id = str(_field(row, id_field, where)) if id_field else f"{source}-{line_no - 1}"
    if kind == "code":
        # The tests travel with the prompt: I/O cases (ours, APPS', LiveCodeBench's) or a
        # HumanEval-style harness. Malformed cases are refused here, naming the line.
        reference = {k: row[k] for k in CODE_TEST_FIELDS if k in row}
        io_cases_from_reference(reference)
    else:
        reference = {"answer": str(_field(row, answer_field, where))} if answer_field else {}
    return Prompt(id=prompt_id, problem=str(_field(row, problem_field, where)), kind=kind,
                  source=source, reference=reference)


# What a code problem's reference may carry (the correctness filter picks the judge).
CODE_TEST_FIELDS = ("io_tests", "input_output", "public_test_cases", "private_test_cases",
                    "test", "entry_point")


def prompt_section(path: str = "", fmt: str = "jsonl"):
    """The config section of a prompt source (`load_prompts_from_config` reads it):
    path, format and the jsonl fields, kind, limit (0 = all) and suffix (None: the R1
    default of the kind; "" none)."""
    import ml_collections
    return ml_collections.ConfigDict(dict(
        path=path, format=fmt,                 # gsm8k | math500 | aime24 | humaneval | jsonl ...
        id_field="id", problem_field="problem", answer_field="answer",   # format=jsonl
        kind="math", limit=0, suffix=ml_collections.config_dict.placeholder(str)))


def load_prompts_from_config(pc) -> list[Prompt]:
    """`load_prompts` with the fields of a `prompts`/`problems` config section."""
    return load_prompts(pc.path, pc.format, id_field=pc.id_field,
                        problem_field=pc.problem_field, answer_field=pc.answer_field,
                        kind=pc.kind, limit=pc.limit or None)
