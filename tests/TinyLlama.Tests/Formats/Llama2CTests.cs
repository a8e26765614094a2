// llama2.c version-0 checkpoints: the layout (every weight read from the offset run.c's
// memory_map_weights gives it, under its Hugging Face name), the q/k RoPE row permutation (against
// hand-written index lists), shared and separate classifiers, and one-line errors for bad headers and
// truncated or over-long files.
using System.Runtime.InteropServices;
using TinyLlama.Formats;
using static TinyLlama.Tests.Formats.FormatTestUtil;

namespace TinyLlama.Tests.Formats;

public class Llama2CTests
{
    private record Header(int Dim, int Hidden, int Layers, int Heads, int KvHeads, int Vocab, int Seq);

    // A tiny config: C 8, F 12, L 2, NH 2, NKV 1 (HS 4, kv_dim 4), V 10, T 3.
    private static readonly Header Tiny = new(8, 12, 2, 2, 1, 10, 3);

    private static long FloatCount(Header h)
    {
        long c = h.Dim, f = h.Hidden, l = h.Layers, hs = h.Dim / h.Heads, kv = h.KvHeads * hs, v = Math.Abs(h.Vocab);
        return v * c + l * c + l * c * c + 2 * l * kv * c + l * c * c + l * c + 3 * l * f * c + c + h.Seq * hs + (h.Vocab < 0 ? v * c : 0);
    }

    /// <summary>Writes the header, then float k = k for every float in the file (exact below 2^24).</summary>
    private static void WriteBin(string path, Header h, long extraFloats = 0)
    {
        int[] header = [h.Dim, h.Hidden, h.Layers, h.Heads, h.KvHeads, h.Vocab, h.Seq];
        var floats = new float[FloatCount(h) + extraFloats];
        for (int k = 0; k < floats.Length; k++) floats[k] = k;
        using var s = File.Create(path);
        s.Write(MemoryMarshal.AsBytes(header.AsSpan()));
        s.Write(MemoryMarshal.AsBytes(floats.AsSpan()));
    }

    [Theory]
    [InlineData(0, int.MaxValue - 7)]   // dim (a multiple of n_heads)
    [InlineData(1, 2_000_000_000)]      // hidden_dim
    [InlineData(2, 2_000_000_000)]      // n_layers
    [InlineData(5, 2_000_000_000)]      // vocab_size
    [InlineData(5, -2_000_000_000)]     // vocab_size, unshared classifier
    [InlineData(6, int.MaxValue)]       // seq_len
    public void HeaderSizesTheFileCannotBackAreOneLine(int field, int value)
    {
        // Every header field set huge: the file's length (checked in 128-bit arithmetic) cannot back it, and
        // nothing is allocated from it.
        using var dir = new TempDir();
        string path = dir.File("m.bin");
        WriteBin(path, Tiny);
        var bytes = File.ReadAllBytes(path);
        BitConverter.TryWriteBytes(bytes.AsSpan(field * 4, 4), value);
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<InvalidDataException>(() => Llama2CFile.Load(path));
        AssertMessage(e, path);
        Assert.True(e.Message.Contains("truncated") || e.Message.Contains("does not divide") || e.Message.Contains("more than"), e.Message);
    }

