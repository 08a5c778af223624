// specgate::hybrid_mtp_ngram: the op schema and its CPU kernel (SPEC §1).
//
// The CPU kernel has two phases:
//   1. search (parallel over rows): for every eligible row, find the winning match. The match
//      (which n, which haystack, which position) does not depend on the budget; the budget only
//      decides how many of the following tokens are copied. So it can be found before the
//      sequential pass and in any order.
//   2. the sequential pass of SPEC §1.3, literally, with final counts, using the matches.
// This file also defines the schema with TORCH_LIBRARY; the CUDA kernel is a separate library
// that only adds a TORCH_LIBRARY_IMPL for CUDA, so CPU-only machines never need nvcc.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "ngram_checks.h"
#include "ngram_common.h"

namespace specgate {
namespace {

// Leftmost longest match of the ngram tail in one haystack, in one pass over it.
// pattern[k] = pre_ids[b, step - k], k < n_hi. For each window end e (e <= len - 2, so that one
// token follows the window), L(e) = length of the common suffix of hay[..e] and the ngram, capped
// at n_hi. A window of size n ending at e matches iff L(e) >= n, so the leftmost window for a
// given n is the smallest e with L(e) >= n, and the best (n, e) over all n is the max of
// pack_match(L(e), e). Returns that key (0 when hay is too short).
uint64_t best_match(const int64_t* hay, int64_t len, const int64_t* pattern_end, int64_t n_hi) {
  uint64_t best = 0;
  uint32_t best_len = 0;
  const int64_t last = pattern_end[0];
  for (int64_t e = 0; e + 1 < len; ++e) {
    if (hay[e] != last) continue;
    int64_t l = 1;
    while (l < n_hi && l <= e && hay[e - l] == pattern_end[-l]) ++l;
    if (static_cast<uint32_t>(l) > best_len) {  // strictly longer: keeps the leftmost e
      best_len = static_cast<uint32_t>(l);
      best = pack_match(best_len, static_cast<uint32_t>(e));
      if (l == n_hi) break;  // nothing to the right can be longer or further left
    }
  }
  return best;
}

struct RowMatch {
  const int64_t* src = nullptr;  // first continuation token
  int64_t avail = 0;             // tokens available after the window (0 = no match)
};

void check_values(const Shapes& s, const int64_t* prompt_lens, const int64_t* step_idx,
                  const int32_t* seq_lens) {
  for (int64_t b = 0; b < s.batch; ++b) {
    const int64_t len = seq_lens[b];
    TORCH_CHECK_VALUE(0 <= len && len <= s.draft_width, "seq_lens_this_time[", b, "] = ", len,
                      ": must be in [0, ", s.draft_width, "] (the width of draft_tokens)");
    if (len == 0) continue;
    TORCH_CHECK_VALUE(0 <= prompt_lens[b] && prompt_lens[b] <= s.prompt_capacity, "prompt_lens[",
                      b, "] = ", prompt_lens[b], ": must be in [0, ", s.prompt_capacity,
                      "] (the width of token_ids_all)");
    TORCH_CHECK_VALUE(0 <= step_idx[b] && step_idx[b] < s.generated_capacity, "step_idx[", b,
                      "] = ", step_idx[b], ": must be in [0, ", s.generated_capacity,
                      ") (the width of pre_ids) for an active row");
  }
}

void hybrid_mtp_ngram_cpu(const at::Tensor& token_ids_all, const at::Tensor& prompt_lens,
                          const at::Tensor& pre_ids, const at::Tensor& step_idx,
                          const at::Tensor& draft_token_num, at::Tensor& draft_tokens,
                          at::Tensor& seq_lens_this_time, const at::Tensor& seq_lens_decoder,
                          const at::Tensor& max_dec_len, int64_t max_ngram_size,
                          int64_t min_ngram_size, int64_t max_draft_tokens, int64_t threshold,
                          bool pad_to_max) {
  const Shapes s = check_structure(token_ids_all, prompt_lens, pre_ids, step_idx,
                                   draft_token_num, draft_tokens, seq_lens_this_time,
                                   seq_lens_decoder, max_dec_len, max_ngram_size, min_ngram_size,
                                   max_draft_tokens);
  const int64_t B = s.batch;
  if (B == 0) return;
  // Read-only inputs: contiguous views (no copy when already dense).
  const at::Tensor tok = token_ids_all.contiguous();
  const at::Tensor pre = pre_ids.contiguous();
  const at::Tensor plen_t = prompt_lens.contiguous();
  const at::Tensor step_t = step_idx.contiguous();
  const at::Tensor dec_t = seq_lens_decoder.contiguous();
  const at::Tensor mdl_t = max_dec_len.contiguous();
  const int64_t* plen = plen_t.const_data_ptr<int64_t>();
  const int64_t* step = step_t.const_data_ptr<int64_t>();
  const int32_t* dec = dec_t.const_data_ptr<int32_t>();
  const int64_t* mdl = mdl_t.const_data_ptr<int64_t>();
  int32_t* lens = seq_lens_this_time.mutable_data_ptr<int32_t>();
  int64_t* draft = draft_tokens.mutable_data_ptr<int64_t>();

  check_values(s, plen, step, lens);  // SPEC §1.5: before any work

  // Phase 1: the match of every eligible row (ori > 0, budget > 0), rows in parallel.
  std::vector<RowMatch> match(B);
  const int64_t* tok_base = tok.const_data_ptr<int64_t>();
  const int64_t* pre_base = pre.const_data_ptr<int64_t>();
  const int64_t S_all = s.prompt_capacity, S_pre = s.generated_capacity;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, S_all + S_pre));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t ori = lens[b];
      if (ori == 0 || row_budget(max_draft_tokens, ori, mdl[b], step[b]) <= 0) continue;
      const int64_t st = step[b];
      const int64_t n_hi = std::min(max_ngram_size, st);  // n > step_idx is skipped
      if (n_hi < min_ngram_size) continue;
      const int64_t* gen = pre_base + b * S_pre;
      const int64_t* prompt = tok_base + b * S_all;
      const int64_t* pattern_end = gen + st;
      const uint64_t kp = best_match(prompt, plen[b], pattern_end, n_hi);
      // The generated haystack is pre_ids[b, :step] (without the ngram's own last token).
      const uint64_t kg = match_len(kp) == static_cast<uint32_t>(n_hi)
                              ? 0  // the prompt wins every tie, and nothing is longer
                              : best_match(gen, st, pattern_end, n_hi);
      const uint32_t lp = match_len(kp), lg = match_len(kg);
      const int64_t min_n = min_ngram_size;
      if (lp >= min_n && lp >= lg) {  // larger n first; within one n, the prompt first
        match[b] = {prompt + match_end(kp) + 1, plen[b] - match_end(kp) - 1};
      } else if (lg >= min_n) {
        match[b] = {gen + match_end(kg) + 1, st - match_end(kg) - 1};
      }
    }
  });

  // Phase 2: SPEC §1.3 verbatim, rows in order, totals from final counts.
  int64_t unprocessed = 0;
  for (int64_t b = 0; b < B; ++b) unprocessed += dec[b] > 0;
  const int64_t thr = clamp_threshold(threshold);
  int64_t final_before = 0;  // sum of final seq_lens_this_time of rows < b
  for (int64_t b = 0; b < B; ++b) {
    const int64_t ori = lens[b];
    const int64_t budget = row_budget(max_draft_tokens, ori, mdl[b], step[b]);
    if (ori != 0 && budget > 0) {
      --unprocessed;
      const int64_t m = tokens_after_threshold(budget, final_before + ori, unprocessed, thr,
                                               match[b].avail);
      int64_t* out = draft + b * s.draft_width + ori;
      for (int64_t j = 0; j < m; ++j) out[j] = match[b].src[j];
      lens[b] = static_cast<int32_t>(ori + m);
    }
    final_before += lens[b];
  }

  if (pad_to_max) {  // SPEC §1.4
    const int64_t full = max_draft_tokens + 1;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t len = lens[b];
      if (len <= 0 || len >= full) continue;
      int64_t* row = draft + b * s.draft_width;
      for (int64_t j = len; j < full; ++j) row[j] = row[len - 1];
      lens[b] = static_cast<int32_t>(full);
    }
  }
}

}  // namespace
}  // namespace specgate

TORCH_LIBRARY(specgate, m) {
  m.def(
      "hybrid_mtp_ngram(Tensor token_ids_all, Tensor prompt_lens, Tensor pre_ids, "
      "Tensor step_idx, Tensor draft_token_num, Tensor(a!) draft_tokens, "
      "Tensor(b!) seq_lens_this_time, Tensor seq_lens_decoder, Tensor max_dec_len, "
      "int max_ngram_size, int min_ngram_size, int max_draft_tokens, int threshold=1024, "
      "bool pad_to_max=False) -> ()");
}

TORCH_LIBRARY_IMPL(specgate, CPU, m) {
  m.impl("hybrid_mtp_ngram", &specgate::hybrid_mtp_ngram_cpu);
}
