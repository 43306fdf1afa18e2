"""Prompt inputs: a concept phrase or full prompts, and the checks that make an erasure request meaningful.

Users type a concept ("Van Gogh style", "neon style", "a cat"), not eight hand-made prompts. A short single
line is such a phrase: it is expanded here into varied forget / surrogate prompt pairs (caption templates ×
context), so the erasure holds for prompts the user never wrote. The retain phrases supply that context (a
style is drawn on the retained subjects, a subject in the retained styles) and are expanded the same way, so the
retain term covers the same prompt forms. Several lines, or a longer line, are full prompts used as written.

Several concepts go in one job as lines of the form "concept -> surrogate" (a takedown list): each concept is
expanded like a single phrase, with its own surrogate, and all of them train one adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

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
# Several concepts share the budget of one phrase, but each keeps at least this many pairs (one per SynthCanvas
# subject or style): an 8-concept job samples 64 pairs, not 192, so its sampling stays within ~3x a single job's.
MIN_PAIRS_PER_CONCEPT = 8
# "concept -> surrogate" lines; the arrow character is accepted too.
CONCEPT_ARROWS = ("->", "\u2192")
# One job trains every concept's samples together; past this many, split the list and stack the adapters.
MAX_CONCEPTS = 16
# Prompts each neighbour (Concept Neighbourhood) expands to for the adjacency term: a few neighbours carry a whole
# term of their own, so each is drawn in several forms.
NEIGHBOUR_PROMPTS_PER_PHRASE = 4
CONCEPT_LINES_RULE = (f"Several concepts in one job: one line each, 'concept -> surrogate' (e.g. 'neon style -> "
                      f"pastel style' and 'a star -> a circle'), at most {MAX_CONCEPTS} lines; the surrogates then "
                      f"come from those lines.")


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


def _context(phrases: list[str], avoid: tuple[str, ...] = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(subjects, styles) the phrases offer as context, or the common ones where they offer none; never one of
    the ``avoid`` concepts (the other concepts a job erases)."""
    styles = tuple(style_name(p) for p in phrases if is_style(p))
    subjects = tuple(p for p in phrases if not is_style(p))
    banned = {_normalise(a).lower() for a in avoid} | {style_name(a).lower() for a in avoid if is_style(a)}
    return (tuple(x for x in subjects or DEFAULT_SUBJECTS if x.lower() not in banned) or DEFAULT_SUBJECTS[:1],
            tuple(x for x in styles or DEFAULT_STYLES if x.lower() not in banned) or DEFAULT_STYLES[:1])


def kept_prompts(phrases: list[str], subjects: tuple[str, ...], styles: tuple[str, ...],
                 per_phrase: int = RETAIN_PROMPTS_PER_PHRASE) -> list[str]:
    """Prompts for concepts to keep, in the forms the concept is erased in: a style drawn on the subjects, a
    subject in the styles; ``per_phrase`` of them for each phrase."""
    prompts = []
    for k, phrase in enumerate(phrases):
        for r in range(per_phrase):
            n = k * per_phrase + r
            if is_style(phrase):
                prompts.append(STYLE_TEMPLATES[n % len(STYLE_TEMPLATES)].format(
                    s=style_name(phrase), x=subjects[n % len(subjects)]))
            else:
                template, style = _subject(phrase, styles, n + len(SUBJECT_TEMPLATES) * (r % 2))
                prompts.append(template.format(x=phrase, s=style))
    return prompts


