// The DPO losses (sigmoid with and without label smoothing, ipo, hinge) against a direct f64 computation
// of TRL's formulas, their gradients w.r.t. the policy log-probabilities against central finite
// differences, the gradient at h = 0 (DPO's first step with LoRA) against its hand value -b/2, softplus
// at large |x|, the reward model's pairwise loss, and per-row response log-probabilities against a naive
// log-softmax gather from the model's logits.
using TinyLlama.Autograd;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tests.Infrastructure;
using TinyLlama.Training;
using TinyLlama.Training.Preferences;

namespace TinyLlama.Tests.Preferences;

public class DpoLossTests
{
    // Policy/reference log-probabilities of 6 pairs; pair 0 has h = 0 exactly, pair 5 a large h.
    private static readonly double[] PiC = [-10.0, -12.5, -3.25, -40.0, -7.0, -1.0];
    private static readonly double[] PiR = [-11.0, -9.0, -8.0, -41.5, -7.0, -400.0];
    private static readonly double[] RefC = [-10.5, -12.0, -4.0, -39.0, -6.5, -2.0];
    private static readonly double[] RefR = [-11.5, -10.0, -7.5, -40.0, -8.0, -3.0];

    private static double Softplus(double x) => x > 0 ? x + Math.Log(1 + Math.Exp(-x)) : Math.Log(1 + Math.Exp(x));

    private static double LogSigmoid(double x) => -Softplus(-x);

    // TRL's dpo_loss, written out per pair.
    private static double Direct(int i, double beta, DpoLossKind kind, double e)
    {
        double h = (PiC[i] - PiR[i]) - (RefC[i] - RefR[i]);
        return kind switch
        {
            DpoLossKind.Sigmoid => -LogSigmoid(beta * h) * (1 - e) - LogSigmoid(-beta * h) * e,
            DpoLossKind.Ipo => (h - 1 / (2 * beta)) * (h - 1 / (2 * beta)),
            _ => Math.Max(0, 1 - beta * h),
        };
    }

    private static Tensor T(double[] x) => Tensor.FromArray(x);

    [Theory]
    [InlineData(DpoLossKind.Sigmoid, 0.1, 0.0)]
    [InlineData(DpoLossKind.Sigmoid, 0.5, 0.2)]
    [InlineData(DpoLossKind.Sigmoid, 2.0, 0.0)]
    [InlineData(DpoLossKind.Ipo, 0.1, 0.0)]
    [InlineData(DpoLossKind.Ipo, 1.0, 0.0)]
    [InlineData(DpoLossKind.Hinge, 0.1, 0.0)]
    [InlineData(DpoLossKind.Hinge, 0.7, 0.0)]
    public void LossMatchesDirectF64(DpoLossKind kind, double beta, double e)
    {
        var losses = DpoLoss.Losses(T(PiC), T(PiR), T(RefC), T(RefR), beta, kind, e).ToArray<double>();
        Assert.Equal(PiC.Length, losses.Length);
        for (int i = 0; i < losses.Length; i++)
        {
            double expected = Direct(i, beta, kind, e);
            // f64 throughout; the composed softplus differs from the direct one by rounding only.
            Assert.True(Math.Abs(losses[i] - expected) <= 1e-12 * Math.Max(1, Math.Abs(expected)), $"{kind} pair {i}: {losses[i]} vs {expected}");
        }
    }

    [Theory]
    [InlineData(DpoLossKind.Sigmoid, 0.1, 0.0)]
    [InlineData(DpoLossKind.Sigmoid, 0.5, 0.2)]
    [InlineData(DpoLossKind.Ipo, 0.3, 0.0)]
    [InlineData(DpoLossKind.Hinge, 0.1, 0.0)]
    public void GradientMatchesFiniteDifferences(DpoLossKind kind, double beta, double e)
    {
        // Hinge has a kink at b h = 1; none of these pairs sits within the step of it (h = 1/b = 10 is not among them).
        // Step 1e-4: IPO's losses reach ~1.6e5 (pair 5), where a 1e-6 step would lose ~1e-5 to cancellation;
        // the central difference's own error, h^2 f'''/6, is below 1e-8 for every loss here (zero for IPO).
        GradCheck.Check(x => DpoLoss.Losses(x[0], x[1], T(RefC), T(RefR), beta, kind, e), [T(PiC), T(PiR)], atol: 1e-7, rtol: 1e-6, h: 1e-4);
    }

