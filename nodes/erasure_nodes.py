"""SPARE nodes: thin wrappers that validate inputs, call one spare_core job and wrap its result.

Node ids are a public contract (saved workflows reference them): never rename one.
"""

from __future__ import annotations

import os

from ..spare_core import attacks, neighbours
from ..spare_core.adapter import describe, load_adapter, save_adapter
from ..spare_core.comfyui import files, jobs, models, patches
from ..spare_core.config import (
    SaliencyConfig,
    SampleConfig,
    TimestepConfig,
    TrainConfig,
    help_text,
    steps_for_concepts,
)
from ..spare_core.prompts import CONCEPT_LINES_RULE, PHRASE_RULE, ErasurePrompts

CATEGORY = "SPARE"
SALIENCY, TIMESTEPS, ADAPTER = "SPARE_SALIENCY", "SPARE_TIMESTEPS", "SPARE_ADAPTER"
NEIGHBOURS = "SPARE_NEIGHBOURS"
MAX_SEED = 0xFFFFFFFFFFFFFFFF

# The families come from the list the model check itself refuses others with, so the tooltip cannot drift from it.
MODEL_INPUT = ("MODEL", {"tooltip": f"The diffusion model to erase a concept from: {models.SUPPORTED_MODELS}. It is "
                                    f"never modified."})
CLIP_INPUT = ("CLIP", {"tooltip": "The text encoder that belongs to the model; it encodes the prompts below."})
FORGET_INPUT = ("STRING", {"multiline": True, "default": "",
                           "tooltip": "The concept to erase: a phrase such as 'Van Gogh style' or 'a cat', or full "
                                      "prompts, one per line. " + PHRASE_RULE + " " + CONCEPT_LINES_RULE})
SURROGATE_INPUT = ("STRING", {"multiline": True, "default": "a painting",
                              "tooltip": "What the concept should turn into: a phrase for a concept phrase ('pastel "
                                         "style', 'a painting' for a style, 'a dog' for 'a cat'); for full prompts one "
                                         "line for all of them, or one line per forget prompt in the same order. Empty "
                                         "= the unconditional prediction. Not used when the forget box has 'concept "
                                         "-> surrogate' lines."})
RETAIN_INPUT = ("STRING", {"multiline": True, "default": "",
                           "tooltip": "Concepts to keep unchanged, one per line; neighbours of the erased concept "
                                      "protect best. With a concept phrase, short lines are phrases too ('Monet "
                                      "style', 'a dog'): they are expanded like the concept and give it its context (a "
                                      "style is drawn on the retained subjects, a subject in the retained styles). "
                                      "Empty = keep the model's unconditional prediction."})
SAMPLES_INPUT = ("INT", {"default": SampleConfig().samples_per_prompt, "min": 1, "max": 64,
                         "tooltip": help_text(SampleConfig, "samples_per_prompt")})
RESOLUTION_INPUT = ("INT", {"default": 0, "min": 0, "max": 2048, "step": 8,
                            "tooltip": "Side in pixels of the square sample images the model draws for itself. 0 = the "
                                       "model's native size (SD1.x 512, SD2.x 768 or 512, SDXL, Flux, SD3 and Lumina 2 "
                                       "/ Z-Image 1024, the SynthCanvas demo model 64)."})
SEED_INPUT = ("INT", {"default": 0, "min": 0, "max": MAX_SEED,
                      "tooltip": "Seed for sample latents, noise and adapter initialisation."})
LATENT_INPUT = ("LATENT", {"tooltip": "Optional: VAE-encoded images of the concept to use instead of self-generated "
                                      "samples."})


def _fraction(config_class, name: str, default: float):
    return ("FLOAT", {"default": default, "min": 0.01, "max": 1.0, "step": 0.01,
                      "tooltip": help_text(config_class, name)})


def _samples(model, samples: int, resolution: int) -> SampleConfig:
    side = resolution or models.native_resolution(model)
    return SampleConfig(samples_per_prompt=samples, width=side, height=side, cfg=models.sample_guidance_scale(model))


def _with_adapter_info(adapter, result: tuple) -> dict:
    """Outputs plus the adapter's description for the web extension to show on the node."""
    return {"ui": {"spare_adapter": [describe(adapter.metadata)]}, "result": result}


def _latents(model, latent):
    return None if latent is None else models.latents_from_comfy(model, latent)


