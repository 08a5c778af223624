// Interface between the torch binding (ngram_cuda.cpp) and the CUDA kernel (ngram_cuda_kernel.cu).
// The kernel file sees only raw pointers, so it compiles without torch headers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace specgate {

constexpr int kItemsPerThread = 8;  // haystack tokens each thread loads per tile
// Threads per block (search and finalisation alike): 128 for short rows (more blocks resident
// per SM, since short rows are latency-bound), 256 otherwise. A tile is 8 tokens per thread.
inline int block_threads_for(int64_t row_tokens) { return row_tokens <= 8192 ? 128 : 256; }

struct NgramParams {
  const int64_t* token_ids_all;  // [B, s_all]
  const int64_t* prompt_lens;    // [B]
  const int64_t* pre_ids;        // [B, s_pre]
  const int64_t* step_idx;       // [B]
  int64_t* draft_tokens;         // [B, width], in/out
  int32_t* seq_lens_this_time;   // [B], in/out
  const int32_t* seq_lens_decoder;
  const int64_t* max_dec_len;
  int64_t batch, s_all, s_pre, width;
  int64_t max_ngram_size, min_ngram_size, max_draft_tokens, threshold;  // threshold clamped
  bool pad_to_max;
  // Search grid: block i handles row i % batch and segment i / batch. Segments
  // [0, segs_prompt) cover the prompt, the rest the generated tokens, seg_tokens each.
  int64_t seg_tokens;
  int64_t segs_prompt, segs_gen;
  int64_t num_blocks;
  // Workspace, all zero between calls: best match key per (row, haystack), and a counter of
  // finished blocks. The last block to finish resets them.
  unsigned long long* keys;  // [2 * batch]
  unsigned int* done;
};

// Enqueue the op on `stream`. No host synchronisation, no allocation.
cudaError_t launch_hybrid_mtp_ngram(const NgramParams& p, int block_threads, cudaStream_t stream);

}  // namespace specgate
