// Test-only stand-in for the CUDA runtime API under the CPU emulation (see fusedops_cuda_emu/emu.h):
// the vector types, the error and stream types, and the few runtime calls the host code makes.
#pragma once

#include <cstddef>

#define CUDART_VERSION 12000

#define FUSEDOPS_EMU_VECTOR_TYPES(T, name) \
  struct alignas(2 * sizeof(T)) name##2 {  \
    T x, y;                                \
  };                                       \
  struct name##3 {                         \
    T x, y, z;                             \
  };                                       \
  struct alignas(4 * sizeof(T)) name##4 {  \
    T x, y, z, w;                          \
  };
FUSEDOPS_EMU_VECTOR_TYPES(int, int)
FUSEDOPS_EMU_VECTOR_TYPES(unsigned int, uint)
FUSEDOPS_EMU_VECTOR_TYPES(float, float)
FUSEDOPS_EMU_VECTOR_TYPES(short, short)
FUSEDOPS_EMU_VECTOR_TYPES(unsigned short, ushort)
FUSEDOPS_EMU_VECTOR_TYPES(long long, longlong)
FUSEDOPS_EMU_VECTOR_TYPES(double, double)
#undef FUSEDOPS_EMU_VECTOR_TYPES

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

enum cudaError_t : int { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
enum cudaDeviceAttr : int { cudaDevAttrMaxThreadsPerBlock = 1, cudaDevAttrMultiProcessorCount = 16 };
struct CUstream_st;
using cudaStream_t = CUstream_st*;

cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t error);
