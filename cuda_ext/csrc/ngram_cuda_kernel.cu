// CUDA kernel of specgate::hybrid_mtp_ngram (SPEC §1.3, §1.4): one launch, no host sync.
//
// Design
// ------
// The op is a sequential loop over rows, but almost all of its cost is the haystack search,
// and the search of a row does not depend on any other row (the winning window depends only on
// the ngram and the haystacks; the budget only decides how many following tokens are copied).
// So one launch does:
//
//   1. SEARCH. Block i takes row i % B and a segment of one of its two haystacks (prompt, or
//      generated tokens). Long rows are split over many blocks, so B = 1 with a 128K prompt still
//      fills the chip. Each haystack is read once for all n (see "one pass for all n" below); the
//      block's best match is merged into a per-(row, haystack) 64-bit key with one atomicMax.
//   2. FINALISE. The last block to finish (a ticket counter, the classic threadfence-reduction
//      pattern) runs the threshold pass over all rows with a block-wide prefix sum, copies the
//      continuation tokens, applies pad_to_max, and resets the workspace to zero for the next
//      call. No second launch, no host round trip, so the whole op is capturable in a CUDA graph.
//
// One pass for all n
// ------------------
// For a window END position e of haystack H, let L(e) be the length of the longest common
// suffix of H[..e] and the generated tail pre_ids[b, ..step], capped at n_hi = min(max_ngram,
// step). The window of size n ending at e equals the ngram of size n iff L(e) >= n. Hence:
//   * for a given n, the leftmost matching window is the smallest e with L(e) >= n;
//   * the best n in a haystack is max_e L(e), and its leftmost window is the smallest e reaching
//     it (no e exceeds the cap, so "L(e) >= best" is "L(e) == best").
// Packing key = (L << 32) | ~e makes "largest L, then smallest e" a plain unsigned max, which
// merges across threads, warps and blocks in any order (ngram_common.h). The SPEC's
// "a window must leave one token after it" is e <= len - 2, enforced by the scan range. Per
// row, the prompt wins if L_prompt >= L_gen (within one n the prompt comes first), provided the
// winner's L >= min_ngram_size.
// Comparing backwards from e costs one compare for most positions (H[e] != last token); only
// positions whose last token matches look further back, through the L1/L2 cache.
//
// Early exit (work skipping, never result-changing)
// -------------------------------------------------
// When a row's key for haystack h already has L == n_hi at a position e* < the start of the
// tile a block is about to read, nothing in that tile can beat it, so the block stops. A block
// of the generated haystack stops when the prompt already has L == n_hi (the prompt wins ties).
// Keys only grow, so a stale read only makes a block do work it could have skipped.
//
// Threshold with a prefix sum (why the parallel pass is exact)
// ------------------------------------------------------------
// Let ori_b, budget_b be the row's inputs, eligible_b = (ori_b != 0 and budget_b > 0), and
// um_b = min(budget_b, avail_b) the UNCUT number of n-gram tokens (avail_b = tokens after the
// winning window, 0 if none) for an eligible row, 0 otherwise. Let c_j = ori_j + um_j (the count
// row j would end with if the threshold never bit), and compute with exclusive prefix sums
//     T_b = sum_{j<b} c_j + ori_b,     u_b = U0 - #{eligible j <= b},
// U0 = #{seq_lens_decoder > 0}. Call an eligible row AFFECTED if
//     T_b + u_b >= threshold - 1     or     T_b + u_b + um_b > threshold.
// Let b* be the first affected row. Claim: the sequential definition gives
//     final_b = c_b for b < b*;  row b* gets tokens_after_threshold(budget, T_b*, u_b*);
//     every row after b* gets no n-gram tokens.
// Proof.
//   (i) Rows before b*: by induction the true running total equals T_b. An unaffected row has
//       T+u < threshold-1 (so it is not skipped), and if the clip fires it clips the budget to
//       room = threshold - T - u >= um_b, and min(min(budget, room), avail) = min(budget, avail)
//       = um_b because room >= um_b. So its final count is c_b. Non-eligible rows never change.
//   (ii) Row b*: its true total is T_b* by (i), so the sequential rule is applied exactly.
//   (iii) After b*: for consecutive eligible rows b < b', the sequential quantities satisfy
//       total_b' + u_b' >= total_b + m_b + u_b, because every eligible row in (b, b'] adds
//       ori >= 1 to the total while subtracting 1 from u (valid input: ori >= 0). If b* was
//       skipped, total + u >= threshold - 1 already, and it only grows: every later eligible row
//       is skipped too. Otherwise the clip fired with room < um_b* <= min(budget, avail), so
//       m_b* = room and total + m + u = threshold >= threshold - 1 for every later row. QED.
// The kernel suite's threshold-pressure and threshold-edge batches test this against the
// oracle; tests/cuda_ext/test_threshold_argument.py checks the same argument in Python on CPU.
//
// Safety on any input (no value is trusted; the CPU op validates, this one must not sync)
// --------------------------------------------------------------------------------------
// prompt_lens is clamped to [0, S_all]; a row whose step_idx is outside [0, S_pre) or whose
// ori is outside (0, W] is never searched and never written (it still counts in the prefix sums
// exactly as the definition counts it). Writes go to [ori, ori + m) with m <= K + 1 - ori, and
// W >= K + 1 is checked on the host; reads of continuations stay inside the clamped haystack.

