// Reduce (every op, several dim sets, both launch shapes, ties and NaN), SumOfSquares, Softmax and its
// backward, cross-entropy and embedding on the ILGPU backend (CPU accelerator) against the CPU backend.
using TinyLlama.Backends;
using TinyLlama.Tensors;
using static TinyLlama.Tests.Ilgpu.IlgpuTestUtil;

namespace TinyLlama.Tests.Ilgpu;

[Collection("ilgpu")]
public class IlgpuReductionTests
{
    private static void CompareReduce(ReduceOp op, Tensor x, Tensor xDev, int[] dims, string what)
    {
        var keep = x.Shape;
        foreach (int d in dims) keep[d] = 1;
        bool arg = op is ReduceOp.ArgMax or ReduceOp.ArgMin;
        var (y, yDev) = Zeros(arg ? DType.I32 : x.DType, keep);
        Cpu.Reduce(op, x, dims, y);
        Backend.Reduce(op, xDev, dims, yDev);
        if (arg) Assert.True(y.ToArray<int>().SequenceEqual(yDev.ToArray<int>()), $"{what}: indices {string.Join(",", yDev.ToArray<int>())}, expected {string.Join(",", y.ToArray<int>())}");
        else AssertClose(y, yDev, what);
    }

    [Theory]
    [MemberData(nameof(ComputeTypes), MemberType = typeof(IlgpuTestUtil))]
    public void ReduceMatchesCpuOverDimSetsOfAPermutedInput(DType dtype)
    {
        // x is a permuted [5, 4, 6] view of a [4, 6, 5] tensor; integer-valued data makes ArgMax/ArgMin ties likely.
        var (x, xDev) = Both(RandN(20, dtype, 4, 6, 5), t => t.Permute(2, 0, 1));
        var (xi, xiDev) = Both(IlgpuElementwiseTests.IntegerValued(21, dtype, 4, 6, 5), t => t.Permute(2, 0, 1));
        int[][] dimSets = [[0], [1], [2], [0, 2], [1, 2], [0, 1, 2]];   // [0, 1, 2] (R = 120) takes the one-group-per-output path
        foreach (var op in Enum.GetValues<ReduceOp>())
            foreach (var dims in dimSets)
            {
                CompareReduce(op, x, xDev, dims, $"{op} over [{string.Join(",", dims)}] {dtype.Name()}");
                CompareReduce(op, xi, xiDev, dims, $"{op} over [{string.Join(",", dims)}] of integers {dtype.Name()}");
            }
    }

    [Fact]
    public void GroupedReduceMatchesCpuOnLongRowsWithTiesAndNaN()
    {
        // [3, 100] rows, R = 100: one group per output. Row 1 holds a NaN (Max gives NaN, ArgMax its index);
        // row 2 repeats its maximum (ArgMax gives the first).
        var v = RandN(22, DType.F64, 3, 100).ToArray<double>();
        v[100 + 37] = double.NaN;
        v[100 + 80] = double.NaN;
        v[200 + 10] = v[200 + 70] = 50;
        v[200 + 20] = v[200 + 90] = -50;
        foreach (var dtype in FloatTypes)
        {
            var (x, xDev) = Both(Tensor.FromDoubles(v, [3, 100], dtype));
            foreach (var op in Enum.GetValues<ReduceOp>())
                CompareReduce(op, x, xDev, [1], $"{op} of long rows {dtype.Name()}");
            var (xt, xtDev) = Both(Tensor.FromDoubles(v, [3, 100], dtype), t => t.MT);   // [100, 3] strided, reduce dim 0
            foreach (var op in Enum.GetValues<ReduceOp>())
                CompareReduce(op, xt, xtDev, [0], $"{op} of long strided columns {dtype.Name()}");
        }
    }

