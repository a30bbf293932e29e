// The CUDA execution model on the CPU, for testing the kernels of csrc/cuda without a GPU.
//
// The kernel sources are compiled as plain C++ against this header (it stands in for
// <cuda_runtime.h> and <cuda_bf16.h>), with every `kernel<<<grid, block, shared, stream>>>(args)`
// rewritten to `emulated_cuda::launch(...)` by translate_launches.cmake. A launch runs every
// thread block in turn; within a block, every CUDA thread is a fiber of its own, so barriers
// (__syncthreads) and warp shuffles block a thread until the others reach them, as on a GPU:
// nothing assumes that the 32 threads of a warp run in lockstep (which no GPU since Volta
// promises either). Between two synchronization points, threads run in a random order drawn
// anew for every block, so code that reads shared memory another thread writes without a
// barrier between them gives results that change from run to run.
//
// What a GPU would leave undefined stops the program (exit status 3) with a message naming the
// kernel and block: a barrier some threads of the block have exited before reaching, threads at
// different barriers, a shuffle waiting for a lane that has exited, lanes of a warp at different
// shuffles, a partial mask or warp, threads waiting on each other at a barrier and a shuffle
// (deadlock). Device memory is host memory, filled with 0xFF bytes when allocated (NaN as
// floats, -1 as integers), and so is shared memory at the start of every block, so reading what
// no thread wrote shows up; built with AddressSanitizer, reads and writes out of bounds are
// caught too.
//
// What it cannot show: timing, memory-model effects of real concurrency (threads never run at
// the same time, so atomics and racing plain writes look alike), the accuracy of the GPU's own
// math functions (these are the host's), fused multiply-adds that nvcc contracts, launches beyond
// a kernel's __launch_bounds__ (ignored), and host pointers passed to kernels (all memory is the
// host's).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- qualifiers -----------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ __inline__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One block runs at a time, so a kernel's shared variables can be its function's statics;
// translate_launches.cmake adds the fresh_shared call after each declaration of a translated
// source (this macro is only what a header's declaration would get, without it).
#define __shared__ static

// Unqualified in device code, as CUDA's math functions are.
using std::isfinite;
using std::isinf;
using std::isnan;

// ---- runtime types --------------------------------------------------------------------------

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorNotSupported = 801,
};
using cudaError = cudaError_t;

enum cudaMemcpyKind : int {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum cudaDeviceAttr : int {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;

struct cudaFuncAttributes {
  size_t sharedSizeBytes = 0;
  int maxThreadsPerBlock = 1024;
  int numRegs = 0;
  int ptxVersion = 90;
  int binaryVersion = 90;
};

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct __align__(16) float4 {
  float x, y, z, w;
};

// bfloat16: the upper half of a float32, rounded to nearest, ties to even (bit for bit as
// CUDA's __float2bfloat16_rn on every float32, NaNs included).
struct __nv_bfloat16 {
  unsigned short bits;

  __nv_bfloat16() = default;
  __nv_bfloat16(float value) : bits(round(value)) {}
  operator float() const {
    const uint32_t word = static_cast<uint32_t>(bits) << 16;
    float out;
    std::memcpy(&out, &word, sizeof out);
    return out;
  }

