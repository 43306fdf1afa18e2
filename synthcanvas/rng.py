"""Random numbers whose stream is frozen across library versions.

numpy's Generator methods may change their algorithms between releases; PCG64's raw 64-bit output may not.
Every draw here is computed from ``random_raw`` with fixed arithmetic, so a seed gives the same images on
any numpy that has PCG64.
"""

from __future__ import annotations

import numpy as np


class FrozenRandom:
    def __init__(self, seed: int):
        self._bits = np.random.PCG64(seed)

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        raw = int(self._bits.random_raw())
        return low + (high - low) * ((raw >> 11) * 2.0 ** -53)

    def integer(self, stop: int) -> int:
        """0 <= value < stop."""
        return min(int(self.uniform() * stop), stop - 1)

    def choice(self, options):
        return options[self.integer(len(options))]

    def normal_array(self, shape) -> np.ndarray:
        """Standard normals by Box–Muller from the raw stream (float32)."""
        count = int(np.prod(shape))
        raw = self._bits.random_raw(2 * ((count + 1) // 2)).astype(np.uint64)
        u = ((raw >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53
        u1, u2 = u[0::2], u[1::2]
        radius = np.sqrt(-2.0 * np.log(u1))
        values = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])[:count]
        return values.reshape(shape).astype(np.float32)

    def uniform_array(self, shape, bound: float) -> np.ndarray:
        """Uniform on [-bound, bound) (float32). Only exact IEEE operations (shift, multiply, add), so the
        values are the same bits on every platform; Box–Muller's log/cos may differ by an ulp between builds."""
        count = int(np.prod(shape))
        raw = self._bits.random_raw(count).astype(np.uint64)
        unit = (raw >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
        return ((unit * 2.0 - 1.0) * bound).reshape(shape).astype(np.float32)
