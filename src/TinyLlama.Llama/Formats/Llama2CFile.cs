// Loading Andrej Karpathy's llama2.c checkpoints (the legacy "version 0" .bin written by export.py's
// legacy_export / the original model.py export, and read by run.c's read_checkpoint and
// memory_map_weights; https://github.com/karpathy/llama2.c).
//
// Layout, all little-endian:
//   header: 7 x int32  dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//           vocab_size > 0: the classifier is the token embedding (shared); < 0: a separate classifier follows.
//   then float32 arrays, each layer-major ([n_layers, ...] stacked), weights [out, in] as in torch.nn.Linear:
//     token_embedding [V, C]
//     rms_att         [L, C]
//     wq              [L, NH*HS, C]      HS = C / NH
//     wk              [L, NKV*HS, C]
//     wv              [L, NKV*HS, C]
//     wo              [L, C, NH*HS]
//     rms_ffn         [L, C]
//     w1              [L, F, C]          (gate)
//     w2              [L, C, F]          (down)
//     w3              [L, F, C]          (up)
//     rms_final       [C]
//     freq_cis_real   [T, HS/2]          (a precomputed RoPE table, unused by run.c; skipped)
//     freq_cis_imag   [T, HS/2]          (skipped)
//     wcls            [V, C]             (only when vocab_size < 0)
// Versions 1 and 2 of export.py start with the magic "ak42" and are not this format.
//
// RoPE pairing: llama2.c (like Meta's original code) rotates adjacent pairs (2i, 2i+1) of each head,
// while Hugging Face's LLaMA rotates (i, i + HS/2) ("rotate_half"). The two are the same model once the
// rows of wq and wk are permuted within each head so that HF row j*HS/2 + i holds llama2.c row 2i + j —
// the permutation transformers' convert_llama_weights_to_hf.py (`permute`) applies to Meta's checkpoints.
// We apply it here so every checkpoint reaches the model in HF's layout, and one RoPE serves them all.
using System.Runtime.InteropServices;
using TinyLlama.Model;
using TinyLlama.Tensors;

namespace TinyLlama.Formats;

/// <summary>Reads llama2.c version-0 checkpoints into a <see cref="LlamaConfig"/> and HF-named weights.</summary>
public static class Llama2CFile
{
    private const int HeaderInts = 7;
    private const int Magic = 0x616b3432; // "ak42" spelled in hex: the uint32 export.py versions 1 and 2 write first

    /// <summary>
    /// Loads a .bin: the config (RMSNorm eps 1e-5, θ 10000, BOS 1, EOS 2, as run.c hard-codes; tied when the
    /// classifier is shared) and float32 weights under Hugging Face names with q/k rows in rotate-half order.
    /// </summary>
    public static ModelCheckpoint Load(string path)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("llama2.c checkpoints are little-endian");
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        long length = stream.Length;
        if (length < HeaderInts * 4)
            throw new InvalidDataException($"{path}: file is {length} bytes, shorter than the 28-byte llama2.c header");
        var h = new int[HeaderInts];
        stream.ReadExactly(MemoryMarshal.AsBytes(h.AsSpan()));
        if (h[0] == Magic)
            throw new InvalidDataException($"{path}: a llama2.c version 1/2 export (magic 'ak42'); only the legacy version-0 format is supported");

        int dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kvHeads = h[4], vocabSigned = h[5], seqLen = h[6];
        string[] names = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"];
        for (int i = 0; i < HeaderInts; i++)
        {
            bool bad = i == 5 ? (h[i] == 0 || h[i] == int.MinValue) : h[i] <= 0;
            if (bad) throw new InvalidDataException($"{path}: header {names[i]} = {h[i]} is invalid; not a llama2.c checkpoint?");
        }
        bool shared = vocabSigned > 0;
        int vocab = Math.Abs(vocabSigned);
        if (dim % heads != 0)
            throw new InvalidDataException($"{path}: header n_heads = {heads} does not divide dim = {dim}");
        if (heads % kvHeads != 0)
            throw new InvalidDataException($"{path}: header n_kv_heads = {kvHeads} does not divide n_heads = {heads}");
        int headSize = dim / heads;
        if (headSize % 2 != 0)
            throw new InvalidDataException($"{path}: head size {headSize} is odd; RoPE needs pairs");
        int kvDim = kvHeads * headSize;