#include <cuda_runtime.h>

#include <cstdint>

#include "ngram_common.h"
#include "ngram_cuda.h"

namespace specgate {
namespace {

constexpr int kRowsPerThread = 4;  // finalisation: rows r = base + k * BLOCK + tid, k < 4
constexpr unsigned kFull = 0xffffffffu;

// What both phases need to know about one row; computed identically in both.
struct RowInfo {
  int64_t ori, budget, step, n_hi, plen;
  bool eligible;    // passes SPEC §1.3's first `continue` (counts in `unprocessed`)
  bool searchable;  // eligible and its values are in range, so it may be read and written
};

__device__ __forceinline__ RowInfo row_info(const NgramParams& p, int64_t r) {
  RowInfo ri;
  ri.ori = p.seq_lens_this_time[r];
  ri.step = p.step_idx[r];
  ri.budget = row_budget(p.max_draft_tokens, ri.ori, p.max_dec_len[r], ri.step);
  ri.eligible = ri.ori != 0 && ri.budget > 0;
  const int64_t plen = p.prompt_lens[r];
  ri.plen = plen < 0 ? 0 : (plen > p.s_all ? p.s_all : plen);
  ri.searchable = ri.eligible && ri.ori > 0 && ri.ori <= p.width && ri.step >= 0 &&
                  ri.step < p.s_pre;
  ri.n_hi = ri.step < p.max_ngram_size ? ri.step : p.max_ngram_size;  // n > step is skipped
  return ri;
}

// ---- block-wide helpers (BLOCK threads, BLOCK / 32 warps; results valid in every thread) ----

template <int BLOCK>
__device__ unsigned long long block_max(unsigned long long v, unsigned long long* smem) {
  constexpr int kWarps = BLOCK / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long w = __shfl_xor_sync(kFull, v, o);
    v = w > v ? w : v;
  }
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) v = smem[w] > v ? smem[w] : v;
  __syncthreads();  // smem may be reused right after
  return v;
}

template <int BLOCK>
__device__ int64_t block_sum(int64_t v, int64_t* smem) {
  constexpr int kWarps = BLOCK / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) v += smem[w];
  __syncthreads();
  return v;
}

template <int BLOCK>
__device__ int64_t block_min(int64_t v, int64_t* smem) {
  constexpr int kWarps = BLOCK / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const int64_t w = __shfl_xor_sync(kFull, v, o);
    v = w < v ? w : v;
  }
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = INT64_MAX;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) v = smem[w] < v ? smem[w] : v;
  __syncthreads();
  return v;
}

// Exclusive prefix sums of two values over the block's threads (in thread order), plus the
// block totals. `smem` holds 2 * BLOCK / 32 values.
template <int BLOCK>
__device__ void block_exclusive_scan2(int64_t a, int64_t b, int64_t& prefix_a, int64_t& prefix_b,
                                      int64_t& total_a, int64_t& total_b, int64_t* smem) {
  constexpr int kWarps = BLOCK / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int64_t ia = a, ib = b;  // inclusive within the warp
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int64_t na = __shfl_up_sync(kFull, ia, o);
    const int64_t nb = __shfl_up_sync(kFull, ib, o);
    if (lane >= o) {
      ia += na;
      ib += nb;
    }
  }
  if (lane == 31) {
    smem[warp] = ia;
    smem[kWarps + warp] = ib;
  }
  __syncthreads();
  int64_t before_a = 0, before_b = 0;
  total_a = 0;
  total_b = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {  // 4-8 warps: a short serial loop beats another barrier
    if (w < warp) {
      before_a += smem[w];
      before_b += smem[kWarps + w];
    }
    total_a += smem[w];
    total_b += smem[kWarps + w];
  }
  __syncthreads();
  prefix_a = before_a + ia - a;
  prefix_b = before_b + ib - b;
}

