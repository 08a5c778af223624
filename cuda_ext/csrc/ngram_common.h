// Row arithmetic shared by the CPU and CUDA kernels of specgate::hybrid_mtp_ngram (SPEC §1.3).
//
// Everything here is plain integer code usable on host and device. It is kept in one place so
// that both kernels compute the budget and the match encoding identically.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SG_HD __host__ __device__ __forceinline__
#else
#define SG_HD inline
#endif

namespace specgate {

// Row budget before the threshold: min(K - ori + 1, max_dec_len - step_idx - 1), SPEC §1.3.
//
// K < W < 2^31 and |ori| < 2^31 (checked on the host), so the first term fits int64. The second
// can overflow int64 for extreme inputs (max_dec_len = INT64_MAX, step_idx = -1), so it is done
// in 128 bits. Only two facts about the budget are ever used: whether it is <= 0, and its value
// when it is positive and at most the first term. So a result clamped to [0, K - ori + 1] is
// exact for every use.
SG_HD int64_t row_budget(int64_t max_draft_tokens, int64_t ori, int64_t max_dec_len,
                         int64_t step_idx) {
  const int64_t by_draft = max_draft_tokens - ori + 1;
  const __int128 by_len = static_cast<__int128>(max_dec_len) - step_idx - 1;
  const __int128 budget = by_len < by_draft ? by_len : static_cast<__int128>(by_draft);
  return budget <= 0 ? 0 : static_cast<int64_t>(budget);
}

// The threshold is an arbitrary int64 from Python. Totals and active counts are bounded by
// B * W + B < 2^62 for any batch that fits in memory, so clamping the threshold to
// [-2^62, 2^62] changes no comparison and makes `threshold - total - unprocessed` overflow-free.
SG_HD int64_t clamp_threshold(int64_t threshold) {
  const int64_t lim = int64_t(1) << 62;
  return threshold > lim ? lim : (threshold < -lim ? -lim : threshold);
}

// Apply the threshold rule of SPEC §1.3 to one eligible row.
//   total       = final counts of rows < b, plus ori of row b
//   unprocessed = the active count after row b's decrement
// Returns the number of n-gram tokens the row may take (0 = none), given `avail` tokens of
// continuation (0 when no match was found).
SG_HD int64_t tokens_after_threshold(int64_t budget, int64_t total, int64_t unprocessed,
                                     int64_t threshold, int64_t avail) {
  if (total + budget + unprocessed > threshold) {
    const int64_t room = threshold - total - unprocessed;
    budget = budget < room ? budget : room;
  }
  if (total + unprocessed >= threshold - 1) return 0;
  return avail < budget ? avail : budget;
}

// The search result of one haystack, packed in 64 bits so that an unsigned max over all window
// end positions picks "longest common suffix first, then leftmost":
//   bits 63..32: L = length of the common suffix of H[..e] and the ngram, capped at n_hi
//   bits 31..0 : ~e, so that among equal L the smaller e has the larger key
// Haystack widths are checked < 2^31 on the host. Key 0 means "nothing recorded".
SG_HD uint64_t pack_match(uint32_t suffix_len, uint32_t end_pos) {
  return (static_cast<uint64_t>(suffix_len) << 32) | static_cast<uint32_t>(~end_pos);
}
SG_HD uint32_t match_len(uint64_t key) { return static_cast<uint32_t>(key >> 32); }
SG_HD uint32_t match_end(uint64_t key) { return ~static_cast<uint32_t>(key); }

}  // namespace specgate
