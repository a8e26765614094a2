// Scanning weights for NaN and infinity at load, as llama.cpp's --check-tensors does
// (ggml_validate_row_data in ggml-quants.c: every float element, and the binary16 scales of block formats).
// A model with a non-finite weight computes NaN logits, which become <unk> tokens or a null perplexity;
// the scan names the first bad tensor instead. It reads every byte of every weight once, so it is opt-in.
//
// Non-finite means an all-ones exponent: binary32 (bits & 0x7F800000) == 0x7F800000, binary16
// (bits & 0x7C00) == 0x7C00, bfloat16 (bits & 0x7F80) == 0x7F80 (IEEE 754-2008 interchange formats and
// bfloat16's 8-bit exponent); the 16-bit formats are tested on their bits, without widening.
using System.Numerics.Tensors;
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.Formats;

/// <summary>Finds NaN or infinite values in weights (the scan behind --check-tensors).</summary>
public static class WeightCheck
{
    /// <summary>
    /// Throws a one-line <see cref="InvalidDataException"/> naming <paramref name="source"/>, the first tensor (in
    /// dictionary order) holding a NaN or infinity, and the element (or block) where it is.
    /// </summary>
    public static void Check(IReadOnlyDictionary<string, Tensor> weights, string source)
    {
        foreach (var (name, t) in weights)
        {
            long at = IndexOfNonFinite(t);
            if (at < 0) continue;
            string where = t.DType.IsQuantized()
                ? $"in a scale of block {at / QuantTypes.FromDType(t.DType).Traits().BlockBytes}"
                : $"as element {at} of {t.Numel}";
            throw new InvalidDataException($"{source}: tensor {MessageText.Quote(name)} ({t.DType.Name()} {Shapes.Format(t.Shape)}) holds a NaN or infinite value {where} (--check-tensors)");
        }
    }

    /// <summary>
    /// The index of the first non-finite element of <paramref name="t"/> in row-major order, or -1. For a block
    /// format, the byte offset of the first block whose scale is non-finite. Integer tensors have none.
    /// </summary>
    public static long IndexOfNonFinite(Tensor t)
    {
        switch (t.DType)
        {
            case DType.F32:
            {
                // Vectorised first pass: the element of largest magnitude is a NaN (the first, if any) or an infinity exactly when one exists.
                var values = Elements<float>(t);
                int max = TensorPrimitives.IndexOfMaxMagnitude(values);
                return max < 0 || float.IsFinite(values[max]) ? -1 : First(values, static x => !float.IsFinite(x));
            }
            case DType.F64: return First(Elements<double>(t), static x => !double.IsFinite(x));
            case DType.F16: return First(Elements<Half>(t), static x => (BitConverter.HalfToUInt16Bits(x) & 0x7C00) == 0x7C00);
            case DType.BF16: return First(Elements<BFloat16>(t), static x => (x.Bits & 0x7F80) == 0x7F80);
            case DType.I32: return -1;
        }
        if (!t.DType.IsQuantized()) return -1;
        var traits = QuantTypes.FromDType(t.DType).Traits();
        var bytes = Elements<byte>(t);
        for (int block = 0; block + traits.BlockBytes <= bytes.Length; block += traits.BlockBytes)
            foreach (int offset in traits.HalfScaleOffsets)
                if ((BitConverter.ToUInt16(bytes.Slice(block + offset, 2)) & 0x7C00) == 0x7C00) return block;
        return -1;
    }

    private static long First<T>(ReadOnlySpan<T> values, Func<T, bool> bad)
    {
        for (int i = 0; i < values.Length; i++)
            if (bad(values[i])) return i;
        return -1;
    }

    // The elements in row-major order: the storage itself for a dense host tensor (a mapped file is read in
    // place), else a copy.
    private static ReadOnlySpan<T> Elements<T>(Tensor t) where T : unmanaged =>
        t.Storage is CpuStorage host && t.IsContiguous
            ? host.AsSpan<T>().Slice(t.Offset, t.Numel)
            : t.ToArray<T>();
}
