"""Trains the SynthCanvas classifier on seeded renders and writes synthcanvas/weights/classifier.safetensors.

    python scripts/train_classifier.py                       # 200 seeds × 64 concepts, 10 epochs
    python scripts/train_classifier.py --adapt-to-demo-vae   # ... then 2 epochs with the demo VAE's round trips
    python scripts/train_classifier.py --adapt-to-demo-vae --skip-base
        # only the second stage, from the shipped weights
    python scripts/train_classifier.py --adapt-to-demo-vae --skip-base --hybrids --seeds 100   # the shipped judge

Prints held-out accuracy on renders (and on their demo-VAE round trips when adapting).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from synthcanvas import classifier

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--adapt-to-demo-vae", action="store_true",
                        help="then fine-tune on renders plus their round trips through the demo model's VAE")
    parser.add_argument("--adapt-epochs", type=int, default=2)
    parser.add_argument("--skip-base", action="store_true", help="start the adaptation from the shipped weights")
    parser.add_argument("--hybrids", action="store_true",
                        help="adapt on hybrid renders too (strokes of one style on another's background, labelled by "
                             "the strokes), so that a partial erasure that changes only the background is not "
                             "counted")
    parser.add_argument("--vae-weights", type=Path, default=None,
                        help="TAESD weights to adapt to (default: the VAE in "
                             "synthcanvas/weights/demo_model.safetensors)")
    args = parser.parse_args()
    started = time.perf_counter()
    model = classifier.load() if args.skip_base else classifier.train(seeds=args.seeds, epochs=args.epochs,
                                                                      report=print)
    held_out = range(classifier.HELD_OUT_SEED_OFFSET, classifier.HELD_OUT_SEED_OFFSET + 20)
    round_trip = None
    if args.adapt_to_demo_vae:
        round_trip = demo_vae_round_trip(args.vae_weights)
        model = classifier.adapt(model, round_trip, seeds=args.seeds, epochs=args.adapt_epochs, report=print,
                                 hybrids=args.hybrids)
    object_accuracy, style_accuracy = classifier.accuracy(model.eval(), held_out)
    classifier.save(model)
    print(f"trained in {time.perf_counter() - started:.0f} s; held-out renders ({len(held_out) * 64}): "
          f"object accuracy {object_accuracy:.4f}, style accuracy {style_accuracy:.4f}")
    hybrid_objects, hybrid_styles = classifier.accuracy(model.eval(), held_out, hybrids=True)
    print(f"held-out hybrids ({len(held_out) * 64}, style = the strokes' style): object accuracy "
          f"{hybrid_objects:.4f}, style accuracy {hybrid_styles:.4f}")
    if round_trip is not None:
        for name, make in (("renders", classifier.render_set), ("hybrids", classifier.hybrid_set)):
            images, objects, styles = make(held_out)
            with torch.no_grad():
                decoded = torch.cat([round_trip(images[i:i + 512]) for i in range(0, len(images), 512)]).clamp(0, 1)
            print(f"held-out {name} after the demo VAE: {classifier.accuracy_on(decoded, objects, styles, model)}")
    return 0


def demo_vae_round_trip(path: Path | None = None):
    """encode → decode with ComfyUI's TAESD class and the demo model's VAE weights (or a training run's
    vae.safetensors)."""
    import tempfile

    from spare_core.runner import headless
    headless.boot(Path(tempfile.mkdtemp(prefix="spare-classifier-")), cpu=not torch.cuda.is_available())
    import comfy.taesd.taesd

    from synthcanvas import demo_model
    state = demo_model.trained_state(path or demo_model.WEIGHTS)
    if any(k.startswith(demo_model.VAE_PREFIX) for k in state):
        state = {k[len(demo_model.VAE_PREFIX):]: v for k, v in state.items() if k.startswith(demo_model.VAE_PREFIX)}
    vae = comfy.taesd.taesd.TAESD()
    vae.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    vae.eval()
    return lambda images: vae.taesd_decoder(vae.taesd_encoder(images))


if __name__ == "__main__":
    sys.exit(main())