    [Fact]
    public void SigmoidGradientAtZeroMarginIsMinusHalfBeta()
    {
        // With LoRA the policy starts equal to the reference (h = 0): d/dpi_c -logsigmoid(b h) = -b sigmoid(-b h) = -b/2.
        var pc = T([-5.0, -6.0]).RequiresGrad_();
        var pr = T([-7.0, -2.0]).RequiresGrad_();
        DpoLoss.Losses(pc, pr, T([-5.0, -6.0]), T([-7.0, -2.0]), 0.1, DpoLossKind.Sigmoid).Sum().Backward();
        Assert.All(pc.Grad!.ToArray<double>(), g => Assert.Equal(-0.05, g, 15));
        Assert.All(pr.Grad!.ToArray<double>(), g => Assert.Equal(0.05, g, 15));
    }

    [Fact]
    public void SoftplusIsFiniteAndExactAtLargeMagnitudes()
    {
        double[] xs = [-1000, -40, -1, 0, 1, 40, 1000];
        var y = DpoLoss.Softplus(T(xs)).ToArray<double>();
        for (int i = 0; i < xs.Length; i++)
            Assert.True(Math.Abs(y[i] - Softplus(xs[i])) <= 1e-12 * Math.Max(1, Math.Abs(xs[i])), $"softplus({xs[i]}) = {y[i]}");
        var f32 = DpoLoss.Softplus(Tensor.FromArray(new float[] { -200f, 200f })).ToArray<float>();
        Assert.Equal(0f, f32[0]);
        Assert.Equal(200f, f32[1]);
    }

    [Fact]
    public void RewardPairwiseLossIsMinusLogSigmoidOfTheDifference()
    {
        double[] rc = [1.0, -2.0, 0.0, 30.0], rr = [0.5, 1.0, 0.0, -30.0];
        var loss = RewardModel.PairwiseLoss(T(rc), T(rr)).ToArray<double>();
        for (int i = 0; i < rc.Length; i++)
            Assert.Equal(-Math.Log(1 / (1 + Math.Exp(-(rc[i] - rr[i])))), loss[i], 12);
    }

    [Theory]
    [InlineData("sigmoid", DpoLossKind.Sigmoid)]
    [InlineData("IPO", DpoLossKind.Ipo)]
    [InlineData("hinge", DpoLossKind.Hinge)]
    public void ParsesLossNames(string name, DpoLossKind kind) => Assert.Equal(kind, DpoLoss.ParseKind(name));

    [Fact]
    public void RejectsBadSettings()
    {
        Assert.Contains("beta", Assert.Throws<ArgumentException>(() => DpoLoss.Check(0, DpoLossKind.Sigmoid, 0)).Message);
        Assert.Contains("label smoothing", Assert.Throws<ArgumentException>(() => DpoLoss.Check(0.1, DpoLossKind.Sigmoid, 0.5)).Message);
        Assert.Contains("sigmoid", Assert.Throws<ArgumentException>(() => DpoLoss.Check(0.1, DpoLossKind.Hinge, 0.1)).Message);
        Assert.Contains("unknown DPO loss", Assert.Throws<ArgumentException>(() => DpoLoss.ParseKind("kto")).Message);
    }

    [Fact]
    public void SequenceLogProbsEqualANaiveLogSoftmaxGather()
    {
        var model = new LlamaForCausalLM(TinyLlama.Tests.Model.LlamaTests.Tiny(), new Generator(4));
        int[] ids = [1, 5, 9, 2, 30, 7, 1, 11, 3, 36, 4, 4];
        int[] targets = [-100, -100, 9, 2, 30, 7, -100, 3, 36, -100, -100, -100];
        var logits = model.Forward(Tensor.FromArray(ids, [2, 6]));
        var got = DpoLoss.SequenceLogProbs(logits, Tensor.FromArray(targets, [2, 6])).ToArray<float>();
        var l = logits.ToArray<float>();
        int v = model.Config.VocabSize;
        for (int row = 0; row < 2; row++)
        {
            double sum = 0;
            for (int t = 0; t < 6; t++)
            {
                int target = targets[row * 6 + t];
                if (target == TrainingInfo.IgnoreIndex) continue;
                var x = l.AsSpan((row * 6 + t) * v, v).ToArray();
                double max = x.Max(), z = x.Sum(a => Math.Exp(a - max));
                sum += x[target] - max - Math.Log(z);
            }
            // f32 logits, a handful of terms of magnitude ~log V: 1e-5 absolute is f32 rounding.
            Assert.True(Math.Abs(got[row] - sum) <= 1e-5, $"row {row}: {got[row]} vs {sum}");
        }
    }
}
