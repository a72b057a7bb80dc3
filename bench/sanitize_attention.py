"""A small run of every CUDA attention kernel for compute-sanitizer (bench/gpu_check.sh): the three
ops forward and backward, bfloat16 and float16, head_dim 64 and 128, odd sizes and short,
missing and full neighbours."""

import torch

import retro.ops as ops
from retro import _core


def main() -> None:
    g = torch.Generator().manual_seed(0)
    b, t, h, n_chunks, n_nbrs, r, m = 1, 75, 2, 2, 2, 20, 32
    for fused in (True, False):
        _core.cuda_set_fused_backward(fused)
        for dtype, dh in ((torch.bfloat16, 64), (torch.float16, 64), (torch.bfloat16, 128)):
            dec = lambda: torch.randn(b, t, h, dh, generator=g).to("cuda", dtype).requires_grad_()  # noqa: E731
            nbr = lambda: torch.randn(b, n_chunks, n_nbrs, r, h, dh, generator=g).to("cuda", dtype).requires_grad_()  # noqa: E731
            lens = torch.tensor([[[0, 20], [7, 20]]], dtype=torch.int32, device="cuda")
            outs = [ops.chunked_cross_attention(dec(), nbr(), nbr(), lens, chunk_size=m, q_offset=3),
                    ops.neighbour_self_attention(nbr(), nbr(), nbr(), lens),
                    ops.neighbour_cross_attention(nbr(), dec(), dec(), lens, chunk_size=m)]
            sum(o.float().square().sum() for o in outs).backward()
    torch.cuda.synchronize()
    print("sanitize_attention: done")


if __name__ == "__main__":
    main()
