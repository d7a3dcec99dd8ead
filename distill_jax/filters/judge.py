"""The optional LLM judge: a second opinion on math answers the rule verifier refused.

R1 had DeepSeek-V3 judge the answers its rules could not check; open-r1 had
Llama-3.3-70B re-judge what math-verify rejected and recovered 28k problems
(answers such as `\\frac{1}{2}` against `0.5 liters`, or a final answer in prose).
Here a judge model -- any checkpoint the library loads, run through our
`Sampler` -- reads the problem, the reference answer and the candidate's final
answer (or, when no final answer was extracted, the end of the response) in one
fixed prompt (`JUDGE_PROMPT`, versioned by `PROMPT_VERSION`), and ends its reply
with `VERDICT: EQUIVALENT | DIFFERENT | AMBIGUOUS`. Only EQUIVALENT overturns a
rule verdict, and only rule verdicts in `JUDGE_REASONS` are put to the judge.

Verdicts are cached on disk (`JudgeCache`, JSONL) under a hash of (judge id,
prompt version, gold, answer, whether the answer is a response tail) -- not of
the problem or the sample -- so the same (gold, answer) pair is judged once
across samples, prompts and reruns.

Importing this module imports no JAX (the filter's worker processes import
`distill_jax.filters.*`): the model, the sampler and the planner are imported
inside `judge_from_config`, and `LLMJudge` only calls the sampler it is given.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from typing import TYPE_CHECKING, Any, Sequence

from distill_jax import storage

if TYPE_CHECKING:     # for annotations only: these import jax or jinja
    from distill_jax.chat import ChatFormat
    from distill_jax.filters.sample import Sample
    from distill_jax.sampling.params import SamplingParams

VERDICTS = ("EQUIVALENT", "DIFFERENT", "AMBIGUOUS")
# The correctness verdicts the judge may overturn (verify.Correctness's reasons for math).
JUDGE_REASONS = ("wrong_answer", "no_answer", "gold_unparseable")
# Bump when JUDGE_PROMPT or what it is given changes: the cache key includes it, so old
# verdicts are not reused for a prompt they were not given with.
PROMPT_VERSION = 1
# A response the verifier found no final answer in is shown by its end: the last
# RESPONSE_TAIL_CHARS characters (where a final answer would be).
RESPONSE_TAIL_CHARS = 2000
CACHE_FILENAME = "judge_cache.jsonl"
# A cache in a bucket (no append) is rewritten whole at most this often, and on close:
# a killed run loses at most this long's verdicts.
CACHE_UPLOAD_EVERY_S = 60.0

# Braces are doubled for str.format; the values filled in may hold any braces.
JUDGE_PROMPT = """\
You are checking a candidate's answer to a math problem against the reference answer.

## Problem
{problem}

## Reference answer
{gold}

## {answer_heading}
{answer}

## Task
Decide whether the candidate's final answer is mathematically equivalent to the reference \
answer. Different forms of the same value are equivalent: 1/2, 0.5 and \\frac{{1}}{{2}}; \
x = 3 and 3; 2\\sqrt{{2}} and \\sqrt{{8}}; a value written with or without units, a \
dollar sign or a percent sign when the problem asks for the number. The same set of \
solutions in another order is equivalent. A different value, a missing answer, or several \
different final answers where the problem asks for one are DIFFERENT. Judge only the final \
answer, not the work leading to it, and do not solve the problem again unless you need to \
in order to compare the two answers. If the reference answer itself is unclear or \
malformed and you cannot tell whether they match, the verdict is AMBIGUOUS.

