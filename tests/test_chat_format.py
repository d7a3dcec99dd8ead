"""One chat format for generation, SFT and evaluation: the reasoning opener is
rendered once, markers are single tokens, and the three stages agree."""
import pytest

from distill_jax.chat import ChatFormat, ChatFormatError, missing_chat_markers
from distill_jax.data.sft import encode_example
from distill_jax.tokenizer import load_tokenizer
from tests.chat_tokenizers import R1_HUB_TEMPLATE, R1_MARKERS, write_qwen_like, write_r1_like

USER = "Ada has 3 apples and gets 4. How many?"
TEXT = "3 + 4 = 7.\n</think>\nThe answer is \\boxed{7}."


@pytest.fixture(scope="module")
def qwen_like(tmp_path_factory):
    return load_tokenizer(write_qwen_like(tmp_path_factory.mktemp("qwen_like")))


@pytest.fixture(scope="module")
def r1_like(tmp_path_factory):
    return load_tokenizer(write_r1_like(tmp_path_factory.mktemp("r1_like")))


@pytest.mark.parametrize("template", ["deepseek-r1", R1_HUB_TEMPLATE, None])
def test_reasoning_opener_is_rendered_once(r1_like, template):
    # deepseek-r1 (built in) and the hub's R1-Distill template open the reasoning in
    # their generation prompt; the stage's "<think>\n" must not be added again.
    fmt = ChatFormat.create(r1_like, template, assistant_prefix="<think>\n")
    prompt = fmt.generation_prompt(USER)
    assert prompt.endswith("<｜Assistant｜><think>\n")
    assert prompt.count("<think>") == 1
    assert r1_like.apply_chat_template([{"role": "user", "content": USER}], template=template,
                                       assistant_prefix="<think>\n").count("<think>") == 1
    assert fmt.opener == "<think>\n"
    assert fmt.head(USER) + fmt.opener == prompt


def test_opener_is_added_when_the_template_does_not_open_it(qwen_like):
    fmt = ChatFormat.create(qwen_like, "chatml", assistant_prefix="<think>\n")
    assert fmt.generation_prompt(USER).endswith("<|im_start|>assistant\n<think>\n")
    assert fmt.opener == "<think>\n"
    # Without a prefix the trace's assistant turn starts with the text itself.
    assert ChatFormat.create(qwen_like, "chatml", assistant_prefix="").opener == ""


def test_template_opener_is_recorded_even_without_a_configured_prefix(r1_like):
    # The prompt holds "<think>\n" because the template wrote it: SFT must put it back.
    assert ChatFormat.create(r1_like, "deepseek-r1", assistant_prefix="").opener == "<think>\n"


def test_generation_and_sft_agree_token_for_token(r1_like):
    fmt = ChatFormat.create(r1_like, "deepseek-r1")
    prompt_ids = fmt.generation_prompt_ids([USER])[0]
    record = {"prompt": USER, "assistant_prefix": fmt.opener, "response": fmt.opener + TEXT}
    ids = encode_example(record, fmt)["ids"].tolist()
    assert ids[:len(prompt_ids)] == prompt_ids
    assert r1_like.decode(ids[len(prompt_ids):]) == TEXT + "<｜end▁of▁sentence｜>"
    assert fmt.stop_token_ids()[0] == r1_like.token_to_id("<｜end▁of▁sentence｜>")


def test_markers_that_are_not_single_tokens_are_refused_by_name(qwen_like):
    assert missing_chat_markers(qwen_like, "chatml") == []
    assert missing_chat_markers(qwen_like, "deepseek-r1") == R1_MARKERS[2:4] + R1_MARKERS[1:2]
    with pytest.raises(ChatFormatError, match=r"marker '<｜User｜>' is not a single token of "
                                              r"tokenizer .*tokenizer\.json.*add_chat_tokens"):
        ChatFormat.create(qwen_like, "deepseek-r1")


def test_added_chat_tokens_make_the_format_usable(qwen_like):
    extended = qwen_like.with_special_tokens(missing_chat_markers(qwen_like, "deepseek-r1"))
    assert extended.vocab_size == qwen_like.vocab_size + 3
    fmt = ChatFormat.create(extended, "deepseek-r1")
    assert fmt.stop_token_ids()[0] == qwen_like.vocab_size + 2      # <｜end▁of▁sentence｜>


def test_a_template_that_renders_generation_and_finished_turns_differently_is_refused(r1_like):
    # Qwen3-style: a finished turn gets an empty think block the generation prompt lacks,
    # so SFT would teach a format generation never shows.
    qwen3_like = (
        "{% for message in messages %}{% if message['role'] == 'assistant' %}"
        "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message['content'] "
        "+ '<|im_end|>\\n' }}{% else %}{{ '<|im_start|>' + message['role'] + '\\n' "
        "+ message['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    with pytest.raises(ChatFormatError, match="opens the assistant turn differently"):
        ChatFormat.create(r1_like, qwen3_like)


def test_a_template_is_compiled_once_not_per_example(qwen_like, monkeypatch):
    # ChatFormat renders every SFT example, prompt and evaluation through a template
    # passed by name; compiling it per call was most of the data pipeline's time.
    import jinja2.sandbox
    compiled = []
    real = jinja2.sandbox.ImmutableSandboxedEnvironment.from_string
    monkeypatch.setattr(jinja2.sandbox.ImmutableSandboxedEnvironment, "from_string",
                        lambda self, source, *a, **k: compiled.append(source) or real(
                            self, source, *a, **k))
    fmt = ChatFormat.create(qwen_like, "chatml")
    first = fmt.generation_prompt(USER)
    compiled.clear()
    renders = [fmt.generation_prompt(f"{USER} ({i})") for i in range(20)]
    renders += [fmt.head(f"{USER} ({i})") for i in range(20)]
    assert compiled == []
    assert renders[0] == first.replace(USER, f"{USER} (0)")
