// Runs the CUDA kernels of csrc/cuda on the CPU, for tests on machines without a GPU.
//
// The kernel source is compiled as host C++ (tests/cuda/emulate.py rewrites each
// `kernel<<<grid, block, smem, stream>>>(args)` into `emu::launch(grid, block, [&] {...})`).
// A block's threads are fibers (ucontext) on one OS thread, resumed in a shuffled order;
// __syncthreads and warp shuffles are barriers that switch fibers, so a missing barrier or a
// barrier reached by part of a block shows up (as a wrong result or an abort) instead of
// passing by luck.  Blocks run one after another: __shared__ variables are statics.
// What differs from a GPU: the host's float contraction and its rsqrt (correctly rounded; the
// device's MUFU.RSQ is within 2 ulp of it), so results match the device to rounding.
#pragma once

#define __shared__ static
#define __launch_bounds__(...)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

namespace emu {

enum State { kRun, kBlockBarrier, kWarpBarrier, kDone };

struct Fiber {
  ucontext_t ctx;
  uint3 tid;
  int linear;
  State state;
};

struct Runtime {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  std::vector<std::vector<char>> stacks;
  int current = -1;
  uint3 block_idx{0, 0, 0};
  dim3 block_dim, grid_dim;
  std::function<void()> body;
  std::vector<uint64_t> warp_slots;  // 32 slots of 8 bytes per warp, for shuffles
  std::mt19937 rng{12345};
  uint64_t launches = 0;
};

inline Runtime& rt() {
  static Runtime r;
  return r;
}

inline void fiber_main() {
  Runtime& r = rt();
  r.body();
  r.fibers[r.current].state = kDone;
  swapcontext(&r.fibers[r.current].ctx, &r.scheduler);
}

inline void wait(State s) {
  Runtime& r = rt();
  r.fibers[r.current].state = s;
  swapcontext(&r.fibers[r.current].ctx, &r.scheduler);
}

inline void syncthreads() { wait(kBlockBarrier); }
inline void syncwarp() { wait(kWarpBarrier); }

inline int lane() { return rt().fibers[rt().current].linear % 32; }
inline int warp() { return rt().fibers[rt().current].linear / 32; }

template <class V>
V shfl_down(unsigned mask, V v, int offset) {
  static_assert(sizeof(V) <= 8, "shuffle of at most 8 bytes");
  if (mask != 0xffffffffu) {
    std::fprintf(stderr, "emulate: only full-warp shuffles are modelled\n");
    std::abort();
  }
  Runtime& r = rt();
  uint64_t* slots = &r.warp_slots[32 * warp()];
  std::memcpy(&slots[lane()], &v, sizeof(V));
  syncwarp();
  V out = v;
  if (lane() + offset < 32) std::memcpy(&out, &slots[lane() + offset], sizeof(V));
  syncwarp();  // every lane has read before anyone writes again
  return out;
}

// Runs one block to completion: resume runnable fibers in a shuffled order; release a barrier
// when every live thread of its scope waits at it.
inline void run_block() {
  Runtime& r = rt();
  const int n = (int)r.fibers.size();
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  for (;;) {
    std::shuffle(order.begin(), order.end(), r.rng);
    bool ran = false;
    for (int i : order) {
      if (r.fibers[i].state != kRun) continue;
      ran = true;
      r.current = i;
      swapcontext(&r.scheduler, &r.fibers[i].ctx);
    }
    if (ran) continue;
    bool live = false, released = false;
    for (int w = 0; w * 32 < n; ++w) {
      int waiting = 0, alive = 0;
      for (int i = 32 * w; i < std::min(n, 32 * w + 32); ++i) {
        if (r.fibers[i].state != kDone) ++alive;
        if (r.fibers[i].state == kWarpBarrier) ++waiting;
      }
      if (alive) live = true;
      if (alive && waiting == alive) {
        for (int i = 32 * w; i < std::min(n, 32 * w + 32); ++i) r.fibers[i].state = kRun;
        released = true;
      }
    }
    if (!live) return;
    if (released) continue;
    int at_block = 0, alive = 0;
    for (const Fiber& f : r.fibers) {
      if (f.state != kDone) ++alive;
      if (f.state == kBlockBarrier) ++at_block;
    }
    if (at_block != alive) {
      std::fprintf(stderr, "emulate: deadlock (threads wait at different barriers)\n");
      std::abort();
    }
    for (Fiber& f : r.fibers)
      if (f.state == kBlockBarrier) f.state = kRun;
  }
}

template <class F>
void launch(dim3 grid, dim3 block, F&& body) {
  Runtime& r = rt();
  r.grid_dim = grid;
  r.block_dim = block;
  r.body = [&body] { body(); };
  const int n = (int)(block.x * block.y * block.z);
  const size_t stack = 256 * 1024;
  while ((int)r.stacks.size() < n) r.stacks.emplace_back(stack);
  r.warp_slots.assign(32 * ((n + 31) / 32), 0);
  r.rng.seed(12345 + r.launches++);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        r.block_idx = uint3{bx, by, bz};
        r.fibers.assign(n, Fiber{});
        for (int i = 0; i < n; ++i) {
          Fiber& f = r.fibers[i];
          f.linear = i;
          f.tid = uint3{(unsigned)(i % block.x), (unsigned)(i / block.x % block.y),
                        (unsigned)(i / (block.x * block.y))};
          f.state = kRun;
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = r.stacks[i].data();
          f.ctx.uc_stack.ss_size = stack;
          f.ctx.uc_link = nullptr;
          makecontext(&f.ctx, fiber_main, 0);
        }
        run_block();
      }
}

}  // namespace emu

#define threadIdx (emu::rt().fibers[emu::rt().current].tid)
#define blockIdx (emu::rt().block_idx)
#define blockDim (emu::rt().block_dim)
#define gridDim (emu::rt().grid_dim)
#define __syncthreads() emu::syncthreads()
#define __shfl_down_sync(mask, v, offset) emu::shfl_down(mask, v, offset)
#define __ldg(p) (*(p))
#define __fdividef(a, b) ((a) / (b))
#define cudaGetLastError() cudaSuccess
