"""Miniature UnlearnCanvas on the SynthCanvas demo model: erase each concept with SPARE, its ablations and two
baselines, generate through ComfyUI's KSampler, let the shipped classifier judge.

Definitions (UnlearnCanvas, arXiv 2402.11846): UA = share of images prompted with the erased concept that the
classifier does not assign to it; IRA = accuracy on the other concepts of the same domain; CRA = accuracy of the
other domain's head on images not prompted with the erased concept; paraphrase UA = UA on held-out templates.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import evaluation
from .generation import SamplerSettings, encode, generate
from .metrics import erasure_scores
from .render import HELD_OUT_TEMPLATES, OBJECTS, STYLES, TRAIN_TEMPLATES, caption

METHODS = ("spare", "esd_x", "uce", "spare_no_saliency", "spare_uniform_timesteps", "spare_no_retain")
SHORT_NAMES = {"spare_no_saliency": "no salien.", "spare_uniform_timesteps": "uniform t", "spare_no_retain": "no retain"}
EVAL_SEED = evaluation.HELD_OUT_SAMPLER_SEED + 7


@dataclass(frozen=True)
class Concept:
    domain: str   # "style" or "object"
    name: str

    @property
    def index(self) -> int:
        return (STYLES if self.domain == "style" else OBJECTS).index(self.name)

    @property
    def surrogate(self) -> str:
        """The documented default: the first other concept of the same domain, in list order."""
        names = STYLES if self.domain == "style" else OBJECTS
        return next(n for n in names if n != self.name)

    def pairs(self, name: str | None = None) -> list[tuple[str, str]]:
        """(object, style) for every concept of the other domain, with this concept (or ``name``) in its slot."""
        name = name or self.name
        return [(o, name) for o in OBJECTS] if self.domain == "style" else [(name, s) for s in STYLES]

    def forget_prompts(self) -> list[str]:
        return [caption(o, s) for o, s in self.pairs()]

    def surrogate_prompts(self) -> list[str]:
        """One line per forget prompt: the same picture with the surrogate in this concept's place."""
        return [caption(o, s) for o, s in self.pairs(self.surrogate)]

    def retain_prompts(self) -> list[str]:
        """Each other concept of the domain once, paired with a rotating partner from the other domain."""
        names = STYLES if self.domain == "style" else OBJECTS
        partners = OBJECTS if self.domain == "style" else STYLES
        others = [n for n in names if n != self.name]
        return [caption(*((partners[i % len(partners)], n) if self.domain == "style" else (n, partners[i % len(partners)])))
                for i, n in enumerate(others)]

    def label(self) -> str:
        return f"{self.domain}:{self.name}"


def all_concepts() -> list[Concept]:
    """Styles and objects alternating, so a run stopped early still covers both domains."""
    return [c for pair in zip(STYLES, OBJECTS) for c in (Concept("style", pair[0]), Concept("object", pair[1]))]


def parse_concepts(text: str) -> list[Concept]:
    """'all', or comma-separated 'style:neon', 'object:star' (a bare name is looked up in both lists)."""
    if text.strip() == "all":
        return all_concepts()
    concepts = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        domain, _, name = item.rpartition(":")
        candidates = [c for c in all_concepts() if c.name == name and domain in ("", c.domain)]
        if not candidates:
            raise ValueError(f"--concepts: unknown concept {item!r}; use style:NAME ({', '.join(STYLES)}) or "
                             f"object:NAME ({', '.join(OBJECTS)})")
        concepts.append(candidates[0])
    return concepts


# ------------------------------------------------------------------------------------------ evaluation set

@dataclass
class EvalSet:
    """Prompts for one concept's evaluation: its own pairs (seeds each), every other pair once, paraphrases."""
    prompts: list[str] = field(default_factory=list)
    objects: list[int] = field(default_factory=list)
    styles: list[int] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)   # "forget", "other", "paraphrase"


def eval_set(concept: Concept, forget_seeds: int) -> EvalSet:
    out = EvalSet()

    def add(o, s, template, kind):
        out.prompts.append(caption(o, s, template))
        out.objects.append(OBJECTS.index(o))
        out.styles.append(STYLES.index(s))
        out.kind.append(kind)
    for o in OBJECTS:
        for s in STYLES:
            mine = (s if concept.domain == "style" else o) == concept.name
            for _ in range(forget_seeds if mine else 1):
                add(o, s, TRAIN_TEMPLATES[0], "forget" if mine else "other")
    for template in HELD_OUT_TEMPLATES:
        for o, s in concept.pairs():
            for _ in range(forget_seeds):
                add(o, s, template, "paraphrase")
    return out