// Copy m continuation tokens. __restrict__ lets the loads of a group issue before its stores
// (otherwise every load waits for the previous store: one memory round trip per token).
// Returns the last token copied (for pad_to_max).
__device__ __forceinline__ int64_t copy_tokens(int64_t* __restrict__ out,
                                               const int64_t* __restrict__ src, int64_t m) {
  int64_t j = 0, last = 0;
  for (; j + 4 <= m; j += 4) {
    const int64_t a = src[j], b = src[j + 1], c = src[j + 2], d = src[j + 3];
    out[j] = a;
    out[j + 1] = b;
    out[j + 2] = c;
    out[j + 3] = d;
    last = d;
  }
  for (; j < m; ++j) out[j] = last = src[j];
  return last;
}

// ---------------------------------------------------------------------------------------------
// Phase 2: threshold pass, copies, padding and workspace reset, in one block.
// Rows are taken in tiles of kRowsPerThread * BLOCK; thread t owns rows base + k * BLOCK + t,
// so that for B <= BLOCK every thread has at most one row and all row loads of a tile are
// issued together. Sub-tile k is scanned after sub-tile k - 1 (rows stay in order).
// ---------------------------------------------------------------------------------------------
template <int BLOCK>
__device__ void finalise(const NgramParams& p) {
  __shared__ int64_t smem[2 * BLOCK / 32];
  const int64_t B = p.batch;
  const int64_t thr = p.threshold;

  // U0 = rows with seq_lens_decoder > 0. With one tile (B <= 4 * BLOCK, the common case) the
  // counts are loaded together with the tile's rows below, saving a memory round trip.
  const bool single_tile = B <= int64_t(BLOCK) * kRowsPerThread;
  int64_t U0 = 0;
  if (!single_tile) {
    int64_t active = 0;
    for (int64_t r = threadIdx.x; r < B; r += BLOCK) active += p.seq_lens_decoder[r] > 0;
    U0 = block_sum<BLOCK>(active, smem);
  }

  int64_t carry_c = 0, carry_e = 0;  // sums over earlier sub-tiles
  bool cut = false;                  // b* lies in an earlier sub-tile
  for (int64_t base = 0; base < B; base += int64_t(BLOCK) * kRowsPerThread) {
    // Per-row state kept compact (32-bit fields, bit masks): registers stay <= 64 per thread.
    int32_t ori[kRowsPerThread], um[kRowsPerThread], end[kRowsPerThread];
    uint32_t elig = 0, in_gen = 0;  // bit k: row of sub-tile k is eligible / matched in pre_ids
    int64_t active = 0;
#pragma unroll
    for (int k = 0; k < kRowsPerThread; ++k) {
      const int64_t r = base + k * BLOCK + threadIdx.x;
      ori[k] = 0;
      um[k] = 0;
      end[k] = 0;
      if (r >= B) continue;
      if (single_tile) active += p.seq_lens_decoder[r] > 0;
      const RowInfo ri = row_info(p, r);
      ori[k] = static_cast<int32_t>(ri.ori);
      elig |= uint32_t(ri.eligible) << k;
      if (ri.searchable && ri.n_hi >= p.min_ngram_size) {
        // Keys were written with atomics (resolved in L2): read them past L1.
        const unsigned long long kp = __ldcg(p.keys + 2 * r);
        const unsigned long long kg = __ldcg(p.keys + 2 * r + 1);
        const int64_t lp = match_len(kp), lg = match_len(kg);
        int64_t avail = 0;
        if (lp >= p.min_ngram_size && lp >= lg) {  // larger n first; prompt first within n
          end[k] = static_cast<int32_t>(match_end(kp));
          avail = ri.plen - end[k] - 1;
        } else if (lg >= p.min_ngram_size) {
          end[k] = static_cast<int32_t>(match_end(kg));
          avail = ri.step - end[k] - 1;
          in_gen |= 1u << k;
        }
        um[k] = static_cast<int32_t>(avail < ri.budget ? avail : ri.budget);  // <= K < 2^31
        if (um[k] > 0) {
          // The copy happens after the scans; pull its source line into L1 now, so the copy
          // costs an L1 hit instead of another DRAM round trip.
          const int64_t* src = ((in_gen >> k) & 1u) ? p.pre_ids + r * p.s_pre + end[k] + 1
                                                    : p.token_ids_all + r * p.s_all + end[k] + 1;
          asm volatile("prefetch.global.L1 [%0];" ::"l"(src));
        }
      }
      if (p.pad_to_max && ri.ori > 0 && ri.ori <= p.max_draft_tokens) {  // may need row[ori-1]
        asm volatile("prefetch.global.L1 [%0];" ::"l"(p.draft_tokens + r * p.width + ri.ori - 1));
      }
    }
    if (single_tile) U0 = block_sum<BLOCK>(active, smem);  // uniform branch
#pragma unroll
    for (int k = 0; k < kRowsPerThread; ++k) {
      if (base + k * BLOCK >= B) break;  // uniform
      const int64_t r = base + k * BLOCK + threadIdx.x;
      const bool e_k = (elig >> k) & 1u;
      int64_t pre_c, pre_e, sub_c, sub_e;
      block_exclusive_scan2<BLOCK>(int64_t(ori[k]) + um[k], e_k, pre_c, pre_e, sub_c, sub_e,
                                   smem);
      // T_b and u_b of the proof at the top of the file, and the first affected row.
      const int64_t total = carry_c + pre_c + ori[k];
      const int64_t unproc = U0 - (carry_e + pre_e + e_k);
      const bool affected = r < B && e_k &&
                            (total + unproc >= thr - 1 || total + unproc + um[k] > thr);
      const int64_t b_star = cut ? -1 : block_min<BLOCK>(affected ? r : INT64_MAX, smem);
      if (r < B) {
        int64_t len = ori[k], m = 0;
        if (r < b_star) {
          m = um[k];
        } else if (r == b_star) {  // apply the threshold rule exactly, with true totals
          const int64_t budget =
              row_budget(p.max_draft_tokens, ori[k], p.max_dec_len[r], p.step_idx[r]);
          m = tokens_after_threshold(budget, total, unproc, thr, um[k]);
        }
        int64_t* row = p.draft_tokens + r * p.width;
        int64_t last = 0;
        if (e_k && m > 0) {  // um > 0 implies a searchable row with a match
          const int64_t* src = ((in_gen >> k) & 1u) ? p.pre_ids + r * p.s_pre + end[k] + 1
                                                    : p.token_ids_all + r * p.s_all + end[k] + 1;
          last = copy_tokens(row + ori[k], src, m);
          len += m;
          p.seq_lens_this_time[r] = static_cast<int32_t>(len);
        }
        if (p.pad_to_max && len > 0 && len < p.max_draft_tokens + 1) {  // SPEC §1.4
          if (m == 0) last = row[len - 1];
          for (int64_t j = len; j <= p.max_draft_tokens; ++j) row[j] = last;
          p.seq_lens_this_time[r] = static_cast<int32_t>(p.max_draft_tokens + 1);
        }
        p.keys[2 * r] = 0ull;  // leave the workspace zero for the next call
        p.keys[2 * r + 1] = 0ull;
      }
      if (b_star != INT64_MAX) cut = true;
      carry_c += sub_c;
      carry_e += sub_e;
    }
  }
  if (threadIdx.x == 0) *p.done = 0u;
}

