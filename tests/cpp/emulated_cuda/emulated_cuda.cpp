// The scheduler behind emulated_cuda.h: CUDA threads as fibers (ucontext), one block at a time.
#include "emulated_cuda.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define EMULATED_CUDA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMULATED_CUDA_ASAN 1
#endif
#endif
#if defined(EMULATED_CUDA_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace emulated_cuda {
namespace {

constexpr int kWarp = 32;
constexpr unsigned kMaxBlockThreads = 1024;
constexpr size_t kStackBytes = size_t{256} << 10;
constexpr int kFailureStatus = 3;  // what a kernel the emulator stops makes the program exit with

enum class State { kRunnable, kAtBarrier, kAtShuffle, kExited };

struct Fiber {
  ucontext_t context;
  void* stack = nullptr;
  State state = State::kRunnable;
  ThreadPlace place;
  int warp = 0;
  int lane = 0;
  unsigned shuffles = 0;  // shuffles this thread has made (their parity picks the buffer)
  const char* wait_file = "";  // where the barrier or shuffle it waits at is
  int wait_line = 0;
#if defined(EMULATED_CUDA_ASAN)
  void* fake_stack = nullptr;
#endif
};

// A warp's shuffles: every lane writes its bytes, then (released) reads its source's. Two
// buffers, used in turn: a lane released early may write the next shuffle's bytes before
// another lane has read this one's, but not the one after (that waits for every lane).
struct WarpExchange {
  unsigned char bytes[2][kWarp][16];
};

struct Emulator {
  std::vector<Fiber> fibers;  // of the running block
  std::vector<WarpExchange> exchanges;
  Fiber* current = nullptr;
  ucontext_t scheduler;
  const char* kernel = "";
  const std::function<void()>* body = nullptr;
  uint64_t block_serial = 0;  // of the running block, counted over all launches
  std::unordered_map<const void*, uint64_t> shared_filled;  // shared variable -> block that filled it
  uint64_t seed = 0;
  uint64_t random = 0;
  cudaError_t last_error = cudaSuccess;
  int device = 0;
#if defined(EMULATED_CUDA_ASAN)
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_size = 0;
  void* scheduler_fake_stack = nullptr;
#endif

  // The order of the threads is random: a fresh seed every run, EMULATED_CUDA_SEED to repeat one.
  Emulator() {
    const char* fixed = std::getenv("EMULATED_CUDA_SEED");
    seed = fixed != nullptr ? std::strtoull(fixed, nullptr, 0) : std::random_device()() * 0x100000001ULL;
    random = seed * 0xBF58476D1CE4E5B9ULL + 0x9E3779B97F4A7C15ULL;
  }

