"""Readers for benchmark files the user supplies: one JSON row -> one `Prompt`.

The benchmarks of the R1 paper's evaluation (Table 5) that our other formats do not
read. Each reader raises ValueError naming the missing or malformed field; the
caller (`load_prompts`) prefixes the file and line.

GPQA (`parse_gpqa`), the layout of the GPQA CSV files (e.g. gpqa_diamond.csv) as
JSON rows:
  * "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
    "Incorrect Answer 3" (required; whitespace stripped, none may be empty);
  * "Record ID" (optional): the prompt id, else f"{source}-{line_no - 1}".
  The problem is the question followed by the four options, lettered (A) to (D),
  one per line (`evaluation.choice.format_choices`); kind "choice"; reference
  {"answer": "<letter of the correct option>", "options": [text of A, B, C, D]}.

  Option order. The file lists the correct answer first, so the options are
  shuffled -- with `random.Random(f"{seed}:{prompt_id}")`, a generator seeded by the
  problem's id (and `seed`, 0 by default), as the common harnesses do: the correct
  letter varies from problem to problem (about a quarter each), and a problem's
  order is the same in every run, whatever the file order, batch or host. The
  shuffle is a permutation of the four positions (the correct option is tracked by
  position, not by text). Changing `seed` gives another fixed order.

AIME 2025 (`parse_aime`), the layouts of the common copies:
  * text: "problem" or "question"; gold: "answer" (int or str, kept as a str);
  * id: "id", "problem_idx" or "ID" (the first present), else f"{source}-{line_no - 1}";
  kind "math", reference {"answer": str}.

LiveCodeBench / Codeforces (`parse_code_io`), stdin/stdout problems:
  * text: "question_content" (LiveCodeBench), else "problem", "description" or
    "statement";
  * id: "question_id", "problem_id" or "id", else "contest_id" + "index"
    (Codeforces: 1900 and "A" -> "1900A"), else f"{source}-{line_no - 1}";
  * reference: the test fields present among `IO_TEST_FIELDS` ("io_tests",
    "input_output", "public_test_cases", "private_test_cases"), as they are in the
    row (JSON text, LiveCodeBench's compressed private tests, or parsed), checked
    with `filters.io_judge.io_cases_from_reference`: at least one stdin/stdout case
    is required. LiveCodeBench's functional (call-based, LeetCode-style) problems
    are out of scope: a row whose cases are all functional is refused, saying so.
  kind "code".
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

# The module, not the class: `data.prompts` may import this module while it is itself
# being imported (the loader dispatches to these readers), and `from package import
# module` resolves from sys.modules at any point of that cycle.
from distill_jax.data import prompts as _prompts
from distill_jax.filters.choice import LETTERS, format_choices
from distill_jax.filters.io_judge import _json_field, io_cases_from_reference

if TYPE_CHECKING:
    from distill_jax.data.prompts import Prompt

GPQA_QUESTION = "Question"
GPQA_CORRECT = "Correct Answer"
GPQA_INCORRECT = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
GPQA_ID = "Record ID"

AIME_TEXT_FIELDS = ("problem", "question")
AIME_ID_FIELDS = ("id", "problem_idx", "ID")

CODE_TEXT_FIELDS = ("question_content", "problem", "description", "statement")
CODE_ID_FIELDS = ("question_id", "problem_id", "id")
IO_TEST_FIELDS = ("io_tests", "input_output", "public_test_cases", "private_test_cases")


def _present(value: Any) -> bool:
    return value is not None and str(value).strip() != ""


def _required_text(row: dict, name: str, where: str) -> str:
    if name not in row:
        raise ValueError(f"{where}: missing field {name!r} (has {sorted(row)})")
    value = row[name]
    if not _present(value):
        raise ValueError(f"{where}: field {name!r} is empty")
    return str(value).strip()


def _first_text(row: dict, names: tuple[str, ...], where: str, what: str) -> str:
    for name in names:
        if _present(row.get(name)):
            return str(row[name]).strip()
    raise ValueError(f"{where}: missing {what}: none of the fields "
                     f"{', '.join(repr(n) for n in names)} (has {sorted(row)})")


def _id(row: dict, names: tuple[str, ...], source: str, line_no: int) -> str:
    for name in names:
        if _present(row.get(name)):
            return str(row[name]).strip()
    return f"{source}-{line_no - 1}"


def shuffled_options(correct: str, incorrect: list[str], prompt_id: str,
                     seed: int = 0) -> tuple[list[str], str]:
    """The options in their fixed shuffled order and the correct one's letter."""
    texts = [correct, *incorrect]
    order = list(range(len(texts)))
    random.Random(f"{seed}:{prompt_id}").shuffle(order)
    return [texts[i] for i in order], LETTERS[order.index(0)]


