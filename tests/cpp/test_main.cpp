// C++ unit tests of the core: checksum, top-k, SIMD kernels, IvfPqIndex end to end, errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "attention/bf16_matmul.h"
#include "checksum.h"
#include "code_layout.h"
#include "distances.h"
#include "parallel_errors.h"
#include "quantized_table.h"
#include "retro/error.h"
#include "retro/flat_index.h"
#include "retro/ivf_pq_index.h"
#include "retro/simd.h"
#include "simd/kernels.h"
#include "top_k.h"

namespace retro {
namespace {

// Every kernel set this CPU can run.
std::vector<SimdLevel> supported_levels() {
  std::vector<SimdLevel> levels;
  for (int l = 0; l <= static_cast<int>(best_simd_level()); ++l)
    levels.push_back(static_cast<SimdLevel>(l));
  return levels;
}

// n points of dimension d from n_centres N(0, 1) centres plus N(0, spread^2) noise.
std::vector<float> clustered(idx_t n, int d, int n_centres, float spread, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> centres(static_cast<size_t>(n_centres) * d);
  for (float& c : centres) c = normal(rng);
  std::uniform_int_distribution<int> pick(0, n_centres - 1);
  std::vector<float> x(static_cast<size_t>(n) * d);
  for (idx_t i = 0; i < n; ++i) {
    const int c = pick(rng);
    for (int j = 0; j < d; ++j) x[i * d + j] = centres[c * d + j] + spread * normal(rng);
  }
  return x;
}

double recall(const std::vector<idx_t>& labels, const std::vector<idx_t>& truth, idx_t nq,
              idx_t k) {
  idx_t hits = 0;
  for (idx_t q = 0; q < nq; ++q) {
    std::set<idx_t> want(truth.begin() + q * k, truth.begin() + (q + 1) * k);
    for (idx_t j = 0; j < k; ++j) hits += want.count(labels[q * k + j]);
  }
  return static_cast<double>(hits) / static_cast<double>(nq * k);
}

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "retro_test_" + std::to_string(::getpid()) + "_" + name;
}

// Runs f and checks that it throws retro::Error of the given kind with `fragment` in its message.
template <class F>
void expect_error(ErrorKind kind, const std::string& fragment, F&& f) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one mentioning '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

// Searches index and checks that it returns exactly these labels and distances, bit for bit.
void expect_search_returns(const IvfPqIndex& index, idx_t nq, const float* xq, idx_t k,
                           const IvfPqSearchParams& params, const std::vector<float>& dist,
                           const std::vector<idx_t>& labels) {
  std::vector<float> got_dist(nq * k);
  std::vector<idx_t> got_labels(nq * k);
  index.search(nq, xq, k, got_dist.data(), got_labels.data(), params);
  EXPECT_EQ(got_labels, labels);
  EXPECT_EQ(0, std::memcmp(got_dist.data(), dist.data(), dist.size() * sizeof(float)));
}

// --- xxh64 -----------------------------------------------------------------------------------

TEST(Xxh64, KnownVectors) {
  // reference values from the python xxhash package 4.1.0 (xxh64_intdigest)
  EXPECT_EQ(xxh64("", 0), 0xEF46DB3751D8E999ULL);
  EXPECT_EQ(xxh64("a", 1), 0xD24EC4F1A98C6E5BULL);
  EXPECT_EQ(xxh64("abc", 3), 0x44BC2CF5AD770999ULL);
  EXPECT_EQ(xxh64("abc", 3, 1), 0xBEA9CA8199328908ULL);
  std::vector<uint8_t> bytes(1024);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(xxh64(bytes.data(), 100), 0x6AC1E58032166597ULL);  // 3 stripes + tail
  EXPECT_EQ(xxh64(bytes.data(), 100, 0x9E3779B97F4A7C15ULL), 0x3B97D91EBA03E785ULL);
  EXPECT_EQ(xxh64(bytes.data(), 1024), 0x6F3914F18FE4DF57ULL);
}

// --- TopK ------------------------------------------------------------------------------------

TEST(TopK, KeepsTheSmallestOrderedByDistanceThenId) {
  const std::vector<std::pair<float, idx_t>> pushes = {
      {3.0f, 7}, {1.0f, 9}, {2.0f, 4}, {1.0f, 2}, {5.0f, 1}, {2.0f, 3}, {0.5f, 8}, {1.0f, 5}};
  TopK forward(4), backward(4);
  for (const auto& [dist, id] : pushes) forward.push(dist, id);
  for (auto it = pushes.rbegin(); it != pushes.rend(); ++it) backward.push(it->first, it->second);
  EXPECT_EQ(forward.threshold(), 1.0f);
  float d1[4], d2[4];
  idx_t l1[4], l2[4];
  forward.write_sorted(d1, l1);
  backward.write_sorted(d2, l2);
  const float want_d[4] = {0.5f, 1.0f, 1.0f, 1.0f};
  const idx_t want_l[4] = {8, 2, 5, 9};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(d1[i], want_d[i]);
    EXPECT_EQ(l1[i], want_l[i]);
    EXPECT_EQ(d2[i], want_d[i]);
    EXPECT_EQ(l2[i], want_l[i]);
  }
}

// Large k (the reservoir): the kept set and order equal a full sort of every push by
// (distance, id), whatever the push order, with many ties at the cut (distances on a coarse grid),
// also after merging two halves, and for fewer pushes than k.
TEST(TopK, ReservoirKeepsTheSameSetAsASort) {
  std::mt19937_64 rng(31);
  for (idx_t k : {TopK::kMaxHeapK + 1, idx_t{97}, idx_t{640}})
    for (int n : {50, 700, 5003}) {
      std::uniform_int_distribution<int> grid(0, 40);  // 41 distinct distances: many ties
      std::vector<Scored> pushes(n);
      for (int i = 0; i < n; ++i)
        pushes[i] = {0.25f * static_cast<float>(grid(rng)) - 3.0f, static_cast<idx_t>(rng() % 100000)};
      std::vector<Scored> want(pushes);
      std::sort(want.begin(), want.end());
      std::shuffle(pushes.begin(), pushes.end(), rng);
      TopK whole(k), first(k), second(k);
      for (int i = 0; i < n; ++i) {
        whole.push(pushes[i].distance, pushes[i].id);
        (i % 2 == 0 ? first : second).push(pushes[i].distance, pushes[i].id);
        if (whole.full()) ASSERT_GE(whole.threshold(), want[std::min<idx_t>(k, i + 1) - 1].distance);
      }
      first.merge(second);
      for (TopK* top : {&whole, &first}) {
        std::vector<float> d(k);
        std::vector<idx_t> l(k);
        top->write_sorted(d.data(), l.data());
        for (idx_t i = 0; i < k; ++i) {
          const bool have = i < n;
          ASSERT_EQ(l[i], have ? want[i].id : -1) << "k=" << k << " n=" << n << " i=" << i;
          ASSERT_EQ(d[i], have ? want[i].distance : std::numeric_limits<float>::infinity());
        }
      }
      TopK unordered(k);
      for (const Scored& p : pushes) unordered.push(p.distance, p.id);
      std::vector<idx_t> ids(k);
      unordered.write_unordered(ids.data());
      std::sort(ids.begin(), ids.end());
      std::vector<idx_t> want_ids(k, -1);
      for (idx_t i = 0; i < std::min<idx_t>(k, n); ++i) want_ids[i] = want[i].id;
      std::sort(want_ids.begin(), want_ids.end());
      ASSERT_EQ(ids, want_ids) << "k=" << k << " n=" << n;
    }
}

