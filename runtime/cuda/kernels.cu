// deeplab-trt CUDA kernels: ONE source, compiled at run time with NVRTC (runtime/cuda/compile.py).
//
// Every kernel reproduces a numpy reference in runtime/preprocess.py or runtime/postprocess.py:
//   preprocess_*        == preprocess()              (OpenCV half-pixel bilinear on float pixels)
//   argmax_*            == logits.argmax(axis=0)     (first maximum wins on ties)
//   upsample_argmax_*   == upsample_argmax()         (4 neighbours agree -> done, else blend)
//   gather_nearest_*    == labels_from_output() for the logits/labels heads (nearest_taps)
//   render_*            == render()                  (overlay / mask / labels)
//
// Numerics. Sampling positions and weights are NOT computed here: the host computes them once per
// geometry with the reference's own formulas (runtime/cuda/tables.py) and passes them as small
// tables, so the taps are bit-identical to the references. The module is compiled WITHOUT
// --use_fast_math and WITH --fmad=false: a fused multiply-add rounds once where numpy rounds twice,
// which would flip the argmax of near-tied boundary pixels and break "labels exactly".
//
// Layout conventions: frames are uint8 HWC with a row pitch in bytes and a pixel stride in bytes
// (3 for BGR/RGB, 4 for BGRx); model tensors are one image's dense CHW planes (the caller offsets
// the pointer for batch element n); label maps are dense with a row pitch in elements.
//
// The file also compiles as plain C++ (no CUDA headers, no __syncthreads, no shared memory), which
// the tests use to run the very same code on the CPU under a small grid emulator.

typedef unsigned char u8;
typedef unsigned short half_bits;  // IEEE binary16 stored as raw bits (no cuda_fp16.h needed)

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------
__device__ __forceinline__ float half_to_float(half_bits h) {
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else
    _Float16 v;
    __builtin_memcpy(&v, &h, 2);
    return (float)v;
#endif
}

__device__ __forceinline__ half_bits float_to_half(float f) {  // round to nearest even, like numpy
#ifdef __CUDA_ARCH__
    half_bits h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    _Float16 v = (_Float16)f;
    half_bits h;
    __builtin_memcpy(&h, &v, 2);
    return h;
#endif
}

