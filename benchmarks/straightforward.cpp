// Python binding of the straightforward design (benchmarks/straightforward.cu): tensors in,
// raw pointers and the caller's stream (passed from Python as an integer) out to the launcher.
#include <cuda_runtime.h>
#include <torch/extension.h>

cudaError_t straightforward_launch(const int64_t* tok, const int64_t* plen, const int64_t* pre,
                                   const int64_t* step, int64_t* draft, int32_t* lens,
                                   const int32_t* dec, const int64_t* max_dec_len, int64_t* match,
                                   int64_t batch, int64_t s_all, int64_t s_pre, int64_t width,
                                   int64_t max_n, int64_t min_n, int64_t max_draft,
                                   int64_t threshold, bool pad_to_max, cudaStream_t stream);

void launch(const torch::Tensor& tok, const torch::Tensor& plen, const torch::Tensor& pre,
            const torch::Tensor& step, torch::Tensor draft, torch::Tensor lens,
            const torch::Tensor& dec, const torch::Tensor& max_dec_len, torch::Tensor match,
            int64_t max_n, int64_t min_n, int64_t max_draft, int64_t threshold, bool pad_to_max,
            int64_t stream) {
  const cudaError_t err = straightforward_launch(
      tok.data_ptr<int64_t>(), plen.data_ptr<int64_t>(), pre.data_ptr<int64_t>(),
      step.data_ptr<int64_t>(), draft.data_ptr<int64_t>(), lens.data_ptr<int32_t>(),
      dec.data_ptr<int32_t>(), max_dec_len.data_ptr<int64_t>(), match.data_ptr<int64_t>(),
      tok.size(0), tok.size(1), pre.size(1), draft.size(1), max_n, min_n, max_draft, threshold,
      pad_to_max, reinterpret_cast<cudaStream_t>(stream));
  TORCH_CHECK(err == cudaSuccess, "straightforward: launch failed: ", cudaGetErrorString(err));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("launch", &launch); }
