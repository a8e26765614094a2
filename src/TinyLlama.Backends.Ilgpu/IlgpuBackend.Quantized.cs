// Products with block-quantized weights on the ILGPU backend. Shapes as IBackend documents them; the checks
// are Quantization/Quantize.cs's, shared with the CPU backend. No format is expanded to a whole f32 matrix:
//   Q4_0: fused kernels that decode the weights where they are multiplied (kernels/TinyLlama.Kernels/
//     MatMulQ4.cs). Its bytes are handed to the kernels as 16-bit words, so they must start at an even byte
//     offset (a whole tensor always does; a view of whole rows does too, rows being 18-byte multiples).
//     Decoding (M <= 4, f32) can instead take the integer path (IntegerDotQ4.cs): x quantized to Q8_0 on the
//     device into a pooled buffer, int8 dots with the nibbles, one scale multiply per block; see Q4Decode.
//   Q8_0, Q4_K, Q6_K: the same three versions (naive, mat-vec for M <= 4, tiled GEMM) generic over the
//     format's block decoder (MatMulBlocks.cs, DequantizeBlocks.cs).
// The version follows MatMulQ4Kernels.Choose: f32 on accelerators with 32-lane warps and 256-thread groups
// takes the mat-vec or tiled kernel; f64 and other accelerators the one-thread-per-output kernel.
// DequantizeBlocks expands w by the per-format kernels (Q4_0's in MatMulQ4.cs, the others' in DequantizeBlocks.cs).
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using TinyLlama.Kernels;
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Ilgpu;

public sealed partial class IlgpuBackend
{
    /// <summary>
    /// How Q4_0 weights meet f32 activations when decoding (M &lt;= 4): <see cref="Q4DecodePath.Auto"/> (the
    /// default) takes the integer path on CUDA devices with dp4a (sm_61 and newer) and the f32 kernels
    /// elsewhere, where the integer path's portable dots save no work and add the activations' Q8_0 rounding.
    /// </summary>
    public Q4DecodePath Q4Decode { get; set; } = Q4DecodePath.Auto;

    /// <summary>True on CUDA devices whose PTX architecture has dp4a (sm_61 and newer).</summary>
    private bool HasDp4a => accelerator is CudaAccelerator cuda && cuda.Architecture is { } arch && arch >= CudaArchitecture.SM_61;

    /// <summary>Whether a decode-sized Q4_0 product takes the integer path under <see cref="Q4Decode"/>.</summary>
    internal bool UsesIntegerDecode => Q4Decode switch
    {
        Q4DecodePath.Integer => true,
        Q4DecodePath.Float => false,
        _ => HasDp4a,
    };

    public void MatMulQuantized(Tensor x, Tensor w, Tensor y)
    {
        const string op = "matmul_quantized";
        var (m, n, k, traits) = Quantize.CheckMatMulQuantized(x, w, y, op);
        if (traits.Type == QuantType.Q4_0)
        {
            MatMulQ4_0(x, w, y, m, n, k, op);
            return;
        }
        var shape = new Q4Shape { M = m, N = n, K = k };
        lock (gate)
        {
            var bytes = Dense<byte>(w, op);
            if (x.DType == DType.F32)
            {
                var args = new MatMulBlocksArgs(shape, Dense<float>(x, op), bytes, Dense<float>(y, op));
                var version = MatMulQ4Kernels.Choose(m, SupportsTiledKernels);
                switch (traits.Type)
                {
                    case QuantType.Q8_0: MatMulBlocksKernels.Launch<Q8_0Format>(accelerator, Stream, args, version); break;
                    case QuantType.Q4_K: MatMulBlocksKernels.Launch<Q4_KFormat>(accelerator, Stream, args, version); break;
                    case QuantType.Q6_K: MatMulBlocksKernels.Launch<Q6_KFormat>(accelerator, Stream, args, version); break;
                    default: throw new NotSupportedException($"{op}: no ILGPU kernel for {traits.Name}");
                }
            }
            else
            {
                var (xv, yv) = (Dense<double>(x, op), Dense<double>(y, op));
                switch (traits.Type)
                {
                    case QuantType.Q8_0: MatMulBlocksF64<Q8_0Format>(xv, bytes, yv, shape); break;
                    case QuantType.Q4_K: MatMulBlocksF64<Q4_KFormat>(xv, bytes, yv, shape); break;
                    case QuantType.Q6_K: MatMulBlocksF64<Q6_KFormat>(xv, bytes, yv, shape); break;
                    default: throw new NotSupportedException($"{op}: no ILGPU kernel for {traits.Name}");
                }
            }
        }
    }