def parse_gpqa(row: dict, where: str, source: str, line_no: int, seed: int = 0) -> Prompt:
    """A GPQA row (module docstring): kind "choice", options shuffled per problem."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a GPQA row must be a JSON object, not {type(row).__name__}")
    question = _required_text(row, GPQA_QUESTION, where)
    correct = _required_text(row, GPQA_CORRECT, where)
    incorrect = [_required_text(row, name, where) for name in GPQA_INCORRECT]
    prompt_id = _id(row, (GPQA_ID,), source, line_no)
    options, letter = shuffled_options(correct, incorrect, prompt_id, seed)
    return _prompts.Prompt(id=prompt_id, problem=format_choices(question, options),
                           kind="choice", source=source,
                           reference={"answer": letter, "options": options})


def parse_aime(row: dict, where: str, source: str, line_no: int) -> Prompt:
    """An AIME (2025-style) row (module docstring): kind "math"."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: an AIME row must be a JSON object, not {type(row).__name__}")
    problem = _first_text(row, AIME_TEXT_FIELDS, where, "problem text")
    answer = _required_text(row, "answer", where)
    return _prompts.Prompt(id=_id(row, AIME_ID_FIELDS, source, line_no), problem=problem,
                           kind="math", source=source, reference={"answer": answer})


def _has_functional_cases(reference: dict) -> bool:
    """Whether the reference carries function-call tests (LiveCodeBench "functional",
    APPS "fn_name"). Only called after `io_cases_from_reference` accepted it."""
    spec = reference.get("input_output")
    if spec is not None:
        spec = _json_field(spec, "input_output")
        if isinstance(spec, dict) and spec.get("fn_name"):
            return True
    for field in ("public_test_cases", "private_test_cases"):
        if reference.get(field) is None:
            continue
        tests = _json_field(reference[field], field)
        if isinstance(tests, list) and any(isinstance(t, dict) and t.get("testtype") ==
                                           "functional" for t in tests):
            return True
    return False


def parse_code_io(row: dict, where: str, source: str, line_no: int) -> Prompt:
    """A LiveCodeBench / Codeforces-style stdin/stdout problem (module docstring)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a code row must be a JSON object, not {type(row).__name__}")
    problem = _first_text(row, CODE_TEXT_FIELDS, where, "problem text")
    if any(_present(row.get(name)) for name in CODE_ID_FIELDS):
        prompt_id = _id(row, CODE_ID_FIELDS, source, line_no)
    elif _present(row.get("contest_id")) and _present(row.get("index")):
        prompt_id = f"{str(row['contest_id']).strip()}{str(row['index']).strip()}"
    else:
        prompt_id = f"{source}-{line_no - 1}"
    reference = {k: row[k] for k in IO_TEST_FIELDS if row.get(k) is not None}
    if not reference:
        raise ValueError(f"{where}: no stdin/stdout test cases: none of the fields "
                         f"{', '.join(repr(f) for f in IO_TEST_FIELDS)} (has {sorted(row)})")
    cases = io_cases_from_reference(reference)       # ValueError names a malformed field
    if not cases:
        if _has_functional_cases(reference):
            raise ValueError(f"{where}: only functional (call-based) test cases: "
                             f"LiveCodeBench's functional problems are not supported "
                             f"(stdin/stdout problems only)")
        raise ValueError(f"{where}: no stdin/stdout test cases in "
                         f"{', '.join(repr(f) for f in reference)}")
    return _prompts.Prompt(id=prompt_id, problem=problem, kind="code", source=source,
                           reference=reference)
