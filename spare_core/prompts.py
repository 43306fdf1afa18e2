"""Prompt inputs: one prompt per line, and the checks that make an erasure request meaningful."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


def parse_prompts(text: str, input_name: str, required: bool = True) -> list[str]:
    """One prompt per non-empty line."""
    prompts = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if required and not prompts:
        raise ValueError(f"{input_name} is empty: write at least one prompt (one per line)")
    return prompts


@dataclass(frozen=True)
class ErasurePrompts:
    forget: tuple[str, ...]
    surrogate: str
    retain: tuple[str, ...]

    @property
    def surrogates(self) -> tuple[str, ...]:
        """One surrogate for all forget prompts, or one per forget prompt (in order)."""
        return tuple(line.strip() for line in self.surrogate.splitlines() if line.strip()) or ("",)

    @staticmethod
    def parse(forget_text: str, surrogate: Optional[str] = None, retain_text: str = "") -> "ErasurePrompts":
        """``surrogate`` None: a job that needs no surrogate (saliency)."""
        forget = parse_prompts(forget_text, "forget_prompts")
        needs_surrogate = surrogate is not None
        surrogate = (surrogate or "").strip()
        lines = parse_prompts(surrogate, "surrogate_prompt", required=False) or [""]
        if needs_surrogate and len(lines) not in (1, len(forget)):
            raise ValueError(f"surrogate_prompt has {len(lines)} lines for {len(forget)} forget prompts: write one "
                             f"surrogate for all of them, or one line per forget prompt in the same order")
        pairs = zip(forget, lines * len(forget) if len(lines) == 1 else lines)
        same = [f for f, s in pairs if f == s]
        if needs_surrogate and same:
            raise ValueError(f"surrogate_prompt {same[0]!r} equals a forget prompt: the surrogate is what the "
                             f"concept should turn into, so it must differ (e.g. 'a painting' for a style)")
        retain = parse_prompts(retain_text, "retain_prompts", required=False)
        clash = [p for p in retain if p in forget]
        if clash:
            raise ValueError(f"retain_prompts contains the forget prompt {clash[0]!r}: a concept cannot be both "
                             f"erased and kept")
        return ErasurePrompts(tuple(forget), surrogate, tuple(retain))

    @property
    def retain_or_unconditional(self) -> tuple[str, ...]:
        # Without retain prompts, keep the unconditional prediction: the model's general prior.
        return self.retain or ("",)
