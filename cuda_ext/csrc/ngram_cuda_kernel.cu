// CUDA kernel of specgate::hybrid_mtp_ngram (SPEC §1.3, §1.4): one launch, no host sync.
//
// Design
// ------
// The op is a sequential loop over rows, but almost all of its cost is the haystack search,
// and the search of a row does not depend on any other row (the winning window depends only on
// the ngram and the haystacks; the budget only decides how many following tokens are copied).
// So one launch does:
//
//   1. SEARCH (blocks [0, search_blocks)). A unit is (row, segment of one haystack); one WARP
//      runs it, 8 units per block, units segment-major (every row's first segment first).
//      Long rows are split over many warps, so B = 1 with a 128K prompt still fills the chip.
//      A warp reads 256 tokens (2 KiB) per tile, so an early match costs its row 2 KiB; in
//      grids of more than kSpeculativeUnits units, units other than the row's first read the
//      row's keys and the probe (the row's first prompt tile, from L2) with its scalars and load
//      nothing of their own segment when either settles the row (below). Each haystack is read
//      once for all n (below); a unit's best match is merged into a per-(row, haystack) 64-bit
//      key with one atomicMax. With several finaliser tiles, every row's first unit also counts
//      seq_lens_decoder > 0 (one atomicAdd per block gives U0).
//   2. FINALISE (the last final_tiles blocks). Tile f = 256 consecutive rows (more per thread
//      above 16K rows). A tile waits for the search-done counter, computes its rows' uncut
//      counts, publishes their sums, gets the sums of all earlier tiles by a decoupled
//      look-back, applies the threshold rule (below), copies the continuation tokens, applies
//      pad_to_max and zeroes its keys. The last tile to finish resets the counters. A single
//      tile (B <= 256) counts U0 itself, needs no look-back and leaves without a fence or an
//      atomic. No second launch, no host round trip: the whole op is capturable in a CUDA graph.
//
// Grids of at most kFusedMaxUnits units (B = 1 with a 1K prompt, small B with short rows) run
// as ONE block instead (hybrid_mtp_ngram_fused_kernel): the same search with the keys in shared
// memory, one barrier, then warp 0 applies the threshold to every row with warp scans. That
// path has no atomics on global memory, no counters, and leaves no workspace state.
//
// Forward progress. Only finaliser blocks wait, and only for (a) the search blocks, which never
// wait, and (b) earlier tiles, which by the ticket order have already started. The finalisers
// are the last blocks of the grid (dispatched after every search block) and at most 64, so they
// can never hold all the SM slots the search needs.
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
// tile a unit is about to read, nothing in that tile can beat it, so the unit stops. A unit
// of the generated haystack stops when the prompt already has L == n_hi (the prompt wins ties).
// Keys only grow, so a stale read only makes a unit do work it could have skipped.
// The probe does the same from the data instead of the keys: if the row's first prompt tile
// [0, kWarpTile) holds a window with L == n_hi (e <= plen - 2), every other unit of the row
// stops, because a prompt unit's segment begins at >= seg_tokens >= kWarpTile (larger e, no
// larger L) and the prompt wins ties over the generated haystack. The row's first unit always
// scans that tile in full and records the window, so nothing is lost. In a one-wave grid every
// unit starts before any key is written; the probe is what lets them stop there.
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
//
// Threshold across tiles (what finalise_tile uses). No block looks for b*: every AFFECTED row
// gets the exact rule, tokens_after_threshold(budget, T_b, u_b, threshold, um_b). For b* that is
// (ii). For an eligible row b' after b*, with the uncut counts, T_b' + u_b' >= T_b* + u_b* +
// um_b* (c_b* = ori_b* + um_b* enters T_b'; every eligible row in (b*, b'] adds ori >= 1 to T
// and takes 1 from u; valid input). So if b* is affected by the first condition, T_b' + u_b' >=
// threshold - 1; if by the second, T_b' + u_b' > threshold. Either way the rule's last test
// returns 0 for b', as the claim says. So a tile needs only the
// prefix sums of c and of eligible over the tiles before it: plain sums, one look-back.
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