// ---------------------------------------------------------------------------------------------
// Phase 1: search one segment of one haystack of one row; the last block to finish finalises.
// The memory round trips are the cost at small shapes, so the block issues its row's scalars,
// its first tile (bounded by the haystack's capacity, known from shapes) and the cross-block
// keys all at once, and only then decides what to compare.
// ---------------------------------------------------------------------------------------------
template <int BLOCK>
__global__ void __launch_bounds__(BLOCK, 1024 / BLOCK)  // <= 64 registers: 1024 threads per SM
    hybrid_mtp_ngram_kernel(const NgramParams p) {
  constexpr int kTile = BLOCK * kItemsPerThread;
  __shared__ unsigned long long red[BLOCK / 32];
  __shared__ bool is_last;
  const int64_t row = blockIdx.x % p.batch;
  const int64_t seg = blockIdx.x / p.batch;  // segment-major: every row's first segment first
  const bool in_grid = seg < p.segs_prompt + p.segs_gen;
  const bool gen = seg >= p.segs_prompt;
  const int64_t cap = gen ? p.s_pre : p.s_all;
  const int64_t* hay = gen ? p.pre_ids + row * p.s_pre : p.token_ids_all + row * p.s_all;
  const int64_t begin = (gen ? seg - p.segs_prompt : seg) * p.seg_tokens;
  const int64_t cap_end = begin + p.seg_tokens < cap - 1 ? begin + p.seg_tokens : cap - 1;
  unsigned long long* my_key = p.keys + 2 * row + (gen ? 1 : 0);

  // All independent loads first: the row's scalars, the first tile, the keys.
  const RowInfo ri = row_info(p, row);
  int64_t v[kItemsPerThread];
#pragma unroll
  for (int i = 0; i < kItemsPerThread; ++i) {
    const int64_t e = begin + i * BLOCK + threadIdx.x;
    v[i] = in_grid && e < cap_end ? __ldg(hay + e) : 0;  // inside the row's capacity
  }
  const bool check_first = gen || seg > 0;
  unsigned long long key_prompt = 0, key_own = 0;
  if (threadIdx.x == 0 && in_grid && check_first) {
    key_prompt = __ldcg(p.keys + 2 * row);
    key_own = __ldcg(my_key);
  }

  unsigned long long best = 0;  // this thread's best key
  const int64_t len = gen ? ri.step : ri.plen;  // generated haystack excludes pre_ids[step]
  const int64_t end = cap_end < len - 1 ? cap_end : len - 1;  // e <= len - 2
  if (in_grid && ri.searchable && ri.n_hi >= p.min_ngram_size && begin < end) {  // uniform
    const int64_t* pattern = p.pre_ids + row * p.s_pre + ri.step;  // pattern[-k], k < n_hi
    const int64_t last = __ldg(pattern);
    const uint32_t n_hi = static_cast<uint32_t>(ri.n_hi);
    // Is everything from `from` on settled by what other blocks already found?
    auto settled = [&](unsigned long long kp, unsigned long long ko, int64_t from) {
      if (gen && match_len(kp) == n_hi) return true;  // the prompt wins ties
      return match_len(ko) == n_hi && int64_t(match_end(ko)) < from;
    };
    bool stop = check_first && __syncthreads_or(threadIdx.x == 0 &&
                                                settled(key_prompt, key_own, begin));
    for (int64_t t0 = begin; !stop && t0 < end; t0 += kTile) {
      if (t0 != begin) {
        // Coalesced: item i of thread t is position t0 + i * BLOCK + t; all loads in flight
        // before the first compare.
#pragma unroll
        for (int i = 0; i < kItemsPerThread; ++i) {
          const int64_t e = t0 + i * BLOCK + threadIdx.x;
          v[i] = e < end ? __ldg(hay + e) : 0;
        }
      }
      // The cross-block keys for the check at the end of this tile are read now, so that
      // their L2 round trip overlaps the tile's loads instead of following them.
      const int64_t next = t0 + kTile;
      unsigned long long kp = 0, ko = 0;
      if (threadIdx.x == 0 && next < end) {
        kp = __ldcg(p.keys + 2 * row);
        ko = __ldcg(my_key);
      }
#pragma unroll
      for (int i = 0; i < kItemsPerThread; ++i) {
        const int64_t e = t0 + i * BLOCK + threadIdx.x;
        if (e < end && v[i] == last) {
          // Rare path: extend the common suffix backwards (L(e) <= e + 1, capped at n_hi).
          uint32_t l = 1;
          while (l < n_hi && l <= e && __ldg(hay + e - l) == __ldg(pattern - l)) ++l;
          const unsigned long long key = pack_match(l, static_cast<uint32_t>(e));
          if (l >= p.min_ngram_size && key > best) best = key;
        }
      }
      // Stop after this tile if any thread found a full-length window (nothing further right
      // can beat it), or if another block settled this haystack before the next tile.
      const bool give_up = threadIdx.x == 0 && next < end && settled(kp, ko, next);
      stop = __syncthreads_or(match_len(best) == n_hi || give_up);
    }
    best = block_max<BLOCK>(best, red);
    if (threadIdx.x == 0 && best != 0) atomicMax(my_key, best);
  }

  // Ticket: the block that takes the last ticket sees every other block's atomicMax.
  if (threadIdx.x == 0) {
    __threadfence();
    const unsigned ticket = atomicAdd(p.done, 1u);
    is_last = ticket == static_cast<unsigned>(p.num_blocks - 1);
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  finalise<BLOCK>(p);
}

}  // namespace

cudaError_t launch_hybrid_mtp_ngram(const NgramParams& p, int block_threads, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(p.num_blocks);
  if (block_threads == 128) {
    hybrid_mtp_ngram_kernel<128><<<grid, 128, 0, stream>>>(p);
  } else {
    hybrid_mtp_ngram_kernel<256><<<grid, 256, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace specgate
