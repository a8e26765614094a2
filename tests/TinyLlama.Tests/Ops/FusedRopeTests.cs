// RoPE: the fast CPU path against the naive reference (Ops/Reference/RopeRef.cs) for both layouts, both
// directions, f32 and f64 at odd sizes; the autograd op against explicit slicing/concat formulas; the two
// layouts against each other; inverse(rope(x)) == x; the tables against their definition; and
// gradients against central finite differences in f64, including a permuted (non-contiguous) x.
using TinyLlama.Backends;
using TinyLlama.Ops.Reference;
using TinyLlama.Tensors;
using static TinyLlama.Tests.Infrastructure.GradCheck;

namespace TinyLlama.Tests.Ops;

public class FusedRopeTests
{
    private static (Tensor Cos, Tensor Sin) Tables(int t, int d, DType dtype, int start = 3) =>
        Functional.RopeTables(Functional.RopeInverseFrequencies(d), start, t, dtype);

    public static TheoryData<int, int, int, int, DType> Sizes()
    {
        var data = new TheoryData<int, int, int, int, DType>();
        foreach (var dtype in new[] { DType.F32, DType.F64 })
        {
            // D = 2 (one pair), 6 (tail after no full vector), 16 and 64 (full vectors); T = 1, 5, 33.
            data.Add(1, 1, 1, 2, dtype);
            data.Add(2, 5, 3, 6, dtype);
            data.Add(1, 33, 2, 16, dtype);
            data.Add(2, 7, 4, 64, dtype);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Sizes))]
    public void FastPathMatchesReference(int b, int t, int h, int d, DType dtype)
    {
        var x = Tensor.RandN([b, t, h, d], new Generator(1), dtype);
        var (cos, sin) = Tables(t, d, dtype);
        double[] xd = x.ToArray<double>(), cd = cos.ToArray<double>(), sd = sin.ToArray<double>();
        foreach (var layout in new[] { RopeLayout.RotateHalf, RopeLayout.Interleaved })
            foreach (bool inverse in new[] { false, true })
            {
                var y = Tensor.Zeros([b, t, h, d], dtype);
                x.Backend.Rope(x, cos, sin, layout, inverse, y);
                var yRef = new double[xd.Length];
                RopeRef.Forward(xd, b, t, h, d, cd, sd, layout, inverse, yRef);
                // Each output is x1 c -/+ x2 s from the same (rounded) inputs: a few ulps of O(1) values
                // in f32 (eps 6e-8), exact up to rounding order in f64.
                double tol = dtype == DType.F64 ? 1e-15 : 1e-6;
                FusedAssert.Close(yRef, y.ToArray<double>(), tol, tol, $"rope {layout} inverse={inverse}");
            }
    }

    /// <summary>RoPE written with primitive ops: narrow/slice the pairs, rotate, concat/stack them back.</summary>
    private static Tensor RopeByPrimitives(Tensor x, Tensor cos, Tensor sin, RopeLayout layout)
    {
        int b = x.Size(0), t = x.Size(1), h = x.Size(2), d = x.Size(3);
        var c = cos.Reshape(t, 1, d / 2);   // broadcasts over [B, T, H, D/2]
        var s = sin.Reshape(t, 1, d / 2);
        if (layout == RopeLayout.RotateHalf)
        {
            var x1 = x.Narrow(-1, 0, d / 2);
            var x2 = x.Narrow(-1, d / 2, d / 2);
            return Tensor.Concat([x1 * c - x2 * s, x1 * s + x2 * c], -1);
        }
        var e = x.Slice(-1, 0, d, 2);
        var o = x.Slice(-1, 1, d, 2);
        return Tensor.Stack([e * c - o * s, e * s + o * c], -1).Reshape(b, t, h, d);
    }

    [Theory]
    [InlineData(RopeLayout.RotateHalf)]
    [InlineData(RopeLayout.Interleaved)]
    public void MatchesSlicingFormulas(RopeLayout layout)
    {
        var (cos, sin) = Tables(5, 6, DType.F64, start: 11);
        var x = RandN(1, 2, 5, 3, 6).RequiresGrad_();
        var x2 = x.Detach().Clone().RequiresGrad_();
        var y = Functional.Rope(x, cos, sin, layout);
        var yp = RopeByPrimitives(x2, cos, sin, layout);
        // Same products in f64, different op boundaries only: 1e-14.
        FusedAssert.Close(yp, y, 1e-14, 1e-14, "y");
        var u = RandN(2, 2, 5, 3, 6);
        y.Backward(u);
        yp.Backward(u);
        FusedAssert.Close(x2.Grad!, x.Grad!, 1e-14, 1e-14, "dx");
    }

    [Fact]
    public void InterleavedEqualsRotateHalfAfterPermutingFeatures()
    {
        // P sends the features of each head to (0, 2, 4, ..., 1, 3, 5, ...): then pair (2i, 2i+1)
        // becomes pair (i, i + D/2), so interleaved(x) P == rotate_half(x P).
        static Tensor P(Tensor z) => Tensor.Concat([z.Slice(-1, 0, z.Size(-1), 2), z.Slice(-1, 1, z.Size(-1), 2)], -1);
        foreach (var dtype in new[] { DType.F32, DType.F64 })
        {
            var x = Tensor.RandN([2, 5, 3, 16], new Generator(4), dtype);
            var (cos, sin) = Tables(5, 16, dtype);
            var a = P(Functional.Rope(x, cos, sin, RopeLayout.Interleaved));
            var b = Functional.Rope(P(x), cos, sin, RopeLayout.RotateHalf);
            // The same products on the same values in both: exactly equal.
            FusedAssert.Identical(a, b, $"layouts ({dtype.Name()})");
        }
    }

    [Fact]
    public void InverseUndoesRope()
    {
        foreach (var layout in new[] { RopeLayout.RotateHalf, RopeLayout.Interleaved })
            foreach (var dtype in new[] { DType.F32, DType.F64 })
            {
                var x = Tensor.RandN([2, 9, 3, 10], new Generator(5), dtype);
                var (cos, sin) = Tables(9, 10, dtype, start: 1000);
                var y = Tensor.Zeros([2, 9, 3, 10], dtype);
                var back = Tensor.Zeros([2, 9, 3, 10], dtype);
                x.Backend.Rope(x, cos, sin, layout, inverse: false, y);
                x.Backend.Rope(y, cos, sin, layout, inverse: true, back);
                // cos^2 + sin^2 = 1 only up to the rounding of the tables: a few ulps of the dtype.
                double tol = dtype == DType.F64 ? 1e-14 : 1e-6;
                FusedAssert.Close(x, back, tol, tol, $"inverse(rope(x)) {layout} {dtype.Name()}");
                // and the rotation really moved x (position >= 1000 rotates every pair)
                Assert.True(Math.Abs(y.ToArray<double>()[0] - x.ToArray<double>()[0]) > 1e-3);
            }
    }

    [Fact]
    public void TablesMatchTheirDefinition()
    {
        var invFreq = Functional.RopeInverseFrequencies(8, 500000.0);
        Assert.Equal(4, invFreq.Length);
        for (int i = 0; i < 4; i++) Assert.Equal(Math.Pow(500000.0, -2.0 * i / 8), invFreq[i]);
        var (c64, s64) = Functional.RopeTables(invFreq, 7, 3, DType.F64);
        var (c32, s32) = Functional.RopeTables(invFreq, 7, 3, DType.F32);
        Assert.Equal([3, 4], c64.Shape);
        Assert.Equal(DType.F32, c32.DType);
        var cv = c64.ToArray<double>();
        var sv = s64.ToArray<double>();
        var cf = c32.ToArray<float>();
        for (int t = 0; t < 3; t++)
            for (int i = 0; i < 4; i++)
            {
                double angle = (7 + t) * invFreq[i];
                Assert.Equal(Math.Cos(angle), cv[t * 4 + i]);
                Assert.Equal(Math.Sin(angle), sv[t * 4 + i]);
                Assert.Equal((float)Math.Cos(angle), cf[t * 4 + i]);   // rounded once from f64
            }
        // Positions start..start+T-1 are rows start.. of a table that starts at 0.
        var (cAll, _) = Functional.RopeTables(invFreq, 0, 10, DType.F64);
        FusedAssert.Identical(cAll.Narrow(0, 7, 3).Contiguous(), c64, "table offset");
        // Large positions (a long context) stay accurate because the angle is formed in f64.
        var (cFar, _) = Functional.RopeTables(Functional.RopeInverseFrequencies(64), 100000, 1, DType.F32);
        Assert.Equal((float)Math.Cos(100000.0), cFar.ToArray<float>()[0]);
    }

    [Theory]
    [InlineData(RopeLayout.RotateHalf)]
    [InlineData(RopeLayout.Interleaved)]
    public void GradientsMatchFiniteDifferences(RopeLayout layout)
    {
        var (cos, sin) = Tables(4, 6, DType.F64);
        // Default GradCheck tolerances: the op is linear in x, so central differences are exact up to rounding.
        Check(t => Functional.Rope(t[0], cos, sin, layout), [RandN(1, 2, 4, 3, 6)]);
        // x stored as [B, H, T, D] and permuted to [B, T, H, D], as attention code often holds it.
        Check(t => Functional.Rope(t[0].Permute(0, 2, 1, 3), cos, sin, layout), [RandN(2, 2, 3, 4, 6)]);
    }

    [Fact]
    public void ShapeErrorsNameTheOpAndShapes()
    {
        var (cos, sin) = Tables(5, 8, DType.F32);
        var e = Assert.Throws<ArgumentException>(() => Functional.Rope(Tensor.Zeros([1, 4, 2, 8]), cos, sin));
        Assert.Contains("rope", e.Message);
        Assert.Contains("[1, 4, 2, 8]", e.Message);
        Assert.Contains("[5, 4]", e.Message);
        var odd = Assert.Throws<ArgumentException>(() => Functional.Rope(Tensor.Zeros([1, 5, 2, 7]), cos, sin));
        Assert.Contains("D even", odd.Message);
    }
}