class SpareComputeSaliency:
    DESCRIPTION = "Finds the modules (and rows) of the model that carry the concept, by gradient saliency."
    CATEGORY = CATEGORY
    FUNCTION = "compute"
    RETURN_TYPES = (SALIENCY, "IMAGE")
    RETURN_NAMES = ("saliency", "chart")
    OUTPUT_TOOLTIPS = ("Which modules receive an adapter; connect to Train SPARE Adapter.",
                       "Mean saliency per block on a log scale; with a share of modules kept, orange blocks hold "
                       "kept modules and each bar says how many.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": MODEL_INPUT, "clip": CLIP_INPUT, "forget_prompts": FORGET_INPUT, "retain_prompts": RETAIN_INPUT,
            "module_fraction": _fraction(SaliencyConfig, "module_fraction", SaliencyConfig().module_fraction),
            "row_fraction": _fraction(SaliencyConfig, "row_fraction", SaliencyConfig().row_fraction),
            "samples": SAMPLES_INPUT, "resolution": RESOLUTION_INPUT, "seed": SEED_INPUT,
        }, "optional": {"forget_latents": LATENT_INPUT}}

    def compute(self, model, clip, forget_prompts, retain_prompts, module_fraction, row_fraction, samples,
                resolution, seed, forget_latents=None):
        prompts = ErasurePrompts.parse(forget_prompts, None, retain_prompts)
        config = SaliencyConfig(module_fraction=module_fraction, row_fraction=row_fraction)
        return jobs.saliency_for_model(model, clip, prompts, _samples(model, samples, resolution), config, seed,
                                           _latents(model, forget_latents))


class SpareTimestepSelector:
    DESCRIPTION = ("Measures at which timesteps the concept changes the model's prediction and turns that into a "
                   "sampling distribution.")
    CATEGORY = CATEGORY
    FUNCTION = "select"
    RETURN_TYPES = (TIMESTEPS, "IMAGE")
    RETURN_NAMES = ("timesteps", "chart")
    OUTPUT_TOOLTIPS = ("Timestep distribution for training; connect to Train SPARE Adapter.",
                       "Sampling probability per timestep bin.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": MODEL_INPUT, "clip": CLIP_INPUT, "forget_prompt": FORGET_INPUT,
            "surrogate_prompt": SURROGATE_INPUT,
            "bins": ("INT", {"default": TimestepConfig().bins, "min": 1, "max": 100,
                             "tooltip": help_text(TimestepConfig, "bins")}),
            "temperature": ("FLOAT", {"default": TimestepConfig().temperature, "min": 0.05, "max": 100.0,
                                      "step": 0.05, "tooltip": help_text(TimestepConfig, "temperature")}),
            "top_fraction": _fraction(TimestepConfig, "top_fraction", TimestepConfig().top_fraction),
            "samples": SAMPLES_INPUT, "resolution": RESOLUTION_INPUT, "seed": SEED_INPUT,
        }}

    def select(self, model, clip, forget_prompt, surrogate_prompt, bins, temperature, top_fraction, samples,
               resolution, seed):
        prompts = ErasurePrompts.parse(forget_prompt, surrogate_prompt)
        config = TimestepConfig(bins=bins, temperature=temperature, top_fraction=top_fraction)
        return jobs.timesteps_for_model(model, clip, prompts, _samples(model, samples, resolution), config, seed)


class SpareConceptNeighbourhood:
    DESCRIPTION = ("Finds the concepts an erasure of this concept is most likely to damage (its neighbourhood), among "
                   "a built-in vocabulary and your own candidates: wire them into Train's retain box or its "
                   "neighbours input to keep them.")
    CATEGORY = CATEGORY
    FUNCTION = "find"
    RETURN_TYPES = (NEIGHBOURS, "STRING", "IMAGE")
    RETURN_NAMES = ("neighbours", "retain_lines", "chart")
    OUTPUT_TOOLTIPS = ("The nearest concepts with their distances; connect to Train SPARE Adapter's neighbours input.",
                       "The same concepts one per line, for any retain box.",
                       "Closeness of each neighbour (the nearest has the tallest bar).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": MODEL_INPUT, "clip": CLIP_INPUT,
            "concept": ("STRING", {"default": "", "tooltip": "The concept you will erase, as a phrase ('neon style', "
                                                             "'a cat')."}),
            "count": ("INT", {"default": 3, "min": 1, "max": neighbours.MAX_NEIGHBOURS,
                              "tooltip": f"How many neighbours to keep (1 to {neighbours.MAX_NEIGHBOURS})."}),
            "vocabulary": (neighbours.vocabularies(), {
                "default": "general",
                "tooltip": "Built-in candidates: 'general' (a few hundred art styles, artists' styles, objects, "
                           "animals and people), 'synthcanvas' (the demo model's 16 concepts), or 'none' (only your "
                           "lines below)."}),
            "ranking": (list(neighbours.RANKINGS), {
                "default": "text",
                "tooltip": "How nearness is measured. 'text': the text encoder's conditionings (instant). 'model': "
                           "how alike the denoiser's predictions for the two concepts are on the concept's own "
                           f"samples (one pass per candidate and draw; scores the {neighbours.MODEL_SHORTLIST} "
                           "candidates nearest by text)."}),
            "samples": SAMPLES_INPUT, "resolution": RESOLUTION_INPUT, "seed": SEED_INPUT,
        }, "optional": {
            "candidates": ("STRING", {"multiline": True, "default": "",
                                      "tooltip": "Your own candidate concepts, one phrase per line, ranked together "
                                                 "with the vocabulary's."}),
        }}

    def find(self, model, clip, concept, count, vocabulary, ranking, samples, resolution, seed, candidates=""):
        names = neighbours.candidate_list(concept, neighbours.read_vocabulary(vocabulary), candidates)
        found, chart = jobs.neighbourhood_for_model(model, clip, concept.strip(), names, count, ranking,
                                                    _samples(model, samples, resolution), seed)
        return found, found.retain_lines(), chart


