// refserver::rows_linear: y = x @ w.T in float32 on the CPU, for the few rows of a decode or
// verification step (x [T, K], w [N, K] row-major, T up to a few dozen).
//
// Why not F.linear / oneDNN: at T = 1 a step streams every weight once from DRAM and is memory
// bound; verifying K+1 = 6 tokens adds 5 rows of FMAs per weight. MKL's sgemm copies (packs)
// the whole weight per call from 2-4 rows, and oneDNN's packed kernel does not overlap its FMAs
// with the weight stream: T = 6 cost 1.4-1.6x T = 1 on AVX2 (docs/notes_i16b.md). Here each
// weight row is read once for all rows of x, and the rows a few tiles ahead are prefetched, so
// the FMAs of T rows hide under the DRAM stream instead of adding to it.
//
// Hot-path layout (the clever part):
// - A tile is RW weight rows x TC rows of x, RW*TC <= 12 ymm accumulators (+ RW weight vectors
//   + 1 x vector <= 16 registers). TC <= 6 per pass; larger T runs passes of <= 6 rows over the
//   same 32-row weight block while it is still in L1/L2.
// - Every output y[t, n] is summed the same way whatever T, RW, TC or the thread count: 8 lanes
//   over k in increasing k (lane j takes k = j, j+8, ...), each step a fused multiply-add, then
//   one fixed reduction tree. So a row's result never depends on the other rows in the call
//   (a verified token gets the bits a one-token step would give it) nor on the thread split.
// - Threads split N in blocks of 32 rows (at::parallel_for: torch's intra-op threads).
// - AVX2 + FMA only, selected at run time (`rows_linear_supported`); the library itself is built
//   without -mavx2 so it loads on any x86-64 CPU (and on other CPUs the op is simply absent).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define ROWS_LINEAR_X86 1
#endif

namespace refserver {
namespace {

constexpr int64_t kBlockRows = 32;  // weight rows per parallel work item
constexpr int64_t kKStep = 16;      // K must be a multiple of this (two ymm per row per step)
constexpr int64_t kPrefetchRows = 8;  // how far ahead (in weight rows) the stream is fetched
constexpr int64_t kMaxPass = 6;     // rows of x per pass (accumulators: RW * TC <= 12)

bool cpu_supported() {
#ifdef ROWS_LINEAR_X86
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

#ifdef ROWS_LINEAR_X86
// RW consecutive weight rows (w, stride K) against TC rows of x (stride K) -> y[t * N + r].
// `pf`: the weight rows kPrefetchRows ahead, or nullptr near the end of w.
template <int RW, int TC>
__attribute__((target("avx2,fma"))) void tile(const float* x, const float* w, const float* pf,
                                              int64_t K, float* y, int64_t N) {
  __m256 acc[RW][TC];
  for (int r = 0; r < RW; ++r)
    for (int t = 0; t < TC; ++t) acc[r][t] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k += kKStep) {
    if (pf != nullptr)  // one 64-byte line of each row ahead per step of 16 floats
      for (int r = 0; r < RW; ++r)
        _mm_prefetch(reinterpret_cast<const char*>(pf + r * K + k), _MM_HINT_T0);
    for (int h = 0; h < kKStep; h += 8) {
      __m256 wv[RW];
      for (int r = 0; r < RW; ++r) wv[r] = _mm256_loadu_ps(w + r * K + k + h);
      for (int t = 0; t < TC; ++t) {
        __m256 xv = _mm256_loadu_ps(x + t * K + k + h);
        // Keep xv in a register: otherwise the compiler folds this load into each of the RW
        // FMAs, and the loop becomes load-port bound (RW*TC + RW loads per RW*TC FMAs).
        asm volatile("" : "+x"(xv));
        for (int r = 0; r < RW; ++r) acc[r][t] = _mm256_fmadd_ps(xv, wv[r], acc[r][t]);
      }
    }
  }
  for (int r = 0; r < RW; ++r)
    for (int t = 0; t < TC; ++t) {  // the fixed reduction tree: (lo + hi), then pairs, then 2
      __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[r][t]), _mm256_extractf128_ps(acc[r][t], 1));
      s = _mm_add_ps(s, _mm_movehl_ps(s, s));
      s = _mm_add_ss(s, _mm_movehdup_ps(s));
      y[t * N + r] = _mm_cvtss_f32(s);
    }
}

// Weight rows [n0, n1) against TC rows of x: tiles of RW rows, then single rows for the tail.
template <int RW, int TC>
void rows_pass(const float* x, const float* w, int64_t N, int64_t K, float* y, int64_t n0,
               int64_t n1) {
  int64_t n = n0;
  for (; n + RW <= n1; n += RW) {
    const int64_t ahead = n + kPrefetchRows;  // prefetched only while those rows exist
    tile<RW, TC>(x, w + n * K, ahead + RW <= N ? w + ahead * K : nullptr, K, y + n, N);
  }
  for (; n < n1; ++n) tile<1, TC>(x, w + n * K, nullptr, K, y + n, N);
}

// Register blocking per pass height: RW * TC <= 12 accumulators, RW as large as that allows.
void pass(int64_t tc, const float* x, const float* w, int64_t N, int64_t K, float* y, int64_t n0,
          int64_t n1) {
  switch (tc) {
    case 1: rows_pass<8, 1>(x, w, N, K, y, n0, n1); break;
    case 2: rows_pass<4, 2>(x, w, N, K, y, n0, n1); break;
    case 3: rows_pass<4, 3>(x, w, N, K, y, n0, n1); break;
    case 4: rows_pass<2, 4>(x, w, N, K, y, n0, n1); break;
    case 5: rows_pass<2, 5>(x, w, N, K, y, n0, n1); break;
    default: rows_pass<2, 6>(x, w, N, K, y, n0, n1); break;
  }
}
#endif

bool rows_linear_supported() { return cpu_supported(); }

at::Tensor rows_linear(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(cpu_supported(), "refserver::rows_linear needs a CPU with AVX2 and FMA");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "rows_linear: x and w must be on CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat,
              "rows_linear: x and w must be float32, got ", x.scalar_type(), " and ",
              w.scalar_type());
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "rows_linear: w must be a contiguous [N, K]");
  const int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, "rows_linear: x's last dimension ", x.size(-1),
              " != w's K ", K);
  TORCH_CHECK(K % kKStep == 0, "rows_linear: K = ", K, " is not a multiple of ", kKStep);
  const at::Tensor x2 = x.reshape({-1, K}).contiguous();
  const int64_t T = x2.size(0);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  at::Tensor y = at::empty({T, N}, x.options());
#ifdef ROWS_LINEAR_X86
  const float* xp = x2.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t blocks = (N + kBlockRows - 1) / kBlockRows;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * kBlockRows, n1 = std::min(N, n0 + kBlockRows);
      for (int64_t t = 0; t < T; t += kMaxPass)
        pass(std::min(kMaxPass, T - t), xp + t * K, wp, N, K, yp + t * N, n0, n1);
    }
  });
#endif
  return y.view(shape);
}

}  // namespace

TORCH_LIBRARY(refserver, m) {
  m.def("rows_linear(Tensor x, Tensor w) -> Tensor", &rows_linear);
  m.def("rows_linear_supported() -> bool", &rows_linear_supported);
}

}  // namespace refserver
