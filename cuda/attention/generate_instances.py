"""Writes cuda/attention/instances/: one explicit instantiation of run_forward or run_backward
(attention/launch.h) per file and (dtype, head_dim), as flash-attention lays out its kernels, so
that nvcc builds them in parallel and CI can compile-check one. Run after changing the lists:

    python cuda/attention/generate_instances.py
"""

from __future__ import annotations

from pathlib import Path

DTYPES = {"bf16": "__nv_bfloat16", "fp16": "__half"}
HEAD_DIMS = (64, 128)
SIGNATURES = {
    "forward": "const RetroAttentionParams&, const AttentionForward&, cudaStream_t",
    "backward": "const RetroAttentionParams&, const AttentionBackward&, float*, bool, cudaStream_t",
}

TEMPLATE = """\
// Written by cuda/attention/generate_instances.py: the {direction} of the attention kernels for
// {dtype}, head_dim {head_dim}.
#include "attention/run.cuh"

namespace retro::cuda {{
template void run_{direction}<{dtype}, {head_dim}>({signature});
}}  // namespace retro::cuda
"""


def main() -> None:
    out = Path(__file__).resolve().parent / "instances"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.cu"):
        old.unlink()
    for direction, signature in SIGNATURES.items():
        for short, dtype in DTYPES.items():
            for head_dim in HEAD_DIMS:
                text = TEMPLATE.format(
                    direction=direction, dtype=dtype, head_dim=head_dim, signature=signature
                )
                (out / f"{direction}_{short}_hdim{head_dim}.cu").write_text(text)


if __name__ == "__main__":
    main()