class SpareTrainAdapter:
    DESCRIPTION = ("Trains a sparse erasure LoRA by self-distillation: the concept is mapped onto the surrogate "
                   "while the retain prompts keep their behaviour. The input model is not changed.")
    CATEGORY = CATEGORY
    FUNCTION = "train"
    RETURN_TYPES = (ADAPTER, "MODEL", "IMAGE")
    RETURN_NAMES = ("adapter", "model", "loss_chart")
    OUTPUT_TOOLTIPS = ("The erasure adapter; save it, apply it, or remove it later.",
                       "The input model with the erasure applied at strength 1.",
                       "Training loss per step.")

    @classmethod
    def INPUT_TYPES(cls):
        defaults = TrainConfig()

        def number(kind, name, low, high, step=None):
            spec = {"default": getattr(defaults, name), "min": low, "max": high,
                    "tooltip": help_text(TrainConfig, name)}
            if step is not None:
                spec["step"] = step
            return (kind, spec)
        return {"required": {
            "model": MODEL_INPUT, "clip": CLIP_INPUT, "forget_prompts": FORGET_INPUT,
            "surrogate_prompt": SURROGATE_INPUT, "retain_prompts": RETAIN_INPUT,
            "rank": number("INT", "rank", 1, 128),
            "alpha": number("FLOAT", "alpha", 0.01, 256.0, 0.01),
            "steps": ("INT", {"default": defaults.steps, "min": 1, "max": 100000,
                              "tooltip": help_text(TrainConfig, "steps") + " With k 'concept -> surrogate' lines the "
                                         "job trains round(steps·√k) steps (k = 8: 849 for 300), chosen on a dev "
                                         "split; the adapter's header records the steps it trained."}),
            "learning_rate": number("FLOAT", "learning_rate", 1e-7, 1.0, 1e-5),
            "retain_weight": number("FLOAT", "retain_weight", 0.0, 100.0, 0.05),
            "batch_size": number("INT", "batch_size", 1, 64),
            "samples": SAMPLES_INPUT, "resolution": RESOLUTION_INPUT, "seed": SEED_INPUT,
        }, "optional": {
            # Optional so that workflows saved before it existed still validate.
            "gradient_checkpointing": ("BOOLEAN", {"default": False,
                                                   "tooltip": help_text(TrainConfig, "gradient_checkpointing")}),
            "saliency": (SALIENCY, {"tooltip": "From Compute Saliency Mask; computed with defaults when not "
                                               "connected."}),
            "timesteps": (TIMESTEPS, {"tooltip": "From Timestep Selector; computed with defaults when not connected."}),
            "forget_latents": LATENT_INPUT,
            "erase_target": ("FLOAT", {"default": defaults.erase_target or 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                       "tooltip": "Train until this share of the way from the concept's prediction to "
                                                  "its target (the surrogate, overshot by 'overshoot') is closed, "
                                                  "checked on held-out noise every few steps; 'steps' is then the cap. "
                                                  "0 = always train all steps."}),
            "overshoot": number("FLOAT", "overshoot", 0.0, 4.0, 0.05),
            "neighbours": (NEIGHBOURS, {"tooltip": "From Concept Neighbourhood: concepts next to the erased one, kept "
                                                   "by a term of their own (weight adjacency_weight) besides the "
                                                   "retain prompts."}),
            "adjacency_weight": number("FLOAT", "adjacency_weight", 0.0, 100.0, 0.05),
            "robust": ("BOOLEAN", {"default": False, "tooltip": help_text(TrainConfig, "robust")}),
        }, "hidden": {
            # The id ComfyUI gives this node in the running graph: the live loss curve is sent to it.
            "unique_id": "UNIQUE_ID",
        }}

    def train(self, *inputs, **named_inputs):
        trained = self.job(*inputs, **named_inputs)
        return _with_adapter_info(trained.adapter, (trained.adapter, trained.model, trained.loss_chart))

    def job(self, model, clip, forget_prompts, surrogate_prompt, retain_prompts, rank, alpha, steps, learning_rate,
            retain_weight, batch_size, samples, resolution, seed, saliency=None, timesteps=None,
            forget_latents=None, gradient_checkpointing=False, erase_target=None, overshoot=None, neighbours=None,
            adjacency_weight=None, robust=False, unique_id=None):
        """The node's inputs turned into one training job; the whole result (``jobs.TrainedErasure``: adapter,
        MODEL, chart, the training's figures and each stage's seconds) for callers that want more than the
        outputs, such as the benchmarks."""
        prompts = ErasurePrompts.parse(forget_prompts, surrogate_prompt, retain_prompts)
        if erase_target is None:  # a workflow saved before the input existed
            erase_target = TrainConfig().erase_target
        if overshoot is None:
            overshoot = TrainConfig().overshoot
        if adjacency_weight is None:
            adjacency_weight = TrainConfig().adjacency_weight
        if neighbours is not None:
            prompts = prompts.with_neighbours(neighbours.neighbours)
        config = TrainConfig(rank=rank, alpha=alpha, steps=steps_for_concepts(steps, len(prompts.concepts)),
                             learning_rate=learning_rate,
                             retain_weight=retain_weight, batch_size=batch_size,
                             gradient_checkpointing=gradient_checkpointing, erase_target=erase_target or None,
                             overshoot=overshoot, adjacency_weight=adjacency_weight, robust=robust)
        return jobs.train_for_model(model, clip, prompts, _samples(model, samples, resolution), config, seed,
                                    saliency, timesteps, _latents(model, forget_latents), node_id=unique_id,
                                    neighbourhood=neighbours)


