// Tensor-level quantization: float weights [N, K] to blocks of a writable format (Q4_0 or Q8_0: a byte
// tensor of the format's dtype [N, K / BlockSize * BlockBytes], see QuantType.cs for the layouts) and any
// block tensor (also the read-only K-quants) back to floats, plus the shape rules every backend's block
// product and dequantization check. Quantizing runs the reference quantizer on the host (it is a one-off
// conversion of a checkpoint, and the reference is what makes the bytes identical to llama.cpp's);
// dequantizing and the product run on the tensor's backend.
using TinyLlama.Tensors;

namespace TinyLlama.Quantization;

/// <summary>Quantize and dequantize whole tensors.</summary>
public static class Quantize
{
    /// <summary>w [N, K] (any float dtype, K a multiple of 32) as Q4_0 blocks [N, K / 32 * 18] on w's device.</summary>
    public static Tensor Q4_0(Tensor w) => ToBlocks(w, QuantType.Q4_0);

    /// <summary>
    /// w [N, K] (any float dtype, K a multiple of the block size) as blocks of <paramref name="type"/>
    /// [N, K / BlockSize * BlockBytes] (dtype <c>type.ToDType()</c>) on w's device. Only Q4_0 and Q8_0 can be
    /// written; the K-quants throw NotSupportedException.
    /// </summary>
    public static Tensor ToBlocks(Tensor w, QuantType type)
    {
        var traits = type.Traits();
        string op = $"quantize {traits.Name}";
        if (!traits.CanQuantize)
            throw new NotSupportedException($"{traits.Name}: writing is not supported; use q4_0 or q8_0");
        if (w.Rank != 2 || !w.DType.IsFloat())
            throw new ArgumentException($"{op}: expected a float matrix [N, K], got {w.DType.Name()} {Shapes.Format(w.Shape)}");
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
                throw new ArgumentException($"{op}: row {i}: {e.Message}", e);
            }
        }
        return FromBytes(bytes, n, type.ToDType(), w.Device);
    }

    /// <summary>
    /// Raw block bytes (rows of whole blocks back to back, as GGUF stores them) as a block tensor of
    /// <paramref name="dtype"/> [rows, bytes.Length / rows] on <paramref name="device"/>.
    /// </summary>
    public static Tensor FromBytes(byte[] bytes, int rows, DType dtype, Device? device = null)
    {
        var traits = QuantTypes.FromDType(dtype).Traits();
        if (rows <= 0 || bytes.Length % rows != 0)
            throw new ArgumentException($"{traits.Name} blocks: {bytes.Length} bytes do not split into {rows} equal rows");
        int rowBytes = bytes.Length / rows;
        traits.RowLength(rowBytes);                                   // throws unless whole blocks
        var t = new Tensor([rows, rowBytes], dtype, device ?? Device.Cpu);
        t.Backend.Upload<byte>(bytes, t.Storage);
        return t;
    }

    /// <summary>
    /// Random valid blocks of <paramref name="type"/> for a [rows, K] matrix (tests, checks and benchmarks of
    /// the formats that cannot be written): uniform random bytes, with every binary16 scale field replaced by a
    /// finite value of magnitude 2^-8 .. 2^-4 and random sign.
    /// </summary>
    internal static Tensor RandomBlocks(QuantType type, int rows, int k, Generator generator, Device? device = null)
    {
        var traits = type.Traits();
        int rowBytes = traits.RowBytes(k);
        var bytes = new byte[(long)rows * rowBytes];
        for (int i = 0; i < bytes.Length; i++) bytes[i] = (byte)generator.NextInt(256);
        for (int b = 0; b < bytes.Length; b += traits.BlockBytes)
            foreach (int o in traits.HalfScaleOffsets)
            {
                int exponent = 15 - 8 + generator.NextInt(4);              // biased binary16 exponent: 2^-8 .. 2^-5 (times 1.mantissa)
                int bits = (generator.NextInt(2) << 15) | (exponent << 10) | generator.NextInt(1024);
                bytes[b + o] = (byte)bits;
                bytes[b + o + 1] = (byte)(bits >> 8);
            }
        return FromBytes(bytes, rows, type.ToDType(), device);
    }

    /// <summary>The values of block weights q [N, row bytes] (any block dtype) as a [N, K] tensor of <paramref name="dtype"/> (F32 or F64).</summary>
    public static Tensor Dequantize(Tensor q, DType dtype = DType.F32)
    {
        var (n, k, traits) = CheckBlockWeight(q, "dequantize");
        if (dtype is not (DType.F32 or DType.F64))
            throw new ArgumentException($"dequantize {traits.Name}: the result must be f32 or f64, got {dtype.Name()}");
        var y = Tensor.Zeros([n, k], dtype, q.Device);
        q.Backend.DequantizeBlocks(q, y);
        return y;
    }

    /// <summary>The values of Q4_0 blocks q [N, K / 32 * 18] as a [N, K] tensor of <paramref name="dtype"/> (F32 or F64).</summary>
    public static Tensor DequantizeQ4_0(Tensor q, DType dtype = DType.F32)
    {
        if (q.DType != DType.Q4)
            throw new ArgumentException($"dequantize q4_0: expected q4_0 blocks, got {q.DType.Name()} {Shapes.Format(q.Shape)}");
        return Dequantize(q, dtype);
    }

    /// <summary>
    /// (N, K, traits) of block weights w [N, K / BlockSize * BlockBytes] of any block dtype (contiguous);
    /// throws a one-line error naming <paramref name="op"/> otherwise.
    /// </summary>
    public static (int N, int K, QuantTraits Traits) CheckBlockWeight(Tensor w, string op)
    {
        if (!w.DType.IsQuantized() || w.Rank != 2 || !w.IsContiguous)
            throw new ArgumentException($"{op}: weights must be contiguous blocks [N, row bytes] of q4_0, q8_0, q4_K or q6_K, got {w.DType.Name()} {Shapes.Format(w.Shape)}{(w.IsContiguous ? "" : " (strided)")}");
        var traits = QuantTypes.FromDType(w.DType).Traits();
        if (w.Size(1) == 0 || w.Size(1) % traits.BlockBytes != 0)
            throw new ArgumentException($"{op}: a row of {w.Size(1)} bytes is not a whole number of {traits.BlockBytes}-byte {traits.Name} blocks");
        return (w.Size(0), w.Size(1) / traits.BlockBytes * traits.BlockSize, traits);
    }

    /// <summary>(N, K, traits) of y [N, K] = dequantize(w) with y contiguous f32 or f64; throws a one-line error otherwise.</summary>
    public static (int N, int K, QuantTraits Traits) CheckDequantize(Tensor w, Tensor y, string op)
    {
        var (n, k, traits) = CheckBlockWeight(w, op);
        if (y.Rank != 2 || y.Size(0) != n || y.Size(1) != k || y.DType is not (DType.F32 or DType.F64) || !y.IsContiguous)
            throw new ArgumentException($"{op}: expected a contiguous f32 or f64 y [{n}, {k}] for {traits.Name} w {Shapes.Format(w.Shape)}, got {y.DType.Name()} {Shapes.Format(y.Shape)}");
        return (n, k, traits);
    }

    /// <summary>(M, N, K, traits) of y [M, N] = x [M, K] @ dequantize(w [N, row bytes])^T for any block dtype; throws a one-line error otherwise.</summary>
    public static (int M, int N, int K, QuantTraits Traits) CheckMatMulQuantized(Tensor x, Tensor w, Tensor y, string op)
    {
        var (n, k, traits) = CheckBlockWeight(w, op);
        if (x.Rank != 2 || y.Rank != 2 || x.Size(1) != k || y.Size(0) != x.Size(0) || y.Size(1) != n)
            throw new ArgumentException($"{op}: x [M, {k}] @ {traits.Name} w [{n}, {k}]^T -> y [M, {n}] expected, got x {Shapes.Format(x.Shape)}, y {Shapes.Format(y.Shape)}");
        if (x.DType is not (DType.F32 or DType.F64) || y.DType != x.DType)
            throw new ArgumentException($"{op}: x and y must be both f32 or both f64, got {x.DType.Name()} and {y.DType.Name()}");
        if (!x.IsContiguous || !y.IsContiguous)
            throw new ArgumentException($"{op}: x and y must be contiguous");
        return (x.Size(0), n, k, traits);
    }
}
