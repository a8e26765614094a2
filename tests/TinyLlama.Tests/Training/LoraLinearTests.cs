// LoraLinear as a wrapper (NN/LoraLinear.cs) and Module.ReplaceModule: over a frozen 16-bit base the
// adapter's gradients (A, B and x) match central finite differences of the same function done in f64, and
// an optimizer step leaves the base weight bit for bit; a base of another kind is computed by its own
// Forward; the base's InputObserver sees each input once; swapping modules in and out keeps every
// parameter name and the model's typed properties follow the swap.
using TinyLlama.Autograd;
using TinyLlama.Model;
using TinyLlama.NN;
using TinyLlama.Optim;
using TinyLlama.Tensors;
using TinyLlama.Training.Lora;

namespace TinyLlama.Tests.Training;

public class LoraLinearTests
{
    private const int N = 6, In = 9, Out = 5, R = 3;
    private const double Alpha = 6, S = Alpha / R;

    /// <summary>A wrapper over <paramref name="baseLayer"/> whose B is seeded noise (a fresh B is zero).</summary>
    private static LoraLinear Adapted(Linear baseLayer, ulong seed)
    {
        var lin = LoraLinear.Wrap(baseLayer, R, Alpha, 0, new Generator(seed));
        using var _ = GradMode.NoGrad();
        lin.LoraB.Weight.CopyFrom_(Tensor.RandN(lin.LoraB.Weight.Shape, new Generator(seed + 1), lin.LoraB.Weight.DType, Device.Cpu, 0, 0.5));
        return lin;
    }

    /// <summary>sum(u * (x W^T + b + s (x A^T) B^T)) in f64: x [N, In], w [Out, In], bias [Out], a [R, In], b [Out, R], u [N, Out].</summary>
    private static double Loss(double[] x, double[] w, double[] bias, double[] a, double[] b, double[] u)
    {
        double loss = 0;
        for (int n = 0; n < N; n++)
        {
            var h = new double[R]; // x A^T for this row
            for (int k = 0; k < R; k++)
                for (int i = 0; i < In; i++) h[k] += x[n * In + i] * a[k * In + i];
            for (int o = 0; o < Out; o++)
            {
                double y = bias[o];
                for (int i = 0; i < In; i++) y += x[n * In + i] * w[o * In + i];
                for (int k = 0; k < R; k++) y += S * h[k] * b[o * R + k];
                loss += u[n * Out + o] * y;
            }
        }
        return loss;
    }

    /// <summary>Central differences of <paramref name="loss"/> in each element of <paramref name="v"/> (restored afterwards).</summary>
    private static double[] NumericGradient(double[] v, Func<double> loss, double h = 1e-6)
    {
        var g = new double[v.Length];
        for (int j = 0; j < v.Length; j++)
        {
            double orig = v[j];
            v[j] = orig + h;
            double lp = loss();
            v[j] = orig - h;
            double lm = loss();
            v[j] = orig;
            g[j] = (lp - lm) / (2 * h);
        }
        return g;
    }