  uint64_t next_random() {  // xorshift64*
    random ^= random >> 12;
    random ^= random << 25;
    random ^= random >> 27;
    return random * 0x2545F4914F6CDD1DULL;
  }
};

Emulator& emulator() {
  static Emulator instance;
  return instance;
}

[[noreturn]] void fail(const std::string& what) {
  const Emulator& e = emulator();
  const uint3 block = e.current != nullptr ? e.current->place.block : uint3{0, 0, 0};
  std::fprintf(stderr, "emulated CUDA: kernel %s, block (%u, %u, %u): %s (EMULATED_CUDA_SEED=%llu repeats the order)\n",
               e.kernel, block.x, block.y, block.z, what.c_str(), static_cast<unsigned long long>(e.seed));
  std::fflush(nullptr);
  std::_Exit(kFailureStatus);  // not exit(): fibers are stopped mid-kernel, nothing may unwind
}

// ---- switching between the scheduler and a fiber --------------------------------------------

void enter(Fiber& fiber) {
  Emulator& e = emulator();
  e.current = &fiber;
#if defined(EMULATED_CUDA_ASAN)
  __sanitizer_start_switch_fiber(&e.scheduler_fake_stack, fiber.stack, kStackBytes);
#endif
  if (swapcontext(&e.scheduler, &fiber.context) != 0) {
    fail("swapcontext failed");
  }
#if defined(EMULATED_CUDA_ASAN)
  __sanitizer_finish_switch_fiber(e.scheduler_fake_stack, nullptr, nullptr);
#endif
}

// From the running fiber back to the scheduler (with `state` as the reason).
void leave(State state) {
  Emulator& e = emulator();
  Fiber& fiber = *e.current;
  fiber.state = state;
#if defined(EMULATED_CUDA_ASAN)
  // An exited fiber's fake stack is released (null save slot): it never runs again.
  __sanitizer_start_switch_fiber(state == State::kExited ? nullptr : &fiber.fake_stack, e.scheduler_stack,
                                 e.scheduler_stack_size);
#endif
  if (swapcontext(&fiber.context, &e.scheduler) != 0) {
    fail("swapcontext failed");
  }
#if defined(EMULATED_CUDA_ASAN)
  __sanitizer_finish_switch_fiber(fiber.fake_stack, &e.scheduler_stack, &e.scheduler_stack_size);
#endif
}

void fiber_main() {
#if defined(EMULATED_CUDA_ASAN)
  Emulator& e = emulator();
  __sanitizer_finish_switch_fiber(nullptr, &e.scheduler_stack, &e.scheduler_stack_size);
#endif
  (*emulator().body)();
  leave(State::kExited);
}

// Stacks of the fibers, kept from block to block (mapped once, pages touched on use).
void* stack_for(size_t thread) {
  static std::vector<void*> stacks;
  while (stacks.size() <= thread) {
    void* stack = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (stack == MAP_FAILED) {
      fail("cannot map a fiber stack");
    }
    stacks.push_back(stack);
  }
  return stacks[thread];
}

// ---- one block ------------------------------------------------------------------------------

std::string thread_name(const Fiber& f) {
  return "thread (" + std::to_string(f.place.thread.x) + ", " + std::to_string(f.place.thread.y) + ", " +
         std::to_string(f.place.thread.z) + ")";
}

bool same_place(const Fiber& a, const Fiber& b) {
  return a.wait_line == b.wait_line && std::strcmp(a.wait_file, b.wait_file) == 0;
}

std::string place_name(const Fiber& f) { return std::string(f.wait_file) + ":" + std::to_string(f.wait_line); }

// Releases what can be released once no thread can run: a warp whose lanes all wait at a
// shuffle, or the block when every thread waits at the barrier. False when nothing can be.
bool release_waiting() {
  Emulator& e = emulator();
  bool released = false;
  const int warps = static_cast<int>(e.exchanges.size());
  for (int w = 0; w < warps; ++w) {
    int waiting = 0;
    int lanes = 0;
    Fiber* exited = nullptr;
    for (size_t t = static_cast<size_t>(w) * kWarp; t < e.fibers.size() && t < static_cast<size_t>(w + 1) * kWarp;
         ++t) {
      ++lanes;
      waiting += e.fibers[t].state == State::kAtShuffle;
      if (e.fibers[t].state == State::kExited) {
        exited = &e.fibers[t];
      }
    }
    if (waiting == 0) {
      continue;
    }
    if (exited != nullptr) {
      e.current = exited;
      fail("a warp shuffle waits for " + thread_name(*exited) + ", which has exited");
    }
    if (waiting == lanes) {
      const size_t first = static_cast<size_t>(w) * kWarp;
      for (size_t t = first; t < first + static_cast<size_t>(lanes); ++t) {
        const Fiber& a = e.fibers[first];
        const Fiber& b = e.fibers[t];
        if (b.shuffles != a.shuffles || !same_place(a, b)) {
          e.current = &e.fibers[t];
          fail("the lanes of a warp wait at different shuffles: " + thread_name(a) + " at " + place_name(a) +
               " (shuffle " + std::to_string(a.shuffles) + "), " + thread_name(b) + " at " + place_name(b) +
               " (shuffle " + std::to_string(b.shuffles) + ")");
        }
        e.fibers[t].state = State::kRunnable;
      }
      released = true;
    }
  }
  if (released) {
    return true;
  }
  size_t at_barrier = 0, exited = 0;
  for (const Fiber& f : e.fibers) {
    at_barrier += f.state == State::kAtBarrier;
    exited += f.state == State::kExited;
  }
  if (at_barrier == 0) {
    return false;
  }
  if (at_barrier + exited == e.fibers.size() && exited > 0) {
    for (Fiber& f : e.fibers) {
      if (f.state == State::kExited) {
        e.current = &f;
        fail("__syncthreads() waits for " + thread_name(f) + ", which has exited");
      }
    }
  }
  if (at_barrier != e.fibers.size()) {
    return false;  // some threads wait at shuffles with lanes at the barrier: a deadlock
  }
  for (Fiber& f : e.fibers) {
    if (!same_place(f, e.fibers[0])) {
      e.current = &f;
      fail("the threads of the block wait at different __syncthreads(): " + thread_name(e.fibers[0]) + " at " +
           place_name(e.fibers[0]) + ", " + thread_name(f) + " at " + place_name(f));
    }
  }
  for (Fiber& f : e.fibers) {
    f.state = State::kRunnable;
  }
  return true;
}

// A fresh context for thread `t` of the block, which will start at fiber_main.
void prepare_fiber(Fiber& f, unsigned t) {
  f.stack = stack_for(t);
#if defined(EMULATED_CUDA_ASAN)
  // The frames an exited fiber left on its stack never returned: their red zones go.
  __asan_unpoison_memory_region(f.stack, kStackBytes);
#endif
  if (getcontext(&f.context) != 0) {
    fail("getcontext failed");
  }
  f.context.uc_stack.ss_sp = f.stack;
  f.context.uc_stack.ss_size = kStackBytes;
  f.context.uc_link = nullptr;
  makecontext(&f.context, fiber_main, 0);
}

[[noreturn]] void fail_deadlock() {
  std::string barrier = "none", shuffle = "none";
  for (const Fiber& f : emulator().fibers) {
    std::string& example = f.state == State::kAtBarrier ? barrier : shuffle;
    if (f.state != State::kExited && example == "none") {
      example = thread_name(f);
    }
  }
  fail("deadlock: threads wait at __syncthreads() (" + barrier + ", ...) while others wait at a warp shuffle (" +
       shuffle + ", ...)");
}

void run_block(const LaunchConfig& config, uint3 block) {
  Emulator& e = emulator();
  ++e.block_serial;
  const unsigned threads = config.block.x * config.block.y * config.block.z;
  e.fibers.assign(threads, Fiber());
  e.exchanges.assign((threads + kWarp - 1) / kWarp, WarpExchange());
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = e.fibers[t];
    f.place.thread = {t % config.block.x, (t / config.block.x) % config.block.y, t / (config.block.x * config.block.y)};
    f.place.block = block;
    f.place.block_dim = config.block;
    f.place.grid_dim = config.grid;
    f.warp = static_cast<int>(t / kWarp);
    f.lane = static_cast<int>(t % kWarp);
    prepare_fiber(f, t);
  }
  std::vector<size_t> order(threads);
  for (;;) {
    // Every runnable thread runs to its next synchronization point, in a fresh random order.
    size_t runnable = 0, exited = 0;
    for (size_t t = 0; t < threads; ++t) {
      if (e.fibers[t].state == State::kRunnable) {
        order[runnable++] = t;
      }
      exited += e.fibers[t].state == State::kExited;
    }
    if (exited == threads) {
      break;
    }
    if (runnable == 0) {
      if (!release_waiting()) {
        fail_deadlock();
      }
      continue;
    }
    for (size_t i = runnable; i > 1; --i) {
      std::swap(order[i - 1], order[e.next_random() % i]);
    }
    for (size_t i = 0; i < runnable; ++i) {
      enter(e.fibers[order[i]]);
    }
  }
  e.current = nullptr;
}

}  // namespace