__device__ __forceinline__ float load_value(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load_value(const half_bits* p, long long i) { return half_to_float(p[i]); }
__device__ __forceinline__ void store_value(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store_value(half_bits* p, long long i, float v) { p[i] = float_to_half(v); }

__device__ __forceinline__ bool pixel_2d(int width, int height, int& x, int& y) {
    x = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    y = (int)(blockIdx.y * blockDim.y + threadIdx.y);
    return x < width && y < height;
}

// ------------------------------------------------------------------------------------------
// preprocess: uint8 HWC frame -> normalised CHW (fp32 or fp16), stretch or letterbox
// ------------------------------------------------------------------------------------------
// One thread per model-input pixel (x, y). Inside the content rectangle [top, top+content_h) x
// [left, left+content_w) it blends 2x2 source pixels with OpenCV's float INTER_LINEAR formula
// (horizontal pass, then vertical: h = p0*a0 + p1*a1; v = h0*b0 + h1*b1), picks the source channel
// for each output channel (BGR->RGB is a channel map), and normalises (v - mean255) * inv_std255.
// Outside it writes 0 (letterbox padding = the mean colour after normalisation).
// x_index/y_index: 2 source indices per content column/row; x_weight/y_weight: 2 weights each.
template <typename OutT>
__device__ __forceinline__ void preprocess_impl(
    const u8* __restrict__ src, long long src_pitch, int src_pixel_stride,
    OutT* __restrict__ dst, int dst_h, int dst_w,
    int top, int left, int content_h, int content_w,
    const int* __restrict__ x_index, const float* __restrict__ x_weight,
    const int* __restrict__ y_index, const float* __restrict__ y_weight,
    int ch0, int ch1, int ch2,
    float mean0, float mean1, float mean2, float scale0, float scale1, float scale2) {
    int x, y;
    if (!pixel_2d(dst_w, dst_h, x, y)) return;
    const long long plane = (long long)dst_h * dst_w;
    const long long o = (long long)y * dst_w + x;
    const int cx = x - left, cy = y - top;
    if (cx < 0 || cy < 0 || cx >= content_w || cy >= content_h) {
        store_value(dst, o, 0.0f);
        store_value(dst, o + plane, 0.0f);
        store_value(dst, o + 2 * plane, 0.0f);
        return;
    }
    const long long sx0 = (long long)x_index[2 * cx] * src_pixel_stride;
    const long long sx1 = (long long)x_index[2 * cx + 1] * src_pixel_stride;
    const float a0 = x_weight[2 * cx], a1 = x_weight[2 * cx + 1];
    const u8* r0 = src + (long long)y_index[2 * cy] * src_pitch;
    const u8* r1 = src + (long long)y_index[2 * cy + 1] * src_pitch;
    const float b0 = y_weight[2 * cy], b1 = y_weight[2 * cy + 1];
    const int chan[3] = {ch0, ch1, ch2};
    const float mean[3] = {mean0, mean1, mean2};
    const float scale[3] = {scale0, scale1, scale2};
#pragma unroll
    for (int c = 0; c < 3; ++c) {
        const int k = chan[c];
        const float h0 = (float)r0[sx0 + k] * a0 + (float)r0[sx1 + k] * a1;
        const float h1 = (float)r1[sx0 + k] * a0 + (float)r1[sx1 + k] * a1;
        const float v = h0 * b0 + h1 * b1;
        store_value(dst, o + c * plane, (v - mean[c]) * scale[c]);
    }
}

#define DLT_PREPROCESS_ENTRY(NAME, OUT_T)                                                          \
    extern "C" __global__ void NAME(                                                               \
        const u8* src, long long src_pitch, int src_pixel_stride, OUT_T* dst, int dst_h, int dst_w, \
        int top, int left, int content_h, int content_w, const int* x_index, const float* x_weight, \
        const int* y_index, const float* y_weight, int ch0, int ch1, int ch2, float mean0,          \
        float mean1, float mean2, float scale0, float scale1, float scale2) {                      \
        preprocess_impl<OUT_T>(src, src_pitch, src_pixel_stride, dst, dst_h, dst_w, top, left,    \
                               content_h, content_w, x_index, x_weight, y_index, y_weight, ch0,    \
                               ch1, ch2, mean0, mean1, mean2, scale0, scale1, scale2);             \
    }
DLT_PREPROCESS_ENTRY(preprocess_u8_f32, float)
DLT_PREPROCESS_ENTRY(preprocess_u8_f16, half_bits)

// ------------------------------------------------------------------------------------------
// argmax over channels: C x n logits -> n int32 labels (first maximum wins, like numpy)
// ------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void argmax_impl(const T* __restrict__ logits, int channels, long long n,
                                            int* __restrict__ labels) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float best = load_value(logits, i);
    int arg = 0;
    for (int c = 1; c < channels; ++c) {
        const float v = load_value(logits, (long long)c * n + i);
        if (v > best) { best = v; arg = c; }
    }
    labels[i] = arg;
}

extern "C" __global__ void argmax_f32(const float* logits, int channels, long long n, int* labels) {
    argmax_impl<float>(logits, channels, n, labels);
}
extern "C" __global__ void argmax_f16(const half_bits* logits, int channels, long long n, int* labels) {
    argmax_impl<half_bits>(logits, channels, n, labels);
}

