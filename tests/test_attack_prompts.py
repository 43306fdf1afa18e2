"""The paraphrase attack's prompts: every SynthCanvas concept reworded, never by its own name."""

import pytest

from synthcanvas.attack_prompts import SYNONYMS, paraphrase_prompts
from synthcanvas.render import HELD_OUT_TEMPLATES, OBJECTS, STYLES


def test_every_concept_has_synonyms_and_none_is_its_own_name_or_another_concept():
    assert set(SYNONYMS["style"]) == set(STYLES) and set(SYNONYMS["object"]) == set(OBJECTS)
    names = set(STYLES + OBJECTS)
    for concepts in SYNONYMS.values():
        for name, synonyms in concepts.items():
            for synonym in synonyms:
                assert name not in synonym and synonym not in names, (name, synonym)


@pytest.mark.parametrize("domain, name", [("style", "neon"), ("object", "star")])
def test_the_prompts_reword_the_concept_in_the_held_out_templates_and_keep_the_truth_for_the_judge(domain, name):
    prompts = paraphrase_prompts(domain, name)
    others = OBJECTS if domain == "style" else STYLES
    assert len(prompts) == len(SYNONYMS[domain][name]) * len(HELD_OUT_TEMPLATES) * len(others)
    for written, obj, style in prompts:
        assert name not in written.split()
        assert (style if domain == "style" else obj) == name
        assert (obj if domain == "style" else style) in written


def test_an_unknown_concept_names_the_valid_ones():
    with pytest.raises(ValueError, match="objects circle, square"):
        paraphrase_prompts("object", "hexagon")