 private:
  static unsigned short round(float value) {
    uint32_t word;
    std::memcpy(&word, &value, sizeof word);
    if (std::isnan(value)) {
      return 0x7FFF;  // the canonical NaN, as CUDA's conversion gives
    }
    word += 0x7FFFu + ((word >> 16) & 1u);
    return static_cast<unsigned short>(word >> 16);
  }
};

inline __nv_bfloat16 __float2bfloat16_rn(float value) { return __nv_bfloat16(value); }
inline float __bfloat162float(__nv_bfloat16 value) { return static_cast<float>(value); }

// ---- the emulator ---------------------------------------------------------------------------

namespace emulated_cuda {

// Where the running CUDA thread is (threadIdx and the others read these).
struct ThreadPlace {
  uint3 thread;
  uint3 block;
  dim3 block_dim;
  dim3 grid_dim;
};
const ThreadPlace& place();

// Fills a shared variable with 0xFF bytes the first time a thread of the running block reaches
// its declaration: each block starts with garbage in shared memory, as on a GPU.
void fresh_shared(void* variable, size_t bytes);

// `file` and `line` name the barrier or shuffle: every thread (lane) must wait at the same one.
void sync_threads(const char* file, int line);

enum class Shuffle { kXor, kUp };
// Exchanges `bytes` bytes of every lane of the calling warp: `value` is this lane's, and `out`
// gets the value of the lane `kind` and `operand` pick (its own when that is out of range).
void warp_exchange(unsigned mask, const void* value, void* out, size_t bytes, Shuffle kind, int operand,
                   const char* file, int line);

struct LaunchConfig {
  dim3 grid;
  dim3 block;
  size_t shared_bytes;
  cudaStream_t stream;
  LaunchConfig(dim3 grid_, dim3 block_, size_t shared_bytes_ = 0, cudaStream_t stream_ = nullptr)
      : grid(grid_), block(block_), shared_bytes(shared_bytes_), stream(stream_) {}
};

// Runs `thread_body` once per CUDA thread of the launch (a launch error is left for
// cudaGetLastError, as CUDA does).
void run(const char* kernel, const LaunchConfig& config, const std::function<void()>& thread_body);

// What a translated `kernel<<<config>>>(args)` calls: the arguments are evaluated once, and each
// thread gets its own copy of them, as kernel parameters are.
template <typename Body>
class Launch {
 public:
  Launch(const char* kernel, const LaunchConfig& config, Body body) : kernel_(kernel), config_(config), body_(body) {}

  template <typename... Args>
  void operator()(Args&&... args) const {
    const std::tuple<std::decay_t<Args>...> parameters(std::forward<Args>(args)...);
    run(kernel_, config_, [&] {
      std::tuple<std::decay_t<Args>...> own = parameters;
      std::apply(body_, own);
    });
  }

 private:
  const char* kernel_;
  LaunchConfig config_;
  Body body_;
};

template <typename Body>
Launch<Body> launch(const char* kernel, const LaunchConfig& config, Body body) {
  return Launch<Body>(kernel, config, body);
}

}  // namespace emulated_cuda

#define threadIdx (::emulated_cuda::place().thread)
#define blockIdx (::emulated_cuda::place().block)
#define blockDim (::emulated_cuda::place().block_dim)
#define gridDim (::emulated_cuda::place().grid_dim)

// ---- device intrinsics ----------------------------------------------------------------------

// The caller's file and line (GCC's and Clang's builtins) tell one barrier or shuffle from another.
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  emulated_cuda::sync_threads(file, line);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  static_assert(std::is_trivially_copyable<T>::value, "shuffled values are copied as bytes");
  T out;
  emulated_cuda::warp_exchange(mask, &value, &out, sizeof(T), emulated_cuda::Shuffle::kXor, lane_mask, file, line);
  return out;
}

template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, const char* file = __builtin_FILE(),
                 int line = __builtin_LINE()) {
  static_assert(std::is_trivially_copyable<T>::value, "shuffled values are copied as bytes");
  T out;
  emulated_cuda::warp_exchange(mask, &value, &out, sizeof(T), emulated_cuda::Shuffle::kUp, static_cast<int>(delta),
                               file, line);
  return out;
}

// Threads never run at the same time, so a read-modify-write is atomic as it stands.
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}

template <typename T>
T atomicMin(T* address, T value) {
  const T old = *address;
  *address = value < old ? value : old;
  return old;
}

template <typename T>
T atomicMax(T* address, T value) {
  const T old = *address;
  *address = value > old ? value : old;
  return old;
}

// ---- runtime API ----------------------------------------------------------------------------

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaMalloc(void** pointer, size_t bytes);
cudaError_t cudaFree(void* pointer);
cudaError_t cudaMemcpy(void* destination, const void* source, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* destination, const void* source, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* pointer, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t stream = nullptr);

template <typename T>
cudaError_t cudaMalloc(T** pointer, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(pointer), bytes);
}

template <typename Function>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, Function* kernel) {
  if (attributes == nullptr || kernel == nullptr) {
    return cudaErrorInvalidValue;
  }
  *attributes = cudaFuncAttributes();
  return cudaSuccess;
}