const ThreadPlace& place() {
  Emulator& e = emulator();
  if (e.current == nullptr) {
    fail("threadIdx (or blockIdx, blockDim, gridDim) read outside a kernel");
  }
  return e.current->place;
}

void fresh_shared(void* variable, size_t bytes) {
  Emulator& e = emulator();
  if (e.current == nullptr) {
    fail("a __shared__ variable declared outside a kernel");
  }
  uint64_t& filled_by = e.shared_filled[variable];
  if (filled_by != e.block_serial) {
    std::memset(variable, 0xFF, bytes);
    filled_by = e.block_serial;
  }
}

void sync_threads(const char* file, int line) {
  Emulator& e = emulator();
  if (e.current == nullptr) {
    fail("__syncthreads() outside a kernel");
  }
  e.current->wait_file = file;
  e.current->wait_line = line;
  leave(State::kAtBarrier);
}

void warp_exchange(unsigned mask, const void* value, void* out, size_t bytes, Shuffle kind, int operand,
                   const char* file, int line) {
  Emulator& e = emulator();
  if (e.current == nullptr) {
    fail("a warp shuffle outside a kernel");
  }
  Fiber& f = *e.current;
  f.wait_file = file;
  f.wait_line = line;
  if (mask != 0xFFFFFFFFu) {
    fail("a warp shuffle with a partial mask (only full warps are emulated)");
  }
  if (e.fibers.size() < static_cast<size_t>(f.warp + 1) * kWarp) {
    fail("a warp shuffle in a partial warp");
  }
  if (bytes > sizeof(WarpExchange::bytes[0])) {
    fail("a shuffled value wider than 16 bytes");
  }
  unsigned char (&buffer)[kWarp][16] = e.exchanges[static_cast<size_t>(f.warp)].bytes[f.shuffles++ & 1];
  std::memcpy(buffer[f.lane], value, bytes);
  leave(State::kAtShuffle);  // released once every lane has written
  // The lane within the warp is the thread's linear index in the block, modulo 32, in blocks of
  // any shape.
  const int source = kind == Shuffle::kXor ? (f.lane ^ operand) : f.lane - operand;
  const int from = source >= 0 && source < kWarp ? source : f.lane;
  std::memcpy(out, buffer[from], bytes);
}