    /// <summary>y [M, N] = x @ dequantize(w)^T in f64 by the one-thread-per-output kernel; called with the gate held.</summary>
    private void MatMulBlocksF64<TFormat>(ArrayView<double> x, ArrayView<byte> w, ArrayView<double> y, Q4Shape s) where TFormat : struct, IBlockFormat
    {
        MatMulBlocksKernels.Validate<TFormat>(s, x.Length, w.Length, y.Length);
        if (s.M == 0 || s.N == 0) return;
        Auto(MatMulBlocksKernels.MatMulBlocksForwardKernel1<TFormat, double, F64>, accelerator.LoadAutoGroupedStreamKernel)(s.M * s.N, x, w, y, s);
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
                var args = new MatMulQ4Args(shape, xv, words, yv);
                if (m <= MatMulQ4Kernels.MatVecMaxRows && UsesIntegerDecode)
                {
                    MatVecQ4_0Integer(args);
                    return;
                }
                var version = MatMulQ4Kernels.Choose(m, SupportsTiledKernels);
                MatMulQ4Kernels.Launch(accelerator, Stream, args, version);
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

    /// <summary>The integer decode path (IntegerDotQ4.cs): x quantized into a pooled buffer, then the int8 dots; called with the gate held.</summary>
    private void MatVecQ4_0Integer(in MatMulQ4Args args)
    {
        var s = args.Shape;
        var xq = (IlgpuStorage)Allocate(DType.I32, s.M * s.Blocks * IntegerDotQ4Kernels.QuantizedBlockInts);   // (M, K / 32, 9) ints, pooled
        try
        {
            IntegerDotQ4Kernels.Launch(accelerator, Stream, args, xq.View<int>(), HasDp4a, SupportsTiledKernels);
        }
        finally
        {
            xq.Dispose();   // later kernels on the stream run after the dots
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
        int groups = n * k / 4;   // one thread per 4 weights (K is a multiple of 32)
        switch (traits.Type)
        {
            case QuantType.Q8_0: Auto(DequantizeBlocksKernels.DequantizeKernel<Q8_0Format, T, E>, accelerator.LoadAutoGroupedStreamKernel)(groups, w, y, k); break;
            case QuantType.Q4_K: Auto(DequantizeBlocksKernels.DequantizeKernel<Q4_KFormat, T, E>, accelerator.LoadAutoGroupedStreamKernel)(groups, w, y, k); break;
            case QuantType.Q6_K: Auto(DequantizeBlocksKernels.DequantizeKernel<Q6_KFormat, T, E>, accelerator.LoadAutoGroupedStreamKernel)(groups, w, y, k); break;
            default: throw new NotSupportedException($"dequantize: no ILGPU kernel for {traits.Name}");
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

/// <summary>How the ILGPU backend multiplies Q4_0 weights with f32 activations when decoding (M &lt;= 4).</summary>
public enum Q4DecodePath
{
    /// <summary>Integer on CUDA devices with dp4a (sm_61+), float elsewhere.</summary>
    Auto,
    /// <summary>The f32 kernels: nibbles decoded to f32 and multiplied with x as it is.</summary>
    Float,
    /// <summary>x quantized to Q8_0 on the device, int8 dots (dp4a where available), one scale multiply per block.</summary>
    Integer,
}