def pairs_per_concept(count: int) -> int:
    """Forget / surrogate pairs each of ``count`` concepts expands to."""
    return max(MIN_PAIRS_PER_CONCEPT, MAX_FORGET_PAIRS // max(1, count))


def _arrow_split(line: str) -> tuple[str, str, str]:
    for arrow in CONCEPT_ARROWS:
        if arrow in line:
            concept, _, surrogate = line.partition(arrow)
            return concept, arrow, surrogate
    return line, "", ""


def has_concept_lines(text: str) -> bool:
    return any(_arrow_split(line)[1] for line in (text or "").splitlines())


def parse_concept_lines(text: str, input_name: str = "forget_prompts") -> tuple[tuple[str, str], ...]:
    """(concept, surrogate) per 'concept -> surrogate' line, each checked; a list a job can train in one go."""
    lines = [(number, line.strip()) for number, line in enumerate((text or "").splitlines(), 1) if line.strip()]
    pairs: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for number, line in lines:
        concept, arrow, surrogate = _arrow_split(line)
        concept, surrogate = _normalise(concept), _normalise(surrogate)
        if not arrow:
            raise ValueError(f"{input_name} line {number} {line!r} has no surrogate: with several concepts, write "
                             f"every line as 'concept -> surrogate' (e.g. '{line} -> a painting')")
        if not concept:
            raise ValueError(f"{input_name} line {number} {line!r} has nothing before '{arrow}': write the concept "
                             f"to erase there")
        if not surrogate:
            raise ValueError(f"{input_name} line {number} {line!r} has no surrogate after '{arrow}': write what "
                             f"{concept!r} should turn into (e.g. 'a painting' for a style, 'a dog' for 'a cat')")
        long = [phrase for phrase in (concept, surrogate) if len(phrase.split()) > PHRASE_MAX_WORDS]
        if long:
            raise ValueError(f"{input_name} line {number}: {long[0]!r} has {len(long[0].split())} words; 'concept -> "
                             f"surrogate' lines take phrases of at most {PHRASE_MAX_WORDS} words (e.g. 'neon style -> "
                             f"pastel style'), which the pack expands into prompts itself")
        if concept.lower() == surrogate.lower():
            raise ValueError(f"{input_name} line {number}: the surrogate of {concept!r} is the concept itself; the "
                             f"surrogate is what the concept should turn into, so it must differ")
        if concept.lower() in seen:
            raise ValueError(f"{input_name} names the concept {concept!r} twice (lines {seen[concept.lower()]} and "
                             f"{number}): list each concept once")
        seen[concept.lower()] = number
        pairs.append((concept, surrogate))
    for concept, surrogate in pairs:
        if surrogate.lower() in seen:
            raise ValueError(f"{input_name}: the surrogate {surrogate!r} of {concept!r} is itself erased (line "
                             f"{seen[surrogate.lower()]}): map each concept onto something the adapter keeps")
    if len(pairs) > MAX_CONCEPTS:
        raise ValueError(f"{input_name} lists {len(pairs)} concepts, but one job trains at most {MAX_CONCEPTS} "
                         f"together: split the list into jobs of up to {MAX_CONCEPTS} and stack their adapters")
    return tuple(pairs)


def expand_phrase(concept: str, surrogate: str, retain_phrases: list[str],
                  max_pairs: int = MAX_FORGET_PAIRS, avoid: tuple[str, ...] = ()) -> Expansion:
    """The phrase path. A style is drawn on subjects (the retained subjects, else common ones) in every caption
    form; a subject is written bare and in styles (the retained styles, else common ones). The surrogate takes
    the concept's place in each prompt. Retain phrases become prompts of the same forms, never combined with
    the concept. ``avoid``: concepts never used as context (the other concepts of the same job)."""
    concept, surrogate = _normalise(concept), _normalise(surrogate)
    subjects, styles = _context(retain_phrases, avoid)
    forget, surrogates = [], []
    if is_style(concept):
        name = style_name(concept)
        replacement = style_name(surrogate) if is_style(surrogate) else surrogate
        for t, x in _spread(max_pairs, len(STYLE_TEMPLATES), len(subjects)):
            template, subject = STYLE_TEMPLATES[t], subjects[x]
            forget.append(template.format(s=name, x=subject))
            # A surrogate that is not a style ("a painting") replaces the whole style clause.
            surrogates.append(template.format(s=replacement, x=subject) if is_style(surrogate) or not surrogate
                              else f"{subject}, {surrogate}")
    else:
        for k in range(max_pairs):
            template, style = _subject(concept, styles, k)
            forget.append(template.format(x=concept, s=style))
            surrogates.append(template.format(x=surrogate, s=style) if surrogate else
                              (style and f"{style} style picture") or "")
    retain = kept_prompts(retain_phrases, subjects, styles)
    forget_pairs = list(dict.fromkeys(zip(forget, surrogates, strict=True)))
    return Expansion(tuple(f for f, _ in forget_pairs), tuple(s for _, s in forget_pairs),
                     tuple(dict.fromkeys(retain)))


@dataclass(frozen=True)
class ErasurePrompts:
    """``forget`` and ``surrogates`` are aligned (one surrogate line for all, or one per forget prompt);
    ``concept`` / ``surrogate_concept`` hold the phrases when the phrase path expanded them (joined with '; ' for
    several concepts, each (concept, surrogate) pair in ``concepts``)."""

    forget: tuple[str, ...]
    surrogate: str
    retain: tuple[str, ...]
    concept: str = ""
    surrogate_concept: str = ""
    expanded_surrogates: Optional[tuple[str, ...]] = None
    concepts: tuple[tuple[str, str], ...] = ()
    neighbours: tuple[str, ...] = ()  # the neighbours' prompts, which the adjacency term keeps

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
        if has_concept_lines(forget_text):
            if needs_surrogate and len(parse_prompts(surrogate, "surrogate_prompt", required=False)) > 1:
                raise ValueError("surrogate_prompt has several lines, but forget_prompts gives each concept its "
                                 "surrogate ('concept -> surrogate' lines): write the surrogates there and leave "
                                 "surrogate_prompt as one line (it is not used)")
            return ErasurePrompts._from_concepts(parse_concept_lines(forget_text), retain, needs_surrogate)
        if is_concept_phrase(forget_text):
            if needs_surrogate and len(parse_prompts(surrogate, "surrogate_prompt", required=False)) > 1:
                raise ValueError(f"surrogate_prompt has several lines, but forget_prompts is the concept phrase "
                                 f"{forget[0]!r}: give one surrogate phrase (e.g. 'a painting', 'a dog'), or erase "
                                 f"several concepts with 'concept -> surrogate' lines")
            if needs_surrogate and _normalise(surrogate).lower() == _normalise(forget[0]).lower():
                raise ValueError(f"surrogate_prompt {surrogate!r} equals the concept phrase {forget[0]!r}: the "
                                 f"surrogate is what the concept should turn into, so it must differ (e.g. 'a "
                                 f"painting' for a style, 'a dog' for 'a cat')")
            return ErasurePrompts._from_concepts(((_normalise(forget[0]), _normalise(surrogate)),), retain,
                                                 needs_surrogate)
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
    def _from_concepts(pairs: tuple[tuple[str, str], ...], retain: list[str],
                       needs_surrogate: bool) -> "ErasurePrompts":
        erased = {concept.lower(): concept for concept, _ in pairs}
        clash = [p for p in retain if _normalise(p).lower() in erased]
        if clash:
            raise ValueError(f"retain_prompts contains the concept {clash[0]!r}: a concept cannot be both erased "
                             f"and kept")
        # Long retain lines are full prompts and stay as written; short ones are phrases to expand.
        phrases = [p for p in retain if len(p.split()) <= PHRASE_MAX_WORDS]
        written = [p for p in retain if len(p.split()) > PHRASE_MAX_WORDS]
        forget, surrogates, retain_prompts = [], [], []
        for concept, surrogate in pairs:
            # The other concepts of the job are never drawn as context; one concept alone is expanded exactly as
            # before several were possible, so its adapter is the same.
            expansion = expand_phrase(concept, surrogate, phrases, pairs_per_concept(len(pairs)),
                                      avoid=tuple(c for c, _ in pairs) if len(pairs) > 1 else ())
            forget += expansion.forget
            surrogates += expansion.surrogates
            retain_prompts += expansion.retain
        retain_prompts = list(dict.fromkeys(retain_prompts + written))
        _check_retain(retain_prompts, forget)
        return ErasurePrompts(tuple(forget), pairs[0][1] if len(pairs) == 1 else "", tuple(retain_prompts),
                              concept="; ".join(c for c, _ in pairs), surrogate_concept="; ".join(s for _, s in pairs),
                              expanded_surrogates=tuple(surrogates) if needs_surrogate else None,
                              concepts=pairs if needs_surrogate else tuple((c, "") for c, _ in pairs))

    def with_neighbours(self, phrases: Sequence[str]) -> "ErasurePrompts":
        """The same erasure with prompts for its neighbours (concept phrases, e.g. from Concept Neighbourhood): each
        drawn in NEIGHBOUR_PROMPTS_PER_PHRASE forms, the neighbours giving each other context, never an erased
        concept."""
        erased = {c.lower() for c, _ in self.concepts} | {f.lower() for f in self.forget}
        phrases = [_normalise(p) for p in phrases if _normalise(p)]
        for phrase in phrases:
            if phrase.lower() in erased:
                raise ValueError(f"neighbours: {phrase!r} is also a concept this job erases, and a neighbour is "
                                 f"kept: take it out of the forget box, or out of Concept Neighbourhood's candidates")
        subjects, styles = _context(phrases, avoid=tuple(c for c, _ in self.concepts))
        prompts = kept_prompts(phrases, subjects, styles, NEIGHBOUR_PROMPTS_PER_PHRASE)
        clash = [p for p in prompts if p in self.forget]
        if clash:
            raise ValueError(f"neighbours: the prompt {clash[0]!r} is also a forget prompt; a concept cannot be both "
                             f"erased and kept")
        return replace(self, neighbours=tuple(dict.fromkeys(prompts)))

    @property
    def retain_or_unconditional(self) -> tuple[str, ...]:
        # Without retain prompts, keep the unconditional prediction: the model's general prior.
        return self.retain or ("",)


def _check_retain(retain: list[str], forget: list[str]) -> None:
    clash = [p for p in retain if p in forget]
    if clash:
        raise ValueError(f"retain_prompts contains the forget prompt {clash[0]!r}: a concept cannot be both "
                         f"erased and kept")
