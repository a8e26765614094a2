// The definition of llama.cpp's integer dot products between a row of quantized weights and activations
// quantized to Q8_0 (ggml-cpu quants.c: ggml_vec_dot_q4_0_q8_0 and ggml_vec_dot_q8_0_q8_0, their scalar
// loops; restated here from what they compute, not copied). Blocks are laid out as in QuantType.cs; the
// activations are quantized by QuantTypes.QuantizeRowQ8_0 (ggml's quantize_row_q8_0_ref).
//
// Per block b (32 weights), the integer sum is exact in int32:
//     Q4_0 x Q8_0:  sumi_b = sum_j (nibble_j - 8) * qx_j      |sumi_b| <= 32 * 8 * 128 = 32768
//     Q8_0 x Q8_0:  sumi_b = sum_j qw_j * qx_j                |sumi_b| <= 32 * 128 * 128 = 524288
// (both far inside int32 and exactly representable in f32). The float result accumulates blocks in order,
// one scale multiply per block, with ggml's scalar association (C's left-to-right '*'):
//     Q4_0 x Q8_0:  sumf += ((float)sumi_b * d_w) * d_x
//     Q8_0 x Q8_0:  sumf += (float)sumi_b * (d_w * d_x)
// where d_w, d_x are the blocks' binary16 scales widened to f32. Every fast path (Backends/Cpu/IntegerDot.cs)
// computes the same sumi_b and then runs this same float loop, so its result equals this one bit for bit.
// Activations of -128 never come out of the Q8_0 quantizer (|q| <= 127) but are valid bytes, and these
// sums (and the fast paths) handle them.
namespace TinyLlama.Quantization;

/// <summary>Scalar reference for dot products of Q4_0 / Q8_0 weight rows with Q8_0 activations.</summary>
public static class IntegerDotRef
{
    /// <summary>sum_j (nibble_j - 8) * x.qs[j] over one Q4_0 block and one Q8_0 block (exact).</summary>
    public static int BlockSumQ4_0Q8_0(in BlockQ4_0 w, in BlockQ8_0 x)
    {
        int sum0 = 0, sum1 = 0;
        for (int j = 0; j < 16; j++)
        {
            sum0 += ((w.Qs[j] & 0x0F) - 8) * x.Qs[j];        // weight j: low nibble
            sum1 += ((w.Qs[j] >> 4) - 8) * x.Qs[j + 16];      // weight j + 16: high nibble
        }
        return sum0 + sum1;
    }

    /// <summary>sum_j w.qs[j] * x.qs[j] over two Q8_0 blocks (exact).</summary>
    public static int BlockSumQ8_0Q8_0(in BlockQ8_0 w, in BlockQ8_0 x)
    {
        int sum = 0;
        for (int j = 0; j < 32; j++) sum += w.Qs[j] * x.Qs[j];
        return sum;
    }

    /// <summary>
    /// dot(w, x) for a row of Q4_0 weight blocks and as many Q8_0 activation blocks:
    /// sumf += ((float)sumi_b * d_w) * d_x over blocks in order.
    /// </summary>
    public static float DotQ4_0Q8_0(ReadOnlySpan<byte> w, ReadOnlySpan<byte> x)
    {
        var wb = QuantTypes.Blocks<BlockQ4_0>(CheckRows(QuantType.Q4_0, w, x));
        var xb = QuantTypes.Blocks<BlockQ8_0>(x);
        float sumf = 0;
        for (int b = 0; b < wb.Length; b++)
            sumf += BlockSumQ4_0Q8_0(wb[b], xb[b]) * Scale(wb[b].D) * Scale(xb[b].D);
        return sumf;
    }

    /// <summary>
    /// dot(w, x) for a row of Q8_0 weight blocks and as many Q8_0 activation blocks:
    /// sumf += (float)sumi_b * (d_w * d_x) over blocks in order.
    /// </summary>
    public static float DotQ8_0Q8_0(ReadOnlySpan<byte> w, ReadOnlySpan<byte> x)
    {
        var wb = QuantTypes.Blocks<BlockQ8_0>(CheckRows(QuantType.Q8_0, w, x));
        var xb = QuantTypes.Blocks<BlockQ8_0>(x);
        float sumf = 0;
        for (int b = 0; b < wb.Length; b++)
            sumf += BlockSumQ8_0Q8_0(wb[b], xb[b]) * (Scale(wb[b].D) * Scale(xb[b].D));
        return sumf;
    }

    /// <summary>Throws unless w is whole blocks of <paramref name="weights"/> and x holds as many Q8_0 blocks; returns w.</summary>
    public static ReadOnlySpan<byte> CheckRows(QuantType weights, ReadOnlySpan<byte> w, ReadOnlySpan<byte> x)
    {
        int wBytes = weights.Traits().BlockBytes, xBytes = QuantType.Q8_0.Traits().BlockBytes;
        if (w.Length % wBytes != 0)
            throw new ArgumentException($"w: {w.Length} bytes is not a whole number of {weights.Traits().Name} blocks ({wBytes} bytes each)", nameof(w));
        if (x.Length != w.Length / wBytes * xBytes)
            throw new ArgumentException($"x: {x.Length} bytes, expected {w.Length / wBytes} q8_0 blocks ({w.Length / wBytes * xBytes} bytes) to match w", nameof(x));
        return w;
    }

    private static float Scale(Half d) => QuantTypes.HalfToSingle(BitConverter.HalfToUInt16Bits(d));
}