ADAPTER_INPUT = (ADAPTER, {"tooltip": "An erasure adapter from Train SPARE Adapter or Load Erasure Adapter."})


class SpareApplyErasure:
    DESCRIPTION = "Applies an erasure adapter to a model like a LoRA; strength 0 returns the model unchanged."
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with the concept erased.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": MODEL_INPUT, "adapter": ADAPTER_INPUT,
                             "strength": ("FLOAT", {"default": 1.0, "min": -20.0, "max": 20.0, "step": 0.01,
                                                    "tooltip": "How strongly to erase: 0 = off, 1 = as trained; "
                                                               "above 1 or negative are allowed, like any LoRA."})}}

    def apply(self, model, adapter, strength):
        return _with_adapter_info(adapter, (patches.apply_adapter(model, adapter, strength),))


class SpareRemoveErasure:
    DESCRIPTION = "Removes one erasure adapter from a model, keeping every other LoRA applied upstream."
    CATEGORY = CATEGORY
    FUNCTION = "remove"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model without this adapter's patches.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": MODEL_INPUT, "adapter": ADAPTER_INPUT}}

    def remove(self, model, adapter):
        return _with_adapter_info(adapter, (patches.remove_adapter(model, adapter),))


class SpareSaveAdapter:
    DESCRIPTION = "Saves an erasure adapter to models/loras as a .safetensors LoRA that any LoRA loader can read."
    CATEGORY = CATEGORY
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "adapter": ADAPTER_INPUT,
            "file_name": ("STRING", {"default": "spare_erasure",
                                     "tooltip": "File name inside models/loras ('.safetensors' is added); with "
                                                "counter on, the start of the name. A sub/folder/ prefix is allowed."}),
            "overwrite": ("BOOLEAN", {"default": False,
                                      "tooltip": "With counter off: replace an existing file of the same name. "
                                                 "With counter on it never matters: each save gets a new number."}),
        }, "optional": {
            "counter": ("BOOLEAN", {"default": True,
                                    "tooltip": "Add a counter as ComfyUI's own savers do: "
                                               "file_name_00001_.safetensors, then _00002_ on the next run, never "
                                               "replacing a file. Off = exactly file_name ('overwrite' decides when "
                                               "it exists)."}),
            "keep_float32": ("BOOLEAN", {"default": False,
                                         "tooltip": "Off (default): the LoRA weights are stored in float16, half "
                                                    "the file, with images the same to within float16 rounding "
                                                    "(docs/benchmarks.md). On: float32, exactly as trained."}),
        }}

    def save(self, adapter, file_name, overwrite, counter=None, keep_float32=False):
        # A prompt written before the counter existed (counter absent) keeps its exact file name.
        path = save_adapter(adapter, files.new_lora_file_path(file_name), overwrite=overwrite,
                            counter=bool(counter), weights="float32" if keep_float32 else "float16")
        return {"ui": {"text": [str(path.relative_to(files.lora_root()))]}}


