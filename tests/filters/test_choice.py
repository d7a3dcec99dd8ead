"""Multiple-choice answers: which letter a hand-written response chooses."""
import random

import pytest

from distill_jax.filters import choice
from distill_jax.filters.choice import (LETTERS, choice_equal, extract_choice,
                                           format_choices)

OPTIONS = ["0.5", "2", "3 eV", "The reaction proceeds via SN2"]


@pytest.mark.parametrize("text, letter", [
    # a letter in a box, with and without parentheses or \text
    ("Reasoning.\n</think>\nSo the answer is $\\boxed{C}$.", "C"),
    ("</think>\n\\boxed{(C)}", "C"),
    ("</think>\n\\boxed{\\text{C}}", "C"),
    ("</think>\n\\boxed{\\text{(B)}}", "B"),
    ("</think>\n$\\boxed{\\textbf{D}}$", "D"),
    ("</think>\n\\boxed{c}", "C"),
    # stated answers
    ("</think>\nThe answer is (C).", "C"),
    ("</think>\nThe correct answer is C because the energy is 3 eV.", "C"),
    ("</think>\nanswer: C", "C"),
    ("</think>\nANSWER: A", "A"),
    ("</think>\n**Answer:** B", "B"),
    ("</think>\n**Answer:** (C)", "C"),
    ("</think>\nFinal Answer: C", "C"),
    ("</think>\n**Final Answer**\n\n(B)", "B"),
    ("</think>\nThe answer is option D.", "D"),
    ("</think>\nThe correct option is (A).", "A"),
    ("</think>\nOption C is correct.", "C"),
    ("</think>\nAnswer: (C) 3 eV", "C"),
    ("</think>\nThe answer is \\boxed{B}", "B"),
    # a final line that is just a letter
    ("</think>\nAfter comparing the options, the best one is\n\n(D)", "D"),
    ("</think>\nSummary of the work.\nD.", "D"),
    ("</think>\nSummary of the work.\n**(A)**", "A"),
])
def test_letters(text, letter):
    assert extract_choice(text, OPTIONS) == letter


@pytest.mark.parametrize("text, letter", [
    ("</think>\nThe answer is 3 eV.", "C"),                          # exact text
    ("</think>\n\\boxed{3 eV}", "C"),
    ("</think>\n\\boxed{3\\text{ eV}}", "C"),
    ("</think>\nThe answer is: the reaction PROCEEDS   via sn2.", "D"),  # case, spacing
    ("</think>\n\\boxed{The  reaction proceeds via SN2}", "D"),
    ("</think>\nThe answer is $\\frac{1}{2}$.", "A"),              # math_equal to "0.5"
    ("</think>\n\\boxed{\\frac{1}{2}}", "A"),
    ("</think>\n\\boxed{2.0}", "B"),
])
def test_option_text_instead_of_a_letter(text, letter):
    assert extract_choice(text, OPTIONS) == letter


def test_the_last_stated_answer_wins():
    assert extract_choice("</think>\nThe answer is (A). On reflection, the answer is (B).",
                          OPTIONS) == "B"
    assert extract_choice("</think>\n\\boxed{A}\n\nWait, no: Final Answer: D", OPTIONS) == "D"
    assert extract_choice("</think>\nAnswer: D\n\\boxed{B}", OPTIONS) == "B"
    assert extract_choice("<think>The answer is (A).\nWait, the answer is (D).</think>\nOK",
                          OPTIONS) == "D"
    # A remark after the answer is no answer: the earlier statement counts.
    assert extract_choice("</think>\nThe answer is (C). The answer is correct.", OPTIONS) == "C"


def test_no_valid_choice_is_none():
    assert extract_choice("</think>\nThe answer is A or C.", OPTIONS) is None
    assert extract_choice("</think>\n\\boxed{A \\text{ or } C}", OPTIONS) is None
    assert extract_choice("</think>\n\\boxed{A} and \\boxed{C}", OPTIONS) is None
    assert extract_choice("</think>\nAnswer: (A), (C)", OPTIONS) is None
    assert extract_choice("</think>\nThe answer is (E).", OPTIONS) is None     # out of range
    assert extract_choice("</think>\n\\boxed{E}", OPTIONS) is None
    assert extract_choice("</think>\n\\boxed{42}", OPTIONS) is None            # no such option
    # The same letter twice is one choice.
    assert extract_choice("</think>\n\\boxed{C} or \\boxed{3 eV}", OPTIONS) == "C"


def test_summary_first_then_the_reasoning():
    # The answer only inside the reasoning, the summary has none: it counts.
    assert extract_choice("<think>\nSo the answer is (B).\n</think>\nThat is my answer.",
                          OPTIONS) == "B"
    assert extract_choice("<think>\n\\boxed{A}\n</think>\nDone", OPTIONS) == "A"
    # The summary's answer wins over the reasoning's.
    assert extract_choice("<think>\nThe answer is (B).\n</think>\nThe answer is (D).",
                          OPTIONS) == "D"
    # A hypothesis is no answer.
    assert extract_choice("<think>Let me check whether the answer is B.</think>\nHmm.",
                          OPTIONS) is None
    # A question is no answer.
    assert extract_choice("</think>\nSo the answer is B?", OPTIONS) is None


@pytest.mark.parametrize("text", [None, "", "   ", "no answer here", "</think>", "<think>",
                                  "The answer is", "\\boxed{", "\\boxed{}", "}}}{{{",
                                  "The answer is correct.", "Answer:\n", "\x00\ud800"])
def test_junk_is_none(text):
    assert extract_choice(text, OPTIONS) is None


def test_no_options_is_none():
    assert extract_choice("\\boxed{A}", []) is None


def test_ten_options_and_format():
    opts = [f"option {k}" for k in range(10)]
    assert extract_choice("</think>\n\\boxed{J}", opts) == "J"
    assert extract_choice("</think>\n\\boxed{K}", opts) is None
    text = format_choices("  What is x?  ", [" 1 ", "2", "3", "4"])
    assert text == "What is x?\n\n(A) 1\n(B) 2\n(C) 3\n(D) 4"
    with pytest.raises(ValueError):
        format_choices("q", [])
    assert LETTERS.startswith("ABCD")


def test_choice_equal():
    assert choice_equal("C", "C") and choice_equal("C", "c") and choice_equal("C", "(C)")
    assert not choice_equal("C", "B") and not choice_equal("C", None)
    assert not choice_equal("C", "") and not choice_equal("C", "CC")
    assert not choice_equal("", "")


def test_fuzz_never_raises():
    rng = random.Random(0)
    pieces = ["\\boxed{", "}", "{", "(", ")", "A", "B", "C", "E", "c", " or ", " and ",
              "The answer is ", "Answer:", "**", "\n", "</think>", "<think>", "$", "\\text{",
              "0.5", "\\frac{1}{2}", "3 eV", ". ", "?", "option ", "é", "\ud800", "\\", "---",
              "Final Answer", "whether ", "is correct", ",", "\t"]
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))
        # The internal reader (no guard): a bug would raise here.
        got = choice._extract(text, OPTIONS)
        assert got is None or got in "ABCD"
        assert extract_choice(text, OPTIONS) == got
    for _ in range(300):
        text = "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 80)))
        assert choice._extract(text, OPTIONS) in (None, "A", "B", "C", "D")
    # Large inputs stay fast (linear scans, bounded markers).
    big = "The answer is correct. " * 5000 + "\\boxed{" * 2000 + "The answer is (B)."
    assert extract_choice(big, OPTIONS) == "B"
