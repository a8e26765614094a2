// Tensor-level quantization: float weights [N, K] to Q4_0 blocks (a DType.Q4 byte tensor [N, K / 32 * 18],
// see QuantType.cs for the layout) and back, and the shape rules every backend's int4 product checks.
// Quantizing runs the reference quantizer on the host (it is a one-off conversion of a checkpoint, and the
// reference is what makes the bytes identical to llama.cpp's); dequantizing and the product run on the
// tensor's backend.
using TinyLlama.Tensors;

namespace TinyLlama.Quantization;

/// <summary>Quantize and dequantize whole tensors.</summary>
public static class Quantize
{
    /// <summary>w [N, K] (any float dtype, K a multiple of 32) as Q4_0 blocks [N, K / 32 * 18] on w's device.</summary>
    public static Tensor Q4_0(Tensor w)
    {
        if (w.Rank != 2 || !w.DType.IsFloat())
            throw new ArgumentException($"quantize q4_0: expected a float matrix [N, K], got {w.DType.Name()} {Shapes.Format(w.Shape)}");
        var traits = QuantType.Q4_0.Traits();
        int n = w.Size(0), k = w.Size(1), rowBytes = traits.RowBytes(k);
        var values = w.Contiguous().ToArray<float>();
        var bytes = new byte[(long)n * rowBytes];
        for (int i = 0; i < n; i++)
        {
            try
            {
                traits.Quantize(values.AsSpan(i * k, k), bytes.AsSpan(i * rowBytes, rowBytes));
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"quantize q4_0: row {i}: {e.Message}", e);
            }
        }
        return Tensor.FromArray(bytes, [n, rowBytes], w.Device);
    }

    /// <summary>The values of Q4_0 blocks q [N, K / 32 * 18] as a [N, K] tensor of <paramref name="dtype"/> (F32 or F64).</summary>
    public static Tensor DequantizeQ4_0(Tensor q, DType dtype = DType.F32)
    {
        var (n, k) = CheckQ4Weight(q, "dequantize q4_0");
        var y = Tensor.Zeros([n, k], dtype, q.Device);
        q.Backend.DequantizeQ4(q, y);
        return y;
    }

    /// <summary>(N, K) of Q4_0 weights w [N, K / 32 * 18]; throws a one-line error naming <paramref name="op"/> otherwise.</summary>
    public static (int N, int K) CheckQ4Weight(Tensor w, string op)
    {
        if (w.DType != DType.Q4 || w.Rank != 2 || !w.IsContiguous)
            throw new ArgumentException($"{op}: weights must be contiguous q4 blocks [N, K / 32 * 18], got {w.DType.Name()} {Shapes.Format(w.Shape)}{(w.IsContiguous ? "" : " (strided)")}");
        if (w.Size(1) == 0 || w.Size(1) % 18 != 0)
            throw new ArgumentException($"{op}: a row of {w.Size(1)} bytes is not a whole number of 18-byte q4_0 blocks");
        return (w.Size(0), w.Size(1) / 18 * 32);
    }

    /// <summary>(N, K) of y [N, K] = dequantize(w [N, K / 32 * 18]) with y contiguous f32 or f64; throws a one-line error otherwise.</summary>
    public static (int N, int K) CheckDequantizeQ4(Tensor w, Tensor y, string op)
    {
        var (n, k) = CheckQ4Weight(w, op);
        if (y.Rank != 2 || y.Size(0) != n || y.Size(1) != k || y.DType is not (DType.F32 or DType.F64) || !y.IsContiguous)
            throw new ArgumentException($"{op}: expected a contiguous f32 or f64 y [{n}, {k}], got {y.DType.Name()} {Shapes.Format(y.Shape)}");
        return (n, k);
    }

    /// <summary>(M, N, K) of y [M, N] = x [M, K] @ dequantize(w [N, K / 32 * 18])^T; throws a one-line error otherwise.</summary>
    public static (int M, int N, int K) CheckMatMulQ4(Tensor x, Tensor w, Tensor y, string op)
    {
        var (n, k) = CheckQ4Weight(w, op);
        if (x.Rank != 2 || y.Rank != 2 || x.Size(1) != k || y.Size(0) != x.Size(0) || y.Size(1) != n)
            throw new ArgumentException($"{op}: x [M, {k}] @ q4_0 w [{n}, {k}]^T -> y [M, {n}] expected, got x {Shapes.Format(x.Shape)}, y {Shapes.Format(y.Shape)}");
        if (x.DType is not (DType.F32 or DType.F64) || y.DType != x.DType)
            throw new ArgumentException($"{op}: x and y must be both f32 or both f64, got {x.DType.Name()} and {y.DType.Name()}");
        if (!x.IsContiguous || !y.IsContiguous)
            throw new ArgumentException($"{op}: x and y must be contiguous");
        return (x.Size(0), n, k);
    }
}
