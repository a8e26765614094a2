// Products with block-quantized weights on the ILGPU backend. Shapes as IBackend documents them; the checks
// are Quantization/Quantize.cs's, shared with the CPU backend.
//   Q4_0: fused kernels that decode the weights where they are multiplied (kernels/TinyLlama.Kernels/
//     MatMulQ4.cs). Its bytes are handed to the kernels as 16-bit words, so they must start at an even byte
//     offset (a whole tensor always does; a view of whole rows does too, rows being 18-byte multiples).
//   Q8_0, Q4_K, Q6_K: w is expanded into a pooled buffer of x's dtype [N, K] by one dequantize kernel per
//     format (kernels/TinyLlama.Kernels/DequantizeBlocks.cs) and multiplied by the dense matmul (the tiled
//     GEMM where the device has one); the buffer goes back to the pool at once. Correct first: this reads w
//     once and writes and reads K N f32 more than a fused kernel would.
using ILGPU;
using ILGPU.Runtime;
using TinyLlama.Kernels;
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Ilgpu;

public sealed partial class IlgpuBackend
{
    public void MatMulQuantized(Tensor x, Tensor w, Tensor y)
    {
        const string op = "matmul_quantized";
        var (m, n, k, traits) = Quantize.CheckMatMulQuantized(x, w, y, op);
        if (traits.Type == QuantType.Q4_0)
        {
            MatMulQ4_0(x, w, y, m, n, k, op);
            return;
        }
        lock (gate)
        {
            CheckDense(x, op);
            CheckDense(y, op);
            Dense<byte>(w, op);
            if (m == 0 || n == 0) return;
            if ((long)n * k > int.MaxValue) throw new NotSupportedException($"{op}: expanding {traits.Name} w [{n}, {k}] exceeds int indexing");
            var expanded = Tensor.FromStorage(Allocate(x.DType, n * k), [n, k]);   // (N, K) values of w, pooled
            try
            {
                DequantizeInto(w, expanded, traits, n, k, op);
                MatMul(x, expanded.MT, y);
            }
            finally
            {
                ((IlgpuStorage)expanded.Storage).Dispose();   // later kernels on the stream run after the GEMM
            }
        }
    }

    /// <summary>y [M, N] = x @ dequantize(w)^T with Q4_0 weights through the fused kernels.</summary>
    private void MatMulQ4_0(Tensor x, Tensor w, Tensor y, int m, int n, int k, string op)
    {
        var shape = new Q4Shape { M = m, N = n, K = k };
        lock (gate)
        {
            var words = Words(w, op);
            if (x.DType == DType.F32)
            {
                var (xv, yv) = (Dense<float>(x, op), Dense<float>(y, op));
                MatMulQ4Kernels.Validate(shape, xv.Length, words.Length, yv.Length);
                if (m == 0 || n == 0) return;
                var version = MatMulQ4Kernels.Choose(m, SupportsTiledKernels);
                MatMulQ4Kernels.Launch(accelerator, Stream, new MatMulQ4Args(shape, xv, words, yv), version);
            }
            else
            {
                var (xv, yv) = (Dense<double>(x, op), Dense<double>(y, op));
                MatMulQ4Kernels.Validate(shape, xv.Length, words.Length, yv.Length);
                if (m == 0 || n == 0) return;
                Auto(MatMulQ4Kernels.MatMulQ4ForwardKernel1<double, F64>, accelerator.LoadAutoGroupedStreamKernel)(m * n, xv, words, yv, shape);
            }
        }
    }

    public void DequantizeBlocks(Tensor w, Tensor y)
    {
        const string op = "dequantize_blocks";
        var (n, k, traits) = Quantize.CheckDequantize(w, y, op);
        lock (gate) DequantizeInto(w, y, traits, n, k, op);
    }

    /// <summary>y [N, K] (f32 or f64, dense) = dequantize(w) by the format's kernel; called with the gate held.</summary>
    private void DequantizeInto(Tensor w, Tensor y, QuantTraits traits, int n, int k, string op)
    {
        if (traits.Type == QuantType.Q4_0)
        {
            var words = Words(w, op);
            if (n == 0) return;
            var shape = new Q4Shape { M = 0, N = n, K = k };
            if (y.DType == DType.F32)
                Auto(MatMulQ4Kernels.DequantizeQ4Kernel<float, F32>, accelerator.LoadAutoGroupedStreamKernel)(n * k, words, Dense<float>(y, op), shape);
            else
                Auto(MatMulQ4Kernels.DequantizeQ4Kernel<double, F64>, accelerator.LoadAutoGroupedStreamKernel)(n * k, words, Dense<double>(y, op), shape);
            return;
        }
        var bytes = Dense<byte>(w, op);
        if (y.DType == DType.F32) Dequantize<float, F32>(traits, bytes, Dense<float>(y, op), n, k);
        else Dequantize<double, F64>(traits, bytes, Dense<double>(y, op), n, k);
    }

    private void Dequantize<T, E>(QuantTraits traits, ArrayView<byte> w, ArrayView<T> y, int n, int k)
        where T : unmanaged where E : struct, IElement<T>
    {
        DequantizeBlocksKernels.Validate(traits.Name, traits.BlockSize, traits.BlockBytes, n, k, w.Length, y.Length);
        if (n == 0) return;
        var kernel = traits.Type switch
        {
            QuantType.Q8_0 => Auto(DequantizeBlocksKernels.DequantizeQ8_0Kernel<T, E>, accelerator.LoadAutoGroupedStreamKernel),
            QuantType.Q4_K => Auto(DequantizeBlocksKernels.DequantizeQ4_KKernel<T, E>, accelerator.LoadAutoGroupedStreamKernel),
            QuantType.Q6_K => Auto(DequantizeBlocksKernels.DequantizeQ6_KKernel<T, E>, accelerator.LoadAutoGroupedStreamKernel),
            _ => throw new NotSupportedException($"dequantize: no ILGPU kernel for {traits.Name}"),
        };
        kernel(n * k, w, y, k);
    }

    /// <summary>The bytes of Q4_0 weights w as 16-bit words (w must start at an even byte offset).</summary>
    private ArrayView<ushort> Words(Tensor w, string op)
    {
        if (w.Offset % 2 != 0)
            throw new ArgumentException($"{op}: q4 weights must start at an even byte offset, got {w.Offset}");
        return Dense<byte>(w, op).Cast<ushort>();
    }
}
