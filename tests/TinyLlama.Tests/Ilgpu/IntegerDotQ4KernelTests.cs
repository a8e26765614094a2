// The integer Q4_0 decode path on ILGPU (kernels/TinyLlama.Kernels/IntegerDotQ4.cs) against its definition
// (Quantization/IntegerDotRef.cs) and the CPU's IntegerDot (Backends/Cpu/IntegerDot.cs):
//   - the device Q8_0 quantizer: scale and int8 values byte for byte equal to IntegerDot.QuantizeRowQ8_0 on
//     rows with exact halves, zeros, tiny and large values and an all-zero block; a non-finite block gets
//     d = NaN and q = 0 (the CPU quantizer throws there) and leaves the other blocks alone;
//   - the 4-way int8 dot (portable, and the dp4a struct, which runs the same portable code off CUDA) against
//     a plain loop, with -128 and 127 in both operands;
//   - per-block int32 sums of both dot structs exactly equal to IntegerDotRef.BlockSumQ4_0Q8_0 on raw random
//     blocks (activations include -128, which the quantizer never produces but the bytes allow);
//   - rows: version 1 (blocks in order) bit for bit equal to IntegerDot.DotQ4_0Q8_0 on the CPU accelerator,
//     version 2 (warp) within 2 B u sum_b |t_b| of it, where t_b = ((float)sumi_b d_w) d_x are the same
//     terms summed in another order (u = 2^-24, B blocks: each order's error is at most (B - 1) u sum |t_b|);
//   - PTX for sm_80: the dp4a kernel holds dp4a.s32.s32, the portable one none, and the quantizer divides
//     with IEEE division (div.rn.f32), as the CPU does;
//   - end to end through IlgpuBackend.MatMulQuantized on ilgpu-cpu (version 1) and the GPU-shaped ilgpu-cpu:1
//     (version 2): Auto resolves to the float path off CUDA; Integer equals the CPU's IntegerDot rows (to the
//     tolerance above) and the float path within the Q8_0 activation error bound: each activation moves by
//     at most d_b (0.501 + 127 2^-11) (half a step of d_b = amax_b / 127, 0.001 for the f32 product x id,
//     and d_b's rounding to binary16, relative 2^-11, times |q| <= 127), so
//     |y_int - y_f32| <= sum_k |w_k| 0.563 d_b(k) + 1e-5 sum_k |x_k w_k| (the f32 rounding of both paths).
// Kernel tests run on ILGPU's CPU accelerator with 32-lane warps (KernelAcceleratorFixture) and on CUDA when
// TINYLLAMA_TEST_CUDA=1, where version 1 is held to the tolerance of version 2 (a GPU may contract into FMAs).
using ILGPU;
using ILGPU.Runtime;
using TinyLlama.Backends.Cpu;
using TinyLlama.Backends.Ilgpu;
using TinyLlama.Kernels;
using TinyLlama.Ops.Reference;
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.Tests.Ilgpu;

[Collection(KernelAcceleratorCollection.Name)]
public class IntegerDotQ4KernelTests(KernelAcceleratorFixture fixture)
{
    private const int Ints = IntegerDotQ4Kernels.QuantizedBlockInts;

    /// <summary>Rows of activations with exact halves, zeros, tiny and large values; block 1 of row 0 is all zeros.</summary>
    internal static float[] Activations(int m, int k, int seed)
    {
        var rng = new Random(seed);
        var x = new float[m * k];
        for (int i = 0; i < x.Length; i++)
            x[i] = rng.Next(5) switch
            {
                0 => (float)(rng.NextDouble() * 2 - 1) * MathF.Pow(10, rng.Next(-6, 4)),
                1 => rng.Next(-127, 128) + 0.5f,
                2 => 0f,
                _ => (float)rng.NextDouble() - 0.5f,
            };
        if (k >= 64) Array.Clear(x, 32, 32);
        return x;
    }