// ------------------------------------------------------------------------------------------
// fused upsample + argmax: C x h x w low-res logits -> H x W labels at the frame's resolution
// ------------------------------------------------------------------------------------------
// One thread per frame pixel. Its bilinear taps are rows (y0, y1) and columns (x0, x1) of the
// low-res map. `low` holds argmax_*'s per-cell labels: when the 4 corners share a label, the blend
// (a convex combination) cannot beat it and that label is the answer; otherwise blend all C
// channels with the reference's float32 formula and take the first maximum. No full-resolution
// logits tensor exists at any point.
template <typename T, typename L>
__device__ __forceinline__ void upsample_argmax_impl(
    const T* __restrict__ logits, int channels, int low_h, int low_w, const int* __restrict__ low,
    const int* __restrict__ y_index, const float* __restrict__ y_weight,
    const int* __restrict__ x_index, const float* __restrict__ x_weight,
    L* __restrict__ labels, long long label_pitch, int out_h, int out_w) {
    int x, y;
    if (!pixel_2d(out_w, out_h, x, y)) return;
    const int y0 = y_index[2 * y], y1 = y_index[2 * y + 1];
    const int x0 = x_index[2 * x], x1 = x_index[2 * x + 1];
    const long long i00 = (long long)y0 * low_w + x0, i01 = (long long)y0 * low_w + x1;
    const long long i10 = (long long)y1 * low_w + x0, i11 = (long long)y1 * low_w + x1;
    const int l00 = low[i00];
    int label = l00;
    if (low[i01] != l00 || low[i10] != l00 || low[i11] != l00) {
        const float wy = y_weight[y], wx = x_weight[x];
        const long long plane = (long long)low_h * low_w;
        float best = 0.0f;
        for (int c = 0; c < channels; ++c) {
            const long long base = (long long)c * plane;
            const float a = load_value(logits, base + i00), b = load_value(logits, base + i01);
            const float cc = load_value(logits, base + i10), d = load_value(logits, base + i11);
            const float top = a + (b - a) * wx;
            const float bottom = cc + (d - cc) * wx;
            const float v = top + (bottom - top) * wy;
            if (c == 0 || v > best) { best = v; label = c; }
        }
    }
    labels[(long long)y * label_pitch + x] = (L)label;
}

#define DLT_UPSAMPLE_ENTRY(NAME, T, L)                                                              \
    extern "C" __global__ void NAME(const T* logits, int channels, int low_h, int low_w,           \
                                    const int* low, const int* y_index, const float* y_weight,     \
                                    const int* x_index, const float* x_weight, L* labels,          \
                                    long long label_pitch, int out_h, int out_w) {                 \
        upsample_argmax_impl<T, L>(logits, channels, low_h, low_w, low, y_index, y_weight, x_index, \
                                   x_weight, labels, label_pitch, out_h, out_w);                   \
    }
DLT_UPSAMPLE_ENTRY(upsample_argmax_f32_u8, float, u8)
DLT_UPSAMPLE_ENTRY(upsample_argmax_f16_u8, half_bits, u8)
DLT_UPSAMPLE_ENTRY(upsample_argmax_f32_i32, float, int)
DLT_UPSAMPLE_ENTRY(upsample_argmax_f16_i32, half_bits, int)

// ------------------------------------------------------------------------------------------
// nearest gather: model-resolution labels -> frame-resolution labels (logits and labels heads)
// ------------------------------------------------------------------------------------------
// y_index[y] / x_index[x] are the reference's nearest_taps. The cast to L wraps like numpy's astype.
template <typename S, typename L>
__device__ __forceinline__ void gather_nearest_impl(
    const S* __restrict__ src, long long src_pitch, const int* __restrict__ y_index,
    const int* __restrict__ x_index, L* __restrict__ labels, long long label_pitch, int out_h, int out_w) {
    int x, y;
    if (!pixel_2d(out_w, out_h, x, y)) return;
    labels[(long long)y * label_pitch + x] = (L)src[(long long)y_index[y] * src_pitch + x_index[x]];
}

#define DLT_GATHER_ENTRY(NAME, S, L)                                                               \
    extern "C" __global__ void NAME(const S* src, long long src_pitch, const int* y_index,        \
                                    const int* x_index, L* labels, long long label_pitch,         \
                                    int out_h, int out_w) {                                       \
        gather_nearest_impl<S, L>(src, src_pitch, y_index, x_index, labels, label_pitch, out_h, out_w); \
    }
