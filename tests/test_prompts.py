"""The phrase path: a concept phrase in, varied forget / surrogate pairs and retain prompts out."""

import pytest

from spare_core.prompts import PHRASE_MAX_WORDS, ErasurePrompts, is_concept_phrase

STYLES = ["pastel style", "charcoal style", "sketch style"]
SUBJECTS = ["a circle", "a square", "a star"]


@pytest.mark.parametrize("text, phrase", [
    ("Van Gogh style", True), ("neon", True), ("a cat", True), ("polka dot style", True),
    ("in the style of Monet", False),  # five words: a full prompt
    ("a painting in the style of Van Gogh", False), ("a cat\na kitten", False), ("  a cat \n\n", True),
])
def test_phrase_rule(text, phrase):
    assert is_concept_phrase(text) is phrase
    assert PHRASE_MAX_WORDS == 4  # the tooltip states this number


def test_style_phrase_is_drawn_on_the_retained_subjects_in_many_caption_forms():
    prompts = ErasurePrompts.parse("neon style", "pastel style", "\n".join(STYLES[1:] + SUBJECTS))
    assert prompts.concept == "neon style" and prompts.surrogate_concept == "pastel style"
    assert len(prompts.forget) == len(prompts.surrogates) >= 12
    for forget, surrogate in zip(prompts.forget, prompts.surrogates, strict=True):
        assert "neon" in forget and "neon" not in surrogate
        assert forget.replace("neon", "pastel") == surrogate  # the same picture with the surrogate in its place
        assert any(subject in forget for subject in SUBJECTS)
    assert all(any(subject in f for f in prompts.forget) for subject in SUBJECTS)
    assert len({f.replace("neon", "").replace("a circle", "").replace("a square", "").replace("a star", "")
                for f in prompts.forget}) >= 4  # several caption forms, not one template
    # Retained phrases become prompts too, and never contain the erased concept.
    assert all("neon" not in r for r in prompts.retain)
    assert any("charcoal" in r for r in prompts.retain) and any("a star" in r for r in prompts.retain)


def test_subject_phrase_appears_bare_and_in_the_retained_styles():
    prompts = ErasurePrompts.parse("a cat", "a dog", "Monet style\nwatercolor style\na rabbit")
    assert "a cat" in prompts.forget and "a dog" in prompts.surrogates
    assert any("Monet" in f for f in prompts.forget) and any("watercolor" in f for f in prompts.forget)
    for forget, surrogate in zip(prompts.forget, prompts.surrogates, strict=True):
        assert forget.replace("a cat", "a dog") == surrogate
    assert all("a cat" not in r for r in prompts.retain)
    assert any("a rabbit" in r for r in prompts.retain)


def test_without_retain_phrases_common_context_is_used():
    prompts = ErasurePrompts.parse("Van Gogh style", "a painting", "")
    assert len(prompts.forget) >= 12 and all("Van Gogh" in f for f in prompts.forget)
    assert all("Van Gogh" not in s and "a painting" in s for s in prompts.surrogates)
    assert prompts.retain == () and prompts.retain_or_unconditional == ("",)


def test_full_prompts_are_used_as_written():
    prompts = ErasurePrompts.parse("a star in neon style\nneon painting of a circle", "a star in pastel style\n"
                                   "pastel painting of a circle", "a star in charcoal style")
    assert prompts.forget == ("a star in neon style", "neon painting of a circle")
    assert prompts.surrogates == ("a star in pastel style", "pastel painting of a circle")
    assert prompts.retain == ("a star in charcoal style",) and prompts.concept == ""


@pytest.mark.parametrize("forget, surrogate, retain, message", [
    ("", "a dog", "", "forget_prompts is empty: write a concept phrase"),
    ("a cat", "a cat", "", "surrogate_prompt 'a cat' equals the concept phrase 'a cat'"),
    ("Neon style", "neon  style", "", "equals the concept phrase"),
    ("a cat", "a dog\na wolf", "", "surrogate_prompt has several lines, but forget_prompts is the concept phrase"),
    ("a cat", "a dog", "a bird\na cat", "retain_prompts contains the concept 'a cat'"),
])
def test_phrase_errors_name_the_input(forget, surrogate, retain, message):
    with pytest.raises(ValueError, match=message):
        ErasurePrompts.parse(forget, surrogate, retain)


