"""The soft-token attack on a pure-torch toy (no ComfyUI): it can bring an erased concept back, it touches neither
model's weights, and a budget of nothing is refused."""

import copy

import pytest
import torch
from torch import nn
from toy_models import FEATURES, ddpm_sigmas, denoiser_for, samples_for

from spare_core.attacks import SoftTokenBudget, attack_draws, soft_token_attack
from spare_core.denoiser import Conditioning

WIDTH = 8  # token embedding width


class PooledText(nn.Module):
    """eps = 0.1·x + V·mean(context tokens): like cross-attention, every token of the prompt reaches the output, so
    appended tokens can move it."""

    def __init__(self):
        super().__init__()
        self.text = nn.Linear(WIDTH, FEATURES, bias=False)
        with torch.no_grad():
            self.text.weight.copy_(torch.randn(FEATURES, WIDTH, generator=torch.Generator().manual_seed(3)))

    def forward(self, x, sigma, context):
        return (0.1 * x.flatten(1) + self.text(context.mean(1))).view_as(x)


@pytest.fixture()
def erasure():
    """The unerased toy, a copy whose text weights map the concept exactly onto a surrogate (a closed-form erasure:
    V' = V + (V·s − V·c)·cᵀ/|c|²), and the concept's conditioning."""
    generator = torch.Generator().manual_seed(4)
    concept, surrogate = torch.randn(WIDTH, generator=generator), torch.randn(WIDTH, generator=generator)
    base = PooledText()
    erased = copy.deepcopy(base)
    with torch.no_grad():
        v = erased.text.weight
        v += torch.outer(v @ surrogate - v @ concept, concept) / concept.dot(concept)
    cond = Conditioning(concept.view(1, 1, WIDTH))
    sigmas = ddpm_sigmas()
    return denoiser_for(base, sigmas), denoiser_for(erased, sigmas), cond, surrogate


def test_the_erasure_holds_against_its_own_prompt_and_the_attack_brings_the_concept_back(erasure):
    base, erased, cond, surrogate = erasure
    draws = attack_draws(base, samples_for(cond, count=8), count=16, seed=0)
    with torch.no_grad():
        plain = erased.predict_noise(draws.x_t, draws.sigma, draws.cond)
        onto_surrogate = base.predict_noise(draws.x_t, draws.sigma, Conditioning(surrogate.view(1, 1, WIDTH).expand(
            16, 1, WIDTH)))
    assert torch.allclose(plain, onto_surrogate, atol=1e-4)  # the concept is erased for its own prompt
    result = soft_token_attack(erased, draws, SoftTokenBudget(tokens=2, steps=300, learning_rate=0.2), seed=0)
    assert result.restored > 0.9, result.restored
    assert result.tokens.shape == (2, WIDTH) and result.losses[-1] < result.losses[0]


def test_the_attack_changes_neither_model(erasure):
    base, erased, cond, _ = erasure
    before = [copy.deepcopy(m.unet.state_dict()) for m in (base, erased)]
    draws = attack_draws(base, samples_for(cond, count=4), count=8, seed=1)
    soft_token_attack(erased, draws, SoftTokenBudget(tokens=2, steps=20), seed=1)
    for model, weights in zip((base, erased), before, strict=True):
        assert all(torch.equal(weights[k], v) for k, v in model.unet.state_dict().items())
        assert all(p.grad is None for p in model.unet.parameters())


def test_an_unerased_model_has_nothing_to_restore(erasure):
    base, _, cond, _ = erasure
    draws = attack_draws(base, samples_for(cond, count=4), count=8, seed=2)
    assert soft_token_attack(base, draws, SoftTokenBudget(tokens=1, steps=5), seed=2).restored == 0.0


@pytest.mark.parametrize("field, value", [("tokens", 0), ("steps", 0), ("draws", 0), ("learning_rate", 0.0),
                                          ("tokens", 1.5)])
def test_a_budget_of_nothing_is_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"budget: {field} must be"):
        SoftTokenBudget(**{field: value})


