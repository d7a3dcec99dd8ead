"""SamplingParams: what to sample and how much."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Decoding settings, applied in this order to each step's logits:

    1. temperature (0 = greedy: argmax of the raw logits, everything below ignored),
    2. top-k (keep the k most likely; 0 = off),
    3. top-p / nucleus (keep the smallest prefix of the top-k-renormalized
       distribution whose mass reaches p; 1.0 = off),
    4. min-p (keep tokens with probability >= min_p x the most likely one's;
       0 = off; the ratio does not depend on renormalization),
    then sample from the renormalized survivors. Tokens tied with the last kept
    one are kept too.

    `logprobs` and `return_top_k` report the model's raw distribution
    (log_softmax of the logits at temperature 1), which is what soft-target KD
    needs; the temperature of KD is applied at training time.

    Sample j of a prompt depends only on (seed, the prompt's key, j).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    seed: int = 0
    return_top_k: int = 0

    def __post_init__(self):
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        checks = [
            (self.n >= 1, f"n must be >= 1, got {self.n}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}"),
            (0 <= self.min_p < 1, f"min_p must be in [0, 1), got {self.min_p}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.return_top_k >= 0, f"return_top_k must be >= 0, got {self.return_top_k}"),
            (0 <= self.seed < 2 ** 32, f"seed must be in [0, 2**32), got {self.seed}"),
            (all(s for s in self.stop_strings), "stop_strings must be non-empty strings"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
