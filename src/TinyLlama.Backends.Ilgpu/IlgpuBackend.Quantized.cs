// Int4 products with Q4_0 weights on the ILGPU backend (kernels/TinyLlama.Kernels/MatMulQ4.cs). Shapes as
// IBackend documents them; the checks are Quantization/Quantize.cs's, shared with the CPU backend. The
// weights' bytes are handed to the kernels as 16-bit words, so they must start at an even byte offset (a
// whole tensor always does; a view of whole rows does too, rows being 18-byte multiples).
using ILGPU;
using ILGPU.Runtime;
using TinyLlama.Kernels;
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Ilgpu;

public sealed partial class IlgpuBackend
{
    public void MatMulQ4(Tensor x, Tensor w, Tensor y)
    {
        const string op = "matmul_q4";
        var (m, n, k) = Quantize.CheckMatMulQ4(x, w, y, op);
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

    public void DequantizeQ4(Tensor w, Tensor y)
    {
        const string op = "dequantize_q4";
        var (n, k) = Quantize.CheckDequantizeQ4(w, y, op);
        var shape = new Q4Shape { M = 0, N = n, K = k };
        lock (gate)
        {
            var words = Words(w, op);
            if (n == 0) return;
            if (y.DType == DType.F32)
                Auto(MatMulQ4Kernels.DequantizeQ4Kernel<float, F32>, accelerator.LoadAutoGroupedStreamKernel)(n * k, words, Dense<float>(y, op), shape);
            else
                Auto(MatMulQ4Kernels.DequantizeQ4Kernel<double, F64>, accelerator.LoadAutoGroupedStreamKernel)(n * k, words, Dense<double>(y, op), shape);
        }
    }

    /// <summary>The bytes of Q4_0 weights w as 16-bit words (w must start at an even byte offset).</summary>
    private ArrayView<ushort> Words(Tensor w, string op)
    {
        if (w.Offset % 2 != 0)
            throw new ArgumentException($"{op}: q4 weights must start at an even byte offset, got {w.Offset}");
        return Dense<byte>(w, op).Cast<ushort>();
    }
}
