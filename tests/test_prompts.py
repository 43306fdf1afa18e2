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
