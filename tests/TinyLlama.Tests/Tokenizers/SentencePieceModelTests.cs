// The hand-written protobuf reader on tokenizer.model files: the Llama 2 file's fields, a small model
// written here byte by byte (with unknown fields of every wire type to skip and a sign-extended
// pad_id), and corrupt input: truncations, garbage, flipped bytes, wrong wire types, wrong model type.
// Corrupt input must end in an InvalidDataException that names the file, never another exception.
using TinyLlama.Tests.Infrastructure;
using TinyLlama.Tokenizers;

namespace TinyLlama.Tests.Tokenizers;

public class SentencePieceModelTests
{
    // ---- a minimal protobuf writer, for building test files
    private static void Varint(List<byte> o, ulong v)
    {
        while (v >= 0x80)
        {
            o.Add((byte)(v | 0x80));
            v >>= 7;
        }
        o.Add((byte)v);
    }

    private static void Tag(List<byte> o, int field, int wire) => Varint(o, (ulong)(field << 3 | wire));
    private static void VarintField(List<byte> o, int field, long v) { Tag(o, field, 0); Varint(o, unchecked((ulong)v)); }
    private static void FloatField(List<byte> o, int field, float v) { Tag(o, field, 5); o.AddRange(BitConverter.GetBytes(v)); }
    private static void BytesField(List<byte> o, int field, IReadOnlyCollection<byte> b) { Tag(o, field, 2); Varint(o, (ulong)b.Count); o.AddRange(b); }
    private static void StringField(List<byte> o, int field, string s) => BytesField(o, field, System.Text.Encoding.UTF8.GetBytes(s));

    private static void UnknownFields(List<byte> o)
    {
        VarintField(o, 900, 12345);
        Tag(o, 901, 1); o.AddRange(new byte[8]);
        StringField(o, 902, "skip me");
        FloatField(o, 903, 1.5f);
    }

