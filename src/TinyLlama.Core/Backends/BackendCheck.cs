// Every op of a backend against the CPU backend, the definition: ggml's test-backend-ops "compare with the
// CPU" mode for TinyLlama. Each case builds its inputs from fixed seeds on the device it is given, runs,
// and returns its outputs (for fused ops: the forward and every gradient, through autograd with a random
// upstream gradient); the harness runs the case once on the CPU and once on the device and compares every
// element. `tinyllama check --device cuda` runs it on a GPU, where no .NET SDK (and so no xunit) is needed;
// the test suite runs it on ILGPU's CPU accelerator.
//
// Tolerance, per output element: |device - cpu| <= tol (|cpu| + rms(cpu)), with tol = 1e-5 for f32 (and
// 16-bit) outputs and 1e-10 for f64, unless a case states its own; integer outputs must match exactly.
// The rms term is a floor for elements that cancel towards 0: sums of the same terms in another order
// differ by a few ulps of the terms, not of the result. The reported figure is the worst ratio of error to
// allowance (1 = at the limit).
//
// Shapes are odd and cross the GPU kernels' tiles (the GEMMs' 128 x 64 tiles and 16-steps, the int4
// mat-vec's 8-row groups, 256-thread rows, attention blocks), so on a GPU the fast kernel versions run.
using TinyLlama.Autograd;
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.Backends;

/// <summary>Checks a device's backend against the CPU backend, op by op.</summary>
public static class BackendCheck
{
    /// <summary>One check: <see cref="Body"/> builds its inputs on the device it is given and returns its outputs.</summary>
    public sealed record Case(string Name, Func<Device, Tensor[]> Body, double F32Tolerance = 1e-5, double F64Tolerance = 1e-10);

    /// <summary>The outcome of a case: the worst error / allowance over its outputs (NaN when it threw).</summary>
    public sealed record Result(string Name, double WorstRatio, bool Passed, string? Error);

    /// <summary>Runs <paramref name="c"/> on the CPU and on <paramref name="device"/> and compares the outputs.</summary>
    public static Result Run(Case c, Device device)
    {
        try
        {
            var expected = c.Body(Device.Cpu);
            var actual = c.Body(device);
            if (expected.Length != actual.Length)
                return new Result(c.Name, double.NaN, false, $"{actual.Length} outputs, expected {expected.Length}");
            double worst = 0;
            for (int i = 0; i < expected.Length; i++)
            {
                var (ratio, error) = Compare(expected[i], actual[i], c);
                if (error is not null) return new Result(c.Name, double.NaN, false, $"output {i}: {error}");
                worst = Math.Max(worst, ratio);
            }
            return new Result(c.Name, worst, worst <= 1, null);
        }
        catch (Exception e)
        {
            return new Result(c.Name, double.NaN, false, e.Message.ReplaceLineEndings(" "));
        }
    }

    /// <summary>Worst |actual - expected| / allowance over the elements (see the header), or an error.</summary>
    public static (double Ratio, string? Error) Compare(Tensor expected, Tensor actual, Case c)
    {
        if (!expected.Shape.AsSpan().SequenceEqual(actual.Shape) || expected.DType != actual.DType)
            return (double.NaN, $"{actual.DType.Name()} {Shapes.Format(actual.Shape)}, expected {expected.DType.Name()} {Shapes.Format(expected.Shape)}");
        var e = expected.To(Device.Cpu).ToArray<double>();
        var a = actual.To(Device.Cpu).ToArray<double>();
        if (expected.DType == DType.I32)
        {
            for (int i = 0; i < e.Length; i++)
                if (e[i] != a[i]) return (double.PositiveInfinity, null);
            return (0, null);
        }
        double tol = expected.DType == DType.F64 ? c.F64Tolerance : c.F32Tolerance;
        double sumSq = 0;
        foreach (double v in e) sumSq += v * v;
        double rms = e.Length == 0 ? 0 : Math.Sqrt(sumSq / e.Length);
        double worst = 0;
        for (int i = 0; i < e.Length; i++)
        {
            if (double.IsNaN(e[i]) && double.IsNaN(a[i])) continue;
            if (double.IsInfinity(e[i]) && e[i] == a[i]) continue;
            double allowed = tol * (Math.Abs(e[i]) + rms);
            double err = Math.Abs(a[i] - e[i]);
            double ratio = allowed > 0 ? err / allowed : err == 0 ? 0 : double.PositiveInfinity;
            if (double.IsNaN(ratio)) ratio = double.PositiveInfinity;
            worst = Math.Max(worst, ratio);
        }
        return (worst, null);
    }

