// SentencePiece's tokenizer.model file: a serialized ModelProto message, read with the hand-written
// ProtoReader. Field numbers are those of sentencepiece_model.proto
// (https://github.com/google/sentencepiece/blob/master/src/sentencepiece_model.proto):
//
//   message ModelProto {
//     message SentencePiece { string piece = 1; float score = 2; Type type = 3 [default = NORMAL]; }
//     repeated SentencePiece pieces = 1;   TrainerSpec trainer_spec = 2;   NormalizerSpec normalizer_spec = 3;
//     SelfTestData self_test_data = 4;     NormalizerSpec denormalizer_spec = 5;   (4, 5 skipped)
//   }
//   TrainerSpec:    model_type = 3 (UNIGRAM=1 default, BPE=2, WORD=3, CHAR=4),
//                   treat_whitespace_as_suffix = 24, byte_fallback = 35,
//                   unk_id = 40 (0), bos_id = 41 (1), eos_id = 42 (2), pad_id = 43 (-1), unk_surface = 44 (" ⁇ ")
//   NormalizerSpec: name = 1, precompiled_charsmap = 2, add_dummy_prefix = 3 (true),
//                   remove_extra_whitespaces = 4 (true), escape_whitespaces = 5 (true)
//
// Defaults in parentheses apply when a field is absent (proto2 semantics). Every other field (the
// training options: input files, vocab_size, character_coverage, ...) is skipped. The checks after
// parsing follow SentencePiece's ModelInterface::InitializePieces: non-empty unique pieces, exactly
// one UNKNOWN piece, BYTE pieces only with byte_fallback and only of the form <0xXX>.
using TinyLlama.Formats;

namespace TinyLlama.Tokenizers;

/// <summary>The kind of a vocabulary entry; the numbers are SentencePiece's (and GGUF's token_type).</summary>
public enum TokenType
{
    /// <summary>An ordinary piece that BPE merges may produce.</summary>
    Normal = 1,
    /// <summary>The unknown piece (&lt;unk&gt;).</summary>
    Unknown = 2,
    /// <summary>A control symbol such as &lt;s&gt; or &lt;/s&gt;: never produced from text, decodes to nothing.</summary>
    Control = 3,
    /// <summary>A user-defined symbol: matched whole in the text and never merged further.</summary>
    UserDefined = 4,
    /// <summary>A piece kept in the vocabulary but never emitted (re-split into its parts when a merge produces it).</summary>
    Unused = 5,
    /// <summary>A byte-fallback piece &lt;0xXX&gt; standing for one UTF-8 byte.</summary>
    Byte = 6,
}

/// <summary>One vocabulary entry of a SentencePiece model.</summary>
/// <param name="Piece">The piece text, with U+2581 '▁' for a space.</param>
/// <param name="Score">Merge priority for BPE (higher merges first); log-probability for unigram models.</param>
/// <param name="Type">What kind of piece it is.</param>
public readonly record struct SentencePieceEntry(string Piece, float Score, TokenType Type);

/// <summary>
/// The parts of a SentencePiece <c>ModelProto</c> that tokenization needs, read from a
/// <c>tokenizer.model</c> file.
/// </summary>
public sealed class SentencePieceModel
{
    /// <summary>SentencePiece's TrainerSpec.ModelType values.</summary>
    public enum ModelKind
    {
        /// <summary>Unigram language model (SentencePiece's default).</summary>
        Unigram = 1,
        /// <summary>Byte-pair encoding (Llama).</summary>
        Bpe = 2,
        /// <summary>Whitespace-delimited words.</summary>
        Word = 3,
        /// <summary>Single characters.</summary>
        Char = 4,
    }