    /// <summary>A small BPE model: &lt;unk&gt; &lt;s&gt; &lt;/s&gt; ▁ a b ab ▁ab, byte_fallback off.</summary>
    private static byte[] TinyModel(int modelType = 2, bool withUnknownFields = true)
    {
        var o = new List<byte>();
        (string Piece, float Score, int Type)[] pieces =
            [("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3), ("▁", -3, 1), ("a", -3, 1), ("b", -3, 1), ("ab", -1, 1), ("▁ab", -2, 1)];
        foreach (var (piece, score, type) in pieces)
        {
            var p = new List<byte>();
            StringField(p, 1, piece);
            FloatField(p, 2, score);
            if (type != 1) VarintField(p, 3, type);
            if (withUnknownFields) UnknownFields(p);
            BytesField(o, 1, p);
        }
        var trainer = new List<byte>();
        StringField(trainer, 1, "corpus.txt");
        VarintField(trainer, 3, modelType);
        VarintField(trainer, 4, pieces.Length);
        if (withUnknownFields) UnknownFields(trainer);
        VarintField(trainer, 40, 0);
        VarintField(trainer, 41, 1);
        VarintField(trainer, 42, 2);
        VarintField(trainer, 43, -1); // 10-byte sign-extended varint
        BytesField(o, 2, trainer);
        if (withUnknownFields) UnknownFields(o);
        var normalizer = new List<byte>();
        StringField(normalizer, 1, "identity");
        VarintField(normalizer, 3, 1);
        VarintField(normalizer, 4, 0);
        BytesField(o, 3, normalizer);
        return [.. o];
    }

    private static void AssertInvalid(byte[] data, string source, string? mentions = null)
    {
        var e = Assert.Throws<InvalidDataException>(() => SentencePieceModel.Parse(data, source));
        Assert.StartsWith(source + ": ", e.Message);
        Assert.DoesNotContain('\n', e.Message);
        if (mentions is not null) Assert.Contains(mentions, e.Message);
    }

    [SkippableFact]
    public void Llama2Model_Fields()
    {
        var m = SentencePieceModel.Load(SharedData.Require(TokenizerTestData.ModelPath));
        Assert.Equal(32000, m.Pieces.Count);
        Assert.Equal(SentencePieceModel.ModelKind.Bpe, m.ModelType);
        Assert.True(m.ByteFallback);
        Assert.Equal((0, 1, 2, -1), (m.UnkId, m.BosId, m.EosId, m.PadId));
        Assert.Equal(" \u2047 ", m.UnkSurface);
        Assert.Equal("identity", m.NormalizerName);
        Assert.Equal(0, m.PrecompiledCharsmapLength);
        Assert.True(m.AddDummyPrefix);
        Assert.False(m.RemoveExtraWhitespaces);
        Assert.True(m.EscapeWhitespaces);
        Assert.Equal(new SentencePieceEntry("<unk>", 0, TokenType.Unknown), m.Pieces[0]);
        Assert.Equal(new SentencePieceEntry("<0x00>", 0, TokenType.Byte), m.Pieces[3]);
        Assert.Equal(new SentencePieceEntry("▁t", -1, TokenType.Normal), m.Pieces[260]);
        Assert.Equal(new SentencePieceEntry("给", -31740, TokenType.Normal), m.Pieces[31999]);
    }

    [Fact]
    public void HandWrittenModel_ParsesSkippingUnknownFields_AndEncodes()
    {
        var m = SentencePieceModel.Parse(TinyModel(), "tiny.model");
        Assert.Equal(8, m.Pieces.Count);
        Assert.Equal(-1, m.PadId);
        Assert.False(m.ByteFallback);
        Assert.False(m.RemoveExtraWhitespaces);
        var tok = LlamaTokenizer.FromSentencePieceModel(m);
        // "▁ab": ab (-1) beats ▁a (not a piece); then ▁+ab = ▁ab (-2).
        Assert.Equal([7], tok.Encode("ab"));
        Assert.Equal([7, 3, 0, 6], tok.Encode("ab xab"));
        Assert.Equal("ab  \u2047 ab", tok.Decode([7, 3, 0, 6])); // "▁" then " ⁇ ": two spaces
        // The same model without the unknown fields parses to the same vocabulary.
        var plain = SentencePieceModel.Parse(TinyModel(withUnknownFields: false), "plain.model");
        Assert.Equal(m.Pieces, plain.Pieces);
    }

    [Fact]
    public void WrongModelType_IsRejected()
    {
        AssertInvalid(TinyModel(modelType: 1), "unigram.model", "UNIGRAM");
        AssertInvalid(TinyModel(modelType: 4), "char.model", "CHAR");
        AssertInvalid(TinyModel(modelType: 77), "odd.model", "#77");
    }

    [Fact]
    public void MalformedWireData_IsRejected()
    {
        AssertInvalid([], "empty.model", "no vocabulary pieces");
        AssertInvalid([0x0A, 0x05, 0x0A], "short.model", "runs past the end");
        // Field 5 (denormalizer_spec would be LEN; as a varint it is an unknown field to skip).
        AssertInvalid([0x28, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], "varint.model", "varint longer than 10 bytes");
        AssertInvalid([0x28, 0xFF], "trunc.model", "truncated varint");
        AssertInvalid([0x29, 0x00, 0x00], "fixed64.model", "truncated fixed-size field");
        AssertInvalid([0x0B, 0x0C], "group.model", "wire type 3");
        AssertInvalid([0x00, 0x01], "field0.model", "field number 0");
        AssertInvalid([0x08, 0x01], "pieces-as-varint.model", "wire type 0, expected 2");
        // A piece whose text is not UTF-8.
        AssertInvalid([0x0A, 0x04, 0x0A, 0x02, 0xC3, 0x28], "utf8.model", "not valid UTF-8");
        // A piece whose type is out of range.
        AssertInvalid([0x0A, 0x05, 0x0A, 0x01, (byte)'a', 0x18, 0x09], "type.model", "unknown type 9");
    }

    [Fact]
    public void TinyModel_EveryTruncation_IsRejectedOrIsAFieldBoundary()
    {
        byte[] data = TinyModel();
        var boundaries = TopLevelFieldStarts(data);
        Assert.Equal(8 + 1 + 4 + 1, boundaries.Count); // 8 pieces, trainer_spec, 4 unknown fields, normalizer_spec
        for (int len = 0; len < data.Length; len++)
            CheckTruncation(data, len, "tiny.model", boundaries);
    }

    [SkippableFact]
    public void Llama2Model_Truncations_AreRejected()
    {
        string path = SharedData.Require(TokenizerTestData.ModelPath);
        byte[] data = File.ReadAllBytes(path);
        var lengths = new List<int>();
        for (int len = 0; len < 200; len++) lengths.Add(len);
        for (int len = data.Length - 320; len < data.Length; len++) lengths.Add(len);
        var rng = new Random(5);
        for (int i = 0; i < 60; i++) lengths.Add(rng.Next(data.Length));
        var boundaries = TopLevelFieldStarts(data);
        Assert.Equal(32000 + 2, boundaries.Count);
        foreach (int len in lengths) CheckTruncation(data, len, path, boundaries);
    }

    /// <summary>Offsets where top-level fields start (walked here independently of ProtoReader).</summary>
    private static HashSet<int> TopLevelFieldStarts(byte[] data)
    {
        var starts = new HashSet<int>();
        int pos = 0;
        while (pos < data.Length)
        {
            starts.Add(pos);
            ulong tag = ReadVarint(data, ref pos);
            switch (tag & 7)
            {
                case 0: ReadVarint(data, ref pos); break;
                case 1: pos += 8; break;
                case 5: pos += 4; break;
                case 2:
                    int length = (int)ReadVarint(data, ref pos);
                    pos += length;
                    break;
                default: throw new InvalidOperationException("unexpected wire type in test data");
            }
        }
        return starts;

        static ulong ReadVarint(byte[] d, ref int p)
        {
            ulong v = 0;
            for (int shift = 0; ; shift += 7)
            {
                byte b = d[p++];
                v |= (ulong)(b & 0x7F) << shift;
                if (b < 0x80) return v;
            }
        }
    }

    // A truncated file either fails to parse (InvalidDataException naming it), or was cut exactly
    // between two top-level fields after trainer_spec, which protobuf cannot tell from a shorter valid
    // message (in the Llama file: only just before normalizer_spec, the last field; then proto2's
    // defaults apply, e.g. remove_extra_whitespaces = true). Any other exception type fails the test.
    private static void CheckTruncation(byte[] data, int len, string source, HashSet<int> boundaries)
    {
        try
        {
            SentencePieceModel.Parse(data.AsSpan(0, len), source);
            Assert.True(boundaries.Contains(len), $"a file truncated to {len} bytes parsed although {len} is not a field boundary");
        }
        catch (InvalidDataException e)
        {
            Assert.StartsWith(source + ": ", e.Message);
            Assert.DoesNotContain('\n', e.Message);
        }
    }

    [SkippableFact]
    public void Llama2Model_FlippedBytes_ParseOrGiveInvalidData()
    {
        string path = SharedData.Require(TokenizerTestData.ModelPath);
        byte[] original = File.ReadAllBytes(path);
        var rng = new Random(17);
        int rejected = 0;
        for (int trial = 0; trial < 150; trial++)
        {
            byte[] data = (byte[])original.Clone();
            // Corrupt mostly the structure-dense regions: the first pieces and the specs at the end.
            for (int k = 0; k < 3; k++)
            {
                int at = rng.Next(3) switch { 0 => rng.Next(2000), 1 => data.Length - 1 - rng.Next(300), _ => rng.Next(data.Length) };
                data[at] = (byte)rng.Next(256);
            }
            try
            {
                LlamaTokenizer.FromSentencePieceModel(SentencePieceModel.Parse(data, path), path);
            }
            catch (InvalidDataException e)
            {
                Assert.StartsWith(path + ": ", e.Message);
                rejected++;
            }
        }
        Assert.True(rejected > 10, $"only {rejected} of 150 corrupted files were rejected");
    }

    [Fact]
    public void GarbageBytes_GiveInvalidData()
    {
        var rng = new Random(3);
        for (int trial = 0; trial < 300; trial++)
        {
            var data = new byte[rng.Next(1, 3000)];
            rng.NextBytes(data);
            AssertInvalid(data, "garbage.model");
        }
    }

    [Fact]
    public void MissingFile_IsFileNotFound()
    {
        string path = Path.Combine(Path.GetTempPath(), "tinyllama-no-such-" + Guid.NewGuid().ToString("N"), "tokenizer.model");
        var e = Assert.Throws<FileNotFoundException>(() => LlamaTokenizer.FromSentencePieceModel(path));
        Assert.Contains(path, e.Message);
    }
}
