"""A small run of every CUDA IVF-PQ kernel for compute-sanitizer (bench/gpu_check.sh, step ivfpq):
the coarse GEMM and probe selection, the scan with float32 and float16 tables, a batch (one block
per query) and single queries (probes split over blocks, then merged), k above the lists' sizes,
empty lists, both metrics, and the encoder."""

import numpy as np

import retro


def main() -> None:
    rng = np.random.default_rng(0)
    d, nlist, pq_m = 48, 16, 6
    x = rng.standard_normal((1500, d)).astype(np.float32)
    coarse = x[:nlist].copy()
    coarse[::4] += 100.0  # a quarter of the lists stay empty
    pq = rng.standard_normal((pq_m, 256, d // pq_m)).astype(np.float32)
    for metric in ("l2", "ip"):
        index = retro.IvfPqIndex.from_trained(coarse, pq, metric=metric)
        gpu = index.to("cuda")
        gpu.add(x[:1000])
        for n, k, nprobe, fp16 in ((40, 10, 4, False), (40, 300, 16, True), (1, 50, 8, False)):
            d_, i_ = gpu.search(x[1000 : 1000 + n], k, nprobe=nprobe, fp16_lut=fp16)
            assert i_.shape == (n, k) and np.all(np.isfinite(d_[i_ >= 0]))
    print("sanitize_ivfpq: done")


if __name__ == "__main__":
    main()