void run(const char* kernel, const LaunchConfig& config, const std::function<void()>& thread_body) {
  Emulator& e = emulator();
  if (e.current != nullptr) {
    fail("a kernel launched from a kernel");
  }
  const uint64_t threads = uint64_t{config.block.x} * config.block.y * config.block.z;
  if (threads == 0 || threads > kMaxBlockThreads || config.block.z > 64 || config.grid.x == 0 || config.grid.y == 0 ||
      config.grid.z == 0 || config.grid.x > 0x7FFFFFFFu || config.grid.y > 65535 || config.grid.z > 65535 ||
      config.shared_bytes > (size_t{48} << 10)) {  // beyond 48 KiB needs cudaFuncSetAttribute
    e.last_error = cudaErrorInvalidConfiguration;
    return;
  }
  e.kernel = kernel;
  e.body = &thread_body;
  for (unsigned z = 0; z < config.grid.z; ++z) {
    for (unsigned y = 0; y < config.grid.y; ++y) {
      for (unsigned x = 0; x < config.grid.x; ++x) {
        run_block(config, uint3{x, y, z});
      }
    }
  }
  e.body = nullptr;
  e.kernel = "";
}

}  // namespace emulated_cuda

// ---- runtime API ----------------------------------------------------------------------------

using emulated_cuda::emulator;

cudaError_t cudaGetLastError() {
  const cudaError_t error = emulator().last_error;
  emulator().last_error = cudaSuccess;
  return error;
}

cudaError_t cudaPeekAtLastError() { return emulator().last_error; }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorInvalidDeviceFunction:
      return "invalid device function";
    case cudaErrorNoKernelImageForDevice:
      return "no kernel image is available for execution on the device";
    case cudaErrorNotSupported:
      return "operation not supported";
  }
  return "unrecognized error code";
}

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) {
    return cudaErrorInvalidValue;
  }
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) {
    return cudaErrorInvalidValue;
  }
  *device = emulator().device;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device != 0) {
    return cudaErrorInvalidDevice;
  }
  emulator().device = device;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  if (value == nullptr || device != 0) {
    return cudaErrorInvalidValue;
  }
  switch (attribute) {
    case cudaDevAttrMaxThreadsPerBlock:
      *value = 1024;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor:  // as an H100
      *value = 9;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = 0;
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

// Launches run to completion when made: there is never anything to wait for.
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaMalloc(void** pointer, size_t bytes) {
  if (pointer == nullptr) {
    return cudaErrorInvalidValue;
  }
  // Exactly `bytes` (AddressSanitizer then sees any access beyond them), aligned as cudaMalloc's.
  if (posix_memalign(pointer, 256, bytes > 0 ? bytes : 1) != 0) {
    *pointer = nullptr;
    return cudaErrorMemoryAllocation;
  }
  std::memset(*pointer, 0xFF, bytes);  // never zero by chance: what no kernel wrote shows
  return cudaSuccess;
}

cudaError_t cudaFree(void* pointer) {
  std::free(pointer);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* destination, const void* source, size_t bytes, cudaMemcpyKind) {
  if (bytes > 0 && (destination == nullptr || source == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (bytes > 0) {
    std::memmove(destination, source, bytes);
  }
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* destination, const void* source, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(destination, source, bytes, kind);
}

cudaError_t cudaMemset(void* pointer, int value, size_t bytes) {
  if (bytes > 0 && pointer == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (bytes > 0) {
    std::memset(pointer, value, bytes);
  }
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t) {
  return cudaMemset(pointer, value, bytes);
}
