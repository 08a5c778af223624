// Interface between the torch binding (ngram_cuda.cpp) and the CUDA kernel (ngram_cuda_kernel.cu).
// The kernel file sees only raw pointers, so it compiles without torch headers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace specgate {

constexpr int kItemsPerThread = 8;  // haystack tokens each lane loads per tile
constexpr int kBlockThreads = 256;  // every block: 8 search warps, or one finaliser tile of rows
constexpr int kWarpTile = 32 * kItemsPerThread;  // tokens one warp reads per tile (2 KiB)
constexpr int kMaxFinalTiles = 64;  // finaliser blocks at most (more rows per thread beyond)
constexpr int kSpeculativeUnits = 1024;  // grids up to this many units load first tiles at once
constexpr int kOneWaveMaxTiles = 16;     // one-wave segment sizing only up to 16 tiles (4K tokens)
constexpr int kFusedMaxUnits = 32;  // grids of at most this many units run as one fused block

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
  // Search: unit u (one warp) handles row u % batch and segment u / batch. Segments
  // [0, segs_prompt) cover the prompt, the rest the generated tokens, seg_tokens each. Units
  // [0, batch) are every row's first segment; they also count seq_lens_decoder > 0 (U0).
  int64_t seg_tokens;
  int64_t segs_prompt, segs_gen;
  int64_t num_units;      // batch * max(1, segs_prompt + segs_gen)
  int64_t search_blocks;  // ceil(num_units / 8): blocks [0, search_blocks) search
  bool speculative;       // small grid: non-first units load their first tile with the keys;
                          // otherwise they load the keys and the probe first (the kernel)
  int64_t probe_units;    // units [0, probe_units) (the first wave) probe
  // Threshold pass: blocks [search_blocks, search_blocks + final_tiles) each take a tile of
  // final_rows_per_thread * kBlockThreads consecutive rows (tile order = ticket order).
  int64_t final_tiles, final_rows_per_thread;
  // Workspace, all zero between calls (the last finaliser resets it): best match key per
  // (row, haystack), counters, and one look-back record of 8 words per finaliser tile.
  unsigned long long* keys;          // [4 * batch]: {key, tokens} per (row, haystack)
  unsigned int* search_done;         // search blocks finished
  unsigned long long* active;        // U0, summed by the search blocks
  unsigned int* final_ticket;        // finaliser tile order
  unsigned int* final_done;          // finalisers finished
  long long* records;                // [8 * final_tiles]: status, aggregate (2), inclusive (2)
};

// Enqueue the op on `stream`. No host synchronisation, no allocation.
cudaError_t launch_hybrid_mtp_ngram(const NgramParams& p, cudaStream_t stream);

}  // namespace specgate
