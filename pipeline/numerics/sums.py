"""Running sums over a tensor's elements, accumulated block by block: the difference, the
diagnosis's fits and the noise bound need nothing else, so no stage holds a whole tensor."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Sums:
    """Running sums over a tensor's elements: the difference, the fits and the noise need no more."""

    gg: float = 0.0
    aa: float = 0.0
    dd: float = 0.0
    ga: float = 0.0
    nn: float = 0.0
    at: float = 0.0
    tt: float = 0.0
    dt: float = 0.0   # (g − a)·θ
    kinks: int = 0

    def add(self, g: np.ndarray, a: np.ndarray, theta: np.ndarray, noise: np.ndarray) -> None:
        d = g - a
        self.gg += float(g @ g)
        self.aa += float(a @ a)
        self.dd += float(d @ d)
        self.ga += float(g @ a)
        self.nn += float(noise @ noise)
        self.at += float(a @ theta)
        self.tt += float(theta @ theta)
        self.dt += float(d @ theta)

    def merge(self, other: "Sums") -> None:
        for name in ("gg", "aa", "dd", "ga", "nn", "at", "tt", "dt"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