TEST(TopK, PadsAndMerges) {
  TopK a(5), b(5);
  a.push(2.0f, 1);
  a.push(4.0f, 2);
  b.push(3.0f, 3);
  EXPECT_FALSE(a.full());
  EXPECT_EQ(a.threshold(), std::numeric_limits<float>::infinity());
  a.merge(b);
  float d[5];
  idx_t l[5];
  a.write_sorted(d, l);
  EXPECT_EQ(l[0], 1);
  EXPECT_EQ(l[1], 3);
  EXPECT_EQ(l[2], 2);
  for (int i = 3; i < 5; ++i) {
    EXPECT_EQ(l[i], -1);
    EXPECT_EQ(d[i], std::numeric_limits<float>::infinity());
  }
}

TEST(TopK, KeepsAtMostWhatCanExistAndPadsTheRest) {
  TopK huge(idx_t(1) << 40, 3);  // would need 2^41 entries without the bound
  EXPECT_EQ(huge.k(), idx_t(1) << 40);
  huge.push(1.0f, 7);
  huge.push(0.5f, 8);
  float d[6];
  idx_t l[6];
  TopK six(6, 3);
  six.push(1.0f, 7);
  six.push(0.5f, 8);
  six.write_sorted(d, l);
  EXPECT_EQ(l[0], 8);
  EXPECT_EQ(l[1], 7);
  for (int i = 2; i < 6; ++i) EXPECT_EQ(l[i], -1);
}

TEST(ParallelErrors, AnExceptionInAnOpenMpRegionReachesTheCaller) {
  ParallelErrors errors;
  int ran = 0;
#pragma omp parallel for reduction(+ : ran)
  for (int i = 0; i < 64; ++i)
    errors.run([&] {
      ++ran;
      if (i == 5) throw std::bad_alloc();
    });
  EXPECT_TRUE(errors.failed());
  EXPECT_GE(ran, 1);
  EXPECT_THROW(errors.rethrow(), std::bad_alloc);
}

// --- SIMD kernels ----------------------------------------------------------------------------

class Kernels : public ::testing::TestWithParam<SimdLevel> {};

TEST_P(Kernels, GemmPackedMatchesDoubleOnOddSizes) {
  const simd::Kernels& kern = simd::kernels_for(GetParam());
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal;
  const int sizes[] = {1, 5, 13, 33, 97};
  for (int m : sizes)
    for (int n : sizes)
      for (int k : sizes) {
        const idx_t lda = k + 3, ldc = n + 5;  // strided: the gaps must stay untouched
        std::vector<float> A(m * lda), B(static_cast<size_t>(n) * k);
        for (float& v : A) v = normal(rng);
        for (float& v : B) v = normal(rng);
        std::vector<float> packed(simd::packed_size(n, k));
        simd::pack_panels(n, k, B.data(), k, packed.data());
        const float sentinel = -12345.0f;
        std::vector<float> C(m * ldc, sentinel);
        kern.gemm_packed(m, n, k, A.data(), lda, packed.data(), C.data(), ldc);
        for (int i = 0; i < m; ++i) {
          for (int j = 0; j < n; ++j) {
            double exact = 0.0, magnitude = 0.0;
            for (int t = 0; t < k; ++t) {
              exact += static_cast<double>(A[i * lda + t]) * B[j * k + t];
              magnitude += std::abs(static_cast<double>(A[i * lda + t]) * B[j * k + t]);
            }
            ASSERT_LE(std::abs(C[i * ldc + j] - exact), (k + 1) * 1.2e-7 * magnitude)
                << "m=" << m << " n=" << n << " k=" << k << " at " << i << "," << j;
          }
          for (idx_t j = n; j < ldc; ++j) ASSERT_EQ(C[i * ldc + j], sentinel);
        }
      }
}

TEST_P(Kernels, OneRowGivesTheBitsOfTheSameRowInABlock) {
  // a lone row (a single query) must sum each column in the order the multi-row tiles use, so a
  // query's distances and nearest centroid do not depend on the queries searched beside it
  const simd::Kernels& kern = simd::kernels_for(GetParam());
  std::mt19937_64 rng(12);
  std::normal_distribution<float> normal;
  for (int n : {1, 127, 128, 129, 300, 1024})
    for (int k : {1, 7, 384}) {
      const int m = 9;
      std::vector<float> A(m * k), B(static_cast<size_t>(n) * k);
      for (float& v : A) v = normal(rng);
      for (float& v : B) v = normal(rng);
      std::vector<float> packed(simd::packed_size(n, k));
      simd::pack_panels(n, k, B.data(), k, packed.data());
      std::vector<float> block(static_cast<size_t>(m) * n), row(n, std::numeric_limits<float>::quiet_NaN());
      kern.gemm_packed(m, n, k, A.data(), k, packed.data(), block.data(), n);
      const size_t width = packed.size() / k;
      std::vector<float> bias(width, std::numeric_limits<float>::infinity());
      for (int j = 0; j < n; ++j) bias[j] = normal(rng);
      std::vector<float> best(m);
      std::vector<idx_t> best_index(m);
      kern.gemm_argmin(m, n, k, A.data(), k, packed.data(), bias.data(), -2.0f, best.data(),
                       best_index.data());
      for (int i = 0; i < m; ++i) {
        kern.gemm_packed(1, n, k, A.data() + i * k, k, packed.data(), row.data(), n);
        for (int j = 0; j < n; ++j) ASSERT_EQ(row[j], block[i * n + j]) << "n=" << n << " k=" << k;
        float one_best;
        idx_t one_index;
        kern.gemm_argmin(1, n, k, A.data() + i * k, k, packed.data(), bias.data(), -2.0f,
                         &one_best, &one_index);
        ASSERT_EQ(one_best, best[i]);
        ASSERT_EQ(one_index, best_index[i]);
      }
    }
}

TEST_P(Kernels, PackColumnsTransposesScatteredRowsIntoPanels) {
  const simd::Kernels& kern = simd::kernels_for(GetParam());
  std::mt19937_64 rng(12);
  std::normal_distribution<float> normal;
  for (int n : {1, 7, 8, 33, 70})
    for (int k : {1, 7, 8, 13, 16, 64, 67}) {
      std::vector<std::vector<float>> storage(n, std::vector<float>(k));  // rows apart in memory
      std::vector<const float*> rows(n);
      for (int i = 0; i < n; ++i) {
        for (float& v : storage[i]) v = normal(rng);
        rows[i] = storage[i].data();
      }
      std::vector<float> packed(simd::packed_size(n, k), -12345.0f);
      kern.pack_columns(n, k, rows.data(), packed.data());
      for (size_t e = 0; e < packed.size(); ++e) {  // packed[(p k + t) kPanel + j] = row p kPanel + j
        const idx_t p = e / (static_cast<size_t>(k) * simd::kPanel);
        const int t = static_cast<int>(e / simd::kPanel % k), j = static_cast<int>(e % simd::kPanel);
        const idx_t row = p * simd::kPanel + j;
        ASSERT_EQ(packed[e], row < n ? storage[row][t] : 0.0f) << "n=" << n << " k=" << k << " at " << e;
      }
    }
}