    /// <summary>ggml Q8_0 blocks (34 bytes) as the device layout: the scale's f32 bits, then the 32 int8 four to an int.</summary>
    internal static int[] ToDeviceLayout(byte[] blocks)
    {
        int count = blocks.Length / 34;
        var ints = new int[count * Ints];
        for (int b = 0; b < count; b++)
        {
            ints[b * Ints] = BitConverter.SingleToInt32Bits((float)BitConverter.ToHalf(blocks, b * 34));
            for (int g = 0; g < 8; g++) ints[b * Ints + 1 + g] = BitConverter.ToInt32(blocks, b * 34 + 2 + 4 * g);
        }
        return ints;
    }

    /// <summary>The device layout back as ggml Q8_0 blocks (the scale must be a binary16 value).</summary>
    private static byte[] FromDeviceLayout(int[] ints)
    {
        int count = ints.Length / Ints;
        var blocks = new byte[count * 34];
        for (int b = 0; b < count; b++)
        {
            BitConverter.TryWriteBytes(blocks.AsSpan(b * 34), (System.Half)BitConverter.Int32BitsToSingle(ints[b * Ints]));
            for (int g = 0; g < 8; g++) BitConverter.TryWriteBytes(blocks.AsSpan(b * 34 + 2 + 4 * g), ints[b * Ints + 1 + g]);
        }
        return blocks;
    }

    private static int[] QuantizeOnDevice(Accelerator acc, float[] x)
    {
        using var xBuf = acc.Allocate1D(x);
        using var qBuf = acc.Allocate1D(Enumerable.Repeat(0x5A5A5A5A, x.Length / 32 * Ints).ToArray());   // dirty
        acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>>(IntegerDotQ4Kernels.QuantizeQ8_0Kernel)(x.Length / 32, xBuf.View, qBuf.View);
        acc.Synchronize();
        return qBuf.GetAsArray1D();
    }

    [Fact]
    public void DeviceQuantizerEqualsTheCpuQuantizerByteForByte()
    {
        var hand = new float[32];
        hand[0] = 127f; hand[1] = 2.5f; hand[2] = -2.5f; hand[3] = 0.5f; hand[4] = -0.5f; hand[5] = 0.49999997f; hand[6] = -126.5f; hand[7] = 1.5f;
        var x = hand.Concat(Activations(3, 160, 5)).ToArray();
        var expected = new byte[x.Length / 32 * 34];
        IntegerDot.QuantizeRowQ8_0(x, expected);
        Assert.Equal(new sbyte[] { 127, 3, -3, 1, -1, 0, -127, 2 }, expected[2..10].Select(b => (sbyte)b).ToArray());   // the hand block
        foreach (var acc in fixture.Accelerators)
        {
            var got = FromDeviceLayout(QuantizeOnDevice(acc, x));
            for (int i = 0; i < expected.Length; i++)
                if (got[i] != expected[i]) Assert.Fail($"{acc.AcceleratorType}: byte {i % 34} of block {i / 34} is {got[i]}, expected {expected[i]}");
        }
    }

    [Fact]
    public void DeviceQuantizerMarksANonFiniteBlockWithNaN()
    {
        var x = Activations(1, 96, 6);
        x[40] = float.PositiveInfinity;                 // block 1
        var finite = new byte[34];
        IntegerDot.QuantizeRowQ8_0(x.AsSpan(64, 32), finite);
        foreach (var acc in fixture.Accelerators)
        {
            var got = QuantizeOnDevice(acc, x);
            Assert.True(float.IsNaN(BitConverter.Int32BitsToSingle(got[Ints])), "the scale of the block holding +inf");
            Assert.All(got[(Ints + 1)..(2 * Ints)], q => Assert.Equal(0, q));
            Assert.Equal(finite, FromDeviceLayout(got[(2 * Ints)..]));
        }
    }

