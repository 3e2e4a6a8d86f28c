"""Model files shipped with gradjob, written as users write theirs (``gradjob bench`` and the
README use them): ``seed_style`` (the course's L-layer network with helper functions and cache
tuples), ``tanh_softmax_l2`` (tanh layers, softmax, cross-entropy and L2 regularisation), and
cs231n's ``conv_pool`` (naive convolution and max-pool) and ``rnn`` (a vanilla RNN over time).
Their paths: ``gradjob.examples.path("seed_style")``."""

from pathlib import Path


def path(name: str) -> str:
    return str(Path(__file__).with_name(f"{name}.py"))