End your reply with exactly one line of this form, and nothing after it:
VERDICT: EQUIVALENT
or
VERDICT: DIFFERENT
or
VERDICT: AMBIGUOUS"""
FINAL_ANSWER_HEADING = "Candidate's final answer"
RESPONSE_TAIL_HEADING = ("End of the candidate's response (no final answer was extracted "
                         "from it: find its final answer here, if it states one)")

_WORDS = "|".join(v.lower() for v in VERDICTS)
_WORD = re.compile(rf"\b({_WORDS})\b", re.IGNORECASE)
# `VERDICT: X`, tolerating markdown around the pieces (`**VERDICT:** Equivalent`,
# `Verdict: **EQUIVALENT**.`) and a negation (`VERDICT: NOT EQUIVALENT`).
_VERDICT_LINE = re.compile(
    rf"verdict[\s*_`]*[:：=][\s*_`\"'(\[]*(not\s+|non-?\s*)?({_WORDS})\b", re.IGNORECASE)
# Words that make a bare verdict word in the last line a non-answer ("not equivalent",
# "I cannot say whether they are equivalent", "Equivalent?").
_HEDGE = re.compile(r"\b(not|no|non|cannot|can't|unclear|unsure|uncertain|whether|if|maybe|"
                    r"perhaps|possibly)\b|n't\b|\?", re.IGNORECASE)
_FALLBACK_TAIL_CHARS = 300


# ---------------------------------------------------------------- prompt


def response_tail(text: str, limit: int = RESPONSE_TAIL_CHARS) -> str:
    """The last `limit` characters of a response (marked as cut when cut)."""
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


@dataclasses.dataclass(frozen=True)
class JudgeItem:
    """One question to the judge. `answer` is the candidate's extracted final answer,
    or with `from_response` the response itself (only its tail is kept). Gold and
    answer are normalized here (stripped, the tail cut) so the cache key is on what
    the judge sees."""
    problem: str
    gold: str
    answer: str
    from_response: bool = False

    def __post_init__(self):
        answer = str(self.answer if self.answer is not None else "").strip()
        object.__setattr__(self, "problem", str(self.problem or "").strip())
        object.__setattr__(self, "gold", str(self.gold if self.gold is not None else "").strip())
        object.__setattr__(self, "answer",
                           response_tail(answer) if self.from_response else answer)


@dataclasses.dataclass(frozen=True)
class JudgeResult:
    """`raw_text`: the judge's reply ("" for a verdict read from the cache, which keeps
    replies on disk only; a note in parentheses for an item that was not judged).
    `cached`: the verdict was not generated for this item: read from the cache, or
    shared with an earlier identical item of the same call (so the results with
    cached=False that have a reply are the generations)."""
    verdict: str
    raw_text: str
    cached: bool

    @property
    def equivalent(self) -> bool:
        return self.verdict == "EQUIVALENT"


def render_judge_message(problem: str, gold: str, answer: str,
                         from_response: bool = False) -> str:
    """The judge's user message (the chat template is applied by the judge's format)."""
    item = JudgeItem(problem, gold, answer, from_response)
    return _render(item)


def _render(item: JudgeItem) -> str:
    return JUDGE_PROMPT.format(
        problem=item.problem or "(not given)", gold=item.gold or "(empty)",
        answer_heading=RESPONSE_TAIL_HEADING if item.from_response else FINAL_ANSWER_HEADING,
        answer=item.answer or "(empty)")


def item_for_sample(sample: "Sample", answer: str | None) -> JudgeItem | None:
    """The judge's question for a math sample the verifier rejected: `answer` is the
    final answer the verifier extracted (verify.Correctness.verify's second value),
    None when it found none (then the end of the response is shown). None when there
    is nothing to judge: not a math sample (code and multiple choice have their own
    checks), or no gold answer at all."""
    if sample.kind != "math":
        return None
    gold = sample.reference.get("answer")
    if gold is None or not str(gold).strip():
        return None
    if answer is not None and str(answer).strip():
        return JudgeItem(sample.problem, str(gold), str(answer))
    text = sample.answer if sample.reasoning is not None else sample.response
    return JudgeItem(sample.problem, str(gold), text, from_response=True)


# ---------------------------------------------------------------- verdict


def parse_verdict(text: str) -> str:
    """EQUIVALENT, DIFFERENT or AMBIGUOUS from a judge's reply.

    Read after the last `</think>` (a reasoning judge's verdict words inside its
    reasoning do not count; a reasoning never closed is AMBIGUOUS). The last
    `VERDICT: X` line decides (case and markdown tolerated; a line that names two
    verdicts, like the prompt's own `EQUIVALENT|DIFFERENT`, is skipped;
    `NOT EQUIVALENT` is DIFFERENT). Without one, a last line that names exactly one
    verdict word, without hedging ("not", "whether", "?"), when no other verdict word
    is near the end. Anything else -- empty, garbage, a refusal -- is AMBIGUOUS."""
    if not text:
        return "AMBIGUOUS"
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    elif "<think>" in text:
        return "AMBIGUOUS"       # still reasoning when it stopped
    for match in reversed(list(_VERDICT_LINE.finditer(text))):
        end_of_line = text.find("\n", match.end())
        rest = text[match.end():end_of_line if end_of_line >= 0 else len(text)]
        if _WORD.search(rest):
            continue             # "VERDICT: EQUIVALENT|DIFFERENT|AMBIGUOUS": not a verdict
        word = match.group(2).upper()
        if match.group(1):       # negated
            return "DIFFERENT" if word == "EQUIVALENT" else "AMBIGUOUS"
        return word
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "AMBIGUOUS"
    last = lines[-1]
    words = {w.upper() for w in _WORD.findall(text.strip()[-_FALLBACK_TAIL_CHARS:])}
    in_last = {w.upper() for w in _WORD.findall(last)}
    if len(in_last) == 1 and words == in_last and not _HEDGE.search(last):
        return in_last.pop()
    return "AMBIGUOUS"


# ---------------------------------------------------------------- cache


def cache_key(judge_id: str, item: JudgeItem) -> str:
    """sha256 (hex) of what decides a verdict: the judge, the prompt version, the
    gold and answer texts and how the answer is shown. Not the problem: the same
    (gold, answer) pair is judged once for every problem and sample it appears in."""
    payload = json.dumps([judge_id, PROMPT_VERSION, item.gold, item.answer, item.from_response],
                         ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def default_cache_path(output_dir: str) -> str:
    """`<output_dir>.judge_cache.jsonl`, beside the filter's output directory rather
    than in it: the filter stage replaces its output directory whole when a run
    completes, which would drop a cache kept inside it."""
    return storage.absolute(output_dir) + "." + CACHE_FILENAME


class JudgeCache:
    """Verdicts on disk, one JSON line per (gold, answer) pair judged:
    {"key", "verdict", "judge_id", "prompt_version", "gold", "answer", "raw_text"}.

    Opened: every line is read into a dict key -> verdict (raw texts stay on disk:
    about 150 bytes of memory per entry, i.e. ~150 MB for a million pairs). A torn
    last line (a killed run stopped mid-write; no newline) is dropped from the file
    and counted in `torn_lines`; any other bad line is an error naming `path:line`.
    Each new entry is appended and flushed at once, so a killed run keeps every
    verdict it finished. In a bucket (`path` a URL; objects cannot be appended to)
    entries are appended to a local copy, which replaces the object whole every
    `upload_every_s` and on close. One writer at a time (one filter process per
    cache file).
    """

    def __init__(self, path: str, upload_every_s: float = CACHE_UPLOAD_EVERY_S):
        self.path = path
        self.verdicts: dict[str, str] = {}
        self.torn_lines = 0
        self._file = None
        self._remote = not storage.is_local(path)
        self._spool: str | None = None        # the local copy of a bucket cache
        self._upload_every_s = upload_every_s
        self._uploaded_at = 0.0
        self._dirty = False
        if storage.exists(path):
            self._load()

    def _load(self) -> None:
        data = storage.read_bytes(self.path)
        keep = len(data)
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1          # 0 when the only line is torn
            self.torn_lines = 1
        for line_no, line in enumerate(data[:keep].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key, verdict = row["key"], row["verdict"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{self.path}:{line_no}: malformed judge cache line ({e}); "
                                 "delete the file to judge again") from None
            if verdict not in VERDICTS:
                raise ValueError(f"{self.path}:{line_no}: unknown verdict {verdict!r}")
            self.verdicts[key] = _VERDICT_STRINGS[verdict]
        if keep < len(data) and self._remote:
            storage.write_bytes_atomic(self.path, data[:keep])
        elif keep < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(keep)

    def __len__(self) -> int:
        return len(self.verdicts)

    def __contains__(self, key: str) -> bool:
        return key in self.verdicts

    def get(self, key: str) -> str | None:
        return self.verdicts.get(key)

    def put(self, key: str, verdict: str, raw_text: str, **fields: Any) -> None:
        """Records a verdict (a key already present is left as it is). `fields` (e.g.
        judge_id, gold, answer) are written along for whoever reads the file."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r}; one of {VERDICTS}")
        if key in self.verdicts:
            return
        if self._file is None:
            self._file = self._open_for_append()
        row = {"key": key, "verdict": verdict, **fields, "raw_text": raw_text}
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        self.verdicts[key] = _VERDICT_STRINGS[verdict]
        self._dirty = self._remote
        if self._dirty and time.monotonic() - self._uploaded_at >= self._upload_every_s:
            self._upload()

    def _open_for_append(self):
        if not self._remote:
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
            return open(self.path, "a", encoding="utf-8")
        fd, self._spool = tempfile.mkstemp(prefix="distill_jax-judge-cache-", suffix=".jsonl")
        os.close(fd)
        if storage.exists(self.path):
            with storage.open(self.path, "rb") as src, open(self._spool, "wb") as dst:
                shutil.copyfileobj(src, dst)
        self._uploaded_at = time.monotonic()
        return open(self._spool, "a", encoding="utf-8")

    def _upload(self) -> None:
        self._file.flush()
        storage.upload_file(self._spool, self.path)
        self._uploaded_at = time.monotonic()
        self._dirty = False

    def close(self) -> None:
        if self._file is None:
            return
        try:
            if self._dirty:
                self._upload()
        finally:
            self._file.close()
            self._file = None
            if self._spool is not None:
                os.remove(self._spool)
                self._spool = None

    def __enter__(self) -> "JudgeCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_VERDICT_STRINGS = {v: v for v in VERDICTS}     # one shared string object per verdict