    [Fact]
    public void Dot4EqualsAPlainLoop()
    {
        var rng = new Random(7);
        var values = new List<int> { 0, -1, unchecked((int)0x80808080), 0x7F7F7F7F, unchecked((int)0x807F0180), 0x01020304 };
        for (int i = 0; i < 200; i++) values.Add(rng.Next(int.MinValue, int.MaxValue));
        foreach (int a in values)
            foreach (int b in values.Take(30))
            {
                int c = rng.Next(-100_000, 100_000);
                int expected = c;
                for (int i = 0; i < 4; i++) expected += (sbyte)(a >> (8 * i)) * (sbyte)(b >> (8 * i));
                Assert.Equal(expected, default(PortableDot).Dot4(a, b, c));
                Assert.Equal(expected, default(Dp4aDot).Dot4(a, b, c));   // off CUDA: the portable code
            }
    }

    [Fact]
    public void BlockSumsAreExactOnRawBlocks()
    {
        const int m = 2, n = 5, blocks = 7, k = blocks * 32;
        var rng = new Random(9);
        var w = new byte[n * blocks * 18];
        rng.NextBytes(w);
        var xBytes = new byte[m * blocks * 34];
        rng.NextBytes(xBytes);
        for (int b = 0; b < m * blocks; b++)
        {
            BitConverter.TryWriteBytes(xBytes.AsSpan(b * 34), (System.Half)0.01f);       // a finite scale (unused by the sums)
            xBytes[b * 34 + 2 + b % 32] = 0x80;                                   // -128 in every block
        }
        var xq = ToDeviceLayout(xBytes);
        var words = new ushort[w.Length / 2];
        Buffer.BlockCopy(w, 0, words, 0, w.Length);
        var shape = new Q4Shape { M = m, N = n, K = k };
        var wBlocks = QuantTypes.Blocks<BlockQ4_0>(w.AsSpan());
        var xBlocks = QuantTypes.Blocks<BlockQ8_0>(xBytes.AsSpan());
        foreach (var acc in fixture.Accelerators)
            foreach (bool dp4a in new[] { false, true })
            {
                using var xBuf = acc.Allocate1D(xq);
                using var wBuf = acc.Allocate1D(words);
                using var sBuf = acc.Allocate1D<int>(m * n * blocks);
                if (dp4a)
                    acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, ArrayView<ushort>, ArrayView<int>, Q4Shape>(IntegerDotQ4Kernels.BlockSumsKernel<Dp4aDot>)(m * n * blocks, xBuf.View, wBuf.View, sBuf.View, shape);
                else
                    acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, ArrayView<ushort>, ArrayView<int>, Q4Shape>(IntegerDotQ4Kernels.BlockSumsKernel<PortableDot>)(m * n * blocks, xBuf.View, wBuf.View, sBuf.View, shape);
                acc.Synchronize();
                var sums = sBuf.GetAsArray1D();
                for (int i = 0; i < m; i++)
                    for (int j = 0; j < n; j++)
                        for (int b = 0; b < blocks; b++)
                            Assert.Equal(IntegerDotRef.BlockSumQ4_0Q8_0(wBlocks[j * blocks + b], xBlocks[i * blocks + b]), sums[(i * n + j) * blocks + b]);
            }
    }

    public static TheoryData<int, int, int> Rows() => new()
    {
        { 1, 1, 1 },
        { 1, 67, 3 },     // 9 groups of 8 rows, the last one partial
        { 3, 13, 9 },     // 9 blocks: the warp's 8-block step wraps with one block in the second step
        { 4, 9, 16 },
    };