    [Theory]
    [InlineData(DType.F16)]
    [InlineData(DType.BF16)]
    public void AdapterOverA16BitBaseHasFiniteDifferenceGradientsAndTheBaseStaysFrozen(DType baseType)
    {
        var lin = Adapted(new Linear(In, Out, bias: true, new Generator(1), baseType), 2);
        Assert.Equal(DType.F32, lin.LoraA.Weight.DType);
        Assert.Equal(DType.F32, lin.LoraB.Weight.DType);
        var x = Tensor.RandN([N, In], new Generator(4), baseType).RequiresGrad_();
        var dy = Tensor.RandN([N, Out], new Generator(5), baseType);
        var y = lin.Forward(x);
        Assert.Equal(baseType, y.DType);
        y.Backward(dy);
        Assert.Null(lin.Weight.Grad);
        Assert.Null(lin.Bias!.Grad);

        // The reference: the same function in f64 of the exact 16-bit x, W, b, dy and the f32 A, B.
        double[] xs = x.ToArray<double>(), w = lin.Weight.ToArray<double>(), bias = lin.Bias.ToArray<double>(), u = dy.ToArray<double>();
        double[] a = lin.LoraA.Weight.ToArray<double>(), b = lin.LoraB.Weight.ToArray<double>();
        double L() => Loss(xs, w, bias, a, b, u);
        double[] dA = NumericGradient(a, L), dB = NumericGradient(b, L), dX = NumericGradient(xs, L);
        // dA and dB are f32 products of exact inputs (|values| O(1), sums of <= 9 terms): 1e-5 relative
        // with 1e-5 absolute is ~100 f32 ulps. The loss is bilinear in (A, B), so the differences are exact
        // up to f64 rounding (~1e-10 here).
        AssertClose(dA, lin.LoraA.Weight.Grad!.ToArray<double>(), 1e-5, "dA");
        AssertClose(dB, lin.LoraB.Weight.Grad!.ToArray<double>(), 1e-5, "dB");
        // dx = dy W + s dy B A comes back in the base's 16-bit type: a few roundings of 2^-11 (f16) or
        // 2^-8 (bf16) relative to the largest |dx|.
        double dxTol = (baseType == DType.F16 ? 4e-3 : 3e-2) * dX.Max(Math.Abs);
        AssertClose(dX, x.Grad!.ToArray<double>(), dxTol, "dx", relative: false);

        // An optimizer given every parameter moves A and B only: the frozen base has no gradient.
        var w0 = lin.Weight.ToArray<float>();
        var b0 = lin.Bias.ToArray<float>();
        var a0 = lin.LoraA.Weight.ToArray<float>();
        var bB0 = lin.LoraB.Weight.ToArray<float>();
        new AdamW(lin.Parameters(), lr: 0.01, weightDecay: 0.1).Step();
        Assert.Equal(w0, lin.Weight.ToArray<float>());
        Assert.Equal(b0, lin.Bias.ToArray<float>());
        Assert.NotEqual(a0, lin.LoraA.Weight.ToArray<float>());
        Assert.NotEqual(bB0, lin.LoraB.Weight.ToArray<float>());
    }