TEST_P(Kernels, GemmArgminFindsTheSmallestColumnOnTies) {
  const simd::Kernels& kern = simd::kernels_for(GetParam());
  std::mt19937_64 rng(13);
  std::normal_distribution<float> normal;
  for (int m : {1, 5, 33, 131})
    for (int half : {1, 7, 16, 50})
      for (int k : {1, 5, 13, 97})
        for (float alpha : {-2.0f, -1.0f}) {
          // B = [U; U]: every column has a twin with the same value, the argmin must take the
          // first copy (index < half).
          const int n = 2 * half;
          std::vector<float> A(static_cast<size_t>(m) * k), B(static_cast<size_t>(n) * k);
          for (float& v : A) v = normal(rng);
          for (int j = 0; j < half * k; ++j) B[j] = B[half * k + j] = normal(rng);
          std::vector<float> packed(simd::packed_size(n, k));
          simd::pack_panels(n, k, B.data(), k, packed.data());
          const size_t width = packed.size() / k;
          std::vector<float> bias(width, std::numeric_limits<float>::infinity());
          for (int j = 0; j < half; ++j) bias[j] = bias[half + j] = normal(rng);
          std::vector<float> best(m, std::numeric_limits<float>::quiet_NaN());
          std::vector<idx_t> best_index(m, -7);
          kern.gemm_argmin(m, n, k, A.data(), k, packed.data(), bias.data(), alpha, best.data(),
                           best_index.data());
          std::vector<float> C(static_cast<size_t>(m) * n);
          kern.gemm_packed(m, n, k, A.data(), k, packed.data(), C.data(), n);
          for (int i = 0; i < m; ++i) {
            float want = std::numeric_limits<float>::infinity();
            for (int j = 0; j < n; ++j) want = std::min(want, bias[j] + alpha * C[i * n + j]);
            ASSERT_GE(best_index[i], 0);
            ASSERT_LT(best_index[i], half) << "ties must go to the smaller column";
            // the fused kernel may round bias + alpha * c once (FMA): allow that ulp
            const float tolerance = 1e-5f * (std::abs(want) + 1.0f);
            ASSERT_NEAR(best[i], want, tolerance) << "m=" << m << " n=" << n << " k=" << k;
            const idx_t j = best_index[i];
            ASSERT_NEAR(bias[j] + alpha * C[i * n + j], want, tolerance);
          }
        }
}

TEST_P(Kernels, InnerProductsTableRowsMatchADoubleReferenceForEveryQueryCount) {
  const simd::Kernels& kern = simd::kernels_for(GetParam());
  std::mt19937_64 rng(17);
  std::normal_distribution<float> normal;
  for (int nq : {1, 2, 3, 4, 5, 9})
    for (int dsub : {1, 3, 8})
      for (int ksub : {1, 7, 16, 37, 256}) {
        const size_t ldq = dsub + 2, ldo = ksub + 3;  // strides wider than the rows
        std::vector<float> q(nq * ldq), ct(static_cast<size_t>(dsub) * ksub);
        for (float& v : q) v = normal(rng);
        for (float& v : ct) v = normal(rng);
        std::vector<float> out(nq * ldo, std::numeric_limits<float>::quiet_NaN());  // poisoned
        kern.inner_products_t(nq, dsub, ksub, q.data(), ldq, ct.data(), -2.0f, out.data(), ldo);
        for (int i = 0; i < nq; ++i)
          for (size_t j = 0; j < ldo; ++j) {
            if (j >= static_cast<size_t>(ksub)) {  // the gap between rows is never written
              ASSERT_TRUE(std::isnan(out[i * ldo + j])) << "wrote past ksub at " << j;
              continue;
            }
            double want = 0.0;
            for (int t = 0; t < dsub; ++t) want += double(q[i * ldq + t]) * ct[t * ksub + j];
            ASSERT_NEAR(out[i * ldo + j], -2.0 * want, 1e-5 * (std::abs(want) + 1.0))
                << "nq=" << nq << " dsub=" << dsub << " ksub=" << ksub << " at " << i << "," << j;
          }
        // a query's row does not depend on the queries computed with it (one at a time: the same)
        std::vector<float> alone(ksub);
        for (int i = 0; i < nq; ++i) {
          kern.inner_products_t(1, dsub, ksub, q.data() + i * ldq, ldq, ct.data(), -2.0f,
                                alone.data(), ksub);
          for (int j = 0; j < ksub; ++j) ASSERT_EQ(alone[j], out[i * ldo + j]);
        }
      }
}

TEST_P(Kernels, RerankDistancesMatchADoubleReference) {
  // lengths that end the four chains of 16 at every place, and a tail past the last full 16
  const simd::Kernels& kern = simd::kernels_for(GetParam());
  std::mt19937_64 rng(19);
  std::normal_distribution<float> normal;
  for (int d : {1, 15, 16, 17, 32, 48, 63, 64, 80, 100, 384, 401}) {
    std::vector<float> x(d), y(d);
    for (float& v : x) v = normal(rng);
    for (float& v : y) v = normal(rng);
    double l2 = 0.0, ip = 0.0, magnitude = 0.0;
    for (int j = 0; j < d; ++j) {
      const double diff = double(x[j]) - y[j];
      l2 += diff * diff;
      ip += double(x[j]) * y[j];
      magnitude += std::abs(double(x[j]) * y[j]);
    }
    ASSERT_NEAR(kern.l2_distance(d, x.data(), y.data()), l2, 1e-6 * (d + 1) * (l2 + 1.0)) << "d=" << d;
    ASSERT_NEAR(kern.inner_product(d, x.data(), y.data()), ip, 1e-6 * (d + 1) * (magnitude + 1.0))
        << "d=" << d;
  }
}

TEST_P(Kernels, DistancesFromInnerProducts) {
  const simd::Kernels& kern = simd::kernels_for(GetParam());
  for (size_t n : {1, 7, 16, 37}) {
    std::vector<float> ip(n), norms(n), l2(n), neg(n);
    for (size_t j = 0; j < n; ++j) {
      ip[j] = 0.5f * static_cast<float>(j) - 3.0f;
      norms[j] = 0.25f * static_cast<float>(j * j);
    }
    l2 = ip;
    neg = ip;
    kern.distances_from_inner_products(n, 2.5f, norms.data(), l2.data());
    kern.distances_from_inner_products(n, 2.5f, nullptr, neg.data());
    for (size_t j = 0; j < n; ++j) {  // small exact values: no rounding in any build
      EXPECT_EQ(l2[j], (2.5f + norms[j]) - 2.0f * ip[j]);
      EXPECT_EQ(neg[j], -ip[j]);
    }
  }
}