        Int128 floats = (Int128)vocab * dim                         // token embedding
            + (Int128)layers * dim * 2                              // rms_att, rms_ffn
            + (Int128)layers * dim * dim * 2                        // wq, wo
            + (Int128)layers * kvDim * dim * 2                      // wk, wv
            + (Int128)layers * hidden * dim * 3                     // w1, w2, w3
            + dim                                                   // rms_final
            + (Int128)seqLen * (headSize / 2) * 2                   // freq_cis_real, freq_cis_imag
            + (shared ? 0 : (Int128)vocab * dim);                   // wcls
        Int128 expected = HeaderInts * 4 + floats * 4;
        if (expected != length)
            throw new InvalidDataException(
                $"{path}: file is {length} bytes but a llama2.c v0 checkpoint with this header (dim {dim}, hidden_dim {hidden}, n_layers {layers}, n_heads {heads}, n_kv_heads {kvHeads}, vocab_size {vocabSigned}, seq_len {seqLen}) is {expected} bytes ({(length < expected ? "truncated" : "trailing bytes")})");

        var config = new LlamaConfig
        {
            VocabSize = vocab, HiddenSize = dim, IntermediateSize = hidden, NumHiddenLayers = layers,
            NumAttentionHeads = heads, NumKeyValueHeads = kvHeads, MaxPositionEmbeddings = seqLen,
            RmsNormEps = 1e-5, RopeTheta = 10000.0, TieWordEmbeddings = shared, BosTokenId = 1, EosTokenId = 2,
        };
        config.Validate(path);

        var weights = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        // Read straight into the tensors' storage (CpuStorage.Allocate: weight matrices start on a cache line).
        CpuStorage Read(long count)
        {
            if (count > Array.MaxLength)
                throw new InvalidDataException($"{path}: a tensor of {count} floats is larger than this engine supports");
            var s = CpuStorage.Allocate(DType.F32, (int)count);
            stream.ReadExactly(MemoryMarshal.AsBytes(s.AsSpan<float>()));
            return s;
        }
        void Put(string name, CpuStorage data, int[] shape) => weights[name] = Tensor.FromStorage(data, shape);
        // One [L, rows, cols] stack, split into per-layer tensors named by nameOf(i), optionally q/k-permuted.
        void PerLayer(Func<int, string> nameOf, int rows, int cols, int permuteHeads = 0)
        {
            for (int i = 0; i < layers; i++)
            {
                var w = Read((long)rows * cols);
                if (permuteHeads > 0)
                {
                    var permuted = CpuStorage.Allocate(DType.F32, w.Length);
                    RopePermutation.Apply<float>(w.AsSpan<float>(), permuted.AsSpan<float>(), permuteHeads, headSize, cols, toRotateHalf: true);
                    w = permuted;
                }
                Put(nameOf(i), w, cols == 1 ? [rows] : [rows, cols]);
            }
        }

        Put(LlamaWeightNames.Embedding, Read((long)vocab * dim), [vocab, dim]);
        PerLayer(LlamaWeightNames.InputLayerNorm, dim, 1);
        PerLayer(LlamaWeightNames.QProj, heads * headSize, dim, permuteHeads: heads);
        PerLayer(LlamaWeightNames.KProj, kvDim, dim, permuteHeads: kvHeads);
        PerLayer(LlamaWeightNames.VProj, kvDim, dim);
        PerLayer(LlamaWeightNames.OProj, dim, heads * headSize);
        PerLayer(LlamaWeightNames.PostAttentionLayerNorm, dim, 1);
        PerLayer(LlamaWeightNames.GateProj, hidden, dim);
        PerLayer(LlamaWeightNames.DownProj, dim, hidden);
        PerLayer(LlamaWeightNames.UpProj, hidden, dim);
        Put(LlamaWeightNames.FinalNorm, Read(dim), [dim]);
        stream.Seek((long)seqLen * (headSize / 2) * 2 * 4, SeekOrigin.Current); // the unused RoPE tables
        if (!shared) Put(LlamaWeightNames.LmHead, Read((long)vocab * dim), [vocab, dim]);
        return new ModelCheckpoint(config, weights);
    }

    /// <summary>
    /// Reorders the rows of a q or k projection, [heads*headDim, cols], from llama2.c/Meta's interleaved RoPE
    /// pairing (2i, 2i+1) to HF's rotate-half pairing (i, i + headDim/2): within each head, output row
    /// j*headDim/2 + i is input row 2i + j (j in {0, 1}).
    /// </summary>
    public static float[] InterleavedToRotateHalf(float[] weight, int heads, int headDim, int cols)
    {
        if (weight.Length != (long)heads * headDim * cols)
            throw new ArgumentException($"weight holds {weight.Length} values, not heads {heads} x head_dim {headDim} x cols {cols}");
        var result = new float[weight.Length];
        RopePermutation.Apply<float>(weight, result, heads, headDim, cols, toRotateHalf: true);
        return result;
    }
}