    /// <summary>The vocabulary, indexed by id.</summary>
    public IReadOnlyList<SentencePieceEntry> Pieces { get; private set; } = [];
    /// <summary>trainer_spec.model_type.</summary>
    public ModelKind ModelType { get; private set; } = ModelKind.Unigram;
    /// <summary>trainer_spec.byte_fallback: unknown characters become &lt;0xXX&gt; byte pieces.</summary>
    public bool ByteFallback { get; private set; }
    /// <summary>trainer_spec.treat_whitespace_as_suffix (unsupported when true).</summary>
    public bool TreatWhitespaceAsSuffix { get; private set; }
    /// <summary>trainer_spec.unk_id.</summary>
    public int UnkId { get; private set; }
    /// <summary>trainer_spec.bos_id (-1: none).</summary>
    public int BosId { get; private set; } = 1;
    /// <summary>trainer_spec.eos_id (-1: none).</summary>
    public int EosId { get; private set; } = 2;
    /// <summary>trainer_spec.pad_id (-1: none).</summary>
    public int PadId { get; private set; } = -1;
    /// <summary>trainer_spec.unk_surface: what &lt;unk&gt; decodes to.</summary>
    public string UnkSurface { get; private set; } = " \u2047 ";
    /// <summary>normalizer_spec.name, e.g. "identity" (Llama) or "nmt_nfkc".</summary>
    public string NormalizerName { get; private set; } = "";
    /// <summary>Size of normalizer_spec.precompiled_charsmap (a compiled normalization table; 0 for Llama).</summary>
    public int PrecompiledCharsmapLength { get; private set; }
    /// <summary>normalizer_spec.add_dummy_prefix: prepend one space so a text's first word looks like any other.</summary>
    public bool AddDummyPrefix { get; private set; } = true;
    /// <summary>normalizer_spec.remove_extra_whitespaces: drop leading/trailing spaces and collapse runs.</summary>
    public bool RemoveExtraWhitespaces { get; private set; } = true;
    /// <summary>normalizer_spec.escape_whitespaces: write ' ' as U+2581 '▁'.</summary>
    public bool EscapeWhitespaces { get; private set; } = true;