TEST_P(Kernels, PqScan8IsBitExact) {
  const simd::Kernels& kern = simd::kernels_for(GetParam());
  std::mt19937_64 rng(12);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> byte(0, 255);
  for (int pq_m : {1, 3, 8, 48})
    for (size_t nblocks : {1, 3, 17})
      for (bool with_terms : {false, true}) {
        std::vector<uint8_t> codes(nblocks * pq_m * simd::kScanBlock);
        for (uint8_t& c : codes) c = static_cast<uint8_t>(byte(rng));
        std::vector<float> lut(pq_m * 256), terms(nblocks * simd::kScanBlock);
        for (float& v : lut)  // magnitudes over 6 decades: any reordering changes the rounding
          v = normal(rng) * std::pow(10.0f, static_cast<float>(byte(rng) % 7 - 3));
        for (float& v : terms) v = normal(rng) * 50.0f;
        const float bias = 17.25f;
        std::vector<float> out(nblocks * simd::kScanBlock, std::numeric_limits<float>::quiet_NaN());
        kern.pq_scan8(nblocks, pq_m, codes.data(), lut.data(), bias,
                      with_terms ? terms.data() : nullptr, out.data());
        for (size_t b = 0; b < nblocks; ++b)
          for (int lane = 0; lane < simd::kScanBlock; ++lane) {
            float acc = bias;
            if (with_terms) acc += terms[b * simd::kScanBlock + lane];
            for (int m = 0; m < pq_m; ++m)
              acc += lut[m * 256 + codes[(b * pq_m + m) * simd::kScanBlock + lane]];
            uint32_t got, want;
            std::memcpy(&got, &out[b * simd::kScanBlock + lane], 4);
            std::memcpy(&want, &acc, 4);
            ASSERT_EQ(got, want) << "pq_m=" << pq_m << " nblocks=" << nblocks << " lane=" << lane;
          }
      }
}

// Every half (all 65536 bit patterns, in a row of odd length so the tail is scalar) widens to the
// scalar reference's float, bit for bit; NaNs to NaN.
TEST_P(Kernels, WidenHalvesIsExact) {
  const simd::Kernels& kern = simd::kernels_for(GetParam());
  const int n = 65537;
  std::vector<uint16_t> halves(n);
  for (int i = 0; i < n; ++i) halves[i] = static_cast<uint16_t>(i * 40503u);  // a permutation
  std::vector<float> out(n);
  kern.widen_halves(n, halves.data(), out.data());
  for (int i = 0; i < n; ++i) {
    const float want = half_to_float(halves[i]);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(out[i])) << "half " << halves[i];
    } else {
      uint32_t got_bits, want_bits;
      std::memcpy(&got_bits, &out[i], 4);
      std::memcpy(&want_bits, &want, 4);
      ASSERT_EQ(got_bits, want_bits) << "half " << halves[i];
    }
  }
}

// The 4-bit scan against sums computed here from the same quantized table, for odd pq_m and
// vector counts that end inside a block; tables from QuantizedTable, whose code range keeps even
// pq_m = 300 sub-quantizers (max code 218) inside 16 bits.
TEST_P(Kernels, PqScan4IsBitExact) {
  const simd::Kernels& kern = simd::kernels_for(GetParam());
  std::mt19937_64 rng(21);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> nibble(0, 15);
  for (int pq_m : {1, 2, 5, 48, 300})
    for (idx_t n : {1, 31, 32, 70}) {
      const CodeLayout layout{pq_m, 4};
      std::vector<uint8_t> codes(n * pq_m), blocked(layout.bytes(n), 0);
      for (uint8_t& c : codes) c = static_cast<uint8_t>(nibble(rng));
      for (idx_t i = 0; i < n; ++i) layout.put(blocked.data(), i, &codes[i * pq_m]);
      std::vector<float> lut(pq_m * 16);
      for (float& v : lut) v = normal(rng);
      QuantizedTable table(pq_m, 16);
      table.build(lut.data());
      std::vector<uint32_t> want(n);
      uint32_t worst = 0;
      for (int m = 0; m < pq_m; ++m) {
        uint32_t row_max = 0;
        for (int j = 0; j < 16; ++j) row_max = std::max<uint32_t>(row_max, table.codes()[m * 16 + j]);
        worst += row_max;
        for (idx_t i = 0; i < n; ++i) want[i] += table.codes()[m * 16 + codes[i * pq_m + m]];
      }
      ASSERT_LE(worst, 65535u) << "pq_m=" << pq_m;
      std::vector<uint32_t> sorted(want);
      std::sort(sorted.begin(), sorted.end());
      const uint16_t limit = static_cast<uint16_t>(sorted[n / 2]);
      std::vector<uint16_t> sums(layout.padded(n));
      std::vector<uint32_t> survivors(layout.padded(n));
      const size_t count = kern.pq_scan4(n, pq_m, blocked.data(), table.codes(), limit,
                                         sums.data(), survivors.data());
      std::vector<uint32_t> want_survivors;
      for (idx_t i = 0; i < n; ++i) {
        ASSERT_EQ(sums[i], want[i]) << "pq_m=" << pq_m << " n=" << n << " i=" << i;
        if (want[i] <= limit) want_survivors.push_back(static_cast<uint32_t>(i));
      }
      ASSERT_EQ(std::vector<uint32_t>(survivors.begin(), survivors.begin() + count), want_survivors);
    }
}

// Several queries per pass: each query's sums and survivors equal the scalar single-query scan's
// with its own table and limit, for every query count and odd sizes.
TEST_P(Kernels, PqScan4QueriesEqualsOneQueryAtATime) {
  const simd::Kernels& kern = simd::kernels_for(GetParam());
  const simd::Kernels& reference = simd::kernels_for(SimdLevel::Scalar);
  std::mt19937_64 rng(23);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> nibble(0, 15);
  for (int pq_m : {3, 48, 96})
    for (idx_t n : {5, 32, 97}) {
      const CodeLayout layout{pq_m, 4};
      std::vector<uint8_t> code(pq_m), blocked(layout.bytes(n), 0);
      for (idx_t i = 0; i < n; ++i) {
        for (uint8_t& c : code) c = static_cast<uint8_t>(nibble(rng));
        layout.put(blocked.data(), i, code.data());
      }
      for (int nq = 1; nq <= simd::kMaxScanQueries; ++nq) {
        std::vector<QuantizedTable> tables(nq, QuantizedTable(pq_m, 16));
        std::vector<const uint8_t*> qluts(nq);
        std::vector<uint16_t> limits(nq);
        std::vector<float> lut(pq_m * 16);
        for (int j = 0; j < nq; ++j) {
          for (float& v : lut) v = normal(rng);
          tables[j].build(lut.data());
          qluts[j] = tables[j].codes();
          limits[j] = static_cast<uint16_t>(j == 0 ? 65535 : 40 * pq_m + 500 * j);
        }
        const size_t stride = layout.padded(n);
        std::vector<uint16_t> sums(nq * stride), want_sums(stride);
        std::vector<uint32_t> survivors(nq * stride), want_survivors(stride);
        std::vector<size_t> counts(nq);
        kern.pq_scan4_queries(n, pq_m, blocked.data(), nq, qluts.data(), limits.data(), sums.data(),
                              survivors.data(), stride, counts.data());
        for (int j = 0; j < nq; ++j) {
          const size_t want_count = reference.pq_scan4(n, pq_m, blocked.data(), qluts[j], limits[j],
                                                       want_sums.data(), want_survivors.data());
          ASSERT_EQ(counts[j], want_count) << "pq_m=" << pq_m << " n=" << n << " nq=" << nq << " j=" << j;
          for (idx_t i = 0; i < n; ++i) ASSERT_EQ(sums[j * stride + i], want_sums[i]) << "i=" << i;
          for (size_t s = 0; s < want_count; ++s) ASSERT_EQ(survivors[j * stride + s], want_survivors[s]);
        }
      }
    }
}

