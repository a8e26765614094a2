// Copy (strided, every dtype conversion, exact rounding to f16/bf16), Fill, Unary, Binary and Where on
// the ILGPU backend (CPU accelerator) against the CPU backend, on permuted, sliced and broadcast views.
using TinyLlama.Backends;
using TinyLlama.Tensors;
using static TinyLlama.Tests.Ilgpu.IlgpuTestUtil;

namespace TinyLlama.Tests.Ilgpu;

[Collection("ilgpu")]
public class IlgpuElementwiseTests
{
    [Theory]
    [MemberData(nameof(ComputeTypes), MemberType = typeof(IlgpuTestUtil))]
    public void CopyOfStridedViewsMatchesCpu(DType dtype)
    {
        // source: permuted, then sliced with a step; destination: a transposed view of a dense tensor
        var (src, srcDev) = Both(RandN(1, dtype, 5, 7, 3), t => t.Permute(2, 0, 1).Slice(2, 1, 7, 2));   // [3, 5, 3]
        var (dst, dstDev) = Both(Tensor.Zeros([3, 3, 5], dtype), t => t.Permute(0, 2, 1));                // [3, 5, 3] view
        Cpu.Copy(src, dst);
        Backend.Copy(srcDev, dstDev);
        AssertEqual(dst, dstDev, "copy into a transposed view");

        // broadcast source (stride 0) into a dense destination
        var (row, rowDev) = Both(RandN(2, dtype, 1, 6), t => t.Expand(4, 6));
        var (d2, d2Dev) = Zeros(dtype, 4, 6);
        Cpu.Copy(row, d2);
        Backend.Copy(rowDev, d2Dev);
        AssertEqual(d2, d2Dev, "copy of an expanded row");
    }

    /// <summary>Values that exercise rounding: ties, overflow to inf, subnormals, signed zero, NaN and inf.</summary>
    private static double[] ConversionValues()
    {
        var list = new List<double>
        {
            0.0, -0.0, 1.0, -1.0, 65504, 65519.99, 65520, -65520, 65536, 1e10, -1e10, double.MaxValue,
            Math.Pow(2, -24), Math.Pow(2, -25), 1.5 * Math.Pow(2, -25), Math.Pow(2, -26), 3 * Math.Pow(2, -25), 6.097555160522461e-5, 6.103515625e-5,
            1 + Math.Pow(2, -11), 1 + 3 * Math.Pow(2, -11), 1 + Math.Pow(2, -8), 1 + 3 * Math.Pow(2, -8), 1 + Math.Pow(2, -8) + Math.Pow(2, -30),
            1e-40, -1e-45, 3.4028235e38, 3.4e38 * 1.01, double.NaN, double.PositiveInfinity, double.NegativeInfinity,
        };
        var g = new Generator(3);
        for (int i = 0; i < 200; i++) list.Add(g.NextNormal() * Math.Pow(10, i % 13 - 8));
        return list.ToArray();
    }

    [Fact]
    public void CopyConvertsBetweenFloatTypesExactlyAsCpu()
    {
        var values = ConversionValues();
        var f64 = Tensor.FromArray(values);
        DType[] types = [DType.F64, DType.F32, DType.F16, DType.BF16];
        foreach (var from in types)
        {
            var src = CastOnCpu(f64, from);
            var srcDev = src.To(Dev);
            foreach (var to in types)
            {
                if (to == from) continue;
                var (dst, dstDev) = Zeros(to, values.Length);
                Cpu.Copy(src, dst);
                Backend.Copy(srcDev, dstDev);
                AssertSameValues(dst, dstDev, $"{from.Name()} -> {to.Name()}");
            }
        }
    }