    /// <summary>Reads and validates a tokenizer.model file.</summary>
    /// <exception cref="InvalidDataException">The file is not a valid SentencePiece model.</exception>
    public static SentencePieceModel Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"tokenizer model not found: {path}", path);
        return Parse(File.ReadAllBytes(path), path);
    }

    /// <summary>Parses and validates a serialized ModelProto; <paramref name="source"/> names it in errors.</summary>
    /// <exception cref="InvalidDataException">The bytes are not a valid SentencePiece model.</exception>
    public static SentencePieceModel Parse(ReadOnlySpan<byte> data, string source)
    {
        var pieces = new List<SentencePieceEntry>();
        var model = new SentencePieceModel { Pieces = pieces };
        // A message field that appears twice is merged, as protobuf does: later fields override.
        var reader = new ProtoReader(data, source);
        while (reader.TryReadTag(out int field, out var wire))
        {
            switch (field)
            {
                case 1:
                    reader.Expect(field, wire, WireType.LengthDelimited, "pieces");
                    pieces.Add(ReadPiece(reader.ReadMessage(), pieces.Count));
                    break;
                case 2:
                    reader.Expect(field, wire, WireType.LengthDelimited, "trainer_spec");
                    ReadTrainerSpec(reader.ReadMessage(), model);
                    break;
                case 3:
                    reader.Expect(field, wire, WireType.LengthDelimited, "normalizer_spec");
                    ReadNormalizerSpec(reader.ReadMessage(), model);
                    break;
                default:
                    reader.Skip(wire);
                    break;
            }
        }
        Validate(model, source);
        return model;
    }

    private static SentencePieceEntry ReadPiece(ProtoReader r, int index)
    {
        string piece = "";
        float score = 0;
        var type = TokenType.Normal;
        while (r.TryReadTag(out int field, out var wire))
        {
            switch (field)
            {
                case 1:
                    r.Expect(field, wire, WireType.LengthDelimited, "piece");
                    piece = r.ReadString($"pieces[{index}].piece");
                    break;
                case 2:
                    r.Expect(field, wire, WireType.Fixed32, "score");
                    score = r.ReadFloat();
                    break;
                case 3:
                    r.Expect(field, wire, WireType.Varint, "type");
                    int at = r.Offset;
                    int t = r.ReadInt32();
                    if (t is < 1 or > 6) throw r.Fail($"pieces[{index}] has unknown type {t}", at);
                    type = (TokenType)t;
                    break;
                default:
                    r.Skip(wire);
                    break;
            }
        }
        return new SentencePieceEntry(piece, score, type);
    }

    private static void ReadTrainerSpec(ProtoReader r, SentencePieceModel m)
    {
        while (r.TryReadTag(out int field, out var wire))
        {
            switch (field)
            {
                case 3: r.Expect(field, wire, WireType.Varint, "trainer_spec.model_type"); m.ModelType = (ModelKind)r.ReadInt32(); break;
                case 24: r.Expect(field, wire, WireType.Varint, "trainer_spec.treat_whitespace_as_suffix"); m.TreatWhitespaceAsSuffix = r.ReadBool(); break;
                case 35: r.Expect(field, wire, WireType.Varint, "trainer_spec.byte_fallback"); m.ByteFallback = r.ReadBool(); break;
                case 40: r.Expect(field, wire, WireType.Varint, "trainer_spec.unk_id"); m.UnkId = r.ReadInt32(); break;
                case 41: r.Expect(field, wire, WireType.Varint, "trainer_spec.bos_id"); m.BosId = r.ReadInt32(); break;
                case 42: r.Expect(field, wire, WireType.Varint, "trainer_spec.eos_id"); m.EosId = r.ReadInt32(); break;
                case 43: r.Expect(field, wire, WireType.Varint, "trainer_spec.pad_id"); m.PadId = r.ReadInt32(); break;
                case 44:
                    r.Expect(field, wire, WireType.LengthDelimited, "trainer_spec.unk_surface");
                    m.UnkSurface = r.ReadString("trainer_spec.unk_surface");
                    break;
                default: r.Skip(wire); break;
            }
        }
    }

    private static void ReadNormalizerSpec(ProtoReader r, SentencePieceModel m)
    {
        while (r.TryReadTag(out int field, out var wire))
        {
            switch (field)
            {
                case 1:
                    r.Expect(field, wire, WireType.LengthDelimited, "normalizer_spec.name");
                    m.NormalizerName = r.ReadString("normalizer_spec.name");
                    break;
                case 2:
                    r.Expect(field, wire, WireType.LengthDelimited, "normalizer_spec.precompiled_charsmap");
                    m.PrecompiledCharsmapLength = r.ReadBytes(out _).Length;
                    break;
                case 3: r.Expect(field, wire, WireType.Varint, "normalizer_spec.add_dummy_prefix"); m.AddDummyPrefix = r.ReadBool(); break;
                case 4: r.Expect(field, wire, WireType.Varint, "normalizer_spec.remove_extra_whitespaces"); m.RemoveExtraWhitespaces = r.ReadBool(); break;
                case 5: r.Expect(field, wire, WireType.Varint, "normalizer_spec.escape_whitespaces"); m.EscapeWhitespaces = r.ReadBool(); break;
                default: r.Skip(wire); break;
            }
        }
    }

    // The checks SentencePiece makes when it loads a model, plus the limits of this implementation.
    private static void Validate(SentencePieceModel m, string source)
    {
        var pieces = m.Pieces;
        if (pieces.Count == 0) throw new InvalidDataException($"{source}: no vocabulary pieces (not a SentencePiece model?)");
        if (m.ModelType != ModelKind.Bpe)
        {
            string kind = Enum.IsDefined(m.ModelType) ? m.ModelType.ToString().ToUpperInvariant() : $"#{(int)m.ModelType}";
            throw new InvalidDataException($"{source}: model type is {kind}; only BPE SentencePiece models (Llama) are supported");
        }
        if (m.TreatWhitespaceAsSuffix)
            throw new InvalidDataException($"{source}: treat_whitespace_as_suffix is not supported");
        if (m.PrecompiledCharsmapLength > 0)
            throw new InvalidDataException($"{source}: normalizer {MessageText.Quote(m.NormalizerName)} uses a precompiled character map, which is not supported (Llama uses 'identity')");
        var seen = new HashSet<string>(pieces.Count, StringComparer.Ordinal);
        int unkCount = 0;
        for (int i = 0; i < pieces.Count; i++)
        {
            var p = pieces[i];
            if (p.Piece.Length == 0) throw new InvalidDataException($"{source}: piece {i} is empty");
            if (!seen.Add(p.Piece)) throw new InvalidDataException($"{source}: piece {i} {MessageText.Quote(p.Piece)} is defined twice");
            if (p.Type == TokenType.Unknown) unkCount++;
            if (p.Type == TokenType.Byte)
            {
                if (!m.ByteFallback) throw new InvalidDataException($"{source}: byte piece {i} {MessageText.Quote(p.Piece)} but byte_fallback is off");
                if (LlamaTokenizer.ParseBytePiece(p.Piece) < 0) throw new InvalidDataException($"{source}: byte piece {i} {MessageText.Quote(p.Piece)} is not of the form <0xXX>");
            }
        }
        if (unkCount != 1) throw new InvalidDataException($"{source}: expected exactly one unknown piece, found {unkCount}");
        if ((uint)m.UnkId >= (uint)pieces.Count || pieces[m.UnkId].Type != TokenType.Unknown)
            throw new InvalidDataException($"{source}: unk_id {m.UnkId} is not the unknown piece");
        CheckSpecial(m.BosId, "bos_id");
        CheckSpecial(m.EosId, "eos_id");
        CheckSpecial(m.PadId, "pad_id");

        void CheckSpecial(int id, string name)
        {
            if (id < -1 || id >= pieces.Count) throw new InvalidDataException($"{source}: {name} {id} is outside the vocabulary of {pieces.Count}");
        }
    }
}