    [Fact]
    public void PermutationMatchesHandWrittenRowOrder()
    {
        // HS 4: HF row j*2 + i holds llama2.c row 2i + j -> rows 0, 2, 1, 3 within each head.
        Assert.Equal([0f, 2, 1, 3, 4, 6, 5, 7], Llama2CFile.InterleavedToRotateHalf([0, 1, 2, 3, 4, 5, 6, 7], heads: 2, headDim: 4, cols: 1));
        // HS 6: rows 0, 2, 4, 1, 3, 5; with two columns each row moves whole.
        Assert.Equal([0f, 10, 2, 12, 4, 14, 1, 11, 3, 13, 5, 15],
            Llama2CFile.InterleavedToRotateHalf([0, 10, 1, 11, 2, 12, 3, 13, 4, 14, 5, 15], heads: 1, headDim: 6, cols: 2));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void EveryWeightComesFromItsRunCOffset(bool shared)
    {
        using var dir = new TempDir();
        var h = Tiny with { Vocab = shared ? Tiny.Vocab : -Tiny.Vocab };
        string path = dir.File("tiny.bin");
        WriteBin(path, h);
        var (config, weights) = Llama2CFile.Load(path);

        Assert.Equal((8, 12, 2, 2, 1, 10, 3, 4), (config.HiddenSize, config.IntermediateSize, config.NumHiddenLayers, config.NumAttentionHeads, config.NumKeyValueHeads, config.VocabSize, config.MaxPositionEmbeddings, config.HeadDim));
        Assert.Equal((1e-5, 10000.0, 1, 2, shared), (config.RmsNormEps, config.RopeTheta, config.BosTokenId, config.EosTokenId, config.TieWordEmbeddings));
        Assert.Equal(LlamaWeightNames.Expected(config).Count, weights.Count);

        int c = 8, f = 12, l = 2, v = 10, kv = 4;
        // Offsets (in floats) of each array, in run.c's order.
        long emb = 0, rmsAtt = emb + v * c, wq = rmsAtt + l * c, wk = wq + l * c * c, wv = wk + l * kv * c, wo = wv + l * kv * c,
            rmsFfn = wo + l * c * c, w1 = rmsFfn + l * c, w2 = w1 + l * f * c, w3 = w2 + l * c * f, rmsFinal = w3 + l * f * c,
            wcls = rmsFinal + c + 3 * 4; // skips freq_cis_real and _imag, T * HS/2 each = 6 floats
        int[] identity = Enumerable.Range(0, 64).ToArray();
        int[] rope = [0, 2, 1, 3, 4, 6, 5, 7]; // HS 4, per head
        void Check(string name, long offset, int rows, int cols, int[] rowMap)
        {
            var t = weights[name];
            Assert.Equal(cols == 1 ? [rows] : [rows, cols], t.Shape);
            var a = t.ToArray<float>();
            for (int r = 0; r < rows; r++)
                for (int k = 0; k < cols; k++)
                    Assert.True(a[r * cols + k] == offset + rowMap[r] * cols + k, $"{name}[{r},{k}] = {a[r * cols + k]}, expected float #{offset + rowMap[r] * cols + k}");
        }
        Check(LlamaWeightNames.Embedding, emb, v, c, identity);
        for (int i = 0; i < l; i++)
        {
            Check(LlamaWeightNames.InputLayerNorm(i), rmsAtt + i * c, c, 1, identity);
            Check(LlamaWeightNames.QProj(i), wq + i * c * c, c, c, rope);
            Check(LlamaWeightNames.KProj(i), wk + i * kv * c, kv, c, rope);
            Check(LlamaWeightNames.VProj(i), wv + i * kv * c, kv, c, identity);
            Check(LlamaWeightNames.OProj(i), wo + i * c * c, c, c, identity);
            Check(LlamaWeightNames.PostAttentionLayerNorm(i), rmsFfn + i * c, c, 1, identity);
            Check(LlamaWeightNames.GateProj(i), w1 + i * f * c, f, c, identity);
            Check(LlamaWeightNames.DownProj(i), w2 + i * c * f, c, f, identity);
            Check(LlamaWeightNames.UpProj(i), w3 + i * f * c, f, c, identity);
        }
        Check(LlamaWeightNames.FinalNorm, rmsFinal, c, 1, identity);
        if (shared) Assert.False(weights.ContainsKey(LlamaWeightNames.LmHead));
        else Check(LlamaWeightNames.LmHead, wcls, v, c, identity);
    }

    [Fact]
    public void TruncatedFileIsRejectedWithSizes()
    {
        using var dir = new TempDir();
        string path = dir.File("tiny.bin");
        WriteBin(path, Tiny);
        long full = new FileInfo(path).Length;
        using (var s = new FileStream(path, FileMode.Open)) s.SetLength(full - 4);
        var e = Assert.Throws<InvalidDataException>(() => Llama2CFile.Load(path));
        AssertMessage(e, path, $"is {full - 4} bytes", $"is {full} bytes", "truncated");
    }

    [Fact]
    public void TrailingBytesAreRejectedWithSizes()
    {
        using var dir = new TempDir();
        string path = dir.File("tiny.bin");
        WriteBin(path, Tiny, extraFloats: 1);
        long expected = new FileInfo(path).Length - 4;
        var e = Assert.Throws<InvalidDataException>(() => Llama2CFile.Load(path));
        AssertMessage(e, path, $"is {expected + 4} bytes", $"is {expected} bytes", "trailing bytes");
    }

    [Theory]
    [InlineData(0, "dim = 0")]
    [InlineData(1, "hidden_dim = -3")]
    [InlineData(4, "n_kv_heads = 0")]
    [InlineData(5, "vocab_size = 0")]
    [InlineData(6, "seq_len = -1")]
    public void NonPositiveHeaderValueIsNamed(int field, string fragment)
    {
        using var dir = new TempDir();
        string path = dir.File("bad.bin");
        WriteBin(path, Tiny);
        int value = fragment.EndsWith("-3") ? -3 : fragment.EndsWith("-1") ? -1 : 0;
        using (var s = new FileStream(path, FileMode.Open)) { s.Position = field * 4; s.Write(BitConverter.GetBytes(value)); }
        AssertMessage(Assert.Throws<InvalidDataException>(() => Llama2CFile.Load(path)), path, fragment);
    }

    [Fact]
    public void OtherProblemsAreNamed()
    {
        using var dir = new TempDir();
        string path = dir.File("bad.bin");
        File.WriteAllBytes(path, new byte[20]);
        AssertMessage(Assert.Throws<InvalidDataException>(() => Llama2CFile.Load(path)), path, "20 bytes", "28-byte");
        WriteBin(path, Tiny with { Heads = 3 });
        AssertMessage(Assert.Throws<InvalidDataException>(() => Llama2CFile.Load(path)), path, "n_heads = 3 does not divide dim = 8");
        WriteBin(path, Tiny with { KvHeads = 3, Heads = 4 });
        AssertMessage(Assert.Throws<InvalidDataException>(() => Llama2CFile.Load(path)), path, "n_kv_heads = 3 does not divide n_heads = 4");
        File.WriteAllBytes(path, [.. BitConverter.GetBytes(0x616b3432), .. new byte[60]]); // export.py v1/v2: struct.pack('I', 0x616b3432)
        AssertMessage(Assert.Throws<InvalidDataException>(() => Llama2CFile.Load(path)), path, "ak42");
    }
}