constexpr int BLOCK = kBlockThreads;
constexpr int kWarps = BLOCK / 32;
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

// ---- block-wide helpers (BLOCK threads; results valid in every thread) ----------------------

// Exclusive prefix sums of two values over the block's threads (in thread order), plus the
// block totals. `smem` holds 2 * kWarps values.
__device__ void block_exclusive_scan2(int64_t a, int64_t b, int64_t& prefix_a, int64_t& prefix_b,
                                      int64_t& total_a, int64_t& total_b, int64_t* smem) {
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
  for (int w = 0; w < kWarps; ++w) {  // 8 warps: a short serial loop beats another barrier
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

__device__ __forceinline__ unsigned load_acquire(const unsigned* addr) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(addr) : "memory");
  return v;
}
__device__ __forceinline__ long long load_acquire(const long long* addr) {
  long long v;
  asm volatile("ld.acquire.gpu.global.s64 %0, [%1];" : "=l"(v) : "l"(addr) : "memory");
  return v;
}
__device__ __forceinline__ void store_release(long long* addr, long long v) {
  asm volatile("st.release.gpu.global.s64 [%0], %1;" ::"l"(addr), "l"(v) : "memory");
}

// Length of the common suffix of hay[..e] and the generated tail ending at pattern[0], capped at
// n_hi; the caller has checked hay[e] == pattern[0]. Rare path: reads hit L1/L2 (the tile and
// the tail were just loaded).
__device__ __forceinline__ uint32_t suffix_len(const int64_t* hay, int64_t e,
                                               const int64_t* pattern, uint32_t n_hi) {
  uint32_t l = 1;
  while (l < n_hi && l <= e && __ldg(hay + e - l) == __ldg(pattern - l)) ++l;
  return l;
}

// Main kernel's workspace keys: one 128-bit slot per (row, haystack h), {key, tokens}, at words
// 4r + 2h and 4r + 2h + 1 (16-byte aligned). The fused kernel's shared keys have no token word.
template <bool kFused>
__device__ __forceinline__ int64_t key_index(int64_t r, int h) {
  return kFused ? 2 * r + h : 4 * r + 2 * h;
}

// The first two continuation tokens, recorded with the key so that the finaliser reads them in
// the same round trip as the key instead of reading the haystack after it. Half j holds token j
// as 31-bit two's complement with bit 31 set, or 0 where the token is absent or outside
// [-2^30, 2^30) (then the finaliser reads the haystack, as before).
constexpr int kSlotTokens = 2;
__device__ __forceinline__ unsigned long long pack_token(int64_t t, int j) {
  const bool fits = t >= -(int64_t(1) << 30) && t < (int64_t(1) << 30);
  const uint32_t half = fits ? (static_cast<uint32_t>(t) & 0x7fffffffu) | 0x80000000u : 0u;
  return static_cast<unsigned long long>(half) << (32 * j);
}
__device__ __forceinline__ bool token_in_slot(unsigned long long tok, int j) {
  return (tok >> (32 * j + 31)) & 1ull;
}
__device__ __forceinline__ int64_t slot_token(unsigned long long tok, int j) {
  const int32_t half = static_cast<int32_t>(static_cast<uint32_t>(tok >> (32 * j)) << 1) >> 1;
  return half;  // sign-extended from 31 bits
}

// Are the first m continuation tokens all in the slot?
__device__ __forceinline__ bool in_slot(unsigned long long tok, int64_t m) {
  return m <= kSlotTokens && (m < 1 || token_in_slot(tok, 0)) && (m < 2 || token_in_slot(tok, 1));
}

// The slots' 128-bit compare-and-swap needs sm_90; older targets record the key alone.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
constexpr bool kSlotCas = false;
#else
constexpr bool kSlotCas = true;
#endif