    [Theory]
    [MemberData(nameof(Rows))]
    public void RowsMatchTheCpuIntegerDot(int m, int n, int blocks)
    {
        int k = blocks * 32;
        var x = Activations(m, k, m * 100 + n);
        var w = Quantize.Q4_0(Tensor.RandN([n, k], new Generator((ulong)(n + k)))).ToArray<byte>();
        var words = new ushort[w.Length / 2];
        Buffer.BlockCopy(w, 0, words, 0, w.Length);
        var (expected, tolerance) = CpuRows(x, w, m, n, k);
        var shape = new Q4Shape { M = m, N = n, K = k };
        foreach (var acc in fixture.Accelerators)
            foreach (bool dp4a in new[] { false, true })
                foreach (bool warp in new[] { false, true })
                {
                    using var xBuf = acc.Allocate1D(x);
                    using var qBuf = acc.Allocate1D<int>(m * blocks * Ints);
                    using var wBuf = acc.Allocate1D(words);
                    using var yBuf = acc.Allocate1D(Enumerable.Repeat(7f, m * n).ToArray());
                    IntegerDotQ4Kernels.Launch(acc, acc.DefaultStream, new MatMulQ4Args(shape, xBuf.View, wBuf.View, yBuf.View), qBuf.View, dp4a, warp);
                    acc.Synchronize();
                    var got = yBuf.GetAsArray1D();
                    bool exact = !warp && acc.AcceleratorType == AcceleratorType.CPU;
                    for (int i = 0; i < got.Length; i++)
                    {
                        string what = $"{acc.AcceleratorType} dp4a={dp4a} warp={warp} m={m} n={n} k={k}: y[{i}] = {got[i]:R}, CPU IntegerDot {expected[i]:R}";
                        if (exact) Assert.True(BitConverter.SingleToInt32Bits(got[i]) == BitConverter.SingleToInt32Bits(expected[i]), what);
                        else Assert.True(Math.Abs(got[i] - expected[i]) <= tolerance[i], $"{what} (tolerance {tolerance[i]:g3})");
                    }
                }
    }

    /// <summary>IntegerDot.DotQ4_0Q8_0 of every (row of x quantized on the CPU, row of w), and 2 B u sum_b |t_b| for each.</summary>
    internal static (float[] Y, double[] Tolerance) CpuRows(float[] x, byte[] w, int m, int n, int k)
    {
        int blocks = k / 32, rowBytes = blocks * 18;
        var y = new float[m * n];
        var tol = new double[m * n];
        var xq = new byte[blocks * 34];
        for (int i = 0; i < m; i++)
        {
            IntegerDot.QuantizeRowQ8_0(x.AsSpan(i * k, k), xq);
            var xb = QuantTypes.Blocks<BlockQ8_0>(xq.AsSpan());
            for (int j = 0; j < n; j++)
            {
                var row = w.AsSpan(j * rowBytes, rowBytes);
                y[i * n + j] = IntegerDot.DotQ4_0Q8_0(row, xq);
                var wb = QuantTypes.Blocks<BlockQ4_0>(row);
                double terms = 0;
                for (int b = 0; b < blocks; b++)
                    terms += Math.Abs(IntegerDotRef.BlockSumQ4_0Q8_0(wb[b], xb[b]) * (double)(float)wb[b].D * (float)xb[b].D);
                tol[i * n + j] = 2 * blocks * Math.Pow(2, -24) * terms;
            }
        }
        return (y, tol);
    }

    [Fact]
    public void KernelsCompileToPtxForSm80()
    {
        Action<ArrayView<int>, ArrayView<ushort>, ArrayView<float>, Q4Shape> dp4a = IntegerDotQ4Kernels.IntegerMatVecKernel2<Dp4aDot>;
        var ptx = PtxCompiler.Compile(dp4a.Method);
        Assert.True(PtxCompiler.Count(ptx, "dp4a.s32.s32") > 0, "the dp4a kernel emits dp4a.s32.s32");
        Assert.Equal(0, PtxCompiler.Count(ptx, "bar.sync"));
        Action<ArrayView<int>, ArrayView<ushort>, ArrayView<float>, Q4Shape> portable = IntegerDotQ4Kernels.IntegerMatVecKernel2<PortableDot>;
        Assert.Equal(0, PtxCompiler.Count(PtxCompiler.Compile(portable.Method), "dp4a"));
        Action<Index1D, ArrayView<float>, ArrayView<int>> quantize = IntegerDotQ4Kernels.QuantizeQ8_0Kernel;
        ptx = PtxCompiler.Compile(quantize.Method);
        Assert.True(PtxCompiler.Count(ptx, "div.rn.f32") > 0, "the quantizer divides with IEEE division");
        Assert.Equal(0, PtxCompiler.Count(ptx, "div.approx") + PtxCompiler.Count(ptx, "div.full"));
    }
}