    [Fact]
    public void CopyConvertsIntegersAsCpu()
    {
        // ints to floats (rounding of large ints to f16/bf16/f32), floats to ints (truncation toward zero)
        var ints = Tensor.FromArray(new[] { 0, 1, -1, 7, 65504, 65519, 65520, 70000, -70000, 16777217, int.MaxValue, int.MinValue, 123456789 });
        var intsDev = ints.To(Dev);
        foreach (var to in new[] { DType.F64, DType.F32, DType.F16, DType.BF16 })
        {
            var (dst, dstDev) = Zeros(to, ints.Numel);
            Cpu.Copy(ints, dst);
            Backend.Copy(intsDev, dstDev);
            AssertSameValues(dst, dstDev, $"int32 -> {to.Name()}");
        }
        var reals = Tensor.FromArray(new[] { 0.0, 0.9, -0.9, 2.5, -2.5, 1e6 + 0.75, -123456.99, 65504.5 });
        foreach (var from in new[] { DType.F64, DType.F32, DType.BF16 })
        {
            var src = CastOnCpu(reals, from);
            var (dst, dstDev) = Zeros(DType.I32, reals.Numel);
            Cpu.Copy(src, dst);
            Backend.Copy(src.To(Dev), dstDev);
            Assert.Equal(dst.ToArray<int>(), dstDev.ToArray<int>());
        }
    }

    private static Tensor CastOnCpu(Tensor t, DType dtype)
    {
        var y = Tensor.Zeros(t.Shape, dtype);
        Cpu.Copy(t, y);
        return y;
    }

    /// <summary>Same values, and for 16-bit types the same bit patterns (so -0 and ties are checked too).</summary>
    private static void AssertSameValues(Tensor expected, Tensor actual, string what)
    {
        AssertEqual(expected, actual, what);
        if (expected.DType.IsHalf())
        {
            var e = Bits(expected);
            var a = Bits(actual);
            var ev = expected.ToArray<double>();
            for (int i = 0; i < e.Length; i++)
                if (!double.IsNaN(ev[i])) Assert.True(e[i] == a[i], $"{what}[{i}]: bits {a[i]:X4}, expected {e[i]:X4}");
        }
        else if (expected.DType is DType.F32 or DType.F64)
        {
            var e = expected.ToArray<double>();
            var a = actual.ToArray<double>();
            for (int i = 0; i < e.Length; i++)
                Assert.True(double.IsNegative(e[i]) == double.IsNegative(a[i]) || double.IsNaN(e[i]), $"{what}[{i}]: sign of {a[i]} vs {e[i]}");
        }
    }

    [Fact]
    public void FillWritesOnlyTheViewInEveryDType()
    {
        foreach (var (dtype, value) in new[] { (DType.F32, 2.5), (DType.F64, -1.25), (DType.F16, 0.1), (DType.BF16, 3.3), (DType.I32, 7.0) })
        {
            var (cpu, dev) = Both(Tensor.Zeros([6, 5], dtype));
            Cpu.Fill(cpu.Slice(0, 1, 6, 2).Slice(1, 0, 5, 3), value);
            Backend.Fill(dev.Slice(0, 1, 6, 2).Slice(1, 0, 5, 3), value);
            AssertSameValues(cpu, dev, $"fill {dtype.Name()}");
        }
    }

    [Theory]
    [MemberData(nameof(ComputeTypes), MemberType = typeof(IlgpuTestUtil))]
    public void EveryUnaryOpMatchesCpuOnATransposedInput(DType dtype)
    {
        var (general, generalDev) = Both(RandN(4, dtype, 4, 9) * 2.0, t => t.MT);
        var (positive, positiveDev) = Both(Rand(5, dtype, 0.1, 3, 4, 9), t => t.MT);
        foreach (var op in Enum.GetValues<UnaryOp>())
        {
            bool needsPositive = op is UnaryOp.Log or UnaryOp.Sqrt or UnaryOp.Rsqrt;
            var (x, xDev) = needsPositive ? (positive, positiveDev) : (general, generalDev);
            var (y, yDev) = Zeros(dtype, 9, 4);
            Cpu.Unary(op, x, y, -0.5, 0.7);
            Backend.Unary(op, xDev, yDev, -0.5, 0.7);
            AssertClose(y, yDev, $"{op} {dtype.Name()}");
        }
    }