    [Fact]
    public void SumOfSquaresAccumulatesLikeCpu()
    {
        foreach (var dtype in FloatTypes)
            foreach (var resultType in FloatTypes)
            {
                var (a, aDev) = Both(RandN(23, dtype, 9, 31), t => t.MT);
                var (b, bDev) = Both(RandN(24, dtype, 5, 1), t => t.Expand(5, 3));
                var (r, rDev) = Zeros(resultType, 1);
                Cpu.SumOfSquares(a, r);
                Cpu.SumOfSquares(b, r);
                Backend.SumOfSquares(aDev, rDev);
                Backend.SumOfSquares(bDev, rDev);
                double expected = a.ToArray<double>().Sum(x => x * x) + b.ToArray<double>().Sum(x => x * x);
                Assert.Equal(expected, r.Item(), resultType == DType.F64 ? 1e-12 * expected : 1e-6 * expected);
                AssertClose(r, rDev, $"sum of squares {dtype.Name()} into {resultType.Name()}");
            }
    }

    [Theory]
    [MemberData(nameof(ComputeTypes), MemberType = typeof(IlgpuTestUtil))]
    public void SoftmaxForwardAndBackwardMatchCpu(DType dtype)
    {
        // [5, 37]: row 2 partly masked (-inf), row 4 fully masked (NaN on both backends).
        var v = RandN(25, DType.F64, 5, 37).ToArray<double>();
        for (int j = 0; j < 20; j++) v[2 * 37 + j] = double.NegativeInfinity;
        for (int j = 0; j < 37; j++) v[4 * 37 + j] = double.NegativeInfinity;
        var (x, xDev) = Both(Tensor.FromDoubles(v, [5, 37], dtype));
        var (dy, dyDev) = Both(RandN(26, dtype, 5, 37));
        foreach (bool log in new[] { false, true })
        {
            var (y, yDev) = Zeros(dtype, 5, 37);
            Cpu.Softmax(x, y, log);
            Backend.Softmax(xDev, yDev, log);
            AssertClose(y, yDev, $"softmax log={log} {dtype.Name()}");
            // backward on the unmasked rows only (NaN rows would make every gradient NaN)
            var yRows = y.Narrow(0, 0, 4).Contiguous();
            var (dx, dxDev) = Zeros(dtype, 4, 37);
            Cpu.SoftmaxBackward(yRows, dy.Narrow(0, 0, 4).Contiguous(), dx, log);
            Backend.SoftmaxBackward(yRows.To(Dev), dyDev.Narrow(0, 0, 4).Contiguous(), dxDev, log);
            AssertClose(dx, dxDev, $"softmax backward log={log} {dtype.Name()}");
        }
    }

    [Theory]
    [MemberData(nameof(ComputeTypes), MemberType = typeof(IlgpuTestUtil))]
    public void CrossEntropyForwardAndBackwardMatchCpu(DType dtype)
    {
        var (logits, logitsDev) = Both(RandN(27, dtype, 6, 29) * 3.0);
        var (targets, targetsDev) = Both(Tensor.FromArray(new[] { 3, 28, -100, 0, 17, 3 }));
        var (losses, lossesDev) = Zeros(dtype, 6);
        var (lse, lseDev) = Zeros(dtype, 6);
        Cpu.CrossEntropy(logits, targets, -100, losses, lse);
        Backend.CrossEntropy(logitsDev, targetsDev, -100, lossesDev, lseDev);
        AssertClose(lse, lseDev, $"lse {dtype.Name()}");
        AssertClose(losses, lossesDev, $"losses {dtype.Name()}");
        Assert.Equal(0.0, lossesDev.GetValue(2));
        var (d, dDev) = Zeros(dtype, 6, 29);
        var (scale, scaleDev) = Both(Tensor.FromDoubles([0.37], [1], dtype));
        Cpu.CrossEntropyBackward(logits, targets, lse, -100, scale, d);
        Backend.CrossEntropyBackward(logitsDev, targetsDev, lseDev, -100, scaleDev, dDev);
        AssertClose(d, dDev, $"dlogits {dtype.Name()}");
        // A bad target is recorded by the kernel and reported at the next read (no read-back per launch);
        // the error is cleared once reported.
        var bad = Tensor.FromArray(new[] { 3, 29, 0, 0, 0, 0 }, Dev);
        long reads = Backend.HostReads;
        Backend.CrossEntropy(logitsDev, bad, -100, lossesDev, lseDev);
        Assert.Equal(reads, Backend.HostReads);
        var ex = Assert.Throws<ArgumentException>(() => Backend.Synchronize());
        Assert.Contains("target 29 at row 1", ex.Message);
        Assert.Equal(0.0, lossesDev.GetValue(1)); // the bad row contributed nothing, and the flag is clear again
    }

