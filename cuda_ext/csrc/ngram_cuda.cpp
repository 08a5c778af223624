// CUDA registration of specgate::hybrid_mtp_ngram: argument checks, workspace, launch.
//
// The hot path does no host synchronisation (only shape/dtype/device checks, which read no
// tensor data) and no device allocation: the workspace is allocated once per (device, stream)
// and grown only when a larger batch arrives; the kernel leaves it zeroed after every call.

#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

#include "ngram_checks.h"
#include "ngram_common.h"
#include "ngram_cuda.h"

namespace specgate {
namespace {

// Zeroed workspace for one (device, stream), `needed` int64 words (layout: launch below).
// A stream gets its own buffer so that calls on different streams never share counters.
at::Tensor& workspace(const at::Device& device, cudaStream_t stream, int64_t needed) {
  static std::mutex mutex;
  static std::map<std::pair<int, cudaStream_t>, at::Tensor> buffers;
  std::lock_guard<std::mutex> lock(mutex);
  at::Tensor& ws = buffers[{device.index(), stream}];
  if (!ws.defined() || ws.numel() < needed) {
    // First call with this many rows on this stream: the only allocation the op ever makes.
    // (Under CUDA-graph capture it comes from the graph's private pool and is kept alive here.)
    ws = at::zeros({std::max<int64_t>(needed, 1024)},
                   at::TensorOptions().dtype(at::kLong).device(device));
  }
  return ws;
}

// Multiprocessor count of a device, queried once (a host attribute query, no sync).
int multiprocessors(int device) {
  static std::mutex mutex;
  static std::map<int, int> counts;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = counts.find(device);
  if (it == counts.end()) {
    int n = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    it = counts.emplace(device, std::max(n, 1)).first;
  }
  return it->second;
}

void hybrid_mtp_ngram_cuda(const at::Tensor& token_ids_all, const at::Tensor& prompt_lens,
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
  TORCH_CHECK_VALUE(token_ids_all.is_cuda(), "token_ids_all: expected a CUDA tensor, got ",
                    token_ids_all.device());
  const int64_t B = s.batch;
  // Two blocks per row at least: keep the grid within 2^31 - 1 blocks.
  TORCH_CHECK_VALUE(B < (int64_t(1) << 29), "token_ids_all: batch size ", B,
                    " exceeds the CUDA kernel's limit of 2^29 rows");
  if (B == 0) return;
  const c10::cuda::CUDAGuard guard(token_ids_all.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  // Already-dense inputs (the normal case) are used as they are: no copy, no allocation.
  const at::Tensor tok = token_ids_all.contiguous(), pre = pre_ids.contiguous();
  const at::Tensor plen = prompt_lens.contiguous(), step = step_idx.contiguous();
  const at::Tensor dec = seq_lens_decoder.contiguous(), mdl = max_dec_len.contiguous();

  // Segment length, derived from shapes only (the grid never depends on tensor values). A wave
  // is 32 search warps per SM (64 registers). Where the rows fit in one wave (2B units at most),
  // the shortest segments (whole warp tiles) whose units fit in ONE wave: no second, partly
  // empty wave, and every row is split as finely as that allows. Otherwise, or where that needs
  // segments of more than kOneWaveMaxTiles tiles, about one wave's worth of tokens per unit.
  const int64_t wave_units = 32 * int64_t(multiprocessors(token_ids_all.device().index()));
  auto units_for = [&](int64_t seg) {
    const int64_t segs = (s.prompt_capacity + seg - 1) / seg + (s.generated_capacity + seg - 1) / seg;
    return B * std::max<int64_t>(1, segs);
  };
  const int64_t widest_tiles = std::max<int64_t>(
      1, (std::max(s.prompt_capacity, s.generated_capacity) + kWarpTile - 1) / kWarpTile);
  int64_t seg = 0;
  if (units_for(widest_tiles * kWarpTile) <= wave_units) {
    int64_t lo = 1, hi = widest_tiles;  // units_for is non-increasing in the segment length
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (units_for(mid * kWarpTile) <= wave_units) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    seg = lo * kWarpTile;
  }
  // Units longer than kOneWaveMaxTiles stream long enough that a partial second wave costs less
  // than the slots the uneven units of a one-wave split leave idle (B = 1024 x 32K: 75-84 us with
  // about a wave of tokens per unit, 83-93 us split for one wave; H200, issue 15 v8 run).
  if (seg == 0 || seg > int64_t(kOneWaveMaxTiles) * kWarpTile) {
    const int64_t tokens = B * (s.prompt_capacity + s.generated_capacity);
    seg = std::max<int64_t>(1, tokens / (wave_units * kWarpTile)) * kWarpTile;
  }
  while (units_for(seg) / 8 + kMaxFinalTiles >= (int64_t(1) << 31)) {
    seg *= 2;  // only for absurd shapes: fewer, longer segments
  }
  auto segs_of = [&](int64_t width) { return (width + seg - 1) / seg; };
  // Threshold pass: one tile of 256 rows per finaliser block, at most kMaxFinalTiles blocks.
  const int64_t per_thread = std::max<int64_t>(
      1, (B + int64_t(kBlockThreads) * kMaxFinalTiles - 1) / (int64_t(kBlockThreads) * kMaxFinalTiles));
  const int64_t tile_rows = per_thread * kBlockThreads;
  const int64_t final_tiles = (B + tile_rows - 1) / tile_rows;
  // Workspace: [0] search_done, [1] active, [2] final_ticket, [3] final_done, then 8 words per
  // finaliser tile at a fixed place (so that a later call with another B never reads an old
  // call's record words as a status), then the 2B slots of 128 bits ({key, first continuation
  // tokens} per row and haystack; kKeys words = 4128 bytes keeps them 16-byte aligned).
  constexpr int64_t kRecords = 4, kKeys = kRecords + 8 * kMaxFinalTiles;
  static_assert(kKeys % 2 == 0, "128-bit slots must be 16-byte aligned");
  const int64_t needed = kKeys + 4 * B;

  at::Tensor& ws = workspace(token_ids_all.device(), stream, needed);
  NgramParams p{};
  p.token_ids_all = tok.const_data_ptr<int64_t>();
  p.prompt_lens = plen.const_data_ptr<int64_t>();
  p.pre_ids = pre.const_data_ptr<int64_t>();
  p.step_idx = step.const_data_ptr<int64_t>();
  p.draft_tokens = draft_tokens.mutable_data_ptr<int64_t>();
  p.seq_lens_this_time = seq_lens_this_time.mutable_data_ptr<int32_t>();
  p.seq_lens_decoder = dec.const_data_ptr<int32_t>();
  p.max_dec_len = mdl.const_data_ptr<int64_t>();
  p.batch = B;
  p.s_all = s.prompt_capacity;
  p.s_pre = s.generated_capacity;
  p.width = s.draft_width;
  p.max_ngram_size = max_ngram_size;
  p.min_ngram_size = min_ngram_size;
  p.max_draft_tokens = max_draft_tokens;
  p.threshold = clamp_threshold(threshold);
  p.pad_to_max = pad_to_max;
  p.seg_tokens = seg;
  p.segs_prompt = segs_of(s.prompt_capacity);
  p.segs_gen = segs_of(s.generated_capacity);
  p.num_units = units_for(seg);
  p.search_blocks = (p.num_units + 7) / 8;
  // Small grids (one wave, at most kSpeculativeUnits units: 2 MiB of first tiles, under 0.5 us
  // of DRAM time) load every unit's first tile with the keys: a round trip saved at no-match.
  // Larger grids check the keys and the probe (the row's first prompt tile) first, so that an
  // early match costs its row's other units no DRAM reads.
  // Grids of at most kFusedMaxUnits units run as one fused block (launch_hybrid_mtp_ngram).
  p.speculative = p.num_units <= std::min<int64_t>(wave_units, kSpeculativeUnits);
  p.probe_units = wave_units;
  p.final_tiles = final_tiles;
  p.final_rows_per_thread = per_thread;
  int64_t* base = ws.mutable_data_ptr<int64_t>();
  p.search_done = reinterpret_cast<unsigned int*>(base);
  p.active = reinterpret_cast<unsigned long long*>(base + 1);
  p.final_ticket = reinterpret_cast<unsigned int*>(base + 2);
  p.final_done = reinterpret_cast<unsigned int*>(base + 3);
  p.records = reinterpret_cast<long long*>(base + kRecords);
  p.keys = reinterpret_cast<unsigned long long*>(base + kKeys);
  C10_CUDA_CHECK(launch_hybrid_mtp_ngram(p, stream));
}

}  // namespace
}  // namespace specgate

TORCH_LIBRARY_IMPL(specgate, CUDA, m) {
  m.impl("hybrid_mtp_ngram", &specgate::hybrid_mtp_ngram_cuda);
}
