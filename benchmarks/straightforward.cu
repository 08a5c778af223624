// The straightforward design of hybrid_mtp_ngram (issue 15), the peer column of op_sweep.
//
// Written from the issue's description of what engines ship, not from the op: two launches.
//   1. search_kernel: one 1024-thread block per row. For n from max_ngram_size down to
//      min_ngram_size, it searches the prompt, then the generated tokens, for the leftmost window
//      equal to the last n generated tokens. Threads take window starts i = tid, tid + 1024, ...;
//      a thread that finds a window does atomicMin of i into shared memory, and threads whose i is
//      past that minimum stop. The first (n, haystack) with a window settles the row.
//   2. threshold_kernel: one 1024-thread block, thread b = row b (so B <= 1024), applies the
//      threshold with block-wide prefix sums over the uncut counts and the first "affected" row
//      (the argument that this equals SPEC §1.3's sequential loop is in the comment at the top of
//      cuda_ext/csrc/ngram_cuda_kernel.cu), copies the continuation and applies pad_to_max.
// Inputs are assumed valid (the sweep's); this is a benchmark peer, not a safe op.

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

namespace straightforward {

constexpr int kThreads = 1024;

struct MinOp {
  __device__ int64_t operator()(int64_t x, int64_t y) const { return y < x ? y : x; }
};

struct Args {
  const int64_t* tok;   // [B, s_all]
  const int64_t* plen;  // [B]
  const int64_t* pre;   // [B, s_pre]
  const int64_t* step;  // [B]
  int64_t* draft;       // [B, width]
  int32_t* lens;        // [B]
  const int32_t* dec;   // [B]
  const int64_t* max_dec_len;
  int64_t* match;  // [B] workspace: -1 = none, else (haystack << 32) | continuation start
  int64_t batch, s_all, s_pre, width, max_n, min_n, max_draft, threshold;
  bool pad_to_max;
};

__device__ int64_t budget_of(const Args& a, int64_t r) {
  const int64_t by_draft = a.max_draft - a.lens[r] + 1;
  const int64_t by_len = a.max_dec_len[r] - a.step[r] - 1;
  return by_draft < by_len ? by_draft : by_len;
}

__global__ void __launch_bounds__(kThreads) search_kernel(const Args a) {
  __shared__ int first;
  const int64_t r = blockIdx.x;
  const int64_t step = a.step[r];
  const int64_t ori = a.lens[r];
  if (ori == 0 || budget_of(a, r) <= 0) {  // the row takes no n-gram tokens
    if (threadIdx.x == 0) a.match[r] = -1;
    return;
  }
  const int64_t* pattern_end = a.pre + r * a.s_pre + step;  // the ngram is pre[step-n+1 .. step]
  for (int64_t n = a.max_n; n >= a.min_n; --n) {
    if (step < n) continue;
    const int64_t* ngram = pattern_end - n + 1;
    for (int h = 0; h < 2; ++h) {
      const int64_t* hay = h == 0 ? a.tok + r * a.s_all : a.pre + r * a.s_pre;
      const int64_t len = h == 0 ? a.plen[r] : step;  // the generated haystack stops before step
      if (threadIdx.x == 0) first = INT_MAX;
      __syncthreads();
      for (int64_t i = threadIdx.x; i + n < len; i += kThreads) {  // a token must follow
        if (i > *static_cast<volatile int*>(&first)) break;      // an earlier window is known
        bool eq = true;
        for (int64_t k = 0; k < n && eq; ++k) eq = hay[i + k] == ngram[k];
        if (eq) {
          atomicMin(&first, static_cast<int>(i));
          break;  // this thread's later windows are further right
        }
      }
      __syncthreads();
      const int found = first;
      __syncthreads();  // `first` is reset by the next round
      if (found != INT_MAX) {
        if (threadIdx.x == 0) a.match[r] = (int64_t(h) << 32) | (found + n);
        return;
      }
    }
  }
  if (threadIdx.x == 0) a.match[r] = -1;
}

__global__ void __launch_bounds__(kThreads) threshold_kernel(const Args a) {
  using Scan = cub::BlockScan<int64_t, kThreads>;
  using Reduce = cub::BlockReduce<int64_t, kThreads>;
  __shared__ union {
    typename Scan::TempStorage scan;
    typename Reduce::TempStorage reduce;
  } tmp;
  __shared__ int64_t shared_value;
  const int64_t b = threadIdx.x;
  const bool row = b < a.batch;
  int64_t ori = 0, budget = 0, avail = 0, um = 0;
  const int64_t* src = nullptr;
  bool eligible = false;
  if (row) {
    ori = a.lens[b];
    budget = budget_of(a, b);
    eligible = ori != 0 && budget > 0;
    const int64_t m = a.match[b];
    if (eligible && m >= 0) {
      const bool gen = (m >> 32) != 0;
      const int64_t start = m & 0xffffffffll;
      avail = (gen ? a.step[b] : a.plen[b]) - start;
      src = (gen ? a.pre + b * a.s_pre : a.tok + b * a.s_all) + start;
    }
    um = eligible ? (avail < budget ? avail : budget) : 0;
  }
  // U0 = rows with seq_lens_decoder > 0
  const int64_t active = row && a.dec[b] > 0 ? 1 : 0;
  const int64_t u0_local = Reduce(tmp.reduce).Sum(active);
  if (threadIdx.x == 0) shared_value = u0_local;
  __syncthreads();
  const int64_t U0 = shared_value;
  __syncthreads();
  int64_t before_c, eligible_upto;
  Scan(tmp.scan).ExclusiveSum(ori + um, before_c);
  __syncthreads();
  Scan(tmp.scan).InclusiveSum(int64_t(eligible), eligible_upto);
  __syncthreads();
  const int64_t total = before_c + ori;          // earlier rows uncut, this row still ori
  const int64_t unprocessed = U0 - eligible_upto;  // after this row's decrement
  const int64_t thr = a.threshold;
  const bool affected = eligible && (total + unprocessed >= thr - 1 || total + unprocessed + um > thr);
  const int64_t first_local = Reduce(tmp.reduce).Reduce(affected ? b : INT64_MAX, MinOp());
  if (threadIdx.x == 0) shared_value = first_local;
  __syncthreads();
  const int64_t first_affected = shared_value;
  if (!row) return;
  int64_t m = 0;
  if (b < first_affected) {
    m = um;
  } else if (b == first_affected) {  // SPEC §1.3's rule with the true running totals
    int64_t bud = budget;
    if (total + bud + unprocessed > thr) {
      const int64_t room = thr - total - unprocessed;
      bud = bud < room ? bud : room;
    }
    m = total + unprocessed >= thr - 1 ? 0 : (avail < bud ? avail : bud);
  }
  int64_t* out = a.draft + b * a.width;
  int64_t len = ori;
  if (m > 0) {
    for (int64_t j = 0; j < m; ++j) out[ori + j] = src[j];
    len = ori + m;
    a.lens[b] = static_cast<int32_t>(len);
  }
  if (a.pad_to_max && len > 0 && len < a.max_draft + 1) {
    const int64_t last = out[len - 1];
    for (int64_t j = len; j <= a.max_draft; ++j) out[j] = last;
    a.lens[b] = static_cast<int32_t>(a.max_draft + 1);
  }
}

}  // namespace straightforward

// Raw-pointer launcher (the binding in straightforward.cpp passes tensors' data and the stream).
cudaError_t straightforward_launch(const int64_t* tok, const int64_t* plen, const int64_t* pre,
                                   const int64_t* step, int64_t* draft, int32_t* lens,
                                   const int32_t* dec, const int64_t* max_dec_len, int64_t* match,
                                   int64_t batch, int64_t s_all, int64_t s_pre, int64_t width,
                                   int64_t max_n, int64_t min_n, int64_t max_draft,
                                   int64_t threshold, bool pad_to_max, cudaStream_t stream) {
  using namespace straightforward;
  const int64_t lim = int64_t(1) << 62;  // totals never get near; keeps the sums overflow-free
  threshold = threshold > lim ? lim : (threshold < -lim ? -lim : threshold);
  const Args a{tok,   plen,  pre,   step,  draft, lens,      dec,        max_dec_len, match,
               batch, s_all, s_pre, width, max_n, min_n,     max_draft,  threshold,   pad_to_max};
  search_kernel<<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(a);
  threshold_kernel<<<1, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}