class SpareLoadAdapter:
    DESCRIPTION = "Loads an erasure adapter (or any UNet LoRA) from models/loras."
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (ADAPTER,)
    OUTPUT_TOOLTIPS = ("The adapter, for Apply / Remove Erasure LoRA.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"adapter_name": (files.lora_file_names(),
                                              {"tooltip": "A .safetensors file in models/loras."})}}

    @classmethod
    def IS_CHANGED(cls, adapter_name):
        try:
            return os.path.getmtime(files.lora_file_path(adapter_name))
        except (FileNotFoundError, OSError):
            return float("nan")

    def load(self, adapter_name):
        adapter = load_adapter(files.lora_file_path(adapter_name))
        return _with_adapter_info(adapter, (adapter,))


class SpareErasureReport:
    DESCRIPTION = ("How robust is this erasure? Runs prompt attacks against the erased model (a soft-token attack "
                   "and a search over ordinary words) and reports how much of the concept each brings back, with "
                   "the strongest prompt found to try yourself. Needs no classifier; works on any model the pack "
                   "trains.")
    CATEGORY = CATEGORY
    FUNCTION = "report"
    OUTPUT_NODE = True  # the report is read on its own; it runs without a node consuming its outputs
    RETURN_TYPES = ("STRING", "IMAGE", "STRING")
    RETURN_NAMES = ("report", "chart", "attack_prompt")
    OUTPUT_TOOLTIPS = ("The figures: the training's own check, and the share of the erasure each attack undoes.",
                       "The share of the erasure each attack undoes.",
                       "The word prompt that undid the most: sample it to see what comes back.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The erased model: the MODEL output of Train SPARE Adapter or of Apply "
                                           "Erasure LoRA with this adapter. The unerased model is this one without "
                                           "the adapter, so nothing else needs wiring."}),
            "clip": CLIP_INPUT,
            "adapter": ADAPTER_INPUT,
            "preset": (list(attacks.PRESETS), {"default": "quick",
                                               "tooltip": "How hard the attacks try: 'quick' (seconds on small "
                                                          "models, a first look) or 'standard' (more tokens, "
                                                          "steps and prompts)."}),
            "seed": SEED_INPUT,
        }, "optional": {
            "concept": ("STRING", {"default": "", "tooltip": "Leave empty to attack the concept the adapter erases. "
                                                             "Type a phrase to attack it instead, e.g. a synonym "
                                                             "the erasure may have missed."}),
        }}

    def report(self, model, clip, adapter, preset, seed, concept=""):
        result = jobs.report_for_model(model, clip, adapter, preset, seed, concept)
        return result.text, result.chart, result.attack_prompt


NODE_CLASS_MAPPINGS = {
    "SpareComputeSaliency": SpareComputeSaliency,
    "SpareTimestepSelector": SpareTimestepSelector,
    "SpareConceptNeighbourhood": SpareConceptNeighbourhood,
    "SpareTrainAdapter": SpareTrainAdapter,
    "SpareApplyErasure": SpareApplyErasure,
    "SpareRemoveErasure": SpareRemoveErasure,
    "SpareSaveAdapter": SpareSaveAdapter,
    "SpareLoadAdapter": SpareLoadAdapter,
    "SpareErasureReport": SpareErasureReport,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "SpareComputeSaliency": "Compute Saliency Mask",
    "SpareTimestepSelector": "Timestep Selector",
    "SpareConceptNeighbourhood": "Concept Neighbourhood",
    "SpareTrainAdapter": "Erase Concept (Train SPARE Adapter)",
    "SpareApplyErasure": "Apply Erasure LoRA",
    "SpareRemoveErasure": "Remove Erasure LoRA",
    "SpareSaveAdapter": "Save Erasure Adapter",
    "SpareLoadAdapter": "Load Erasure Adapter",
    "SpareErasureReport": "Erasure Report",
}