    [Fact]
    public void BadEmbeddingIdIsReportedAtTheNextRead()
    {
        var weight = Tensor.FromDoubles(Enumerable.Range(0, 12).Select(i => (double)i).ToArray(), [4, 3], DType.F32, Dev);
        var ids = Tensor.FromArray(new[] { 1, 7, 2 }, Dev);
        var y = Tensor.Zeros([3, 3], DType.F32, Dev);
        long reads = Backend.HostReads;
        Backend.Embedding(weight, ids, y);
        Assert.Equal(reads, Backend.HostReads); // nothing was read back to check the ids
        var ex = Assert.Throws<ArgumentException>(() => y.ToArray<float>());
        Assert.Equal("embedding: id 7 at position 1 is out of range for a table of 4 rows", ex.Message);
        Assert.Equal([3f, 4, 5, 0, 0, 0, 6, 7, 8], y.ToArray<float>()); // good rows copied, the bad row skipped; flag cleared
    }

    [Fact]
    public async Task EmbeddingBackwardOfNaNGradientsFinishes()
    {
        // NaN gradients must accumulate to NaN, not hang: a compare-and-swap on float values never matches NaN.
        foreach (var dtype in FloatTypes)
        {
            var ids = Tensor.FromArray(new[] { 4, 0, 4 }, Dev);
            var dy = Tensor.Full([3, 6], double.NaN, dtype, Dev);
            var dw = Tensor.Zeros([11, 6], dtype, Dev);
            var result = await Task.Run(() => { Backend.EmbeddingBackward(dy, ids, dw); return dw.ToArray<double>(); })
                .WaitAsync(TimeSpan.FromSeconds(60));
            Assert.True(double.IsNaN(result[4 * 6]) && double.IsNaN(result[0]) && result[2 * 6] == 0, $"rows hit by an id hold NaN, the others 0 ({dtype.Name()})");
        }
    }

    [Fact]
    public void EmbeddingGathersFromAStridedTableInEveryDTypeAndScattersBack()
    {
        var ids = Tensor.FromArray(new[] { 4, 0, 10, 4, 7, 4, 1 });
        var idsDev = ids.To(Dev);
        foreach (var dtype in new[] { DType.F32, DType.F64, DType.F16, DType.BF16 })
        {
            // weight [11, 6] is the transpose of a [6, 11] tensor
            var baseCpu = Tensor.Zeros([6, 11], dtype);
            Cpu.Copy(RandN(28, DType.F64, 6, 11), baseCpu);
            var (w, wDev) = Both(baseCpu, t => t.MT);
            var (y, yDev) = Zeros(dtype, 7, 6);
            Cpu.Embedding(w, ids, y);
            Backend.Embedding(wDev, idsDev, yDev);
            AssertEqual(y, yDev, $"embedding {dtype.Name()}");
        }
        foreach (var dtype in FloatTypes)
        {
            var (dy, dyDev) = Both(RandN(29, dtype, 7, 6));
            var (dw, dwDev) = Zeros(dtype, 11, 6);
            Cpu.EmbeddingBackward(dy, ids, dw);
            Backend.EmbeddingBackward(dyDev, idsDev, dwDev);
            AssertClose(dw, dwDev, $"embedding backward {dtype.Name()}");   // atomics: row 4 sums in any order
        }
        Backend.Embedding(Tensor.Zeros([11, 6], DType.F32, Dev), Tensor.FromArray(new[] { 2, 11 }, Dev), Tensor.Zeros([2, 6], DType.F32, Dev));
        var ex = Assert.Throws<ArgumentException>(() => Backend.Synchronize()); // reported at the next wait
        Assert.Contains("id 11 at position 1", ex.Message);
    }
}
