// Structural argument checks of SPEC §1.5, shared by the CPU and CUDA registrations.
//
// These read only shapes, strides, dtypes, devices and data pointers (never tensor data), so the
// CUDA path can run them without a host synchronisation, also under CUDA-graph capture. Every
// message names the argument and the offending value.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>

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

// [first byte, one past the last byte) of the memory t addresses: its data pointer plus the
// farthest element its sizes and strides reach (torch strides are never negative).
inline std::pair<uintptr_t, uintptr_t> byte_span(const at::Tensor& t) {
  if (t.numel() == 0) return {0, 0};
  const auto start = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  int64_t farthest = 0;
  for (int64_t d = 0; d < t.dim(); ++d) farthest += (t.size(d) - 1) * t.stride(d);
  return {start, start + static_cast<uintptr_t>(farthest + 1) * t.element_size()};
}

struct NamedTensor {
  const char* name;
  const at::Tensor* tensor;
  bool is_output;
};

// SPEC §1.5: an output (draft_tokens, seq_lens_this_time) must not share memory with any other
// argument. Memory, not identity: views and slices of one buffer overlap when their byte spans
// intersect, whatever their data pointers. Same rule as refimpl.validate.check_no_overlap.
template <size_t N>
inline void check_no_overlap(const NamedTensor (&args)[N]) {
  for (size_t i = 0; i < N; ++i) {
    if (!args[i].is_output) continue;
    const auto a = byte_span(*args[i].tensor);
    for (size_t j = 0; j < N; ++j) {
      if (j == i || (args[j].is_output && j < i)) continue;  // the output pair is checked once
      const auto b = byte_span(*args[j].tensor);
      TORCH_CHECK_VALUE(!(a.first < b.second && b.first < a.second), args[i].name, " and ",
                        args[j].name,
                        " share memory: the outputs (draft_tokens, seq_lens_this_time) are "
                        "written in place and must not overlap any other argument");
    }
  }
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
  const NamedTensor args[] = {
      {"token_ids_all", &token_ids_all, false},  {"prompt_lens", &prompt_lens, false},
      {"pre_ids", &pre_ids, false},              {"step_idx", &step_idx, false},
      {"draft_token_num", &draft_token_num, false}, {"draft_tokens", &draft_tokens, true},
      {"seq_lens_this_time", &seq_lens_this_time, true},
      {"seq_lens_decoder", &seq_lens_decoder, false}, {"max_dec_len", &max_dec_len, false},
  };
  check_no_overlap(args);
  return Shapes{batch, token_ids_all.size(1), pre_ids.size(1), width};
}

}  // namespace specgate
