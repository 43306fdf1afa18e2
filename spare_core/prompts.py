"""Prompt inputs: a concept phrase or full prompts, and the checks that make an erasure request meaningful.

Users type a concept ("Van Gogh style", "neon style", "a cat"), not eight hand-made prompts. A short single
line is such a phrase: it is expanded here into varied forget / surrogate prompt pairs (caption templates ×
context), so the erasure holds for prompts the user never wrote. The retain phrases supply that context (a
style is drawn on the retained subjects, a subject in the retained styles) and are expanded the same way, so the
retain term covers the same prompt forms. Several lines, or a longer line, are full prompts used as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# A concept phrase is one line of at most this many words; anything else is a full prompt.
PHRASE_MAX_WORDS = 4
PHRASE_RULE = (f"One line of at most {PHRASE_MAX_WORDS} words (e.g. 'Van Gogh style', 'neon style', 'a cat') is a "
               f"concept phrase, which the pack expands into many prompts itself; a phrase with the word 'style' is "
               f"erased as a style, any other as a subject. Several lines, or a longer line, are full prompts, one "
               f"per line, used as written.")

# Caption forms for a style drawn on a subject, and for a subject on its own or in a style. {s} is a style's
# name without the word "style" ("neon"), {x} a subject phrase ("a star").
STYLE_TEMPLATES = ("{x} in {s} style", "{s} painting of {x}", "a {s} style picture of {x}", "{x}, {s} style",
                   "{s} style drawing of {x}", "{x} painted in {s} style")
SUBJECT_TEMPLATES = ("{x}", "a picture of {x}", "a photo of {x}", "{x}, high quality")
# Context when the retain list offers none of the other kind: common subjects and styles.
DEFAULT_SUBJECTS = ("a person", "a house", "a landscape", "a cat", "a tree", "a city street", "a flower",
                    "a portrait of a woman")
DEFAULT_STYLES = ("photo", "oil painting", "watercolor", "sketch", "cartoon", "digital art")
# Expansion sizes: enough variety for the erasure to generalise, few enough that sampling stays cheap.
MAX_FORGET_PAIRS = 24
RETAIN_PROMPTS_PER_PHRASE = 1


def parse_prompts(text: str, input_name: str, required: bool = True) -> list[str]:
    """One prompt per non-empty line."""
    prompts = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if required and not prompts:
        raise ValueError(f"{input_name} is empty: write a concept phrase (e.g. 'Van Gogh style', 'a cat') or at "
                         f"least one prompt (one per line)")
    return prompts


def is_concept_phrase(text: str) -> bool:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return len(lines) == 1 and len(lines[0].split()) <= PHRASE_MAX_WORDS


def _normalise(phrase: str) -> str:
    return " ".join(phrase.strip().rstrip(".,;").split())


def is_style(phrase: str) -> bool:
    return "style" in phrase.lower().split()


def style_name(phrase: str) -> str:
    """'neon style' → 'neon', 'in the style of Van Gogh' → 'Van Gogh', 'Van Gogh style' → 'Van Gogh'."""
    words = [w for w in phrase.split() if w.lower() not in ("style", "in", "the", "of")]
    return " ".join(words)


def _spread(count: int, first: int, second: int) -> list[tuple[int, int]]:
    """``count`` (i, j) pairs over a first × second grid, visiting every i and every j as evenly as possible."""
    pairs = []
    for k in range(min(count, first * second)):
        i = k % first
        j = (k // first + k) % second
        while (i, j) in pairs:
            j = (j + 1) % second
        pairs.append((i, j))
    return pairs


def _subject(phrase: str, styles: tuple[str, ...], index: int) -> tuple[str, str]:
    """(template, style) for the index-th prompt of a subject: the bare forms first, then the subject in the
    styles, every style and every caption form visited before any repeats."""
    styled = [(STYLE_TEMPLATES[t], styles[s]) for t, s in _spread(len(STYLE_TEMPLATES) * len(styles),
                                                                  len(STYLE_TEMPLATES), len(styles))]
    forms = [(t, "") for t in SUBJECT_TEMPLATES] + styled
    return forms[index % len(forms)]


@dataclass(frozen=True)
class Expansion:
    """Aligned forget / surrogate prompts from a concept phrase, and the retain prompts."""

    forget: tuple[str, ...]
    surrogates: tuple[str, ...]
    retain: tuple[str, ...]


def expand_phrase(concept: str, surrogate: str, retain_phrases: list[str]) -> Expansion:
    """The phrase path. A style is drawn on subjects (the retained subjects, else common ones) in every caption
    form; a subject is written bare and in styles (the retained styles, else common ones). The surrogate takes
    the concept's place in each prompt. Retain phrases become prompts of the same forms, never combined with
    the concept."""
    concept, surrogate = _normalise(concept), _normalise(surrogate)
    retain_styles = tuple(style_name(p) for p in retain_phrases if is_style(p))
    retain_subjects = tuple(p for p in retain_phrases if not is_style(p))
    subjects = retain_subjects or DEFAULT_SUBJECTS
    styles = retain_styles or DEFAULT_STYLES
    forget, surrogates = [], []
    if is_style(concept):
        name = style_name(concept)
        replacement = style_name(surrogate) if is_style(surrogate) else surrogate
        for t, x in _spread(MAX_FORGET_PAIRS, len(STYLE_TEMPLATES), len(subjects)):
            template, subject = STYLE_TEMPLATES[t], subjects[x]
            forget.append(template.format(s=name, x=subject))
            # A surrogate that is not a style ("a painting") replaces the whole style clause.
            surrogates.append(template.format(s=replacement, x=subject) if is_style(surrogate) or not surrogate
                              else f"{subject}, {surrogate}")
    else:
        for k in range(MAX_FORGET_PAIRS):
            template, style = _subject(concept, styles, k)
            forget.append(template.format(x=concept, s=style))
            surrogates.append(template.format(x=surrogate, s=style) if surrogate else
                              (style and f"{style} style picture") or "")
    retain = []
    for k, phrase in enumerate(retain_phrases):
        for r in range(RETAIN_PROMPTS_PER_PHRASE):
            n = k * RETAIN_PROMPTS_PER_PHRASE + r
            if is_style(phrase):
                retain.append(STYLE_TEMPLATES[n % len(STYLE_TEMPLATES)].format(
                    s=style_name(phrase), x=subjects[n % len(subjects)]))
            else:
                template, style = _subject(phrase, styles, n + len(SUBJECT_TEMPLATES) * (r % 2))
                retain.append(template.format(x=phrase, s=style))
    forget_pairs = list(dict.fromkeys(zip(forget, surrogates, strict=True)))
    return Expansion(tuple(f for f, _ in forget_pairs), tuple(s for _, s in forget_pairs),
                     tuple(dict.fromkeys(retain)))


@dataclass(frozen=True)
class ErasurePrompts:
    """``forget`` and ``surrogates`` are aligned (one surrogate line for all, or one per forget prompt);
    ``concept`` / ``surrogate_concept`` hold the phrases when the phrase path expanded them."""

    forget: tuple[str, ...]
    surrogate: str
    retain: tuple[str, ...]
    concept: str = ""
    surrogate_concept: str = ""
    expanded_surrogates: Optional[tuple[str, ...]] = None

    @property
    def surrogates(self) -> tuple[str, ...]:
        """One surrogate for all forget prompts, or one per forget prompt (in order)."""
        if self.expanded_surrogates is not None:
            return self.expanded_surrogates
        return tuple(line.strip() for line in self.surrogate.splitlines() if line.strip()) or ("",)

    @staticmethod
    def parse(forget_text: str, surrogate: Optional[str] = None, retain_text: str = "") -> "ErasurePrompts":
        """``surrogate`` None: a job that needs no surrogate (saliency)."""
        forget = parse_prompts(forget_text, "forget_prompts")
        needs_surrogate = surrogate is not None
        surrogate = (surrogate or "").strip()
        retain = parse_prompts(retain_text, "retain_prompts", required=False)
        if is_concept_phrase(forget_text):
            return ErasurePrompts._from_phrase(forget[0], surrogate, retain, needs_surrogate)
        lines = parse_prompts(surrogate, "surrogate_prompt", required=False) or [""]
        if needs_surrogate and len(lines) not in (1, len(forget)):
            raise ValueError(f"surrogate_prompt has {len(lines)} lines for {len(forget)} forget prompts: write one "
                             f"surrogate for all of them, or one line per forget prompt in the same order")
        pairs = zip(forget, lines * len(forget) if len(lines) == 1 else lines, strict=True)
        same = [f for f, s in pairs if f == s]
        if needs_surrogate and same:
            raise ValueError(f"surrogate_prompt {same[0]!r} equals a forget prompt: the surrogate is what the "
                             f"concept should turn into, so it must differ (e.g. 'a painting' for a style)")
        _check_retain(retain, forget)
        return ErasurePrompts(tuple(forget), surrogate, tuple(retain))

    @staticmethod
    def _from_phrase(concept: str, surrogate: str, retain: list[str], needs_surrogate: bool) -> "ErasurePrompts":
        if needs_surrogate and len(parse_prompts(surrogate, "surrogate_prompt", required=False)) > 1:
            raise ValueError(f"surrogate_prompt has several lines, but forget_prompts is the concept phrase "
                             f"{concept!r}: give one surrogate phrase (e.g. 'a painting', 'a dog')")
        if needs_surrogate and _normalise(surrogate).lower() == _normalise(concept).lower():
            raise ValueError(f"surrogate_prompt {surrogate!r} equals the concept phrase {concept!r}: the surrogate "
                             f"is what the concept should turn into, so it must differ (e.g. 'a painting' for a "
                             f"style, 'a dog' for 'a cat')")
        clash = [p for p in retain if _normalise(p).lower() == _normalise(concept).lower()]
        if clash:
            raise ValueError(f"retain_prompts contains the concept {clash[0]!r}: a concept cannot be both erased "
                             f"and kept")
        # Long retain lines are full prompts and stay as written; short ones are phrases to expand.
        phrases = [p for p in retain if len(p.split()) <= PHRASE_MAX_WORDS]
        written = [p for p in retain if len(p.split()) > PHRASE_MAX_WORDS]
        expansion = expand_phrase(concept, surrogate, phrases)
        retain_prompts = tuple(dict.fromkeys(expansion.retain + tuple(written)))
        _check_retain(list(retain_prompts), list(expansion.forget))
        return ErasurePrompts(expansion.forget, surrogate, retain_prompts, concept=_normalise(concept),
                              surrogate_concept=_normalise(surrogate),
                              expanded_surrogates=expansion.surrogates if needs_surrogate else None)

    @property
    def retain_or_unconditional(self) -> tuple[str, ...]:
        # Without retain prompts, keep the unconditional prediction: the model's general prior.
        return self.retain or ("",)


def _check_retain(retain: list[str], forget: list[str]) -> None:
    clash = [p for p in retain if p in forget]
    if clash:
        raise ValueError(f"retain_prompts contains the forget prompt {clash[0]!r}: a concept cannot be both "
                         f"erased and kept")
