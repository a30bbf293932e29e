// CUDA kernel of sample_without_replacement: one thread block per row.
//
// Item i of row r gets the CPU kernel's key E_i / w_i, E_i = Exp(1) from draw i of
// core::Stream(seed, r), computed with the host's arithmetic; the k smallest keys by (key,
// position) are the sample, found by an exact radix select. Same seed, same selection.
#include "../core/sampling.h"
#include "device_common.cuh"
#include "kernels.h"

namespace diffmask_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

struct SampleShared {
  device::LogTableStorage log_table;
  device::BlockScratch<long long> scan;
  device::SelectScratch select;
  unsigned long long first_bad;
  unsigned long long largest_bits;  // scratch of device::successive_sampling_keys
};

template <typename W>
__global__ void __launch_bounds__(kThreads)
    sample_kernel(const W* weights, int64_t cols, const int64_t* counts, uint64_t seed, bool* selected,
                  uint64_t* keys, int64_t* status) {
  __shared__ SampleShared sh;
  const int64_t row = blockIdx.x;
  const W* w = weights + row * cols;
  uint64_t* key = keys + row * cols;
  bool* out = selected + row * cols;
  if (threadIdx.x == 0) {
    sh.first_bad = ~0ULL;
  }
  const core::LogTable& table = device::fill_log_table(sh.log_table);  // ends with a barrier
  const core::Stream stream(seed, static_cast<uint64_t>(row));
  // A weight the sampling may use: positive and finite (bad weights fail the row below).
  auto usable = [&](int64_t i) {
    const double weight = static_cast<double>(w[i]);
    return weight > 0 && !isinf(weight) ? weight : 0.0;
  };

  long long positive = 0;
  for (int64_t i = threadIdx.x; i < cols; i += kThreads) {
    const double weight = static_cast<double>(w[i]);
    if (isnan(weight) || isinf(weight) || weight < 0) {
      atomicMin(&sh.first_bad, static_cast<unsigned long long>(i));
    } else if (weight > 0) {
      ++positive;
    }
  }
  positive = device::block_sum<long long>(positive, sh.scan);  // its barriers publish first_bad
  const int64_t count = counts[row];
  const unsigned long long bad = sh.first_bad;
  if (threadIdx.x == 0) {
    int64_t position = -1;
    int64_t code = kSampleOk;
    if (count < 0) {
      code = kSampleNegativeCount;
    } else if (bad != ~0ULL) {
      position = static_cast<int64_t>(bad);
      const double weight = static_cast<double>(w[bad]);  // the first problem, as core::find_bad_weight
      code = isnan(weight) ? kSampleNaNWeight : isinf(weight) ? kSampleInfiniteWeight : kSampleNegativeWeight;
    }
    status[2 * row] = position;
    status[2 * row + 1] = code;
  }
  const long long k = count < 0 || bad != ~0ULL ? 0 : (count < positive ? count : positive);
  if (k == 0 || k == positive) {
    for (int64_t i = threadIdx.x; i < cols; i += kThreads) {
      out[i] = k > 0 && usable(i) > 0;
    }
    return;
  }
  device::successive_sampling_keys(cols, k, usable, stream, table, key, sh.scan, &sh.largest_bits);
  const device::Selection selection = device::select_smallest(key, cols, k, sh.select);
  device::apply_selection(key, cols, selection, sh.select, [&](int64_t i, bool chosen) { out[i] = chosen; });
}

template <typename W>
cudaError_t launch(const SampleProblem& p, void* workspace, cudaStream_t stream) {
  sample_kernel<W><<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(
      static_cast<const W*>(p.weights), p.cols, p.counts, p.seed, p.selected, static_cast<uint64_t*>(workspace),
      p.status);
  return cudaGetLastError();
}

}  // namespace

size_t sample_workspace_bytes(const SampleProblem& problem) {
  return static_cast<size_t>(problem.rows) * static_cast<size_t>(problem.cols) * sizeof(uint64_t);
}

cudaError_t sample_without_replacement(const SampleProblem& problem, void* workspace, cudaStream_t stream) {
  if (problem.rows <= 0) {
    return cudaSuccess;
  }
  if (problem.rows > 0x7FFFFFFF) {
    return cudaErrorInvalidValue;
  }
  return problem.float64 ? launch<double>(problem, workspace, stream) : launch<float>(problem, workspace, stream);
}

}  // namespace cuda
}  // namespace diffmask_fast
