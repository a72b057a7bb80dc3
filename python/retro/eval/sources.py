"""Where RETRO's neighbours come from when it is scored (retro.eval.losses.sample_neighbours).

real: the stored neighbours; shuffled: another chunk's; none: no retrieval; oracle: each chunk's
own text and true continuation (the upper bound). Torch-free, so that ``retro eval --help`` is.
"""

NEIGHBOURS = ("real", "shuffled", "none", "oracle")