// 128-bit compare-and-swap on global memory (sm_90): {k, t} at addr, 16-byte aligned. Returns the
// old value in ok, ot. Only called where __CUDA_ARCH__ >= 900; older targets compile a stub.
__device__ __forceinline__ void cas128(unsigned long long* addr, unsigned long long k,
                                       unsigned long long t, unsigned long long nk,
                                       unsigned long long nt, unsigned long long& ok,
                                       unsigned long long& ot) {
#if __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n\t.reg .b128 c, v, o;\n\tmov.b128 c, {%2, %3};\n\tmov.b128 v, {%4, %5};\n\t"
      "atom.global.cas.b128 o, [%6], c, v;\n\tmov.b128 {%0, %1}, o;\n\t}"
      : "=l"(ok), "=l"(ot)
      : "l"(k), "l"(t), "l"(nk), "l"(nt), "l"(addr)
      : "memory");
#else
  ok = ot = 0;  // never called: the search takes atomicMax below sm_90
  __trap();
#endif
}

// Is the search counting U0 (seq_lens_decoder > 0)? Only for more than one finaliser tile; a
// single tile (B <= 256) counts its own rows with one barrier.
__device__ __forceinline__ bool search_counts_u0(const NgramParams& p) { return p.final_tiles > 1; }

// ---------------------------------------------------------------------------------------------
// Phase 1: one warp searches one segment of one haystack of one row.
// `keys` is p.keys, or (kFused) the fused kernel's shared array: there no unit reads a key during
// the search (every unit starts at once and has one tile, so there is nothing to skip), and the
// only accesses are atomics, then one barrier, then the finalising warp's reads.
// ---------------------------------------------------------------------------------------------
template <bool kFused>
__device__ void search_unit(const NgramParams& p, int64_t u, unsigned* active_count,
                            unsigned long long* keys) {
  const int lane = threadIdx.x & 31;
  const int64_t B = p.batch;
  const bool unit_ok = u < p.num_units;
  const int64_t row = unit_ok ? u % B : 0;
  const int64_t seg = unit_ok ? u / B : 0;
  const bool in_grid = unit_ok && seg < p.segs_prompt + p.segs_gen;
  const bool gen = seg >= p.segs_prompt;
  const bool first = seg == 0;  // the row's first unit: no other unit can have settled it yet
  const int64_t cap = gen ? p.s_pre : p.s_all;
  const int64_t* hay = gen ? p.pre_ids + row * p.s_pre : p.token_ids_all + row * p.s_all;
  const int64_t begin = (gen ? seg - p.segs_prompt : seg) * p.seg_tokens;
  const int64_t cap_end = begin + p.seg_tokens < cap - 1 ? begin + p.seg_tokens : cap - 1;
  unsigned long long* my_key = keys + key_index<kFused>(row, gen ? 1 : 0);

  // All independent loads first: the row's scalars, the keys, the first tile or the probe (below),
  // U0's count.
  const RowInfo ri = row_info(p, row);
  if (!kFused && unit_ok && first && lane == 0 && search_counts_u0(p)) {
    *active_count += p.seq_lens_decoder[row] > 0;
  }
  const bool load_first = in_grid && (first || kFused || p.speculative);
  // Probe (non-speculative grids, every unit but the row's first): the row's first prompt tile,
  // which the row's first unit reads anyway (so it comes from L2). A full-length window there
  // settles this unit before it loads a byte of its own segment, even when the row's first unit
  // has not finished yet (a one-wave grid: every unit starts at once).
  // Only units of the first wave probe: later ones find their row's key already written (its
  // first unit ran in the first wave), and their probe loads would only add L2 traffic.
  const bool probe = !kFused && in_grid && !first && !p.speculative && u < p.probe_units;
  const int64_t* prompt_row = p.token_ids_all + row * p.s_all;
  const int64_t probe_cap = p.s_all - 1 < kWarpTile ? p.s_all - 1 : kWarpTile;
  int64_t v[kItemsPerThread];
#pragma unroll
  for (int i = 0; i < kItemsPerThread; ++i) {
    const int64_t e = begin + i * 32 + lane, pe = i * 32 + lane;
    v[i] = load_first ? (e < cap_end ? __ldg(hay + e) : 0)  // inside the row's capacity
                      : (probe && pe < probe_cap ? __ldg(prompt_row + pe) : 0);
  }
  unsigned long long key_prompt = 0, key_own = 0;
  if (!kFused && in_grid && !first) {
    key_prompt = __shfl_sync(kFull, lane == 0 ? __ldcg(keys + key_index<kFused>(row, 0)) : 0ull, 0);
    key_own = __shfl_sync(kFull, lane == 0 ? __ldcg(my_key) : 0ull, 0);
  }

  const int64_t len = gen ? ri.step : ri.plen;  // generated haystack excludes pre_ids[step]
  const int64_t end = cap_end < len - 1 ? cap_end : len - 1;  // e <= len - 2
  if (!(in_grid && ri.searchable && ri.n_hi >= p.min_ngram_size && begin < end)) return;
  const int64_t* pattern = p.pre_ids + row * p.s_pre + ri.step;  // pattern[-k], k < n_hi
  const uint32_t n_hi = static_cast<uint32_t>(ri.n_hi);
  // Is everything from `from` on settled by what other units already found?
  auto settled = [&](unsigned long long kp, unsigned long long ko, int64_t from) {
    if (gen && match_len(kp) == n_hi) return true;  // the prompt wins ties
    return match_len(ko) == n_hi && int64_t(match_end(ko)) < from;
  };
  if (!kFused && !first && settled(key_prompt, key_own, begin)) return;  // warp-uniform: nothing loaded
  const int64_t last = __ldg(pattern);
  if (probe) {
    // A prompt window of full length ending at e* < kWarpTile <= begin beats everything in this
    // segment (prompt units: same L, further right; generated units: the prompt wins ties).
    const int64_t pend = ri.plen - 1 < probe_cap ? ri.plen - 1 : probe_cap;  // e <= plen - 2
    bool full = false;
#pragma unroll
    for (int i = 0; i < kItemsPerThread; ++i) {
      const int64_t e = i * 32 + lane;
      if (e < pend && v[i] == last) full |= suffix_len(prompt_row, e, pattern, n_hi) == n_hi;
    }
    if (__any_sync(kFull, full)) return;  // the row's first unit records that window
  }
  unsigned long long best = 0;  // this lane's best key
  for (int64_t t0 = begin; t0 < end; t0 += kWarpTile) {
    if (t0 != begin || !load_first) {
      // Coalesced: item i of lane l is position t0 + i * 32 + l; all loads in flight before
      // the first compare.
#pragma unroll
      for (int i = 0; i < kItemsPerThread; ++i) {
        const int64_t e = t0 + i * 32 + lane;
        v[i] = e < end ? __ldg(hay + e) : 0;
      }
    }
    // The cross-unit keys for the check at the end of this tile are read now, so that their
    // L2 round trip overlaps the tile's loads instead of following them.
    const int64_t next = t0 + kWarpTile;
    unsigned long long kp = 0, ko = 0;
    if (!kFused && lane == 0 && next < end) {
      kp = __ldcg(keys + key_index<kFused>(row, 0));
      ko = __ldcg(my_key);
    }
#pragma unroll
    for (int i = 0; i < kItemsPerThread; ++i) {
      const int64_t e = t0 + i * 32 + lane;
      if (e < end && v[i] == last) {
        // Rare path: extend the common suffix backwards (L(e) <= e + 1, capped at n_hi).
        const uint32_t l = suffix_len(hay, e, pattern, n_hi);
        const unsigned long long key = pack_match(l, static_cast<uint32_t>(e));
        if (l >= p.min_ngram_size && key > best) best = key;
      }
    }
    // Stop after this tile if any lane found a full-length window (nothing further right can
    // beat it), or if another unit settled this haystack before the next tile.
    const bool give_up = !kFused && lane == 0 && next < end && settled(kp, ko, next);
    if (__any_sync(kFull, match_len(best) == n_hi || give_up)) break;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long w = __shfl_xor_sync(kFull, best, o);
    best = w > best ? w : best;
  }
  if (lane == 0 && best != 0) {
    if (kFused || !kSlotCas) {
      // (Below sm_90 there is no 128-bit CAS: the key alone, the token word stays 0, and the
      // finaliser reads the continuation from the haystack, as the fused path does.)
      atomicMax(my_key, best);
    } else {
      // The slot {key, first continuation tokens}: a 128-bit compare-and-swap loop that keeps the
      // larger key (keys only grow; an equal key is the same window, so the same tokens).
      const int64_t e = match_end(best);
      unsigned long long tok = 0;
#pragma unroll
      for (int j = 0; j < kSlotTokens; ++j) {
        if (e + 1 + j < len) tok |= pack_token(__ldg(hay + e + 1 + j), j);  // L1: this tile
      }
      unsigned long long k = 0, t = 0, ok, ot;
      while (true) {
        cas128(my_key, k, t, best, tok, ok, ot);
        if ((ok == k && ot == t) || ok >= best) break;
        k = ok;
        t = ot;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Phase 2: the threshold pass over one tile of rows, copies, padding, workspace reset.
// ---------------------------------------------------------------------------------------------

// Sums over a range of rows, the look-back's value: S = sum of c, E = number of eligible rows.
struct Range {
  int64_t s, e;
};

// One row as the threshold pass sees it (after the search).
struct RowState {
  int32_t ori, um, end;
  bool eligible, in_gen;
  unsigned long long tok;  // the winner's slot tokens (main kernel), 0 if none
};

template <bool kFused = false>
__device__ __forceinline__ RowState row_state(const NgramParams& p, int64_t r, const RowInfo& ri,
                                              const unsigned long long* keys) {
  RowState d{static_cast<int32_t>(ri.ori), 0, 0, ri.eligible, false, 0ull};
  if (ri.searchable && ri.n_hi >= p.min_ngram_size) {
    // Global slots were written with atomics (resolved in L2): read them past L1, keys and
    // tokens in one round trip.
    const unsigned long long* slot_p = keys + key_index<kFused>(r, 0);
    const unsigned long long* slot_g = keys + key_index<kFused>(r, 1);
    const unsigned long long kp = kFused ? *slot_p : __ldcg(slot_p);
    const unsigned long long kg = kFused ? *slot_g : __ldcg(slot_g);
    // Token words: only the main kernel's slots have them, and only the 128-bit CAS writes them.
    constexpr bool kTokens = !kFused && kSlotCas;
    const unsigned long long tp = kTokens ? __ldcg(slot_p + 1) : 0ull;
    const unsigned long long tg = kTokens ? __ldcg(slot_g + 1) : 0ull;
    const int64_t lp = match_len(kp), lg = match_len(kg);
    int64_t avail = 0;
    if (lp >= p.min_ngram_size && lp >= lg) {  // larger n first; prompt first within n
      d.end = static_cast<int32_t>(match_end(kp));
      avail = ri.plen - d.end - 1;
      d.tok = tp;
    } else if (lg >= p.min_ngram_size) {
      d.end = static_cast<int32_t>(match_end(kg));
      avail = ri.step - d.end - 1;
      d.in_gen = true;
      d.tok = tg;
    }
    d.um = static_cast<int32_t>(avail < ri.budget ? avail : ri.budget);  // <= K < 2^31
    if (d.um > 0 && !in_slot(d.tok, d.um)) {
      // The copy happens after the scans; pull its source line into L1 now, so the copy
      // costs an L1 hit instead of another DRAM round trip.
      const int64_t* src = d.in_gen ? p.pre_ids + r * p.s_pre + d.end + 1
                                    : p.token_ids_all + r * p.s_all + d.end + 1;
      asm volatile("prefetch.global.L1 [%0];" ::"l"(src));
    }
  }
  if (p.pad_to_max && ri.ori > 0 && ri.ori <= p.max_draft_tokens) {  // may need row[ori-1]
    asm volatile("prefetch.global.L1 [%0];" ::"l"(p.draft_tokens + r * p.width + ri.ori - 1));
  }
  return d;
}

// Row r's threshold rule, copy and pad_to_max (Pass B), given T_b (`total`) and u_b (`unproc`).
__device__ __forceinline__ void finish_row(const NgramParams& p, int64_t r, const RowState& d,
                                           int64_t total, int64_t unproc) {
  const int64_t thr = p.threshold;
  const bool affected = d.eligible && (total + unproc >= thr - 1 || total + unproc + d.um > thr);
  int64_t len = d.ori, m = d.um;
  if (affected) {
    const int64_t budget = row_budget(p.max_draft_tokens, d.ori, p.max_dec_len[r], p.step_idx[r]);
    m = tokens_after_threshold(budget, total, unproc, thr, d.um);
  }
  int64_t* row = p.draft_tokens + r * p.width;
  int64_t last = 0;
  if (d.eligible && m > 0) {  // um > 0 implies a searchable row with a match
    if (in_slot(d.tok, m)) {  // m <= um: the tokens came with the key, no haystack read
      for (int j = 0; j < m; ++j) row[d.ori + j] = last = slot_token(d.tok, j);
    } else {
      const int64_t* src = d.in_gen ? p.pre_ids + r * p.s_pre + d.end + 1
                                    : p.token_ids_all + r * p.s_all + d.end + 1;
      last = copy_tokens(row + d.ori, src, m);
    }
    len += m;
    p.seq_lens_this_time[r] = static_cast<int32_t>(len);
  }
  if (p.pad_to_max && len > 0 && len < p.max_draft_tokens + 1) {  // SPEC §1.4
    if (m == 0) last = row[len - 1];
    for (int64_t j = len; j <= p.max_draft_tokens; ++j) row[j] = last;
    p.seq_lens_this_time[r] = static_cast<int32_t>(p.max_draft_tokens + 1);
  }
}

__device__ void finalise_tile(const NgramParams& p) {
  __shared__ int64_t smem[2 * kWarps];
  __shared__ int64_t shared_tile;
  __shared__ Range shared_prefix;  // sums over the tiles before this one
  __shared__ bool shared_last;
  const int64_t B = p.batch;
  const int tid = threadIdx.x, lane = tid & 31;

  // Tile order is ticket order, so every tile a look-back waits for has started.
  if (p.final_tiles > 1) {  // uniform
    if (tid == 0) shared_tile = atomicAdd(p.final_ticket, 1u);
    __syncthreads();
  }
  const int64_t tile = p.final_tiles > 1 ? shared_tile : 0;
  const int64_t per = p.final_rows_per_thread;
  const int64_t base = tile * per * BLOCK;
  long long* rec = p.records + 8 * tile;

  // The row scalars of the first sub-tile do not depend on the search: load them while it runs.
  const int64_t r0 = base + tid;
  const RowInfo ri0 = row_info(p, r0 < B ? r0 : B - 1);
  // One tile (B <= 256, one row per thread): U0 is this block's count, taken with one barrier
  // while the search runs (the search does not count it then: search_counts_u0).
  const bool single = !search_counts_u0(p);
  int64_t U0 = 0;
  if (single) U0 = __syncthreads_count(r0 < B && p.seq_lens_decoder[r0] > 0);

  // Wait for every search block (they never wait for anything, so they all finish).
  if (tid == 0) {
    while (load_acquire(p.search_done) < static_cast<unsigned>(p.search_blocks)) __nanosleep(32);
  }
  __syncthreads();
  // The search's U0 (several tiles) is read together with the keys: one L2 round trip.
  if (!single) U0 = static_cast<int64_t>(__ldcg(p.active));
  RowState d0{0, 0, 0, false, false, 0ull};
  if (r0 < B) d0 = row_state(p, r0, ri0, p.keys);

  auto state_of = [&](int64_t k, int64_t r) {
    return k == 0 ? d0 : row_state(p, r, row_info(p, r), p.keys);
  };

  Range prefix{0, 0};       // sums over all rows before this tile
  Range pre0{0, 0}, sub0{0, 0};  // Pass A's scan of the first sub-tile, reused by Pass B
  const bool have0 = p.final_tiles > 1;
  if (p.final_tiles > 1) {  // uniform
    // Pass A: this tile's sums, published for the tiles after it.
    Range mine{0, 0};
#pragma unroll 1
    for (int64_t k = 0; k < per && base + k * BLOCK < B; ++k) {
      const int64_t r = base + k * BLOCK + tid;
      RowState d{0, 0, 0, false, false};
      if (r < B) d = state_of(k, r);
      int64_t pre_c, pre_e, sub_c, sub_e;
      block_exclusive_scan2(int64_t(d.ori) + d.um, d.eligible, pre_c, pre_e, sub_c, sub_e, smem);
      if (k == 0) {
        pre0 = Range{pre_c, pre_e};
        sub0 = Range{sub_c, sub_e};
      }
      mine.s += sub_c;
      mine.e += sub_e;
    }
    if (tid == 0 && tile > 0) {
      rec[1] = mine.s;
      rec[2] = mine.e;
      store_release(rec, 1);  // aggregate available
    }
    // Decoupled look-back by warp 0: lane i reads tile `hi - i`, newest first, and the warp
    // stops at the nearest tile whose inclusive prefix is known.
    if (tid < 32 && tile > 0) {
      Range acc{0, 0};
      for (int64_t hi = tile - 1;; hi -= 32) {
        const int64_t idx = hi - lane;
        long long status = 2;  // before tile 0: the empty prefix, inclusive
        Range v{0, 0};
        if (idx >= 0) {
          const long long* q = p.records + 8 * idx;
          while ((status = load_acquire(q)) == 0) __nanosleep(32);
          const int off = status == 2 ? 3 : 1;
          v = Range{__ldcg(q + off), __ldcg(q + off + 1)};
        }
        const unsigned inclusive = __ballot_sync(kFull, status == 2);
        const int stop = inclusive ? __ffs(inclusive) - 1 : 31;
        if (lane > stop) v = Range{0, 0};  // older than the nearest inclusive prefix
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
          v.s += __shfl_xor_sync(kFull, v.s, o);
          v.e += __shfl_xor_sync(kFull, v.e, o);
        }
        acc.s += v.s;
        acc.e += v.e;
        if (inclusive) break;
      }
      if (lane == 0) shared_prefix = acc;
    }
    if (tid == 0 && tile == 0) shared_prefix = Range{0, 0};
    __syncthreads();
    prefix = shared_prefix;
    if (tid == 0) {
      rec[3] = prefix.s + mine.s;
      rec[4] = prefix.e + mine.e;
      store_release(rec, 2);  // inclusive prefix available
    }
  }

  // Pass B: the rows, with T_b and u_b from the prefix sums ("Threshold across tiles" above:
  // every affected row gets the exact rule with these uncut totals, which gives 0 after b*).
  int64_t carry_c = prefix.s, carry_e = prefix.e;
#pragma unroll 1
  for (int64_t k = 0; k < per && base + k * BLOCK < B; ++k) {
    const int64_t r = base + k * BLOCK + tid;
    RowState d{0, 0, 0, false, false};
    if (r < B) d = state_of(k, r);
    int64_t pre_c = pre0.s, pre_e = pre0.e, sub_c = sub0.s, sub_e = sub0.e;
    if (k != 0 || !have0) {  // uniform
      block_exclusive_scan2(int64_t(d.ori) + d.um, d.eligible, pre_c, pre_e, sub_c, sub_e, smem);
    }
    const int64_t total = carry_c + pre_c + d.ori;
    const int64_t unproc = U0 - (carry_e + pre_e + d.eligible);
    if (r < B) {
      finish_row(p, r, d, total, unproc);
      // The workspace zero for the next call (token words: only the 128-bit CAS writes them).
      for (int h = 0; h < 2; ++h) {
        for (int w = 0; w < (kSlotCas ? 2 : 1); ++w) p.keys[key_index<false>(r, h) + w] = 0ull;
      }
    }
    carry_c += sub_c;
    carry_e += sub_e;
  }

  // One tile: it is the only finaliser and used no ticket, record or U0 counter; the kernel's end
  // orders this reset before the next call. No fence and no atomic on the way out.
  if (single) {
    if (tid == 0) *p.search_done = 0u;  // only thread 0 read it
    return;
  }
  // The last finaliser resets the counters and the look-back records (every other finaliser
  // has finished reading them).
  __syncthreads();
  if (tid == 0) {
    __threadfence();
    shared_last = atomicAdd(p.final_done, 1u) == static_cast<unsigned>(p.final_tiles - 1);
  }
  __syncthreads();
  if (!shared_last) return;
  for (int64_t t = tid; t < 8 * p.final_tiles; t += BLOCK) p.records[t] = 0;
  if (tid == 0) {
    *p.search_done = 0u;
    *p.active = 0ull;
    *p.final_ticket = 0u;
    *p.final_done = 0u;
  }
}

// ---------------------------------------------------------------------------------------------
// Fused kernel (grids of at most kFusedMaxUnits units): ONE block of one warp per unit searches
// with its keys in shared memory, then warp 0 finalises every row (B <= kFusedMaxUnits: lane r
// owns row r). One barrier replaces the global atomics, the fence, the search-done counter, the
// finaliser's poll and its key reads (five dependent round trips through L2), and the copy's
// source is in this SM's L1 (the search just loaded it).
// ---------------------------------------------------------------------------------------------
__device__ void finalise_warp(const NgramParams& p, const unsigned long long* keys, int32_t dec) {
  const int lane = threadIdx.x & 31;
  const bool live = lane < p.batch;
  const int64_t r = live ? lane : 0;
  const int64_t U0 = __popc(__ballot_sync(kFull, live && dec > 0));
  RowState d{0, 0, 0, false, false};
  if (live) d = row_state<true>(p, r, row_info(p, r), keys);  // scalars: L1 hits
  // Inclusive scans of c = ori + um and of eligible over the lanes (rows, in order).
  const int64_t c = int64_t(d.ori) + d.um, e = d.eligible;
  int64_t ic = c, ie = e;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int64_t nc = __shfl_up_sync(kFull, ic, o), ne = __shfl_up_sync(kFull, ie, o);
    if (lane >= o) {
      ic += nc;
      ie += ne;
    }
  }
  if (live) finish_row(p, r, d, ic - c + d.ori, U0 - ie);  // T_b, u_b as in finalise_tile
}

__global__ void __launch_bounds__(32 * kFusedMaxUnits, 1)  // <= 64 registers, as the main kernel
    hybrid_mtp_ngram_fused_kernel(const NgramParams p) {
  __shared__ unsigned long long keys[2 * kFusedMaxUnits];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  // U0's inputs, loaded now and used after the search (their latency hides behind it).
  const int32_t dec = lane < p.batch ? p.seq_lens_decoder[lane] : 0;
  if (threadIdx.x < 2 * p.batch) keys[threadIdx.x] = 0ull;
  __syncthreads();
  search_unit<true>(p, warp, nullptr, keys);
  __syncthreads();
  if (warp == 0) finalise_warp(p, keys, dec);
}

// ---------------------------------------------------------------------------------------------
// The kernel: blocks [0, search_blocks) search (8 units each), the rest finalise.
// ---------------------------------------------------------------------------------------------
__global__ void __launch_bounds__(BLOCK, 1024 / BLOCK)  // <= 64 registers: 32 warps per SM
    hybrid_mtp_ngram_kernel(const NgramParams p) {
  if (blockIdx.x >= p.search_blocks) {
    finalise_tile(p);
    return;
  }
  __shared__ unsigned active[kWarps];
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) active[warp] = 0;
  search_unit<false>(p, int64_t(blockIdx.x) * kWarps + warp, &active[warp], p.keys);
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned n = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) n += active[w];
    if (n) atomicAdd(p.active, static_cast<unsigned long long>(n));
    __threadfence();  // keys and U0 before the count that releases the finalisers
    atomicAdd(p.search_done, 1u);
  }
}

}  // namespace

cudaError_t launch_hybrid_mtp_ngram(const NgramParams& p, cudaStream_t stream) {
  if (p.num_units <= kFusedMaxUnits) {  // then B <= kFusedMaxUnits too (a unit per row at least)
    const unsigned threads = static_cast<unsigned>(32 * p.num_units);
    hybrid_mtp_ngram_fused_kernel<<<1, threads, 0, stream>>>(p);
  } else {
    const unsigned grid = static_cast<unsigned>(p.search_blocks + p.final_tiles);
    hybrid_mtp_ngram_kernel<<<grid, BLOCK, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace specgate