    [Theory]
    [MemberData(nameof(ComputeTypes), MemberType = typeof(IlgpuTestUtil))]
    public void EveryBinaryOpMatchesCpuWithBroadcasting(DType dtype)
    {
        // a [3, 1, 5] expanded to [3, 4, 5]; b a transposed [5, 4] expanded to [3, 4, 5]. Two value sets:
        // reals, and small integers (so the comparisons see ties; Pow of negatives gives NaN on both).
        var sets = new[]
        {
            (RandN(6, dtype, 3, 1, 5), Rand(7, dtype, 0.2, 2.0, 5, 4)),
            (IntegerValued(8, dtype, 3, 1, 5), IntegerValued(9, dtype, 5, 4)),
        };
        foreach (var (aBase, bBase) in sets)
        {
            var (a, aDev) = Both(aBase, t => t.Expand(3, 4, 5));
            var (b, bDev) = Both(bBase, t => t.MT.Expand(3, 4, 5));
            foreach (var op in Enum.GetValues<BinaryOp>())
            {
                var (y, yDev) = Zeros(dtype, 3, 4, 5);
                Cpu.Binary(op, a, b, y);
                Backend.Binary(op, aDev, bDev, yDev);
                AssertClose(y, yDev, $"{op} {dtype.Name()}");
            }
        }
    }

    [Fact]
    public void BinaryInPlaceMatchesCpu()
    {
        var (a, aDev) = Both(RandN(10, DType.F32, 7, 3));
        var (b, bDev) = Both(RandN(11, DType.F32, 3, 7), t => t.MT);
        Cpu.Binary(BinaryOp.Mul, a, b, a);
        Backend.Binary(BinaryOp.Mul, aDev, bDev, aDev);
        AssertClose(a, aDev, "in-place mul");
    }

    [Theory]
    [MemberData(nameof(ComputeTypes), MemberType = typeof(IlgpuTestUtil))]
    public void WhereMatchesCpuForEveryConditionType(DType dtype)
    {
        var (a, aDev) = Both(RandN(12, dtype, 4, 6), t => t.MT);                // [6, 4]
        var (b, bDev) = Both(RandN(13, dtype, 1, 4), t => t.Expand(6, 4));
        foreach (var condType in new[] { DType.F32, DType.F64, DType.I32 })
        {
            var condBase = CastOnCpu(IntegerValued(14, DType.F64, 6, 1), condType);   // values in -2..2, some zero
            var (cond, condDev) = Both(condBase, t => t.Expand(6, 4));
            var (y, yDev) = Zeros(dtype, 6, 4);
            Cpu.Where(cond, a, b, y);
            Backend.Where(condDev, aDev, bDev, yDev);
            AssertEqual(y, yDev, $"where with {condType.Name()} condition");
        }
    }

    [Fact]
    public void LaunchesAreCheckedOnTheHost()
    {
        // A view reaching past its storage is rejected before any kernel runs (on the CPU accelerator an
        // out-of-range access could take the test process down).
        var storage = Backend.Allocate(DType.F32, 10);
        var overrun = new Tensor(storage, [4, 3], [3, 1], 0);   // needs 12 elements
        var ex = Assert.Throws<ArgumentException>(() => Backend.Fill(overrun, 1));
        Assert.Contains("outside its storage of 10 elements", ex.Message);
        // Nine dimensions that cannot be merged exceed the kernels' layout capacity.
        var nine = Tensor.Zeros(Enumerable.Repeat(2, 9).ToArray(), DType.F32, Dev).Permute(8, 7, 6, 5, 4, 3, 2, 1, 0);
        var rank = Assert.Throws<ArgumentException>(() => Backend.Copy(nine, Tensor.Zeros(nine.Shape, DType.F32, Dev)));
        Assert.Contains("supports 8", rank.Message);
        // Tensors of another device are refused.
        Assert.Throws<ArgumentException>(() => Backend.Fill(Tensor.Zeros([2]), 1));
    }

    /// <summary>Seeded values in {-2, -1, 0, 1, 2}.</summary>
    internal static Tensor IntegerValued(ulong seed, DType dtype, params int[] shape)
    {
        var g = new Generator(seed);
        var v = new double[Shapes.Numel(shape)];
        for (int i = 0; i < v.Length; i++) v[i] = Math.Floor(g.NextDouble() * 5) - 2;
        return Tensor.FromDoubles(v, shape, dtype);
    }
}