DLT_GATHER_ENTRY(gather_nearest_i32_u8, int, u8)
DLT_GATHER_ENTRY(gather_nearest_i32_i32, int, int)
DLT_GATHER_ENTRY(gather_nearest_i64_u8, long long, u8)
DLT_GATHER_ENTRY(gather_nearest_i64_i32, long long, int)
DLT_GATHER_ENTRY(gather_nearest_u8_u8, u8, u8)

// ------------------------------------------------------------------------------------------
// render: labels -> overlay / colour mask / grey labels, on the frame (in place when dst == src)
// ------------------------------------------------------------------------------------------
// mode 0 overlay: uint8(frame * (1 - alpha) + colour * alpha + 0.5), in float32 like the reference
// mode 1 mask:    colour
// mode 2 labels:  uint8(label) in all three channels
// lut: lut_n x 3 bytes in the frame's channel order (BGR for OpenCV frames). Labels past the table
// are clamped to its last entry (the reference would raise; a kernel must not read out of bounds).
// A 4th byte per pixel (BGRx), if any, is left untouched.
template <typename L>
__device__ __forceinline__ void render_impl(
    const u8* src, long long src_pitch, u8* dst, long long dst_pitch, int pixel_stride, int height,
    int width, const L* __restrict__ labels, long long label_pitch, const u8* __restrict__ lut,
    int lut_n, int mode, float alpha, float one_minus_alpha) {
    int x, y;
    if (!pixel_2d(width, height, x, y)) return;
    long long label = (long long)labels[(long long)y * label_pitch + x];
    const u8* s = src + (long long)y * src_pitch + (long long)x * pixel_stride;
    u8* d = dst + (long long)y * dst_pitch + (long long)x * pixel_stride;
    if (mode == 2) {
        const u8 g = (u8)label;
        d[0] = g; d[1] = g; d[2] = g;
        return;
    }
    if (label < 0) label = 0;
    if (label >= lut_n) label = lut_n - 1;
    const u8* colour = lut + 3 * label;
    if (mode == 1) {
        d[0] = colour[0]; d[1] = colour[1]; d[2] = colour[2];
        return;
    }
    const float f0 = (float)s[0], f1 = (float)s[1], f2 = (float)s[2];
    d[0] = (u8)(f0 * one_minus_alpha + (float)colour[0] * alpha + 0.5f);
    d[1] = (u8)(f1 * one_minus_alpha + (float)colour[1] * alpha + 0.5f);
    d[2] = (u8)(f2 * one_minus_alpha + (float)colour[2] * alpha + 0.5f);
}

#define DLT_RENDER_ENTRY(NAME, L)                                                                  \
    extern "C" __global__ void NAME(const u8* src, long long src_pitch, u8* dst, long long dst_pitch, \
                                    int pixel_stride, int height, int width, const L* labels,      \
                                    long long label_pitch, const u8* lut, int lut_n, int mode,     \
                                    float alpha, float one_minus_alpha) {                          \
        render_impl<L>(src, src_pitch, dst, dst_pitch, pixel_stride, height, width, labels,       \
                       label_pitch, lut, lut_n, mode, alpha, one_minus_alpha);                     \
    }
DLT_RENDER_ENTRY(render_u8, u8)
DLT_RENDER_ENTRY(render_i32, int)

// Every entry point, for tools that need the list (the CPU grid emulator in the tests).
#define DLT_KERNELS(X)                                                                             \
    X(preprocess_u8_f32) X(preprocess_u8_f16) X(argmax_f32) X(argmax_f16)                          \
    X(upsample_argmax_f32_u8) X(upsample_argmax_f16_u8) X(upsample_argmax_f32_i32)                 \
    X(upsample_argmax_f16_i32) X(gather_nearest_i32_u8) X(gather_nearest_i32_i32)                  \
    X(gather_nearest_i64_u8) X(gather_nearest_i64_i32) X(gather_nearest_u8_u8) X(render_u8)        \
    X(render_i32)