/// <summary>The integer decode path end to end through the backend; in the "ilgpu" collection because it switches Q4Decode on the shared backends.</summary>
[Collection("ilgpu")]
public class IntegerDecodeBackendTests
{
    public static TheoryData<string, int, int, int> Cases() => new()
    {
        { "ilgpu-cpu", 1, 67, 3 },
        { "ilgpu-cpu", 4, 9, 8 },
        { "ilgpu-cpu:1", 2, 13, 9 },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void IntegerPathMatchesTheCpuAndStaysWithinTheActivationErrorOfTheFloatPath(string device, int m, int n, int blocks)
    {
        int k = blocks * 32;
        var dev = IlgpuDevices.Resolve(device);
        var backend = (IlgpuBackend)dev.Backend;
        Assert.Equal(Q4DecodePath.Auto, backend.Q4Decode);
        Assert.False(backend.UsesIntegerDecode, "Auto takes the float path off CUDA");
        var x = IntegerDotQ4KernelTests.Activations(m, k, 31 + m);
        var q = Quantize.Q4_0(Tensor.RandN([n, k], new Generator((ulong)(n * k))));
        var w = q.ToArray<byte>();
        var (expected, tolerance) = IntegerDotQ4KernelTests.CpuRows(x, w, m, n, k);
        var xd = Tensor.FromArray(x, [m, k]).To(dev);
        var qd = q.To(dev);
        var yFloat = Tensor.Full([m, n], 7.0, DType.F32, dev);
        var yInt = Tensor.Full([m, n], 7.0, DType.F32, dev);
        backend.MatMulQuantized(xd, qd, yFloat);
        try
        {
            backend.Q4Decode = Q4DecodePath.Integer;
            Assert.True(backend.UsesIntegerDecode);
            backend.MatMulQuantized(xd, qd, yInt);
        }
        finally
        {
            backend.Q4Decode = Q4DecodePath.Auto;
        }
        var gotInt = yInt.ToArray<float>();
        var gotFloat = yFloat.ToArray<float>();
        var weights = MatMulQuantizedRef.Dequantize(QuantType.Q4_0, w, n, k);
        for (int i = 0; i < m; i++)
        {
            var step = new double[k / 32];       // d_b = amax_b / 127 of row i's blocks
            for (int e = 0; e < k; e++) step[e / 32] = Math.Max(step[e / 32], Math.Abs(x[i * k + e]) / 127.0);
            for (int j = 0; j < n; j++)
            {
                int o = i * n + j;
                Assert.True(Math.Abs(gotInt[o] - expected[o]) <= tolerance[o], $"{device} y[{i}, {j}] = {gotInt[o]:R}, CPU IntegerDot {expected[o]:R}");
                double bound = 0, magnitude = 0;
                for (int e = 0; e < k; e++)
                {
                    bound += Math.Abs(weights[j * k + e]) * 0.563 * step[e / 32];
                    magnitude += Math.Abs(weights[j * k + e] * x[i * k + e]);
                }
                bound += 1e-5 * magnitude;
                Assert.True(Math.Abs(gotInt[o] - gotFloat[o]) <= bound, $"{device} y[{i}, {j}]: integer {gotInt[o]:R}, float {gotFloat[o]:R} (bound {bound:g3})");
            }
        }
    }
}