    /// <summary>Every op case, f32 and (for the ops that compute in it) f64.</summary>
    public static IReadOnlyList<Case> OpCases()
    {
        var cases = new List<Case>
        {
            new("copy f32 (permuted) -> f16, bf16, f64, f32", dev =>
            {
                var x = In(1, dev, DType.F32, 7, 13, 5).Permute(2, 0, 1);
                return [x.To(DType.F16), x.To(DType.BF16), x.To(DType.F64), x.Contiguous()];
            }),
            new("fill f32 (strided view)", dev =>
            {
                var x = Tensor.Zeros([9, 14], DType.F32, dev);
                x.Slice(1, 1, 14, 3).Backend.Fill(x.Slice(1, 1, 14, 3), 2.5);
                return [x];
            }),
        };
        foreach (var dtype in new[] { DType.F32, DType.F64 })
        {
            string t = dtype == DType.F32 ? "f32" : "f64";
            cases.Add(new($"unary {t} (every op)", dev =>
            {
                var x = In(2, dev, dtype, 37, 19);
                var positive = Uniform(3, dev, dtype, 0.2, 2.0, 37, 19);
                var outputs = new List<Tensor>();
                foreach (var op in Enum.GetValues<UnaryOp>())
                {
                    var input = op is UnaryOp.Log or UnaryOp.Sqrt or UnaryOp.Rsqrt or UnaryOp.Reciprocal ? positive : x;
                    var y = Tensor.Zeros([37, 19], dtype, dev);
                    dev.Backend.Unary(op, input, y, -0.5, 0.75);
                    outputs.Add(y);
                }
                return outputs.ToArray();
            }));
            cases.Add(new($"binary {t} (every op, broadcast)", dev =>
            {
                var a = In(4, dev, dtype, 37, 1).Expand(37, 19);
                var b = In(5, dev, dtype, 1, 19).Expand(37, 19);
                var positive = Uniform(6, dev, dtype, 0.5, 2.0, 37, 1).Expand(37, 19);
                var outputs = new List<Tensor>();
                foreach (var op in Enum.GetValues<BinaryOp>())
                {
                    var y = Tensor.Zeros([37, 19], dtype, dev);
                    dev.Backend.Binary(op, op == BinaryOp.Pow ? positive : a, b, y);
                    outputs.Add(y);
                }
                var w = Tensor.Zeros([37, 19], dtype, dev);
                dev.Backend.Where(a, a, b, w);
                outputs.Add(w);
                return outputs.ToArray();
            }));
            cases.Add(new($"reduce {t} (sum, max, min, argmax, argmin over dims)", dev =>
            {
                var x = In(7, dev, dtype, 5, 37, 9);
                var outputs = new List<Tensor>();
                foreach (var dims in new[] { new[] { 1 }, new[] { 0, 2 } })
                    foreach (var op in Enum.GetValues<ReduceOp>())
                    {
                        var shape = x.Shape;
                        foreach (int d in dims) shape[d] = 1;
                        var y = Tensor.Zeros(shape, op is ReduceOp.ArgMax or ReduceOp.ArgMin ? DType.I32 : dtype, dev);
                        dev.Backend.Reduce(op, x, dims, y);
                        outputs.Add(y);
                    }
                return outputs.ToArray();
            }));
            cases.Add(new($"softmax and log-softmax {t}, forward and backward", dev =>
            {
                var x = In(8, dev, dtype, 13, 300);
                var dy = In(9, dev, dtype, 13, 300);
                var outputs = new List<Tensor>();
                foreach (bool log in new[] { false, true })
                {
                    var y = Tensor.Zeros([13, 300], dtype, dev);
                    var dx = Tensor.Zeros([13, 300], dtype, dev);
                    dev.Backend.Softmax(x, y, log);
                    dev.Backend.SoftmaxBackward(y, dy, dx, log);
                    outputs.Add(y);
                    outputs.Add(dx);
                }
                return outputs.ToArray();
            }));
            cases.Add(new($"matmul {t} 130x67x37, batched 3 x 33x65x17 with b transposed", dev =>
            {
                var a = In(10, dev, dtype, 130, 37);
                var b = In(11, dev, dtype, 37, 67);
                var c = Tensor.Zeros([130, 67], dtype, dev);
                dev.Backend.MatMul(a, b, c);
                var ba = In(12, dev, dtype, 3, 33, 17);
                var bb = In(13, dev, dtype, 3, 65, 17).Transpose(1, 2);
                var bc = Tensor.Zeros([3, 33, 65], dtype, dev);
                dev.Backend.MatMul(ba, bb, bc);
                return [c, bc];
            }));
            cases.Add(new($"rmsnorm {t}, forward and backward", dev =>
                Grads(dev, dtype, 14, t => Functional.RmsNorm(t[0], t[1]), [7, 300], [300])));
            cases.Add(new($"rope {t} (both layouts), forward and backward", dev =>
            {
                var (cos, sin) = Functional.RopeTables(Functional.RopeInverseFrequencies(16), 3, 5, dtype, dev);
                return Grads(dev, dtype, 15, t => Functional.Rope(t[0], cos, sin, RopeLayout.RotateHalf) + Functional.Rope(t[0], cos, sin, RopeLayout.Interleaved) * 0.5,
                             [2, 5, 3, 16]);
            }));
            cases.Add(new($"attention {t} GQA causal B2 H4 KVH2 T33 D64, forward and backward", dev =>
                Grads(dev, dtype, 16, t => Functional.ScaledDotProductAttention(t[0], t[1], t[2], causal: true), [2, 4, 33, 64], [2, 2, 33, 64], [2, 2, 33, 64])));
            cases.Add(new($"attention {t} non-causal H3 KVH1 T19 S21 D40, forward and backward", dev =>
                Grads(dev, dtype, 17, t => Functional.ScaledDotProductAttention(t[0], t[1], t[2], causal: false), [1, 3, 19, 40], [1, 1, 21, 40], [1, 1, 21, 40])));
            cases.Add(new($"swiglu {t}, forward and backward", dev =>
                Grads(dev, dtype, 18, t => Functional.SwiGlu(t[0], t[1]), [9, 301], [9, 301])));
            cases.Add(new($"lora linear {t} (dropout mask), forward and backward", dev =>
            {
                var mask = Functional.DropoutMask([130, 37], 0.25, new Generator(19), dtype, dev);
                return Grads(dev, dtype, 20, t => Functional.LoraLinear(t[0], t[1], t[2], t[3], 1.5, mask), [130, 37], [67, 37], [20, 37], [67, 20]);
            }));
            cases.Add(new($"adamw step {t} and sum of squares", dev =>
            {
                var p = In(21, dev, dtype, 1000);
                var g = In(22, dev, dtype, 1000);
                var m = Uniform(23, dev, dtype, -0.1, 0.1, 1000);
                var v = Uniform(24, dev, dtype, 0, 0.1, 1000);
                dev.Backend.AdamWStep(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 0.01, 3);
                var ss = Tensor.Zeros([1], dtype, dev);
                dev.Backend.SumOfSquares(g.Slice(0, 1, 1000, 3), ss);
                return [p, m, v, ss];
            }));
            foreach (var type in new[] { QuantType.Q4_0, QuantType.Q8_0, QuantType.Q4_K, QuantType.Q6_K })
            {
                // q4_0 from quantized normals; the other formats as random valid blocks (K-quants cannot be written).
                int k = type.Traits().BlockSize == 256 ? 256 : 96;
                cases.Add(new($"block {type.Traits().Name} matmul {t} (M = 1, 3, 130) and dequantize", dev =>
                {
                    var q = (type == QuantType.Q4_0 ? Quantize.Q4_0(In(25, Device.Cpu, DType.F32, 67, k)) : Quantize.RandomBlocks(type, 67, k, new Generator(25))).To(dev);
                    var outputs = new List<Tensor>();
                    foreach (int m in new[] { 1, 3, 130 })
                    {
                        var y = Tensor.Zeros([m, 67], dtype, dev);
                        dev.Backend.MatMulQuantized(In(26 + (ulong)m, dev, dtype, m, k), q, y);
                        outputs.Add(y);
                    }
                    outputs.Add(Quantize.Dequantize(q, dtype));
                    return outputs.ToArray();
                }));
            }
        }
        cases.Add(new("matmul f16 and bf16 inputs -> f32 130x67x37", dev =>
        {
            var outputs = new List<Tensor>();
            foreach (var half in new[] { DType.F16, DType.BF16 })
            {
                var a = In(30, dev, DType.F32, 130, 37).To(half);
                var b = In(31, dev, DType.F32, 37, 67).To(half);
                var c = Tensor.Zeros([130, 67], DType.F32, dev);
                dev.Backend.MatMul(a, b, c);
                outputs.Add(c);
            }
            return outputs.ToArray();
        }));
        cases.Add(new("embedding f32, forward and backward (repeated ids)", dev =>
        {
            var ids = Tensor.FromArray(new[] { 3, 0, 28, 3, 17, 3, 9 }, [7], dev);
            var weight = In(32, dev, DType.F32, 29, 33).RequiresGrad_();
            var y = Functional.Embedding(ids, weight);
            y.Backward(In(33, dev, DType.F32, 7, 33));
            return [y, weight.Grad!];
        }));
        cases.Add(new("cross-entropy f32 (ignore index), forward and backward", dev =>
        {
            var targets = Tensor.FromArray(new[] { 4, -100, 999, 0, 517, -100, 3, 12, 1000 - 1 }, [9], dev);
            var logits = In(34, dev, DType.F32, 9, 1000).RequiresGrad_();
            var loss = Functional.CrossEntropy(logits, targets);
            loss.Backward();
            return [loss, logits.Grad!];
        }));
        return cases;
    }

    /// <summary>f(inputs) and the gradient of every input for a random upstream gradient, on dev.</summary>
    private static Tensor[] Grads(Device dev, DType dtype, ulong seed, Func<Tensor[], Tensor> f, params int[][] shapes)
    {
        var inputs = shapes.Select((s, i) => In(seed * 100 + (ulong)i, dev, dtype, s).RequiresGrad_()).ToArray();
        var y = f(inputs);
        y.Backward(In(seed * 100 + 99, dev, dtype, y.Shape));
        return [y.Detach(), .. inputs.Select(t => t.Grad ?? throw new InvalidOperationException("an input received no gradient"))];
    }

    /// <summary>Seeded standard normals of dtype on dev (drawn on the host, so every device sees the same values).</summary>
    private static Tensor In(ulong seed, Device dev, DType dtype, params int[] shape) =>
        Tensor.RandN(shape, new Generator(seed), dtype).To(dev);

    /// <summary>Seeded uniforms in [low, high) of dtype on dev.</summary>
    private static Tensor Uniform(ulong seed, Device dev, DType dtype, double low, double high, params int[] shape) =>
        Tensor.Rand(shape, new Generator(seed), dtype, null, low, high).To(dev);
}