# ---------------------------------------------------------------- the judge


def judge_sampling_params(chat_format: "ChatFormat", max_new_tokens: int = 1024,
                          seed: int = 0) -> "SamplingParams":
    """Greedy, one sample, stopping at the chat format's end of turn."""
    from distill_jax.sampling.params import SamplingParams
    return SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens,
                          stop_token_ids=chat_format.stop_token_ids(), seed=seed)


class LLMJudge:
    """`LLMJudge(sampler, chat_format, judge_id, params, cache).judge(items)`.

    `sampler` is a `distill_jax.sampling.Sampler` of the judge model (anything with
    its `generate_stream`), `chat_format` the judge's `ChatFormat` (its tokenizer
    renders and decodes), `judge_id` names the judge in the cache key, `params` one
    sample each (`judge_sampling_params`: greedy, the format's stop ids). A prompt
    longer than `max_prompt_tokens` (0: what the sampler can take with
    params.max_new_tokens) is not judged: AMBIGUOUS, not cached, counted in
    `stats["too_long"]`. `stats` counts the last call.
    """

    def __init__(self, sampler, chat_format: "ChatFormat", judge_id: str,
                 params: "SamplingParams", cache: JudgeCache | None = None,
                 max_prompt_tokens: int = 0):
        if params.n != 1:
            raise ValueError(f"the judge draws one reply per question; got n={params.n}")
        if not params.stop_token_ids:
            params = dataclasses.replace(params, stop_token_ids=chat_format.stop_token_ids())
        if not judge_id:
            raise ValueError("judge_id must name the judge (it is part of the cache key)")
        self.sampler, self.chat_format, self.judge_id = sampler, chat_format, judge_id
        self.params, self.cache = params, cache
        self.max_prompt_tokens = self._prompt_limit(max_prompt_tokens)
        self.stats: dict[str, int] = {}

    def _prompt_limit(self, given: int) -> int:
        """The longest prompt the sampler takes with this max_new_tokens."""
        limits = [given] if given > 0 else []
        buckets = getattr(self.sampler, "length_buckets", None)
        cfg = getattr(self.sampler, "cfg", None)
        slot_len = getattr(self.sampler, "slot_len", 0)
        new = self.params.max_new_tokens
        if buckets:
            fitting = [b for b in buckets if not slot_len or b + new <= slot_len]
            limits.append(max(fitting, default=0))
        if cfg is not None:
            limits.append(cfg.max_position_embeddings - new)
        limit = min(limits) if limits else 1 << 62
        if limit < 1:
            raise ValueError(f"the judge cannot take any prompt with max_new_tokens={new} "
                             f"(max_position_embeddings "
                             f"{getattr(cfg, 'max_position_embeddings', '?')}, slot_len "
                             f"{slot_len or 'per call'})")
        return limit

    def judge(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        """One result per item, in order. Cache hits and repeats within the call are
        not generated again; everything else goes through one sampler call, whose
        verdicts are cached as each finishes (a killed call keeps what it finished)."""
        stats = collections.Counter(items=len(items))
        results: list[JudgeResult | None] = [None] * len(items)
        todo: dict[str, list[int]] = {}           # key -> the items asking it, in order
        for i, item in enumerate(items):
            if not isinstance(item, JudgeItem):
                raise TypeError(f"item {i} is {type(item).__name__}, not a JudgeItem")
            key = cache_key(self.judge_id, item)
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                results[i] = JudgeResult(hit, "", True)
                stats["cache_hits"] += 1
            elif key in todo:
                todo[key].append(i)
                stats["repeats"] += 1
            else:
                todo[key] = [i]
        keys, prompts = [], []
        for key, where in todo.items():
            item = items[where[0]]
            prompt = self.chat_format.generation_prompt_ids([_render(item)])[0]
            if len(prompt) > self.max_prompt_tokens:
                note = (f"(not judged: the prompt has {len(prompt)} tokens, more than the "
                        f"judge's limit of {self.max_prompt_tokens})")
                for i in where:
                    results[i] = JudgeResult("AMBIGUOUS", note, False)
                stats["too_long"] += 1
                continue
            keys.append(key)
            prompts.append(prompt)
        if prompts:
            stats["generated"] = len(prompts)
            prompt_keys = [int.from_bytes(bytes.fromhex(k[:8]), "little") >> 1 for k in keys]
            for pos, (out,) in self.sampler.generate_stream(prompts, self.params, prompt_keys):
                key = keys[pos]
                text = self._reply(out)
                verdict = parse_verdict(text)
                stats[f"finish_{out.finish_reason}"] += 1
                where = todo[key]
                if self.cache is not None:
                    item = items[where[0]]
                    self.cache.put(key, verdict, text, judge_id=self.judge_id,
                                   prompt_version=PROMPT_VERSION, gold=item.gold,
                                   answer=item.answer, from_response=item.from_response)
                for n, i in enumerate(where):
                    results[i] = JudgeResult(verdict, text, n > 0)
        for r in results:
            stats[r.verdict.lower()] += 1
        self.stats = dict(stats)
        return results

    def _reply(self, out) -> str:
        """The reply's text: the assistant turn's opener the prompt already holds (e.g.
        a reasoning judge's "<think>\\n", so its </think> parses) plus the decoded
        tokens, without the stop token that ended them."""
        ids = list(out.token_ids)
        if out.finish_reason == "stop" and ids and ids[-1] in self.params.stop_token_ids:
            ids = ids[:-1]
        return self.chat_format.opener + self.chat_format.tokenizer.decode(ids)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


# ---------------------------------------------------------------- config


def judge_config():
    """The filter stage's `judge` section, at its defaults (off)."""
    import ml_collections
    from distill_jax.models.from_config import model_section
    c = ml_collections.ConfigDict()
    c.enabled = False
    # The judge model: an HF checkpoint directory or a preset (random weights: tests),
    # plus every runtime field (see models/from_config.py).
    c.model = model_section(dtype="bfloat16", param_dtype="bfloat16")
    c.id = ""                  # names the judge in the cache key; "" = the checkpoint's
    #                            directory name (or <preset>-random-init<seed>)
    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = ""      # "" = the checkpoint directory
    c.tokenizer.chat_template = ""      # "" = the tokenizer's own
    c.tokenizer.assistant_prefix = ""   # e.g. "<think>\n" for a reasoning judge
    c.max_new_tokens = 1024
    c.max_prompt_tokens = 2048  # the slots are sized for prompts up to this (bucketed);
    #                             longer ones are not judged (AMBIGUOUS, counted)
    c.num_slots = 0            # decode slots; 0 = what fits next to the judge (planner)
    c.seed = 0
    c.reasons = JUDGE_REASONS  # the correctness reasons put to the judge
    c.cache_path = ""          # "" = <output_dir>.judge_cache.jsonl (default_cache_path)
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "expert": 1, "tensor": 1})
    return c