def test_concept_lines_put_several_concepts_in_one_job_each_with_its_surrogate():
    prompts = ErasurePrompts.parse("neon style -> pastel style\na star → a circle\n\nmosaic style -> sketch style",
                                   "a painting", "a ring\na square\nstriped style")
    assert prompts.concepts == (("neon style", "pastel style"), ("a star", "a circle"),
                                ("mosaic style", "sketch style"))
    # Each concept expands like a phrase, with its own surrogate in its place; the budget is shared (8 pairs each
    # here, where one concept alone gets 24).
    by_concept = {concept: [(f, s) for f, s in zip(prompts.forget, prompts.surrogates, strict=True)
                            if (concept.split()[0] if "style" in concept else concept) in f]
                  for concept, _ in prompts.concepts}
    assert [len(pairs) for pairs in by_concept.values()] == [8, 8, 8]
    assert all("pastel" in s for _, s in by_concept["neon style"])
    assert all("a circle" in s and "a star" not in s for _, s in by_concept["a star"])
    # No erased concept is drawn as another's context or kept by the retain term.
    for concept, _ in prompts.concepts:
        others = [c for c, _ in prompts.concepts if c != concept]
        mine = [f for f, _ in by_concept[concept]]
        assert not any(("neon" in f and "neon" not in concept) or ("a star" in f and concept != "a star")
                       or ("mosaic" in f and "mosaic" not in concept) for f in mine), (concept, others, mine)
    assert not any(word in r for r in prompts.retain for word in ("neon", "a star", "mosaic"))
    assert prompts.retain and any("a ring" in r for r in prompts.retain)


def test_one_concept_line_is_the_single_phrase_path():
    """'neon style -> pastel style' alone is exactly the phrase 'neon style' with the surrogate 'pastel style'."""
    line = ErasurePrompts.parse("neon style -> pastel style", "a painting", "a star\nmosaic style")
    phrase = ErasurePrompts.parse("neon style", "pastel style", "a star\nmosaic style")
    assert (line.forget, line.surrogates, line.retain) == (phrase.forget, phrase.surrogates, phrase.retain)
    assert phrase.concepts == line.concepts == (("neon style", "pastel style"),)


@pytest.mark.parametrize("forget, surrogate, retain, message", [
    ("neon style -> pastel style\nmosaic style", "a painting", "",
     r"line 2 'mosaic style' has no surrogate: .* 'concept -> surrogate'"),
    ("neon style -> pastel style\n -> a circle", "a painting", "", r"line 2 .* has nothing before '->'"),
    ("neon style -> pastel style\na star ->", "a painting", "", r"line 2 'a star ->' has no surrogate after '->'"),
    ("neon style -> pastel style\nNeon style -> sketch style", "a painting", "",
     r"names the concept 'Neon style' twice \(lines 1 and 2\)"),
    ("neon style -> pastel style\na star -> a circle", "a painting", "a star",
     r"retain_prompts contains the concept 'a star'"),
    ("neon style -> pastel style\npastel style -> sketch style", "a painting", "",
     r"the surrogate 'pastel style' of 'neon style' is itself erased \(line 2\)"),
    ("neon style -> neon style", "a painting", "", r"line 1: the surrogate of 'neon style' is the concept itself"),
    ("a painting in the style of Van Gogh -> a painting", "a painting", "",
     r"line 1: 'a painting in the style of Van Gogh' has 8 words; .* at most 4 words"),
    ("neon style -> pastel style", "a painting\na photo", "", r"surrogate_prompt has several lines, but "
     r"forget_prompts gives each concept its surrogate"),
    ("\n".join(f"style{n} style -> pastel style" for n in range(17)), "a painting", "",
     r"lists 17 concepts, but one job trains at most 16 together"),
], ids=["line without arrow", "nothing before", "nothing after", "twice", "also retained", "surrogate erased",
        "surrogate is itself", "too long", "aligned surrogate lines", "too many"])
def test_concept_line_errors_name_the_line(forget, surrogate, retain, message):
    with pytest.raises(ValueError, match=message):
        ErasurePrompts.parse(forget, surrogate, retain)


@pytest.mark.parametrize("concepts, steps", [(0, 300), (1, 300), (2, 424), (4, 600), (8, 849), (16, 1200)])
def test_a_job_of_k_concepts_trains_steps_times_root_k(concepts, steps):
    # k = 0 is a job of full prompts (no concept lines): it trains the steps it is given, as one concept does.
    from spare_core.config import steps_for_concepts
    assert steps_for_concepts(300, concepts) == steps
