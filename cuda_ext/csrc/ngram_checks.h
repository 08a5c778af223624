// Structural argument checks of SPEC §1.5, shared by the CPU and CUDA registrations.
//
// These read only shapes, dtypes and devices (never tensor data), so the CUDA path can run them
// without a host synchronisation. Every message names the argument and the offending value.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

namespace specgate {

struct Shapes {
  int64_t batch;
  int64_t prompt_capacity;     // S_all
  int64_t generated_capacity;  // S_pre
  int64_t draft_width;         // W
};

inline void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype,
                         bool allow_b1, int64_t rank, const at::Tensor& first, int64_t batch) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ",
                   t.scalar_type());
  if (allow_b1) {
    TORCH_CHECK_VALUE(t.dim() == 1 || (t.dim() == 2 && t.size(1) == 1), name,
                      ": expected shape [B] or [B, 1], got ", t.sizes());
  } else {
    TORCH_CHECK_VALUE(t.dim() == rank, name, ": expected rank ", rank, ", got shape ", t.sizes());
  }
  TORCH_CHECK_VALUE(t.size(0) == batch, name, ": batch size ", t.size(0),
                    " disagrees with token_ids_all's ", batch);
  TORCH_CHECK_VALUE(t.device() == first.device(), name, ": on ", t.device(),
                    ", but token_ids_all is on ", first.device());
}

inline Shapes check_structure(const at::Tensor& token_ids_all, const at::Tensor& prompt_lens,
                              const at::Tensor& pre_ids, const at::Tensor& step_idx,
                              const at::Tensor& draft_token_num, const at::Tensor& draft_tokens,
                              const at::Tensor& seq_lens_this_time,
                              const at::Tensor& seq_lens_decoder, const at::Tensor& max_dec_len,
                              int64_t max_ngram_size, int64_t min_ngram_size,
                              int64_t max_draft_tokens) {
  TORCH_CHECK_TYPE(token_ids_all.scalar_type() == at::kLong,
                   "token_ids_all: expected dtype Long, got ", token_ids_all.scalar_type());
  TORCH_CHECK_VALUE(token_ids_all.dim() == 2, "token_ids_all: expected rank 2, got shape ",
                    token_ids_all.sizes());
  const int64_t batch = token_ids_all.size(0);
  const auto& t0 = token_ids_all;
  check_tensor(prompt_lens, "prompt_lens", at::kLong, true, 1, t0, batch);
  check_tensor(pre_ids, "pre_ids", at::kLong, false, 2, t0, batch);
  check_tensor(step_idx, "step_idx", at::kLong, true, 1, t0, batch);
  check_tensor(draft_token_num, "draft_token_num", at::kInt, false, 1, t0, batch);
  check_tensor(draft_tokens, "draft_tokens", at::kLong, false, 2, t0, batch);
  check_tensor(seq_lens_this_time, "seq_lens_this_time", at::kInt, false, 1, t0, batch);
  check_tensor(seq_lens_decoder, "seq_lens_decoder", at::kInt, false, 1, t0, batch);
  check_tensor(max_dec_len, "max_dec_len", at::kLong, true, 1, t0, batch);

  TORCH_CHECK_VALUE(min_ngram_size >= 1, "min_ngram_size: must be >= 1, got ", min_ngram_size);
  TORCH_CHECK_VALUE(max_ngram_size >= min_ngram_size,
                    "max_ngram_size: must be >= min_ngram_size (", min_ngram_size, "), got ",
                    max_ngram_size);
  TORCH_CHECK_VALUE(max_draft_tokens >= 1, "max_draft_tokens: must be >= 1, got ",
                    max_draft_tokens);
  const int64_t width = draft_tokens.size(1);
  TORCH_CHECK_VALUE(width - 1 >= max_draft_tokens, "draft_tokens: width ", width,
                    " is narrower than max_draft_tokens + 1 = ", max_draft_tokens + 1);
  // Positions are packed into 32 bits (ngram_common.h): keep every width below 2^31.
  constexpr int64_t kMaxWidth = std::numeric_limits<int32_t>::max();
  TORCH_CHECK_VALUE(token_ids_all.size(1) < kMaxWidth, "token_ids_all: width ",
                    token_ids_all.size(1), " must be < 2^31");
  TORCH_CHECK_VALUE(pre_ids.size(1) < kMaxWidth, "pre_ids: width ", pre_ids.size(1),
                    " must be < 2^31");
  TORCH_CHECK_VALUE(width < kMaxWidth, "draft_tokens: width ", width, " must be < 2^31");
  // The outputs are written in place through raw pointers, so they must be dense.
  TORCH_CHECK_VALUE(draft_tokens.is_contiguous(), "draft_tokens: must be contiguous (written in place)");
  TORCH_CHECK_VALUE(seq_lens_this_time.is_contiguous(),
                    "seq_lens_this_time: must be contiguous (written in place)");
  return Shapes{batch, token_ids_all.size(1), pre_ids.size(1), width};
}

}  // namespace specgate