def _section(section):
    import ml_collections
    if isinstance(section, ml_collections.ConfigDict):
        return section
    return ml_collections.ConfigDict(dict(section))


def check_judge_config(section) -> None:
    """Refuses a judge section that cannot work, naming the value, before any loading."""
    section = _section(section)
    unknown = [r for r in section.reasons if r not in JUDGE_REASONS]
    if unknown:
        raise ValueError(f"judge.reasons {unknown}: unknown reason(s); the judge may "
                         f"overturn {list(JUDGE_REASONS)}")
    model = section.model
    if not model.get("checkpoint") and not model.get("preset"):
        raise ValueError("judge.model needs `checkpoint` (an HF directory) or `preset`; "
                         f"got checkpoint={model.get('checkpoint')!r}, "
                         f"preset={model.get('preset')!r}")
    if not section.tokenizer.get("path") and not model.get("checkpoint"):
        raise ValueError("judge.tokenizer.path is empty and there is no judge.model.checkpoint "
                         "to read a tokenizer from")
    for name in ("max_new_tokens", "max_prompt_tokens"):
        if int(section[name]) < 1:
            raise ValueError(f"judge.{name}={section[name]} must be >= 1")
    if int(section.num_slots) < 0:
        raise ValueError(f"judge.num_slots={section.num_slots}: give a positive count, or 0 "
                         "for the planner's")