def test_the_discrete_search_finds_the_planted_word_that_undoes_the_erasure_and_never_uses_the_concepts(erasure):
    """A vocabulary of random words, the concept's own word, and one planted word 'glow' that the erased toy reads
    exactly as the unerased one read the concept (a synonym the erasure missed). The search may not use the
    concept's word, and finds its way to 'glow'."""
    from spare_core.attacks import DiscreteBudget, discrete_search
    base, erased, cond, _ = erasure
    generator = torch.Generator().manual_seed(5)
    embeddings = {f"word{i}": torch.randn(WIDTH, generator=generator) for i in range(30)}
    embeddings["neon"] = cond.context[0, 0]
    unerased_reading = base.unet.text.weight @ cond.context[0, 0]
    embeddings["glow"] = torch.linalg.lstsq(erased.unet.text.weight, unerased_reading.unsqueeze(1)).solution[:, 0]

    def encode(prompts):
        return Conditioning(torch.stack([torch.stack([embeddings[w] for w in p.split()]) for p in prompts]))
    draws = attack_draws(base, samples_for(cond, count=8), count=16, seed=3)
    result = discrete_search(erased, draws, encode, list(embeddings), ["neon"],
                             DiscreteBudget(queries=400, words=4, batch=16), seed=0)
    assert "neon" not in result.prompt.split() and "glow" in result.prompt.split(), result
    assert result.restored > 0.5 and result.queries == 400, result
    assert list(result.history) == sorted(result.history)  # the best so far never gets worse


def test_against_the_unerased_model_the_search_finds_the_word_read_like_the_concept(erasure):
    """No erasure to undo (the unerased model attacked): the share is 0 by definition, but the search still ranks
    prompts by how close they come to the concept, so it finds the word the model reads like the concept."""
    from spare_core.attacks import DiscreteBudget, discrete_search
    base, _, cond, _ = erasure
    generator = torch.Generator().manual_seed(6)
    embeddings = {f"word{i}": torch.randn(WIDTH, generator=generator) for i in range(30)}
    embeddings["neon"] = embeddings["glow"] = cond.context[0, 0]

    def encode(prompts):
        return Conditioning(torch.stack([torch.stack([embeddings[w] for w in p.split()]) for p in prompts]))
    draws = attack_draws(base, samples_for(cond, count=8), count=16, seed=3)
    result = discrete_search(base, draws, encode, list(embeddings), ["neon"],
                             DiscreteBudget(queries=400, words=4, batch=16), seed=0)
    assert "glow" in result.prompt.split() and "neon" not in result.prompt.split(), result
    assert result.restored == 0.0


def test_found_words_stand_in_the_concepts_place_in_a_prompt():
    from spare_core.attacks import substitute
    assert substitute("a star in Neon style", "neon", "glowing ink") == "a star in glowing ink style"
    assert substitute("a photo of a star", "a star", "five points") == "a photo of five points"
    assert substitute("a picture", "neon", "glow") == "a picture, glow"  # no concept words: the words are added


def test_a_search_with_no_words_left_is_refused():
    from spare_core.attacks import allowed_words
    with pytest.raises(ValueError, match="no words left"):
        allowed_words(["Neon", "style"], ["neon style"])


def test_tokens_go_right_after_each_rows_own_tokens_where_rows_carry_their_count():
    from spare_core.attacks import with_tokens
    from spare_core.denoiser import TOKEN_COUNT
    context = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)  # row 0: 2 real tokens, row 1: 4
    cond = Conditioning(context, {TOKEN_COUNT: torch.tensor([2, 4])})
    attacked = with_tokens(cond, torch.tensor([[-1.0], [-2.0]]))
    assert attacked.context[:, :, 0].tolist() == [[0, 1, -1, -2, 2, 3], [4, 5, 6, 7, -1, -2]]
    assert attacked.extra[TOKEN_COUNT].tolist() == [4, 6]
    plain = with_tokens(Conditioning(context), torch.tensor([[-1.0]]))
    assert plain.context[:, -1, 0].tolist() == [-1, -1] and plain.context.shape == (2, 5, 1)
