// Reductions, matmul, softmax, embedding and joins: values against naive loops, gradients against
// central finite differences in f64 (random upstream gradient), including non-contiguous inputs.
using TinyLlama.Tensors;
using static TinyLlama.Tests.Infrastructure.GradCheck;

namespace TinyLlama.Tests.Ops;

public class ReductionAndMatMulTests
{
    [Fact]
    public void SumMeanMaxMinOverDimsMatchLoops()
    {
        var x = RandN(1, 3, 4, 5);
        var v = x.ToArray<double>();
        var sum1 = x.Sum(1).ToArray<double>();      // [3, 5]
        var mean02 = x.Mean([0, 2], keepDim: true); // [1, 4, 1]
        var max2 = x.Max(2).ToArray<double>();      // [3, 4]
        var argmin0 = x.ArgMin(0).ToArray<int>();   // [4, 5]
        Assert.Equal(new[] { 1, 4, 1 }, mean02.Shape);
        for (int i = 0; i < 3; i++)
            for (int k = 0; k < 5; k++)
            {
                double s = 0;
                for (int j = 0; j < 4; j++) s += v[i * 20 + j * 5 + k];
                Assert.Equal(s, sum1[i * 5 + k], 12);
            }
        var m = mean02.ToArray<double>();
        for (int j = 0; j < 4; j++)
        {
            double s = 0;
            for (int i = 0; i < 3; i++) for (int k = 0; k < 5; k++) s += v[i * 20 + j * 5 + k];
            Assert.Equal(s / 15, m[j], 12);
        }
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 4; j++)
            {
                double best = double.NegativeInfinity;
                for (int k = 0; k < 5; k++) best = Math.Max(best, v[i * 20 + j * 5 + k]);
                Assert.Equal(best, max2[i * 4 + j]);
            }
        for (int j = 0; j < 4; j++)
            for (int k = 0; k < 5; k++)
            {
                int arg = 0;
                for (int i = 1; i < 3; i++) if (v[i * 20 + j * 5 + k] < v[arg * 20 + j * 5 + k]) arg = i;
                Assert.Equal(arg, argmin0[j * 5 + k]);
            }
        Assert.Equal(v.Sum(), x.Sum().Item(), 10);
        Assert.Equal(v.Max(), x.Max().Item());
    }

    [Fact]
    public void ReductionGradients()
    {
        var x = RandN(2, 4, 3, 5);
        Check(t => t[0].Sum(1), [x]);
        Check(t => t[0].Permute(2, 0, 1).Sum([0, 2], keepDim: true), [x]);
        Check(t => t[0].Mean(-1), [x]);
        Check(t => t[0].Max(1), [x]);
        Check(t => t[0].Min(0, keepDim: true), [x]);
        Check(t => t[0].Slice(2, 0, 5, 2).Sum(), [x]);
    }

    [Fact]
    public void MaxGradientSplitsEvenlyOnTies()
    {
        var x = Tensor.FromArray(new double[] { 1, 3, 3, 2 }).RequiresGrad_();
        x.Max().Backward();
        Assert.Equal(new double[] { 0, 0.5, 0.5, 0 }, x.Grad!.ToArray<double>());
    }

    [Fact]
    public void MatMulMatchesNaiveLoopWithBatchBroadcast()
    {
        var a = RandN(3, 2, 1, 5, 7);  // [2, 1, 5, 7]
        var b = RandN(4, 3, 7, 4);     // [3, 7, 4] -> broadcast batch [2, 3]
        var c = Tensor.MatMul(a, b);
        Assert.Equal(new[] { 2, 3, 5, 4 }, c.Shape);
        var av = a.ToArray<double>();
        var bv = b.ToArray<double>();
        var cv = c.ToArray<double>();
        for (int p = 0; p < 2; p++)
            for (int q = 0; q < 3; q++)
                for (int i = 0; i < 5; i++)
                    for (int j = 0; j < 4; j++)
                    {
                        double s = 0;
                        for (int k = 0; k < 7; k++) s += av[p * 35 + i * 7 + k] * bv[q * 28 + k * 4 + j];
                        Assert.Equal(s, cv[((p * 3 + q) * 5 + i) * 4 + j], 12);
                    }
    }

    [Fact]
    public void MatMulGradientsIncludingTransposedAndVectorOperands()
    {
        Check(t => Tensor.MatMul(t[0], t[1]), [RandN(1, 3, 4), RandN(2, 4, 5)]);
        Check(t => Tensor.MatMul(t[0].MT, t[1].MT), [RandN(1, 4, 3), RandN(2, 5, 4)]);
        Check(t => Tensor.MatMul(t[0], t[1]), [RandN(3, 2, 3, 4), RandN(4, 4, 2)]);
        Check(t => Tensor.MatMul(t[0], t[1]), [RandN(5, 4), RandN(6, 4, 3)]);
        Check(t => Tensor.MatMul(t[0], t[1]), [RandN(7, 2, 4), RandN(8, 4)]);
    }

    [Fact]
    public void MatMulShapeErrorNamesShapes()
    {
        var e = Assert.Throws<ArgumentException>(() => Tensor.MatMul(Tensor.Zeros([2, 3]), Tensor.Zeros([4, 5])));
        Assert.Contains("[2, 3]", e.Message);
        Assert.Contains("[4, 5]", e.Message);
    }

    [Fact]
    public void SoftmaxValuesAndGradients()
    {
        var x = RandN(9, 3, 6);
        var y = x.Softmax(-1).ToArray<double>();
        var v = x.ToArray<double>();
        for (int r = 0; r < 3; r++)
        {
            double z = 0;
            for (int i = 0; i < 6; i++) z += Math.Exp(v[r * 6 + i]);
            for (int i = 0; i < 6; i++) Assert.Equal(Math.Exp(v[r * 6 + i]) / z, y[r * 6 + i], 12);
        }
        var ls = x.LogSoftmax(1).ToArray<double>();
        for (int i = 0; i < y.Length; i++) Assert.Equal(Math.Log(y[i]), ls[i], 12);
        Check(t => t[0].Softmax(0), [x]);
        Check(t => t[0].Softmax(-1), [x]);
        Check(t => t[0].Permute(1, 0).LogSoftmax(1), [x]);
        // Large logits stay finite (max subtraction).
        var big = Tensor.FromArray(new float[] { 1000, 1001, 999 });
        Assert.All(big.Softmax().ToArray<float>(), p => Assert.True(float.IsFinite(p)));
    }

    [Fact]
    public void EmbeddingGathersRowsAndScatterAddsGradients()
    {
        var w = RandN(1, 6, 4);
        var ids = Tensor.FromArray(new[] { 2, 0, 2, 5, 1, 2 }, [2, 3]);
        var y = TinyLlama.Tensors.Functional.Embedding(ids, w);
        Assert.Equal(new[] { 2, 3, 4 }, y.Shape);
        Assert.Equal(w[2].ToArray<double>(), y[0, 0].ToArray<double>());
        Assert.Equal(w[5].ToArray<double>(), y[1, 0].ToArray<double>());
        Check(t => TinyLlama.Tensors.Functional.Embedding(ids, t[0]), [w]);
        var bad = Tensor.FromArray(new[] { 6 });
        var e = Assert.Throws<ArgumentException>(() => TinyLlama.Tensors.Functional.Embedding(bad, w));
        Assert.Contains("6", e.Message);
    }

    [Fact]
    public void ConcatStackSplit()
    {
        var a = RandN(1, 2, 3);
        var b = RandN(2, 2, 2);
        var c = Tensor.Concat([a, b], 1);
        Assert.Equal(new[] { 2, 5 }, c.Shape);
        Assert.Equal(a.ToArray<double>(), c.Narrow(1, 0, 3).ToArray<double>());
        Assert.Equal(b.ToArray<double>(), c.Narrow(1, 3, 2).ToArray<double>());
        var parts = c.Split([3, 2], 1);
        Assert.Equal(a.ToArray<double>(), parts[0].ToArray<double>());
        var s = Tensor.Stack([a, a * 2.0], 0);
        Assert.Equal(new[] { 2, 2, 3 }, s.Shape);
        Check(t => Tensor.Concat([t[0], t[1].Permute(1, 0)], 1), [RandN(3, 2, 3), RandN(4, 2, 2)]);
        Check(t => Tensor.Stack([t[0], t[1]], 1), [RandN(5, 2, 3), RandN(6, 2, 3)]);
        Check(t => { var p = t[0].Chunk(3, 1); return p[0] * p[2] + p[1]; }, [RandN(7, 2, 6)]);
    }

    [Fact]
    public void CompositeExpressionWithSharedSubgraph()
    {
        // y = (x*x + x) * x.exp(); x used four times, so gradient contributions must accumulate.
        Check(t => { var x = t[0]; var u = x * x + x; return (u * x.Exp() + u.Tanh()).Sum(0); }, [RandN(3, 4, 3)]);
    }
}
