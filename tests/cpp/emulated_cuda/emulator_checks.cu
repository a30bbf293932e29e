// What the emulator must catch, one case per command-line argument (ctest runs each and matches
// its output): kernels that are right give exact results, and each kind of kernel a GPU would
// run wrongly or hang on is reported.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr int kThreads = 256;

// Right: a block-wide sum through shared memory and shuffles, and a value from the next thread
// read after a barrier.
__global__ void sum_kernel(const int* values, int n, int* sums, int* neighbours) {
  __shared__ int warp_sums[kThreads / 32];
  __shared__ int own[kThreads];
  const int t = threadIdx.x;
  const int v = t < n ? values[blockIdx.x * n + t] : 0;
  int s = v;
  for (int offset = 16; offset > 0; offset /= 2) {
    s += __shfl_xor_sync(0xFFFFFFFFu, s, offset);
  }
  if (t % 32 == 0) {
    warp_sums[t / 32] = s;
  }
  own[t] = v;
  __syncthreads();
  if (t == 0) {
    int total = 0;
    for (int w = 0; w < kThreads / 32; ++w) {
      total += warp_sums[w];
    }
    sums[blockIdx.x] = total;
  }
  neighbours[blockIdx.x * kThreads + t] = own[(t + 1) % kThreads];
}

// Right in a block of any shape: a thread's lane is its linear index modulo 32.
__global__ void shuffle_2d_kernel(int* out) {
  const int linear = static_cast<int>(threadIdx.y * blockDim.x + threadIdx.x);
  out[linear] = __shfl_xor_sync(0xFFFFFFFFu, linear, 1);
}

// Wrong on a GPU for every block but the first: reads a shared value only block 0 wrote.
__global__ void unwritten_shared_kernel(int* out) {
  __shared__ int own[4];
  if (threadIdx.x == 0) {
    own[blockIdx.x] = 7;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    out[blockIdx.x] = own[0];
  }
}

// Wrong: the warps of a block wait at different barriers.
__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// Wrong: reads what the next thread writes, with no barrier between.
__global__ void missing_barrier_kernel(int* neighbours) {
  __shared__ int own[kThreads];
  const int t = threadIdx.x;
  own[t] = static_cast<int>(blockIdx.x) * 1000 + t;
  neighbours[blockIdx.x * kThreads + t] = own[(t + 1) % kThreads];
}

// Wrong: lane 5 leaves before the shuffle its warp makes.
__global__ void exited_lane_kernel(int* out) {
  if (threadIdx.x == 5) {
    return;
  }
  out[threadIdx.x] = __shfl_xor_sync(0xFFFFFFFFu, static_cast<int>(threadIdx.x), 1);
}

// Wrong: the second warp leaves before a barrier the first waits at.
__global__ void exited_before_barrier_kernel(int* out) {
  if (threadIdx.x >= 32) {
    return;
  }
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Wrong: half a warp waits at a barrier, the other half at a shuffle that needs the first.
__global__ void deadlock_kernel(int* out) {
  int v = static_cast<int>(threadIdx.x);
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    v = __shfl_xor_sync(0xFFFFFFFFu, v, 1);
    __syncthreads();
  }
  out[threadIdx.x] = v;
}

// Wrong: the lanes of one warp make different numbers of shuffles before meeting.
__global__ void divergent_shuffle_kernel(int* out) {
  int v = static_cast<int>(threadIdx.x);
  if (threadIdx.x % 2 == 0) {
    v = __shfl_xor_sync(0xFFFFFFFFu, v, 2);
  }
  v = __shfl_xor_sync(0xFFFFFFFFu, v, 1);
  out[threadIdx.x] = v;
}

// Wrong: reads one element past the end of the array.
__global__ void out_of_bounds_kernel(const int* values, int n, int* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) {
    out[0] += values[i];
  }
}