def score(concept: Concept, evals: EvalSet, images: torch.Tensor) -> dict:
    predicted_objects, predicted_styles = (p.tolist() for p in evaluation.classify(images))
    main = [i for i, kind in enumerate(evals.kind) if kind != "paraphrase"]
    scores = erasure_scores(concept.domain, concept.index, [evals.objects[i] for i in main],
                            [evals.styles[i] for i in main], [predicted_objects[i] for i in main],
                            [predicted_styles[i] for i in main])
    own = predicted_styles if concept.domain == "style" else predicted_objects
    paraphrased = [own[i] != concept.index for i, kind in enumerate(evals.kind) if kind == "paraphrase"]
    return {"UA": scores.ua, "IRA": scores.ira, "CRA": scores.cra,
            "paraphrase_UA": sum(paraphrased) / len(paraphrased)}


# ------------------------------------------------------------------------------------------ memory

class PeakMemory:
    """Peak resident memory of this process while the block runs (MB), polled every 10 ms; CUDA's own peak on
    a GPU. Torch's CPU allocations are invisible to tracemalloc, so the resident set is what can be measured."""

    def __enter__(self):
        self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def _poll(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        if torch.cuda.is_available():
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        return False


# ------------------------------------------------------------------------------------------ methods

@dataclass(frozen=True)
class Settings:
    train_steps: int = 200
    learning_rate: float = 1e-3
    rank: int = 4
    samples: int = 2
    esd_iterations: int = 1000
    forget_seeds: int = 2
    sampler: SamplerSettings = SamplerSettings()


@dataclass
class Erased:
    model: object
    seconds: float
    peak_memory_mb: float
    adapter_mb: float


def _weight_patched(model, weights: dict[str, torch.Tensor]):
    """A clone of MODEL whose listed UNet weights are replaced (as ComfyUI weight-difference patches)."""
    patched = model.clone()
    state = model.model.diffusion_model.state_dict()
    patches = {f"diffusion_model.{name}.weight": ((w.to(state[f'{name}.weight'].dtype) - state[f"{name}.weight"]),)
               for name, w in weights.items()}
    patched.add_patches(patches, 1.0)
    return patched


def _weights_mb(weights: dict[str, torch.Tensor]) -> float:
    # Stored as a float16 safetensors file would be; the edited weights are whole matrices, not low-rank.
    return sum(w.numel() * 2 for w in weights.values()) / 1e6


class Eraser:
    """Runs one method on one concept through the pack's nodes (SPARE) or spare_core.baselines."""

    def __init__(self, runtime, model, clip, settings: Settings):
        self.runtime, self.model, self.clip, self.settings = runtime, model, clip, settings
        self.cache: dict = {}

    def run(self, method: str, concept: Concept) -> Erased:
        action: Callable = getattr(self, f"_{method}")
        with PeakMemory() as memory:
            started = time.perf_counter()
            model, adapter_mb = action(concept)
            seconds = time.perf_counter() - started
        return Erased(model, round(seconds, 2), round(memory.peak, 1), round(adapter_mb, 3))

    # SPARE and its ablations: the same three nodes a user wires, with one thing switched off.
    def _spare(self, concept, module_fraction=0.5, row_fraction=1.0, uniform=False, retain=True):
        s, nodes = self.settings, self.runtime.nodes.NODE_CLASS_MAPPINGS
        forget, surrogate = "\n".join(concept.forget_prompts()), "\n".join(concept.surrogate_prompts())
        retain_text = "\n".join(concept.retain_prompts()) if retain else ""
        saliency = nodes["SpareComputeSaliency"]().compute(self.model, self.clip, forget, retain_text, module_fraction,
                                                           row_fraction, s.samples, 64, 0)[0]
        if uniform:
            timesteps = _uniform_timesteps(self.model)
        else:
            timesteps = nodes["SpareTimestepSelector"]().select(self.model, self.clip, forget, surrogate, 10, 1.0, 1.0,
                                                                s.samples, 64, 0)[0]
        result = nodes["SpareTrainAdapter"]().train(
            self.model, self.clip, forget, surrogate, retain_text, s.rank, float(s.rank), s.train_steps,
            s.learning_rate, 1.0 if retain else 0.0, 2, s.samples, 64, 0, saliency=saliency, timesteps=timesteps)["result"]
        adapter, model = result[0], result[1]
        with tempfile.TemporaryDirectory() as folder:
            from spare_core.adapter import save_adapter
            size = save_adapter(adapter, Path(folder) / "adapter.safetensors").stat().st_size / 1e6
        return model, size

    def _spare_no_saliency(self, concept):
        return self._spare(concept, module_fraction=1.0, row_fraction=1.0)

    def _spare_uniform_timesteps(self, concept):
        return self._spare(concept, uniform=True)

    def _spare_no_retain(self, concept):
        return self._spare(concept, retain=False)

    def _context(self, prompt: str) -> torch.Tensor:
        return encode(self.runtime.nodes, self.clip, [prompt], self.cache)[0][0].float()

    def _concept_prompt(self, concept: Concept, name: str | None = None) -> str:
        # ESD and UCE erase a concept by its name, as in their papers ("Van Gogh"): here "neon style", "a star".
        name = name or concept.name
        return f"{name} style" if concept.domain == "style" else f"a {name}"

    def _esd_x(self, concept):
        from spare_core import comfy_bridge
        from spare_core.baselines import ESDConfig, train_esd_x
        from spare_core.denoiser import Conditioning
        config = ESDConfig(iterations=self.settings.esd_iterations, latent_size=8)
        with comfy_bridge.denoiser_session(self.model) as denoiser:
            weights = train_esd_x(denoiser, Conditioning(self._context(self._concept_prompt(concept))),
                                  Conditioning(self._context("")), config, seed=0)
        return _weight_patched(self.model, weights), _weights_mb(weights)

    def _uce(self, concept):
        from spare_core.baselines import edit_uce
        erase = [(self._context(self._concept_prompt(concept))[0],
                  self._context(self._concept_prompt(concept, concept.surrogate))[0])]
        preserve = [self._context(p)[0] for p in concept.retain_prompts()]
        weights = edit_uce(self.model.model.diffusion_model, erase, preserve)
        return _weight_patched(self.model, weights), _weights_mb(weights)


def _uniform_timesteps(model):
    from spare_core.config import TimestepConfig
    from spare_core.timesteps import distribution_from_scores, equal_bins
    count = len(model.model.model_sampling.sigmas)
    config = TimestepConfig()
    return distribution_from_scores([1.0] * config.bins, equal_bins(count, config.bins), config)


# ------------------------------------------------------------------------------------------ grids

def grid(rows: list[str], columns: list[str], images: list[list[np.ndarray]], path: Path) -> Path:
    """A PNG with one row per prompt and one column per model (labels on top and left)."""
    tile, left, top = 64, 250, 16
    canvas = Image.new("RGB", (left + tile * len(columns), top + tile * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(columns):
        draw.text((left + c * tile + 2, 2), name[:10], fill="black")
    for r, prompt in enumerate(rows):
        draw.text((2, top + r * tile + tile // 2 - 6), prompt[:40], fill="black")
        for c in range(len(columns)):
            canvas.paste(Image.fromarray(images[r][c]), (left + c * tile, top + r * tile))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def grid_rows(concept: Concept) -> list[str]:
    """Three prompts of the erased concept, one paraphrase, three retained neighbours."""
    forget = concept.forget_prompts()
    return forget[:3] + [caption(*concept.pairs()[3], HELD_OUT_TEMPLATES[0])] + concept.retain_prompts()[:3]


# ------------------------------------------------------------------------------------------ the run

def run(runtime, checkpoint_name: str, concepts: list[Concept], methods: list[str], settings: Settings,
        grid_folder: Path | None, report=print, only: dict[str, set[str]] | None = None,
        on_progress=lambda results: None) -> dict:
    """``only``: method → the concept labels it runs on (methods not listed run on every concept).
    ``on_progress`` gets the results so far after each concept (and each ESD-x run)."""
    only = only or {}
    with torch.inference_mode():
        model, clip, vae = runtime.node("CheckpointLoaderSimple").load_checkpoint(checkpoint_name)[:3]
    eraser = Eraser(runtime, model, clip, settings)
    nodes = runtime.nodes

    def images_for(m, prompts):
        return generate(nodes, m, clip, vae, prompts, EVAL_SEED, settings.sampler, eraser.cache)

    def on_done(results):
        on_progress(finish(results, methods))

    results = {"base": {}, "per_concept": {m: {} for m in methods}}
    evals_of, grids = {}, {}

    def erase_and_score(method, concept):
        erased = eraser.run(method, concept)
        scores = score(concept, evals_of[concept.label()], images_for(erased.model, evals_of[concept.label()].prompts))
        scores.update(seconds=erased.seconds, peak_memory_mb=erased.peak_memory_mb, adapter_mb=erased.adapter_mb)
        results["per_concept"][method][concept.label()] = scores
        report(f"{concept.label():16s} {method:24s} UA {scores['UA']:.3f} IRA {scores['IRA']:.3f} "
               f"CRA {scores['CRA']:.3f} para-UA {scores['paraphrase_UA']:.3f} {erased.seconds:6.1f} s")
        rows, columns, tiles = grids[concept.label()]
        columns.append(SHORT_NAMES.get(method, method))
        for r, t in enumerate(images_for(erased.model, rows)):
            tiles[r].append(_uint8(t))
        if grid_folder is not None:
            grid(rows, columns, tiles, grid_folder / f"{concept.domain}_{concept.name.replace(' ', '_')}.png")

    def wanted(method, concept):
        return method not in only or concept.label() in only[method]

    # ESD-x goes last: with its paper's 1000 iterations it costs more than everything else together on a CPU.
    fast = [m for m in methods if m != "esd_x"]
    for concept in concepts:
        evals = evals_of[concept.label()] = eval_set(concept, settings.forget_seeds)
        results["base"][concept.label()] = score(concept, evals, images_for(model, evals.prompts))
        rows = grid_rows(concept)
        grids[concept.label()] = (rows, ["before"], [[_uint8(t)] for t in images_for(model, rows)])
        for method in fast:
            if wanted(method, concept):
                erase_and_score(method, concept)
        on_done(results)
    if "esd_x" in methods:
        for concept in concepts:
            if wanted("esd_x", concept):
                erase_and_score("esd_x", concept)
                on_done(results)
    return finish(results, methods)


def finish(results: dict, methods: list[str]) -> dict:
    results["methods"] = {m: summarise(results["per_concept"][m]) for m in methods if results["per_concept"][m]}
    results["base_summary"] = summarise(results["base"])
    return results


def _uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def summarise(per_concept: dict) -> dict:
    rows = list(per_concept.values())
    out = {key: round(float(np.mean([r[key] for r in rows])), 4) for key in ("UA", "IRA", "CRA", "paraphrase_UA")}
    if rows and "seconds" in rows[0]:
        out["seconds_per_erasure"] = round(float(np.mean([r["seconds"] for r in rows])), 2)
        out["peak_memory_mb"] = round(float(max(r["peak_memory_mb"] for r in rows)), 1)
        out["adapter_mb"] = round(float(np.mean([r["adapter_mb"] for r in rows])), 3)
    out["concepts"] = len(rows)
    return out


def spare_on_subsets(results: dict, only: dict[str, set[str]]) -> dict:
    """SPARE's means on the concept subsets other methods ran on, so rows compare like with like."""
    groups: dict[frozenset, list[str]] = {}
    for method, labels in only.items():
        if results["per_concept"].get(method):  # only methods that ran: a subset row names its method
            groups.setdefault(frozenset(labels), []).append(method)
    out = {}
    for labels, methods in groups.items():
        rows = {k: v for k, v in results["per_concept"].get("spare", {}).items() if k in labels}
        if rows and len(rows) < len(results["per_concept"]["spare"]):
            concepts = f"{len(rows)} concept{'s' if len(rows) > 1 else ''}"
            out[f"spare on the {concepts} of {' / '.join(methods)}"] = summarise(rows)
    return out


def markdown(results: dict) -> str:
    lines = ["| method | UA | IRA | CRA | paraphrase UA | s / erasure | peak MB | adapter MB | concepts |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = results["base_summary"]
    lines.append(f"| no erasure (base model) | {base['UA']:.3f} | {base['IRA']:.3f} | {base['CRA']:.3f} | "
                 f"{base['paraphrase_UA']:.3f} | – | – | – | {base['concepts']} |")
    for method, row in {**results["methods"], **results.get("spare_on_subsets", {})}.items():
        lines.append(f"| {method} | {row['UA']:.3f} | {row['IRA']:.3f} | {row['CRA']:.3f} | {row['paraphrase_UA']:.3f} | "
                     f"{row['seconds_per_erasure']:.1f} | {row['peak_memory_mb']:.0f} | {row['adapter_mb']:.3f} | "
                     f"{row['concepts']} |")
    return "\n".join(lines) + "\n"
