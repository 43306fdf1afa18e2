"""Trains the SynthCanvas classifier on seeded renders and writes synthcanvas/weights/classifier.safetensors.

    python scripts/train_classifier.py            # 200 seeds × 64 concepts, 10 epochs; prints held-out accuracy
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthcanvas import classifier  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    started = time.perf_counter()
    model = classifier.train(seeds=args.seeds, epochs=args.epochs, report=print)
    held_out = range(classifier.HELD_OUT_SEED_OFFSET, classifier.HELD_OUT_SEED_OFFSET + 20)
    object_accuracy, style_accuracy = classifier.accuracy(model.eval(), held_out)
    classifier.save(model)
    print(f"trained in {time.perf_counter() - started:.0f} s; held-out renders ({len(held_out) * 64}): "
          f"object accuracy {object_accuracy:.4f}, style accuracy {style_accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
