"""Concept neighbourhoods without ComfyUI: the candidates a search ranks, its bad input, the ranking's order, the
value that travels between nodes, and the shipped vocabularies."""

import pytest
import torch

from spare_core import neighbours
from spare_core.denoiser import Conditioning
from synthcanvas.render import OBJECTS, STYLES


def test_candidates_are_the_users_lines_then_the_vocabulary_once_each_never_the_concept():
    names = neighbours.candidate_list("Neon style", ["pastel style", "neon style", "a star", "Pastel Style"],
                                      "sunset style\n\n a star \n")
    assert names == ["sunset style", "a star", "pastel style"]


@pytest.mark.parametrize("concept, vocabulary, lines, message", [
    ("neon style", ["pastel style"], "sunset style\nNeon style", "candidates line 2 'Neon style' is the concept"),
    ("neon style", [], "", "no candidates to rank"),
    ("neon style", [], "neon style", "candidates line 1"),
    ("", ["pastel style"], "", "concept is empty"),
    ("neon style\na star", ["pastel style"], "", "one phrase"),
])
def test_bad_candidates_are_refused_with_what_to_change(concept, vocabulary, lines, message):
    with pytest.raises(ValueError, match=message):
        neighbours.candidate_list(concept, vocabulary, lines)


@pytest.mark.parametrize("count", [0, 51, -3, 2.5, True])
def test_count_outside_1_to_50_is_refused_naming_the_range(count):
    with pytest.raises(ValueError, match="from 1 to 50"):
        neighbours.check_count(count, 100)


def test_count_above_the_candidates_is_refused():
    with pytest.raises(ValueError, match="only 2 candidates"):
        neighbours.check_count(3, 2)


def test_an_unknown_vocabulary_names_the_ones_that_exist():
    with pytest.raises(ValueError, match="general, synthcanvas, none"):
        neighbours.read_vocabulary("styles")


def test_the_nearest_come_first_and_the_value_survives_the_adapter_header():
    found = neighbours.nearest("neon style", ["a", "b", "c", "d"], [0.5, 0.1, 0.9, 0.1], 3, "model")
    assert found.neighbours == ("b", "d", "a")
    assert found.retain_lines() == "b\nd\na"
    assert neighbours.Neighbourhood.from_json(found.to_json()) == found


def test_text_distance_is_zero_for_the_same_conditioning_and_grows_with_the_difference():
    generator = torch.Generator().manual_seed(0)
    concept = torch.randn(1, 77, 8, generator=generator)
    noise = torch.randn(1, 77, 8, generator=generator)
    candidates = Conditioning(torch.cat([concept, concept + 0.1 * noise, concept + noise, -concept]))
    distances = neighbours.text_distances(Conditioning(concept), candidates)
    assert distances[0] == pytest.approx(0.0, abs=1e-6)
    assert distances[0] < distances[1] < distances[2] < distances[3]
    assert distances[3] == pytest.approx(2.0)


def test_the_synthcanvas_vocabulary_is_the_demo_models_sixteen_concepts():
    expected = {f"{s} style" for s in STYLES} | {f"a {o}" for o in OBJECTS}
    assert set(neighbours.read_vocabulary("synthcanvas")) == expected


def test_the_general_vocabulary_has_a_few_hundred_distinct_phrases_of_every_kind():
    phrases = neighbours.read_vocabulary("general")
    assert 300 <= len(phrases) == len({p.lower() for p in phrases})
    for expected in ("Van Gogh style", "watercolor style", "a dog", "a golden retriever", "a nurse", "a car"):
        assert expected in phrases


def test_neighbours_become_prompts_of_their_own_in_several_forms_and_leave_the_rest_as_it_was():
    from spare_core.prompts import NEIGHBOUR_PROMPTS_PER_PHRASE, ErasurePrompts
    plain = ErasurePrompts.parse("neon style", "pastel style", "a ring")
    with_them = plain.with_neighbours(["sunset style", "a star"])
    # Each neighbour in several forms (the two give each other context, so some prompts show both), none twice.
    for word in ("sunset", "star"):
        assert sum(word in p for p in with_them.neighbours) >= NEIGHBOUR_PROMPTS_PER_PHRASE
    assert len(set(with_them.neighbours)) == len(with_them.neighbours)
    assert not any("neon" in p for p in with_them.neighbours)
    assert (with_them.forget, with_them.surrogates, with_them.retain) == (plain.forget, plain.surrogates, plain.retain)


@pytest.mark.parametrize("forget", ["neon style", "neon style -> pastel style\na star -> a circle"])
def test_a_neighbour_that_the_job_erases_is_refused(forget):
    from spare_core.prompts import ErasurePrompts
    with pytest.raises(ValueError, match="neighbours: 'Neon style' is also a concept this job erases"):
        ErasurePrompts.parse(forget, "pastel style").with_neighbours(["sunset style", "Neon style"])
