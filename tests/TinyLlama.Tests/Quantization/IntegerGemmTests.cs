// The prefill GEMM over Q4_0 weights in int8 arithmetic (src/TinyLlama.Core/Backends/Cpu/IntegerGemm.cs), taken
// by CpuBackend.MatMulQuantized for M > 4 inside an IntegerProducts scope:
//   - against an f64 sum of the same integer terms: each row of x quantized by llama.cpp's Q8_0 quantizer
//     (QuantTypes.QuantizeRowQ8_0), IntegerDotRef's exact block sums times both binary16 scales. The kernel
//     rounds each block's lane terms and its two accumulating lanes in f32, so we allow (blocks + 4) 2^-23
//     sum |term|, as for the decoder's rows (IntegerRowsTests); a wrong nibble, slice, row, token or scale moves
//     an output by a whole block term;
//   - odd shapes: M across the 4-token tiles and the 64-token chunks, N not a multiple of 4, K of 1..9 blocks;
//   - outside a scope the product is the exact f32 one (the panel path), bit for bit as before.
using TinyLlama.Backends.Cpu;
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.Tests.Quantization;

public class IntegerGemmTests
{
    [SkippableTheory]
    [InlineData(5, 1, 32)]
    [InlineData(7, 5, 96)]
    [InlineData(13, 67, 288)]
    [InlineData(70, 9, 64)]
    [InlineData(131, 30, 256)]
    public void MatchesAnF64SumOfTheSameIntegerTerms(int m, int n, int k)
    {
        Skip.IfNot(IntegerGemm.IsSupported, "the int8 GEMM needs AVX2 and FMA");
        var gen = new Generator((ulong)(m * 1000 + n * 10 + k));
        var x = Tensor.RandN([m, k], gen);
        var w = Quantize.Q4_0(Tensor.RandN([n, k], gen, DType.F32, Device.Cpu, 0, 0.05));
        var y = Tensor.Zeros([m, n]);
        using (IntegerProducts.Enable())
            Device.Cpu.Backend.MatMulQuantized(x, w, y);
        var xs = x.ToArray<float>();
        var wb = QuantTypes.Blocks<BlockQ4_0>(w.ToArray<byte>()).ToArray();
        var ys = y.ToArray<float>();
        int blocks = k / 32;
        var xq = new byte[blocks * 34];
        for (int i = 0; i < m; i++)
        {
            QuantTypes.QuantizeRowQ8_0(xs.AsSpan(i * k, k), xq);
            var xb = QuantTypes.Blocks<BlockQ8_0>(xq).ToArray();
            for (int j = 0; j < n; j++)
            {
                double exact = 0, magnitude = 0;
                for (int b = 0; b < blocks; b++)
                {
                    var wblock = wb[j * blocks + b];
                    double scale = (double)wblock.D * (double)xb[b].D;
                    exact += IntegerDotRef.BlockSumQ4_0Q8_0(wblock, xb[b]) * scale;
                    double abs = 0;
                    for (int l = 0; l < 32; l++)
                        abs += Math.Abs(((l < 16 ? wblock.Qs[l] & 0x0F : wblock.Qs[l - 16] >> 4) - 8) * (double)xb[b].Qs[l]);
                    magnitude += abs * Math.Abs(scale);
                }
                double bound = (blocks + 4) * Math.Pow(2, -23) * magnitude;
                Assert.True(Math.Abs(ys[i * n + j] - exact) <= bound, $"y[{i}, {j}] = {ys[i * n + j]}, expected {exact} (bound {bound})");
            }
        }
    }

    [Fact]
    public void OutsideAScopeTheProductStaysExact()
    {
        var gen = new Generator(9);
        var x = Tensor.RandN([9, 64], gen);
        var w = Quantize.Q4_0(Tensor.RandN([6, 64], gen));
        var y = Tensor.Zeros([9, 6]);
        Device.Cpu.Backend.MatMulQuantized(x, w, y);
        var deq = Quantize.DequantizeQ4_0(w).ToArray<float>();
        var xs = x.ToArray<float>();
        var ys = y.ToArray<float>();
        for (int i = 0; i < 9; i++)
            for (int j = 0; j < 6; j++)
            {
                double e = 0, mag = 0;
                for (int l = 0; l < 64; l++) { e += (double)xs[i * 64 + l] * deq[j * 64 + l]; mag += Math.Abs((double)xs[i * 64 + l] * deq[j * 64 + l]); }
                Assert.True(Math.Abs(ys[i * 6 + j] - e) <= 1e-6 * mag, $"y[{i}, {j}] = {ys[i * 6 + j]}, expected {e}: outside a scope the f32 path must run");
            }
        Assert.False(IntegerProducts.Enabled);
    }
}