int right() {
  const int blocks = 5, n = 200;
  std::vector<int> values(blocks * n);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<int>(i * 7 % 101) - 50;
  int *d_values, *d_sums, *d_neighbours;
  cudaMalloc(&d_values, values.size() * sizeof(int));
  cudaMalloc(&d_sums, blocks * sizeof(int));
  cudaMalloc(&d_neighbours, blocks * kThreads * sizeof(int));
  cudaMemcpy(d_values, values.data(), values.size() * sizeof(int), cudaMemcpyHostToDevice);
  sum_kernel<<<blocks, kThreads>>>(d_values, n, d_sums, d_neighbours);
  std::vector<int> sums(blocks), neighbours(blocks * kThreads);
  cudaMemcpy(sums.data(), d_sums, sums.size() * sizeof(int), cudaMemcpyDeviceToHost);
  cudaMemcpy(neighbours.data(), d_neighbours, neighbours.size() * sizeof(int), cudaMemcpyDeviceToHost);
  int wrong = 0;
  for (int b = 0; b < blocks; ++b) {
    int expected = 0;
    for (int i = 0; i < n; ++i) expected += values[b * n + i];
    wrong += sums[b] != expected;
    for (int t = 0; t < kThreads; ++t) {
      const int next = (t + 1) % kThreads;
      wrong += neighbours[b * kThreads + t] != (next < n ? values[b * n + next] : 0);
    }
  }
  // Shuffles in a 16 x 4 block pair linear indices.
  shuffle_2d_kernel<<<1, dim3(16, 4)>>>(d_neighbours);
  cudaMemcpy(neighbours.data(), d_neighbours, 64 * sizeof(int), cudaMemcpyDeviceToHost);
  for (int t = 0; t < 64; ++t) wrong += neighbours[t] != (t ^ 1);
  // A launch the hardware refuses leaves its error for cudaGetLastError, once: too many threads,
  // or more dynamic shared memory than a kernel gets without asking.
  sum_kernel<<<1, 2048>>>(d_values, n, d_sums, d_neighbours);
  wrong += cudaGetLastError() != cudaErrorInvalidConfiguration;
  wrong += cudaGetLastError() != cudaSuccess;
  sum_kernel<<<1, kThreads, 49 << 10>>>(d_values, n, d_sums, d_neighbours);
  wrong += cudaGetLastError() != cudaErrorInvalidConfiguration;
  cudaFree(d_values);
  cudaFree(d_sums);
  cudaFree(d_neighbours);
  std::printf(wrong == 0 ? "right: exact\n" : "right: %d wrong\n", wrong);
  return wrong == 0 ? 0 : 1;
}

int missing_barrier() {
  const int blocks = 3;
  int* d_neighbours;
  cudaMalloc(&d_neighbours, blocks * kThreads * sizeof(int));
  missing_barrier_kernel<<<blocks, kThreads>>>(d_neighbours);
  std::vector<int> neighbours(blocks * kThreads);
  cudaMemcpy(neighbours.data(), d_neighbours, neighbours.size() * sizeof(int), cudaMemcpyDeviceToHost);
  cudaFree(d_neighbours);
  int wrong = 0;
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < kThreads; ++t) {
      wrong += neighbours[b * kThreads + t] != b * 1000 + (t + 1) % kThreads;
    }
  }
  std::printf("missing barrier: %d of %d reads wrong\n", wrong, blocks * kThreads);
  return wrong > 0 ? 0 : 1;
}

int unwritten_shared() {
  int* d_out;
  cudaMalloc(&d_out, 2 * sizeof(int));
  unwritten_shared_kernel<<<2, 32>>>(d_out);
  int out[2];
  cudaMemcpy(out, d_out, sizeof out, cudaMemcpyDeviceToHost);
  cudaFree(d_out);
  const bool garbage = out[0] == 7 && out[1] == -1;  // block 1 reads 0xFF bytes, not block 0's 7
  std::printf(garbage ? "unwritten shared memory: 0xFF bytes in every block\n"
                      : "unwritten shared memory: block 1 read %d\n", out[1]);
  return garbage ? 0 : 1;
}

int bfloat16() {
  // Ties to even, the carry into the exponent, overflow to infinity, NaN.
  const float in[] = {1.0f, 1.00390625f, 1.01171875f, 3.4028235e38f, -2.5f, 1e-40f, NAN};
  const unsigned short expected[] = {0x3F80, 0x3F80, 0x3F82, 0x7F80, 0xC020, 0x0001, 0x7FFF};
  int wrong = 0;
  for (int i = 0; i < 7; ++i) {
    const __nv_bfloat16 b = __float2bfloat16_rn(in[i]);
    unsigned short bits;
    std::memcpy(&bits, &b, sizeof bits);
    wrong += bits != expected[i];
  }
  wrong += __bfloat162float(__float2bfloat16_rn(1.01171875f)) != 1.015625f;
  std::printf(wrong == 0 ? "bfloat16: exact\n" : "bfloat16: %d wrong\n", wrong);
  return wrong == 0 ? 0 : 1;
}

// The wrong kernels, each launched alone: the emulator stops the program (or, for the one out
// of bounds, AddressSanitizer does) before the last line.
int run_wrong_kernel(const std::string& which) {
  int* out;
  cudaMalloc(&out, kThreads * sizeof(int));
  cudaMemset(out, 0, kThreads * sizeof(int));
  if (which == "exited-lane") exited_lane_kernel<<<1, 64>>>(out);
  if (which == "exited-before-barrier") exited_before_barrier_kernel<<<1, 64>>>(out);
  if (which == "deadlock") deadlock_kernel<<<1, 32>>>(out);
  if (which == "divergent-barrier") divergent_barrier_kernel<<<1, 64>>>(out);
  if (which == "divergent-shuffle") divergent_shuffle_kernel<<<1, 32>>>(out);
  if (which == "out-of-bounds") {
    int* values;
    cudaMalloc(&values, 100 * sizeof(int));
    out_of_bounds_kernel<<<1, 128>>>(values, 100, out);
    cudaFree(values);
  }
  cudaFree(out);
  std::printf("%s: not reported\n", which.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "";
  if (which == "right") return right();
  if (which == "missing-barrier") return missing_barrier();
  if (which == "bfloat16") return bfloat16();
  if (which == "unwritten-shared") return unwritten_shared();
  return run_wrong_kernel(which);
}