    private static void AssertClose(double[] expected, double[] actual, double tol, string what, bool relative = true)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            double err = Math.Abs(expected[i] - actual[i]), bound = relative ? tol + tol * Math.Abs(expected[i]) : tol;
            Assert.True(err <= bound, $"{what}[{i}]: {actual[i]:G10} vs finite differences {expected[i]:G10} (error {err:G3})");
        }
    }

    /// <summary>A base whose product is not x W^T (as a quantized kernel's is not the f32 GEMM): 2 x W^T, with a call count.</summary>
    private sealed class DoublingLinear(int inFeatures, int outFeatures) : Linear(inFeatures, outFeatures, false, new Generator(30), DType.F64)
    {
        public int Calls { get; private set; }

        public override Tensor Forward(Tensor x)
        {
            Calls++;
            return base.Forward(x) * 2.0;
        }
    }

    [Fact]
    public void AnyOtherBaseIsComputedByItsOwnForward()
    {
        // f64 throughout, so the fused path would apply to a plain Linear; a subclass must not be bypassed.
        var baseLayer = new DoublingLinear(In, Out);
        var lin = Adapted(baseLayer, 31);
        var x = Tensor.RandN([N, In], new Generator(32), DType.F64);
        var y = lin.Forward(x).ToArray<double>();
        Assert.Equal(1, baseLayer.Calls);
        double[] xs = x.ToArray<double>(), w = lin.Weight.ToArray<double>(), a = lin.LoraA.Weight.ToArray<double>(), b = lin.LoraB.Weight.ToArray<double>();
        for (int n = 0; n < N; n++)
            for (int o = 0; o < Out; o++)
            {
                double expected = 0;
                for (int i = 0; i < In; i++) expected += 2 * xs[n * In + i] * w[o * In + i];
                for (int k = 0; k < R; k++)
                {
                    double h = 0;
                    for (int i = 0; i < In; i++) h += xs[n * In + i] * a[k * In + i];
                    expected += S * h * b[o * R + k];
                }
                Assert.Equal(expected, y[n * Out + o], 1e-12);
            }
    }

    [Theory]
    [InlineData(DType.F32)]  // the fused path
    [InlineData(DType.BF16)] // base Forward + adapter
    public void TheBaseInputObserverSeesEachInputOnce(DType dtype)
    {
        var baseLayer = new Linear(In, Out, false, new Generator(40), dtype);
        var seen = new List<Tensor>();
        baseLayer.InputObserver = seen.Add;
        var lin = Adapted(baseLayer, 41);
        Assert.NotNull(lin.InputObserver);
        var x = Tensor.RandN([2, In], new Generator(42), dtype);
        lin.Forward(x);
        Assert.Same(x, Assert.Single(seen));
        // Set through the wrapper, it is the base's, so it stays when the base is put back.
        var later = new List<Tensor>();
        lin.InputObserver = later.Add;
        Assert.NotNull(baseLayer.InputObserver);
        lin.Forward(x);
        baseLayer.Forward(x);
        Assert.Equal(2, later.Count);
        Assert.Single(seen);
    }

    [Fact]
    public void ReplacingAndRestoringModulesKeepsParameterNames()
    {
        var model = new LlamaForCausalLM(LoraTests.TinyConfig(), new Generator(1));
        var names = model.NamedParameters().Select(p => p.Name).ToList();
        var tensors = model.StateDict();
        var q0 = model.Model.Layers[0].SelfAttn.QProj;
        var down1 = model.Model.Layers[1].Mlp.DownProj;

        var adapted = Lora.Apply(model, new LoraConfig(2, 4, 0, ["q", "down"]), new Generator(2));
        // Each adapted layer keeps "<layer>.weight" (the same tensor) and gains lora_A, lora_B right after it.
        var adaptedNames = adapted.Select(a => a.Name + ".weight").ToHashSet();
        var expected = names.SelectMany(n => adaptedNames.Contains(n) ? [n, n[..^".weight".Length] + ".lora_A.weight", n[..^".weight".Length] + ".lora_B.weight"] : new[] { n });
        Assert.Equal(expected, model.NamedParameters().Select(p => p.Name));
        var state = model.StateDict();
        foreach (var (name, t) in tensors) Assert.Same(t, state[name]);
        // The typed properties and the registry agree on the current child.
        var q = Assert.IsType<LoraLinear>(model.Model.Layers[0].SelfAttn.QProj);
        Assert.Same(q0, q.Base);
        Assert.Same(q, model.GetSubmodule("model.layers.0.self_attn.q_proj"));
        Assert.Same(down1, Assert.IsType<LoraLinear>(model.Model.Layers[1].Mlp.DownProj).Base);
        Assert.IsNotType<LoraLinear>(model.Model.Layers[0].SelfAttn.VProj);

        Assert.Equal(4, Lora.Remove(model));
        Assert.Equal(names, model.NamedParameters().Select(p => p.Name));
        Assert.Same(q0, model.Model.Layers[0].SelfAttn.QProj);
        Assert.Same(down1, model.Model.Layers[1].Mlp.DownProj);
        Assert.Same(down1, model.GetSubmodule("model.layers.1.mlp.down_proj"));
    }

    [Fact]
    public void ReplaceModuleChecksNamesAndTypesAndUpdatesLists()
    {
        var cfg = LoraTests.TinyConfig();
        var model = new LlamaForCausalLM(cfg, new Generator(1));
        var names = model.NamedParameters().Select(p => p.Name).ToList();
        var before = LoraTests.Logits(model);
        var e = Assert.Throws<ArgumentException>(() => model.ReplaceModule("model.layers.0.self_attn.q_proj", new RmsNorm(16, 1e-5)));
        Assert.Contains("q_proj", e.Message);
        Assert.Contains("Linear", e.Message);
        Assert.Throws<ArgumentException>(() => model.ReplaceModule("model.layers.0.self_attn.w_proj", new Linear(16, 16)));
        Assert.Throws<ArgumentException>(() => model.ReplaceModule("model.layers.7.mlp", new Linear(16, 16)));
        Assert.Equal(before, LoraTests.Logits(model)); // nothing changed

        // A layer of a ModuleList: the indexer and the forward pass use the new one.
        var fresh = new LlamaDecoderLayer(cfg, null, DType.F32, Device.Cpu); // zero projections: an identity block
        var old = model.ReplaceModule("model.layers.1", fresh);
        Assert.Same(fresh, model.Model.Layers[1]);
        Assert.Equal(names, model.NamedParameters().Select(p => p.Name));
        Assert.NotEqual(before, LoraTests.Logits(model));
        model.ReplaceModule("model.layers.1", old);
        Assert.Equal(before, LoraTests.Logits(model));
    }
}