TEST(CodeLayout, FourBitCodesRoundTrip) {
  for (int pq_m : {1, 3, 16}) {
    const CodeLayout layout{pq_m, 4};
    EXPECT_EQ(layout.block(), 32);
    EXPECT_EQ(layout.block_bytes(), static_cast<size_t>((pq_m + 1) / 2 * 32));
    std::vector<uint8_t> blocked(layout.bytes(65), 0), code(pq_m), back(pq_m);
    for (idx_t i = 0; i < 65; ++i) {
      for (int m = 0; m < pq_m; ++m) code[m] = static_cast<uint8_t>((i * 7 + m * 3) % 16);
      layout.put(blocked.data(), i, code.data());
    }
    for (idx_t i = 0; i < 65; ++i) {
      layout.get(blocked.data(), i, back.data());
      for (int m = 0; m < pq_m; ++m) ASSERT_EQ(back[m], (i * 7 + m * 3) % 16) << i << " " << m;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Levels, Kernels, ::testing::ValuesIn(supported_levels()),
                         [](const auto& info) { return std::string(simd_level_name(info.param)); });

// --- bfloat16 products ------------------------------------------------------------------------

// Every bf16 product kernel this CPU can run (None, the float32 path, is not one).
std::vector<Bf16Kernel> supported_bf16_kernels() {
  std::vector<Bf16Kernel> kernels;
  for (int l = 1; l <= static_cast<int>(best_bf16_kernel()); ++l)
    kernels.push_back(static_cast<Bf16Kernel>(l));
  return kernels;
}

std::vector<bfloat16> random_bf16(size_t n, std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  std::vector<bfloat16> x(n);
  for (bfloat16& v : x) v = to_bfloat16(normal(rng));
  return x;
}

class Bf16Products : public ::testing::TestWithParam<Bf16Kernel> {};

// C = A . B^T against double sums, with B packed from its rows (pack_rows) or from the rows of B^T
// (pack_depth); A's rows past m are NaN (don't-care rows must not leak into real ones).
TEST_P(Bf16Products, GemmMatchesAScalarReferenceOnOddSizes) {
  std::mt19937_64 rng(17);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int sizes[] = {1, 5, 16, 17, 33, 64, 97};
  for (bool from_depth : {false, true})
    for (int m : sizes)
      for (int n : sizes)
        for (int k : sizes) {
          const idx_t lda = bf16::padded_depth(k) + 32, rows = bf16::padded_rows(m);
          const idx_t ldc = bf16::padded_rows(n) + 3;  // the last 3 columns must stay untouched
          std::vector<bfloat16> A = random_bf16(rows * lda, rng), B = random_bf16(n * k, rng);
          for (idx_t i = 0; i < rows; ++i)
            for (idx_t t = k; t < lda; ++t) A[i * lda + t] = bfloat16{0};
          for (idx_t i = m; i < rows; ++i) A[i * lda] = to_bfloat16(nan);
          std::vector<bfloat16> transposed(n * k);  // B^T (k, n)
          for (int j = 0; j < n; ++j)
            for (int t = 0; t < k; ++t) transposed[t * n + j] = B[j * k + t];
          std::vector<const bfloat16*> pointers;
          for (int r = 0; r < (from_depth ? k : n); ++r)
            pointers.push_back(from_depth ? &transposed[r * n] : &B[r * k]);
          std::vector<bfloat16> packed(bf16::packed_size(n, k), to_bfloat16(nan));
          if (from_depth)
            bf16::pack_depth(k, n, pointers.data(), packed.data());
          else
            bf16::pack_rows(n, k, pointers.data(), packed.data());
          std::vector<float> C(rows * ldc, nan);
          bf16::gemm(GetParam(), m, n, k, A.data(), lda, packed.data(), C.data(), ldc);
          for (int i = 0; i < m; ++i) {
            for (int j = 0; j < n; ++j) {
              double exact = 0.0, magnitude = 0.0;
              for (int t = 0; t < k; ++t) {
                const double product = static_cast<double>(to_float(A[i * lda + t])) *
                                       to_float(B[j * k + t]);
                exact += product;
                magnitude += std::abs(product);
              }
              ASSERT_LE(std::abs(C[i * ldc + j] - exact), (k + 1) * 1.2e-7 * magnitude)
                  << "m=" << m << " n=" << n << " k=" << k << " depth=" << from_depth << " at "
                  << i << "," << j;
            }
            for (idx_t j = n; j < bf16::padded_rows(n); ++j) ASSERT_EQ(C[i * ldc + j], 0.0f);
            for (idx_t j = bf16::padded_rows(n); j < ldc; ++j)
              ASSERT_TRUE(std::isnan(C[i * ldc + j]));
          }
        }
}

INSTANTIATE_TEST_SUITE_P(Kernels, Bf16Products, ::testing::ValuesIn(supported_bf16_kernels()),
                         [](const auto& info) { return bf16_kernel_name(info.param); });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(Bf16Products);  // a CPU without AVX512-BF16

// The row conversions need AVX512-BF16 (every bf16 kernel has it).
TEST(Bf16Rows, ExpNarrowAndCopyMatchScalarReferences) {
  if (best_bf16_kernel() == Bf16Kernel::None) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  std::mt19937_64 rng(19);
  std::normal_distribution<float> normal;
  for (int n : {1, 15, 16, 17, 32, 64, 100}) {
    const idx_t padded = bf16::padded_depth(n);
    std::vector<float> scores(n);
    for (float& s : scores) s = 4.0f * normal(rng);
    const float scale = 0.7f;
    std::vector<bfloat16> probs(padded + 5, to_bfloat16(-1.0f));
    float shift;
    const float sum = bf16::exp_row(n, padded, scores.data(), scale, probs.data(), &shift);
    const double top = *std::max_element(scores.begin(), scores.end());
    EXPECT_FLOAT_EQ(shift, static_cast<float>(scale * top));
    double exact_sum = 0.0;
    for (int j = 0; j < n; ++j) {
      const double e = std::exp(scale * (static_cast<double>(scores[j]) - top));
      exact_sum += e;
      ASSERT_NEAR(to_float(probs[j]), e, e * (1.0 / 256)) << "n=" << n << " j=" << j;  // bf16
    }
    EXPECT_NEAR(sum, exact_sum, 1e-6 * exact_sum) << "n=" << n;
    for (idx_t j = n; j < padded; ++j) ASSERT_EQ(probs[j].bits, 0) << "n=" << n;
    for (idx_t j = padded; j < padded + 5; ++j) ASSERT_EQ(to_float(probs[j]), -1.0f);

    const bfloat16 sentinel = to_bfloat16(-1.0f);
    std::vector<bfloat16> narrowed(padded + 5, sentinel), copied(padded + 5, sentinel);
    bf16::narrow_row(n, padded, scores.data(), 0.3f, narrowed.data());
    std::vector<bfloat16> source(n);
    for (int j = 0; j < n; ++j) source[j] = to_bfloat16(scores[j]);
    bf16::copy_row(n, padded, source.data(), copied.data());
    for (int j = 0; j < n; ++j) {
      ASSERT_EQ(narrowed[j].bits, to_bfloat16(0.3f * scores[j]).bits) << "n=" << n << " j=" << j;
      ASSERT_EQ(copied[j].bits, source[j].bits);
    }
    for (idx_t j = n; j < padded; ++j) ASSERT_EQ(narrowed[j].bits | copied[j].bits, 0);
    for (idx_t j = padded; j < padded + 5; ++j)
      ASSERT_EQ(to_float(narrowed[j]) + to_float(copied[j]), -2.0f);
  }
}

// The backward's pieces: the split softmax gradient row, the dot product and the transpose.
TEST(Bf16Rows, GradientRowDotAndTransposeMatchScalarReferences) {
  if (best_bf16_kernel() == Bf16Kernel::None) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  std::mt19937_64 rng(23);
  std::normal_distribution<float> normal;
  for (int n : {1, 15, 16, 17, 33, 64, 100}) {
    const idx_t padded = bf16::padded_depth(n);
    std::vector<float> scores(n), dprobs(n), lse(n), dots(n);
    for (int i = 0; i < n; ++i) {
      scores[i] = normal(rng);
      dprobs[i] = normal(rng);
      dots[i] = normal(rng);
      lse[i] = 1.0f + std::abs(normal(rng));
    }
    const float scale = 0.6f;
    const bfloat16 sentinel = to_bfloat16(-1.0f);
    std::vector<bfloat16> probs(2 * padded, sentinel), dscores(2 * padded, sentinel);
    bf16::softmax_gradient_row(n, padded, scores.data(), dprobs.data(), lse.data(), dots.data(),
                               scale, probs.data(), dscores.data());
    for (int i = 0; i < n; ++i) {
      const double p = std::exp(scale * static_cast<double>(scores[i]) - lse[i]);
      const double ds = scale * p * (static_cast<double>(dprobs[i]) - dots[i]);
      // hi + lo carries about 16 bits: 2^-16 relative, plus the float32 arithmetic
      ASSERT_NEAR(to_float(probs[i]) + to_float(probs[padded + i]), p, 2e-5 * p) << n << " " << i;
      ASSERT_NEAR(to_float(dscores[i]) + to_float(dscores[padded + i]), ds,
                  2e-5 * std::abs(ds) + 1e-7)
          << n << " " << i;
      ASSERT_EQ(probs[i].bits, to_bfloat16(static_cast<float>(p)).bits) << n << " " << i;
    }
    for (idx_t i = n; i < padded; ++i)
      ASSERT_EQ(probs[i].bits | probs[padded + i].bits, 0);
    for (idx_t i = n; i < padded; ++i)
      ASSERT_EQ(dscores[i].bits | dscores[padded + i].bits, 0);

    std::vector<bfloat16> x = random_bf16(n, rng), y = random_bf16(n, rng);
    double exact = 0.0, magnitude = 0.0;
    for (int i = 0; i < n; ++i) {
      exact += static_cast<double>(to_float(x[i])) * to_float(y[i]);
      magnitude += std::abs(static_cast<double>(to_float(x[i])) * to_float(y[i]));
    }
    EXPECT_NEAR(bf16::dot(n, x.data(), y.data()), exact, (n + 1) * 1.2e-7 * magnitude) << n;

    for (int cols : {1, 2, 7, 40}) {  // src (n, cols) with a wider stride, the last column alone
      const idx_t lds = cols + 3, ldd = padded + 7;
      std::vector<bfloat16> src = random_bf16(n * lds, rng);
      std::vector<bfloat16> dst(cols * ldd, to_bfloat16(-1.0f));
      bf16::transpose(n, cols, src.data(), lds, dst.data(), ldd, padded);
      for (int c = 0; c < cols; ++c) {
        for (int i = 0; i < n; ++i) ASSERT_EQ(dst[c * ldd + i].bits, src[i * lds + c].bits);
        for (idx_t i = n; i < padded; ++i) ASSERT_EQ(dst[c * ldd + i].bits, 0);
        for (idx_t i = padded; i < ldd; ++i) ASSERT_EQ(to_float(dst[c * ldd + i]), -1.0f);
      }
    }
  }
}

// --- IvfPqIndex end to end -------------------------------------------------------------------

class IvfPqRoundTrip : public ::testing::TestWithParam<Metric> {};

TEST_P(IvfPqRoundTrip, TrainAddSearchSaveLoad) {
  const Metric metric = GetParam();
  const int d = 32, pq_m = 8, k = 10;
  const idx_t nlist = 32, nb = 4000, nq = 100;
  const std::vector<float> points = clustered(nb + nq, d, 128, 0.5f, 5);
  const float* xb = points.data();
  const float* xq = points.data() + nb * d;

  FlatIndex flat(d, metric);
  flat.add(nb, xb);
  std::vector<float> truth_d(nq * k);
  std::vector<idx_t> truth(nq * k);
  flat.search(nq, xq, k, truth_d.data(), truth.data());

  IvfPqIndex index(d, nlist, pq_m, 8, metric, 3);
  index.train_params.niter = 10;
  index.train(nb, xb);
  ASSERT_TRUE(index.is_trained());
  index.add(nb, xb);
  ASSERT_EQ(index.ntotal(), nb);
  idx_t listed = 0;
  for (idx_t l = 0; l < nlist; ++l) listed += index.list_size(l);
  EXPECT_EQ(listed, nb);

  IvfPqSearchParams params;
  params.nprobe = 8;
  std::vector<float> dist(nq * k);
  std::vector<idx_t> labels(nq * k);
  index.search(nq, xq, k, dist.data(), labels.data(), params);
  // observed 0.745 (l2) and 0.772 (inner product)
  EXPECT_GE(recall(labels, truth, nq, k), 0.72);
  for (idx_t q = 0; q < nq; ++q)
    for (int j = 1; j < k; ++j) {
      const float prev = dist[q * k + j - 1], cur = dist[q * k + j];
      EXPECT_TRUE(metric == Metric::L2 ? prev <= cur : prev >= cur);
    }

  const std::string path = temp_path(metric == Metric::L2 ? "l2.index" : "ip.index");
  index.save(path);
  for (bool mmap : {false, true}) {
    std::unique_ptr<IvfPqIndex> loaded = IvfPqIndex::load(path, mmap, true);
    EXPECT_EQ(loaded->is_mmapped(), mmap);
    EXPECT_EQ(loaded->ntotal(), nb);
    expect_search_returns(*loaded, nq, xq, k, params, dist, labels);
  }
  std::remove(path.c_str());
}

TEST_P(IvfPqRoundTrip, RerankCandidatesIsTheSecondHalfOfAReRankedSearch) {
  const Metric metric = GetParam();
  const int d = 16, pq_m = 4, k = 5, k_factor = 3;
  const idx_t nlist = 8, nb = 1000, nq = 30, kc = k * k_factor;
  const std::vector<float> points = clustered(nb + nq, d, 32, 0.5f, 11);
  const float* xq = points.data() + nb * d;
  IvfPqIndex index(d, nlist, pq_m, 8, metric, 2);
  index.train_params.niter = 5;
  index.train(nb, points.data());
  index.add(nb, points.data());

  IvfPqSearchParams params;
  params.nprobe = 3;
  std::vector<float> cand_dist(nq * kc);
  std::vector<idx_t> candidates(nq * kc);
  index.search(nq, xq, kc, cand_dist.data(), candidates.data(), params);
  params.rerank_vectors = points.data();
  params.rerank_rows = nb;
  params.k_factor = k_factor;
  std::vector<float> dist(nq * k), dist2(nq * k);
  std::vector<idx_t> labels(nq * k), labels2(nq * k);
  index.search(nq, xq, k, dist.data(), labels.data(), params);
  index.rerank_candidates(nq, xq, k, kc, candidates.data(), params, dist2.data(), labels2.data());
  EXPECT_EQ(labels2, labels);
  EXPECT_EQ(0, std::memcmp(dist2.data(), dist.data(), dist.size() * sizeof(float)));

  params.rerank_vectors = nullptr;
  expect_error(ErrorKind::InvalidArgument, "needs rerank vectors", [&] {
    index.rerank_candidates(nq, xq, k, kc, candidates.data(), params, dist2.data(),
                            labels2.data());
  });
}

INSTANTIATE_TEST_SUITE_P(Metrics, IvfPqRoundTrip,
                         ::testing::Values(Metric::L2, Metric::InnerProduct),
                         [](const auto& info) {
                           return std::string(info.param == Metric::L2 ? "L2" : "InnerProduct");
                         });

// 4-bit codes of the residuals or of the vectors themselves (by_residual = false, one table per
// query): recall with re-ranking, distances in order, and the same results after save and load
// (read and mmap), the flag included.
class IvfPqFastScan : public ::testing::TestWithParam<bool> {};

TEST_P(IvfPqFastScan, TrainAddSearchSaveLoad) {
  const bool by_residual = GetParam();
  const int d = 32, pq_m = 16, k = 10;
  const idx_t nlist = 32, nb = 4000, nq = 100;
  const std::vector<float> points = clustered(nb + nq, d, 128, 0.5f, 5);
  const float* xb = points.data();
  const float* xq = points.data() + nb * d;
  FlatIndex flat(d, Metric::L2);
  flat.add(nb, xb);
  std::vector<float> truth_d(nq * k);
  std::vector<idx_t> truth(nq * k);
  flat.search(nq, xq, k, truth_d.data(), truth.data());

  IvfPqIndex index(d, nlist, pq_m, 4, Metric::L2, 3, by_residual);
  index.train_params.niter = 10;
  index.train(nb, xb);
  index.add(nb, xb);
  IvfPqSearchParams params;
  params.nprobe = 8;
  params.rerank_vectors = xb;
  params.rerank_rows = nb;
  std::vector<float> dist(nq * k), dist2(nq * k);
  std::vector<idx_t> labels(nq * k), labels2(nq * k);
  index.search(nq, xq, k, dist.data(), labels.data(), params);
  EXPECT_GE(recall(labels, truth, nq, k), 0.97);  // observed 0.998 (either way)
  for (idx_t q = 0; q < nq; ++q)
    for (int j = 1; j < k; ++j) EXPECT_LE(dist[q * k + j - 1], dist[q * k + j]);

  const std::string path = temp_path(by_residual ? "residuals_4bit.index" : "vectors_4bit.index");
  index.save(path);
  for (bool mmap : {false, true}) {
    std::unique_ptr<IvfPqIndex> loaded = IvfPqIndex::load(path, mmap, true);
    EXPECT_EQ(loaded->by_residual(), by_residual);
    EXPECT_EQ(loaded->is_mmapped(), mmap);
    loaded->search(nq, xq, k, dist2.data(), labels2.data(), params);
    EXPECT_EQ(labels2, labels);
    EXPECT_EQ(0, std::memcmp(dist2.data(), dist.data(), dist.size() * sizeof(float)));
  }
  std::remove(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(Codes, IvfPqFastScan, ::testing::Values(true, false),
                         [](const auto& info) { return std::string(info.param ? "Residuals" : "Vectors"); });

// --- errors ----------------------------------------------------------------------------------

TEST(Errors, CarryTheirKindAndMessage) {
  expect_error(ErrorKind::InvalidArgument, "d=18 is not divisible by pq_m=4",
               [] { IvfPqIndex(18, 4, 4); });
  expect_error(ErrorKind::InvalidArgument, "pq_bits must be 8 (PQ) or 4 (fast-scan PQ), got 6",
               [] { IvfPqIndex(16, 4, 4, 6); });
  expect_error(ErrorKind::InvalidArgument, "by_residual=false (PQ of the vectors themselves) needs pq_bits=4",
               [] { IvfPqIndex(16, 4, 4, 8, Metric::L2, 0, false); });
  expect_error(ErrorKind::InvalidArgument, "nlist must be positive, got 0", [] { IvfPqIndex(16, 0, 4); });
  expect_error(ErrorKind::InvalidArgument, "unknown SIMD level 'sse'",
               [] { parse_simd_level("sse"); });

  IvfPqIndex index(16, 4, 4);
  std::vector<float> x = clustered(300, 16, 8, 0.5f, 1);
  float dist[5];
  idx_t labels[5];
  expect_error(ErrorKind::Runtime, "not trained",
               [&] { index.search(1, x.data(), 5, dist, labels); });
  expect_error(ErrorKind::Runtime, "not trained", [&] { index.add(1, x.data()); });
  expect_error(ErrorKind::InvalidArgument, "at least 2^pq_bits=256 points",
               [&] { index.train(255, x.data()); });
  index.train_params.niter = 3;
  index.train(300, x.data());
  index.add(300, x.data());
  expect_error(ErrorKind::InvalidArgument, "k must be positive",
               [&] { index.search(1, x.data(), 0, dist, labels); });
  IvfPqSearchParams params;
  params.nprobe = 0;
  expect_error(ErrorKind::InvalidArgument, "nprobe must be positive",
               [&] { index.search(1, x.data(), 5, dist, labels, params); });
  x[5] = std::numeric_limits<float>::quiet_NaN();
  expect_error(ErrorKind::InvalidArgument, "queries contains NaN or inf (first at row 0, column 5)",
               [&] { index.search(1, x.data(), 5, dist, labels); });
  x[5] = 0.0f;

  expect_error(ErrorKind::Runtime, "cannot open index file",
               [] { IvfPqIndex::load(temp_path("does_not_exist"), false, true); });
  const std::string path = temp_path("errors.index");
  index.save(path);
  std::unique_ptr<IvfPqIndex> mapped = IvfPqIndex::load(path, true, false);
  expect_error(ErrorKind::Runtime, "read-only", [&] { mapped->add(1, x.data()); });
  std::remove(path.c_str());
}

// --- list contents ---------------------------------------------------------------------------

TEST(IvfPqLists, CodesMoveToAnIndexWithTheSameQuantizers) {
  const int d = 16, pq_m = 4, k = 5;
  const idx_t nlist = 6, nb = 701, nq = 20;  // lists of ~117: a full and a partial code block
  const std::vector<float> points = clustered(nb + nq, d, 16, 0.5f, 9);
  const float* xq = points.data() + nb * d;
  IvfPqIndex index(d, nlist, pq_m);
  index.train_params.niter = 5;
  index.train(nb, points.data());
  index.add(nb, points.data());

  IvfPqIndex copy(d, nlist, pq_m);
  copy.set_trained(index.coarse_centroids(), index.pq_centroids());
  for (idx_t l = 0; l < nlist; ++l) {
    const idx_t size = index.list_size(l);
    std::vector<uint8_t> codes(size * pq_m), back(size * pq_m);
    index.list_codes(l, codes.data());
    copy.add_encoded(l, size, codes.data(), index.list_ids(l));
    ASSERT_EQ(copy.list_size(l), size);
    copy.list_codes(l, back.data());
    EXPECT_EQ(back, codes);
    EXPECT_EQ(0, std::memcmp(copy.list_ids(l), index.list_ids(l), size * sizeof(idx_t)));
  }
  EXPECT_EQ(copy.ntotal(), nb);

  std::vector<float> dist(nq * k), dist2(nq * k);
  std::vector<idx_t> labels(nq * k), labels2(nq * k);
  index.search(nq, xq, k, dist.data(), labels.data());
  copy.search(nq, xq, k, dist2.data(), labels2.data());
  EXPECT_EQ(labels2, labels);
  EXPECT_EQ(0, std::memcmp(dist2.data(), dist.data(), dist.size() * sizeof(float)));

  expect_error(ErrorKind::InvalidArgument, "list 6 is out of range",
               [&] { copy.list_size(nlist); });
  expect_error(ErrorKind::Runtime, "needs an empty index",
               [&] { copy.set_trained(index.coarse_centroids(), index.pq_centroids()); });
}

// --- OPQ rotation ----------------------------------------------------------------------------

// (rows, d) with orthonormal rows: Gram-Schmidt (twice, in double) of Gaussian rows.
std::vector<float> random_orthonormal_rows(int rows, int d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<double> r(static_cast<size_t>(rows) * d);
  for (double& v : r) v = normal(rng);
  for (int pass = 0; pass < 2; ++pass)
    for (int i = 0; i < rows; ++i) {
      double* ri = &r[static_cast<size_t>(i) * d];
      for (int j = 0; j < i; ++j) {
        const double* rj = &r[static_cast<size_t>(j) * d];
        double dot = 0.0;
        for (int t = 0; t < d; ++t) dot += ri[t] * rj[t];
        for (int t = 0; t < d; ++t) ri[t] -= dot * rj[t];
      }
      double norm = 0.0;
      for (int t = 0; t < d; ++t) norm += ri[t] * ri[t];
      for (int t = 0; t < d; ++t) ri[t] /= std::sqrt(norm);
    }
  return std::vector<float>(r.begin(), r.end());
}

TEST(IvfPqOpq, RotationMatchesADoubleReferenceAndTravelsThroughTheFile) {
  const int d = 37, d_out = 24, pq_m = 6, opq_m = 8, k = 5;  // odd d, d_out < d
  const idx_t nlist = 7, nb = 1301, nq = 29;
  const std::vector<float> points = clustered(nb + nq, d, 40, 0.5f, 21);
  const float* xq = points.data() + nb * d;
  const std::vector<float> rotation = random_orthonormal_rows(d_out, d, 4);
  IvfPqIndex index(d, nlist, pq_m, 8, Metric::L2, 1, true, opq_m, d_out);
  EXPECT_EQ(index.d(), d);
  EXPECT_EQ(index.ivf_d(), d_out);
  expect_error(ErrorKind::Runtime, "OPQ rotation is not trained",
               [&] { index.train(nb, points.data()); });
  std::vector<float> skewed = rotation;
  skewed[5] += 0.01f;
  expect_error(ErrorKind::InvalidArgument, "must be orthonormal",
               [&] { index.set_rotation(skewed.data()); });
  index.set_rotation(rotation.data());

  std::vector<float> rotated(nb * d_out);
  index.rotate(nb, points.data(), rotated.data());
  double worst = 0.0;
  for (idx_t i = 0; i < nb; ++i)
    for (int o = 0; o < d_out; ++o) {
      double want = 0.0, magnitude = 0.0;
      for (int t = 0; t < d; ++t) {
        want += double(rotation[o * d + t]) * double(points[i * d + t]);
        magnitude += std::abs(double(rotation[o * d + t]) * double(points[i * d + t]));
      }
      worst = std::max(worst, std::abs(rotated[i * d_out + o] - want) / magnitude);
    }
  EXPECT_LE(worst, d * 1.2e-7);  // float32 sums of d products

  index.train_params.niter = 5;
  index.train(nb, points.data());
  index.add(nb, points.data());
  // The coarse centroids live in the rotated space: every list's centroid is near the rotated
  // vectors it holds, not the originals.
  IvfPqIndex plain(d_out, nlist, pq_m, 8, Metric::L2, 1);
  plain.train_params.niter = 5;
  plain.train(nb, rotated.data());  // the same k-means on the same rotated points
  EXPECT_EQ(0, std::memcmp(plain.coarse_centroids(), index.coarse_centroids(),
                           nlist * d_out * sizeof(float)));
  plain.add(nb, rotated.data());
  std::vector<float> rotated_q(nq * d_out);
  index.rotate(nq, xq, rotated_q.data());
  std::vector<float> dist(nq * k);
  std::vector<idx_t> labels(nq * k);
  index.search(nq, xq, k, dist.data(), labels.data());
  expect_search_returns(plain, nq, rotated_q.data(), k, {}, dist, labels);

  // Re-ranking compares the original query with the original vectors.
  IvfPqSearchParams params;
  params.rerank_vectors = points.data();
  params.rerank_rows = nb;
  index.search(nq, xq, k, dist.data(), labels.data(), params);
  for (idx_t i = 0; i < nq * k; ++i) {
    double want = 0.0;
    for (int t = 0; t < d; ++t) {
      const double diff = double(xq[(i / k) * d + t]) - double(points[labels[i] * d + t]);
      want += diff * diff;
    }
    EXPECT_NEAR(dist[i], want, 1e-4 * want + 1e-5);
  }

  const std::string path = temp_path("opq.index");
  index.save(path);
  for (bool mmap : {false, true}) {
    std::unique_ptr<IvfPqIndex> loaded = IvfPqIndex::load(path, mmap, true);
    ASSERT_TRUE(loaded->rotation_is_set());
    EXPECT_EQ((std::vector<int>{loaded->opq_m(), loaded->ivf_d(), loaded->d()}),
              (std::vector<int>{opq_m, d_out, d}));
    EXPECT_EQ(0, std::memcmp(loaded->rotation(), rotation.data(), rotation.size() * sizeof(float)));
    expect_search_returns(*loaded, nq, xq, k, params, dist, labels);
  }
  std::remove(path.c_str());
  expect_error(ErrorKind::Runtime, "needs an empty index",
               [&] { index.set_rotation(rotation.data()); });
  expect_error(ErrorKind::InvalidArgument, "not divisible by opq_m=5",
               [&] { IvfPqIndex(d, nlist, pq_m, 8, Metric::L2, 0, true, 5, d_out); });
  expect_error(ErrorKind::InvalidArgument, "must be in [1, d=37]",
               [&] { IvfPqIndex(d, nlist, pq_m, 8, Metric::L2, 0, true, opq_m, 40); });
}

}  // namespace
}  // namespace retro