def judge_id_of(section) -> str:
    section = _section(section)
    if section.get("id"):
        return section.id
    model = section.model
    if model.get("checkpoint"):
        return storage.basename(storage.absolute(model.checkpoint))
    return f"{model.preset}-random-init{model.get('init_seed') or 0}"


def judge_from_config(section, cache_path: str | None) -> LLMJudge:
    """An `LLMJudge` from a `judge_config()` section: loads the tokenizer, the chat
    format and the model, builds the Sampler (slots for prompts up to
    max_prompt_tokens + max_new_tokens), and opens the cache at `cache_path` (None
    or "": no cache). The section is checked before anything loads."""
    section = _section(section)
    check_judge_config(section)
    import jax
    import ml_collections
    from absl import logging

    from distill_jax import models, planning, sharding
    from distill_jax.models import attention
    from distill_jax.sampling.generate import chat_format_from_config
    from distill_jax.sampling.sampler import DEFAULT_LENGTH_BUCKETS, Sampler, bucket
    from distill_jax.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(section.tokenizer.path or section.model.checkpoint)
    fmt = chat_format_from_config(tokenizer, section.tokenizer)
    cfg = models.config_from_section(section.model, tokenizer.vocab_size)
    max_new = int(section.max_new_tokens)
    prompt_bucket = bucket(int(section.max_prompt_tokens), DEFAULT_LENGTH_BUCKETS,
                           "judge.max_prompt_tokens")
    if max_new >= cfg.max_position_embeddings:
        raise ValueError(f"judge.max_new_tokens={max_new} leaves no room for a prompt in the "
                         f"judge's max_position_embeddings={cfg.max_position_embeddings}")
    slot_len = -(-(prompt_bucket + max_new) // attention.DECODE_BLOCK) * attention.DECODE_BLOCK
    mesh = sharding.make_mesh(dict(section.mesh)) if section.get("mesh") else None
    plan = ml_collections.ConfigDict({      # what the planner reads of a generate config
        "teacher": section.model,
        "tokenizer": {"path": section.tokenizer.path or section.model.checkpoint},
        "sampling": {"max_new_tokens": max_new, "return_top_k": 0},
        "num_slots": int(section.num_slots), "mesh": section.get("mesh")})
    # Without a mesh the sampler runs on one device: plan for one.
    num_slots, rule = planning.resolve_num_slots(plan, prompt_bucket,
                                                 num_devices=None if mesh else 1,
                                                 num_hosts=jax.process_count())
    judge_id = judge_id_of(section)
    logging.info("judge %s: %d slots (%s), slot length %d", judge_id, num_slots, rule, slot_len)
    _, params = models.model_from_section(section.model, tokenizer.vocab_size, mesh)
    sampler = Sampler(cfg, params, mesh=mesh, tokenizer=tokenizer, num_slots=num_slots,
                      slot_len=slot_len, pad_id=tokenizer.pad_id or 0)
    cache = JudgeCache(cache_path) if cache_path else None
    if cache is not None and cache.torn_lines:
        logging.warning("judge cache %s: dropped a torn last line (a killed run)", cache_path)
    return LLMJudge(sampler, fmt, judge_id,
                    judge_sampling_params(fmt, max_new, int(section.seed)), cache,
                    max_prompt_tokens=min(prompt_bucket,
                                          cfg.max_position_embeddings - max_new))
