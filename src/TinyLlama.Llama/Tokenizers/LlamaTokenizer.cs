// The Llama tokenizer: SentencePiece byte-pair encoding with byte fallback, written from scratch.
//
// Where the algorithm comes from:
//   - normalisation: SentencePiece normalizer.cc (Normalizer::Normalize) for an "identity" rule set:
//     optionally drop extra spaces, prepend one space (add_dummy_prefix), write ' ' as U+2581 '▁';
//   - encoding: SentencePiece bpe_model.cc (Model::Encode): split into characters, then repeatedly
//     merge the adjacent pair whose concatenation is a vocabulary piece with the highest score (ties:
//     leftmost), driven by a priority queue over adjacent pairs and a linked list of symbols; then
//     sentencepiece_processor.cc turns characters outside the vocabulary into <0xXX> byte pieces
//     (byte_fallback) or one <unk> per run of them;
//   - Hugging Face tokenizer.json files rank merges by their position in the "merges" list instead
//     of by score (tokenizers/src/models/bpe/word.rs, Word::merge_all); that path is implemented too;
//   - decoding: SentencePieceProcessor::Decode: '▁' back to ' ', byte pieces reassembled into UTF-8
//     (invalid bytes become U+FFFD one byte at a time), control pieces (<s>, </s>) invisible, and the
//     space that add_dummy_prefix put in front of the text removed again: exactly one leading '▁' of
//     the first piece that produces text (its is_bos_ws / bos_ws_seen logic), so " x" round-trips.
//
// The same class serves four sources: tokenizer.model (SentencePiece), tokenizer.json (Hugging Face),
// plain arrays of pieces, scores and token types, and a GGUF file's tokenizer.ggml.* metadata
// (Formats/GgufModel.cs), which holds such arrays.
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using TinyLlama.Formats;

namespace TinyLlama.Tokenizers;

/// <summary>Normalisation and special-token settings of a <see cref="LlamaTokenizer"/> (SentencePiece's names).</summary>
public sealed class TokenizerOptions
{
    /// <summary>Prepend one space to non-empty text, so "world" and "hello world" both contain "▁world". Llama: true.</summary>
    public bool AddDummyPrefix { get; init; } = true;
    /// <summary>Drop leading and trailing spaces and collapse runs of spaces. Llama: false.</summary>
    public bool RemoveExtraWhitespaces { get; init; }
    /// <summary>Write ' ' as U+2581 '▁' before encoding. Llama: true.</summary>
    public bool EscapeWhitespaces { get; init; } = true;
    /// <summary>Encode characters outside the vocabulary as their UTF-8 bytes (&lt;0xXX&gt; pieces) instead of &lt;unk&gt;. Llama: true.</summary>
    public bool ByteFallback { get; init; } = true;
    /// <summary>Id of the beginning-of-sequence piece, or -1. Llama: 1.</summary>
    public int BosId { get; init; } = 1;
    /// <summary>Id of the end-of-sequence piece, or -1. Llama: 2.</summary>
    public int EosId { get; init; } = 2;
    /// <summary>Id of the padding piece, or -1. Llama: -1.</summary>
    public int PadId { get; init; } = -1;
    /// <summary>What the unknown piece decodes to (SentencePiece's unk_surface).</summary>
    public string UnknownSurface { get; init; } = " \u2047 ";

    // Hugging Face's Metaspace pre-tokenizer prepends '▁' only when the text does not already start
    // with one, and may split the text into words before every '▁' (merges never cross words).
    internal bool DummyPrefixOnlyIfAbsent { get; init; }
    internal bool SplitBeforeSpaceSymbol { get; init; }
    // Hugging Face's fuse_unk: consecutive unknown characters become one <unk> before merging.
    internal bool FuseUnknown { get; init; } = true;
    // Break score ties toward the rightmost pair instead of SentencePiece's leftmost. Only for tests:
    // Microsoft.ML.Tokenizers 2.0.1 does this, and the oracle test uses it to show that this is the
    // only way that implementation differs from ours ("###" -> "#" "##" there, "##" "#" in SentencePiece).
    internal bool TiesGoRight { get; init; }
}

/// <summary>
/// SentencePiece-compatible BPE tokenizer for Llama vocabularies (32,000 pieces with byte fallback for
/// Llama 1/2). Thread-safe: encoding and decoding do not mutate the instance.
/// </summary>
public sealed class LlamaTokenizer
{
    /// <summary>U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's visible stand-in for a space.</summary>
    public const char SpaceSymbol = '\u2581';

    private readonly string[] _pieces;        // [V] piece text by id
    private readonly float[] _scores;         // [V] merge priority (SentencePiece path)
    private readonly TokenType[] _types;      // [V]
    private readonly int[] _byteValue;        // [V] the byte a <0xXX> piece stands for, else -1
    private readonly int[] _byteToId;         // [256] id of <0xXX>, or -1 when the vocabulary lacks it
    private readonly Dictionary<string, int> _ids;
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _idsBySpan;
    private readonly TokenizerOptions _options;

    // User-defined symbols are matched whole (longest first) before any merging.
    private readonly HashSet<string>.AlternateLookup<ReadOnlySpan<char>>? _userDefined;
    private readonly int[] _userDefinedLengths = []; // distinct lengths, longest first

    // Hugging Face path: (left id, right id) packed in a long -> (rank, merged id). Null: rank by score.
    private readonly Dictionary<long, (int Rank, int Id)>? _merges;

    /// <summary>Number of pieces (the embedding table's row count).</summary>
    public int VocabSize => _pieces.Length;
    /// <summary>Id of the beginning-of-sequence piece &lt;s&gt;, or -1.</summary>
    public int BosId => _options.BosId;
    /// <summary>Id of the end-of-sequence piece &lt;/s&gt;, or -1.</summary>
    public int EosId => _options.EosId;
    /// <summary>Id of the padding piece, or -1.</summary>
    public int PadId => _options.PadId;
    /// <summary>Id of the unknown piece &lt;unk&gt;.</summary>
    public int UnkId { get; }
    /// <summary>Where the vocabulary came from (the file's path, or "vocabulary"): errors in using it name it.</summary>
    public string Source { get; }

    /// <summary>
    /// <see cref="BosId"/>; an <see cref="InvalidDataException"/> naming <see cref="Source"/> when the
    /// tokenizer has none (a file whose BOS id is absent or -1), for callers that must start with BOS.
    /// </summary>
    public int RequireBosId() => BosId >= 0 ? BosId : throw NoSpecial("BOS");

    /// <summary><see cref="EosId"/>; an <see cref="InvalidDataException"/> naming <see cref="Source"/> when the tokenizer has none.</summary>
    public int RequireEosId() => EosId >= 0 ? EosId : throw NoSpecial("EOS");

    private InvalidDataException NoSpecial(string name) =>
        new($"{Source}: the tokenizer has no {name} piece (its {name} id is absent or -1), but {name} is needed here");
    /// <summary>The normalisation and special-token settings.</summary>
    public TokenizerOptions Options => _options;
    /// <summary>True when merges are ranked by a Hugging Face merge list rather than by piece scores.</summary>
    public bool UsesMergeRanks => _merges is not null;

    private LlamaTokenizer(string[] pieces, float[] scores, TokenType[] types, TokenizerOptions options,
        IReadOnlyList<(string Left, string Right)>? merges, string source)
    {
        int v = pieces.Length;
        if (scores.Length != v || types.Length != v)
            throw new ArgumentException($"{source}: {v} pieces but {scores.Length} scores and {types.Length} types");
        if (v == 0) throw new ArgumentException($"{source}: the vocabulary is empty");
        Source = source;
        _pieces = pieces;
        _scores = scores;
        _types = types;
        _options = options;
        _ids = new Dictionary<string, int>(v, StringComparer.Ordinal);
        _byteValue = new int[v];
        _byteToId = new int[256];
        Array.Fill(_byteToId, -1);
        int unk = -1;
        List<string>? userDefined = null;
        for (int id = 0; id < v; id++)
        {
            string p = pieces[id] ?? throw new ArgumentException($"{source}: piece {id} is null");
            if (p.Length == 0) throw new ArgumentException($"{source}: piece {id} is empty");
            if (!_ids.TryAdd(p, id)) throw new ArgumentException($"{source}: piece {id} {MessageText.Quote(p)} is defined twice");
            _byteValue[id] = -1;
            switch (types[id])
            {
                case TokenType.Unknown:
                    if (unk >= 0) throw new ArgumentException($"{source}: more than one unknown piece ({unk} and {id})");
                    unk = id;
                    break;
                case TokenType.Byte:
                    int b = ParseBytePiece(p);
                    if (b < 0) throw new ArgumentException($"{source}: byte piece {id} {MessageText.Quote(p)} is not of the form <0xXX>");
                    _byteValue[id] = b;
                    _byteToId[b] = id;
                    break;
                case TokenType.UserDefined:
                    (userDefined ??= []).Add(p);
                    break;
                case TokenType.Normal or TokenType.Control or TokenType.Unused:
                    break;
                default:
                    throw new ArgumentException($"{source}: piece {id} has unknown type {(int)types[id]}");
            }
        }
        if (unk < 0) throw new ArgumentException($"{source}: the vocabulary has no unknown piece");
        UnkId = unk;
        CheckSpecialId(options.BosId, "BOS");
        CheckSpecialId(options.EosId, "EOS");
        CheckSpecialId(options.PadId, "PAD");
        _idsBySpan = _ids.GetAlternateLookup<ReadOnlySpan<char>>();
        if (userDefined is not null)
        {
            _userDefined = new HashSet<string>(userDefined, StringComparer.Ordinal).GetAlternateLookup<ReadOnlySpan<char>>();
            var lengths = new SortedSet<int>(Comparer<int>.Create((a, b) => b.CompareTo(a)));
            foreach (var s in userDefined) lengths.Add(s.Length);
            _userDefinedLengths = [.. lengths];
        }
        if (merges is not null)
        {
            // Hugging Face (models/bpe/model.rs): each merge "a b" needs a, b and ab in the vocabulary;
            // a pair listed twice keeps its later rank (the map is built by inserting in order).
            _merges = new Dictionary<long, (int, int)>(merges.Count);
            for (int rank = 0; rank < merges.Count; rank++)
            {
                var (left, right) = merges[rank];
                if (!_ids.TryGetValue(left, out int l) || !_ids.TryGetValue(right, out int r) || !_ids.TryGetValue(left + right, out int m))
                    throw new ArgumentException($"{source}: merge {rank} {MessageText.Quote(left + " " + right)} uses a piece that is not in the vocabulary");
                _merges[PairKey(l, r)] = (rank, m);
            }
        }

        void CheckSpecialId(int id, string name)
        {
            if (id < -1 || id >= v) throw new ArgumentException($"{source}: {name} id {id} is outside the vocabulary of {v}");
        }
    }

    // ---------------------------------------------------------------- construction

    /// <summary>
    /// Loads a tokenizer from a SentencePiece <c>tokenizer.model</c>, a Hugging Face <c>tokenizer.json</c>,
    /// the vocabulary inside a GGUF file (<c>.gguf</c>, or any file starting with the GGUF magic; see
    /// <see cref="GgufModel.LoadTokenizer(string)"/>), or a directory holding tokenizer.model or tokenizer.json
    /// (tokenizer.model is preferred when both are present).
    /// </summary>
    /// <exception cref="FileNotFoundException">Nothing to load at <paramref name="path"/>.</exception>
    /// <exception cref="InvalidDataException">The file is corrupt or describes an unsupported tokenizer.</exception>
    public static LlamaTokenizer Load(string path)
    {
        if (Directory.Exists(path))
        {
            string model = Path.Combine(path, "tokenizer.model"), json = Path.Combine(path, "tokenizer.json");
            if (File.Exists(model)) return FromSentencePieceModel(model);
            if (File.Exists(json)) return FromHuggingFaceJson(json);
            throw new FileNotFoundException($"no tokenizer.model or tokenizer.json in directory {path}", path);
        }
        if (!File.Exists(path)) throw new FileNotFoundException($"tokenizer not found: {path}", path);
        if (path.EndsWith(".json", StringComparison.OrdinalIgnoreCase)) return FromHuggingFaceJson(path);
        if (path.EndsWith(".model", StringComparison.OrdinalIgnoreCase)) return FromSentencePieceModel(path);
        if (path.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase) || StartsWithGgufMagic(path)) return GgufModel.LoadTokenizer(path);
        // Unknown extension: a JSON file starts with '{' (after optional whitespace or a BOM); a
        // ModelProto starts with field 1 (byte 0x0A).
        var bytes = File.ReadAllBytes(path);
        var text = bytes.AsSpan();
        if (text.StartsWith("\uFEFF"u8)) text = text[3..];
        text = text.TrimStart(" \t\r\n"u8);
        return text.Length > 0 && text[0] == (byte)'{'
            ? HuggingFaceTokenizerJson.Parse(Encoding.UTF8.GetString(bytes), path)
            : FromSentencePieceModel(SentencePieceModel.Parse(bytes, path), path);
    }

    // A GGUF file may be gigabytes of weights: look at its first four bytes only.
    private static bool StartsWithGgufMagic(string path)
    {
        Span<byte> head = stackalloc byte[4];
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1);
        return stream.ReadAtLeast(head, 4, throwOnEndOfStream: false) == 4 && head.SequenceEqual(GgufFile.Magic);
    }

    /// <summary>Loads a SentencePiece <c>tokenizer.model</c> (BPE models only).</summary>
    /// <exception cref="InvalidDataException">The file is corrupt or not a BPE model.</exception>
    public static LlamaTokenizer FromSentencePieceModel(string path) => FromSentencePieceModel(SentencePieceModel.Load(path), path);

    /// <summary>Builds a tokenizer from a parsed SentencePiece model.</summary>
    public static LlamaTokenizer FromSentencePieceModel(SentencePieceModel model, string source = "tokenizer.model")
    {
        int v = model.Pieces.Count;
        var pieces = new string[v];
        var scores = new float[v];
        var types = new TokenType[v];
        for (int i = 0; i < v; i++) (pieces[i], scores[i], types[i]) = model.Pieces[i];
        var options = new TokenizerOptions
        {
            AddDummyPrefix = model.AddDummyPrefix,
            RemoveExtraWhitespaces = model.RemoveExtraWhitespaces,
            EscapeWhitespaces = model.EscapeWhitespaces,
            ByteFallback = model.ByteFallback,
            BosId = model.BosId,
            EosId = model.EosId,
            PadId = model.PadId,
            UnknownSurface = model.UnkSurface,
        };
        try
        {
            return new LlamaTokenizer(pieces, scores, types, options, null, source);
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException(e.Message, e);
        }
    }

    /// <summary>Loads a Hugging Face <c>tokenizer.json</c> describing Llama-style BPE with byte fallback.</summary>
    /// <exception cref="InvalidDataException">The file is not valid JSON or describes an unsupported tokenizer.</exception>
    public static LlamaTokenizer FromHuggingFaceJson(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"tokenizer.json not found: {path}", path);
        return HuggingFaceTokenizerJson.Parse(TinyLlama.Formats.JsonText.ReadFile(path), path);
    }

    /// <summary>
    /// Builds a SentencePiece-style tokenizer (merges ranked by score) from arrays indexed by id, as a
    /// GGUF file stores them (tokenizer.ggml.tokens, .scores, .token_type). Exactly one piece must be
    /// <see cref="TokenType.Unknown"/>.
    /// </summary>
    public static LlamaTokenizer FromVocabulary(IReadOnlyList<string> pieces, IReadOnlyList<float> scores,
        IReadOnlyList<TokenType> types, TokenizerOptions? options = null)
        => new([.. pieces], [.. scores], [.. types], options ?? new TokenizerOptions(), null, "vocabulary");

    /// <summary>
    /// Builds a tokenizer whose merges are ranked by their order in <paramref name="merges"/> (earlier
    /// merges first), as Hugging Face BPE does. Each merge (a, b) needs a, b and a+b in the vocabulary.
    /// </summary>
    public static LlamaTokenizer FromVocabularyWithMerges(IReadOnlyList<string> pieces, IReadOnlyList<TokenType> types,
        IReadOnlyList<(string Left, string Right)> merges, TokenizerOptions? options = null)
        => new([.. pieces], new float[pieces.Count], [.. types], options ?? new TokenizerOptions(), merges, "vocabulary");

    internal static LlamaTokenizer Create(string[] pieces, float[] scores, TokenType[] types, TokenizerOptions options,
        IReadOnlyList<(string, string)>? merges, string source) => new(pieces, scores, types, options, merges, source);

    /// <summary>The merges by rank, earliest first (for writing the tokenizer out); empty when ranked by score.</summary>
    internal List<(string Left, string Right)> MergesInRankOrder()
    {
        var merges = new List<(string, string)>(_merges?.Count ?? 0);
        if (_merges is null) return merges;
        var ordered = new List<(int Rank, long Key)>(_merges.Count);
        foreach (var (key, m) in _merges) ordered.Add((m.Rank, key));
        ordered.Sort();
        foreach (var (_, key) in ordered) merges.Add((_pieces[(int)(key >> 32)], _pieces[(int)(uint)key]));
        return merges;
    }

    // ---------------------------------------------------------------- vocabulary

    /// <summary>The piece text of an id, e.g. "▁Hello" or "&lt;0x0A&gt;".</summary>
    public string IdToPiece(int id) => _pieces[CheckId(id)];

    /// <summary>The id of a piece, or false when the vocabulary does not contain it.</summary>
    public bool TryPieceToId(string piece, out int id) => _ids.TryGetValue(piece, out id);

    /// <summary>The id of a piece, or <see cref="UnkId"/> when absent (SentencePiece's PieceToId).</summary>
    public int PieceToId(string piece) => _ids.TryGetValue(piece, out int id) ? id : UnkId;

    /// <summary>The kind of piece an id is.</summary>
    public TokenType GetTokenType(int id) => _types[CheckId(id)];

    /// <summary>The score of a piece (higher merges first in the SentencePiece path).</summary>
    public float GetScore(int id) => _scores[CheckId(id)];

    /// <summary>The byte a &lt;0xXX&gt; piece stands for, or -1 for other pieces.</summary>
    public int GetByteValue(int id) => _byteValue[CheckId(id)];

    private int CheckId(int id)
    {
        if ((uint)id >= (uint)_pieces.Length)
            throw new ArgumentOutOfRangeException(nameof(id), id, $"token id {id} is outside the vocabulary of {_pieces.Length}");
        return id;
    }

    /// <summary>Parses "&lt;0xXX&gt;" (upper-case hex, as SentencePiece writes it) into 0..255, else -1.</summary>
    internal static int ParseBytePiece(string piece)
    {
        if (piece.Length != 6 || !piece.StartsWith("<0x", StringComparison.Ordinal) || piece[5] != '>') return -1;
        int hi = Hex(piece[3]), lo = Hex(piece[4]);
        return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;

        static int Hex(char c) => c is >= '0' and <= '9' ? c - '0' : c is >= 'A' and <= 'F' ? c - 'A' + 10 : -1;
    }

    /// <summary>The piece text SentencePiece uses for a byte, e.g. 10 -> "&lt;0x0A&gt;".</summary>
    public static string BytePiece(int b) => string.Create(CultureInfo.InvariantCulture, $"<0x{b:X2}>");

    private static long PairKey(int left, int right) => ((long)left << 32) | (uint)right;

    // ---------------------------------------------------------------- encoding

    /// <summary>
    /// Encodes text to token ids, optionally with &lt;s&gt; first and &lt;/s&gt; last. Text that spells
    /// a control piece ("&lt;s&gt;") is encoded as ordinary characters, as SentencePiece does.
    /// </summary>
    /// <exception cref="InvalidDataException">BOS or EOS asked for, and the tokenizer has none (see <see cref="RequireBosId"/>).</exception>
    public int[] Encode(string text, bool addBos = false, bool addEos = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        int bos = addBos ? RequireBosId() : -1, eos = addEos ? RequireEosId() : -1;
        var ids = new List<int>(text.Length / 3 + 2);
        if (addBos) ids.Add(bos);
        EncodeNormalized(Normalize(text), ids);
        if (addEos) ids.Add(eos);
        return [.. ids];
    }

    /// <summary>
    /// SentencePiece's normalisation for the identity rule set: the text the merges run over.
    /// E.g. "Hello world" -> "▁Hello▁world" for Llama.
    /// </summary>
    public string Normalize(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var o = _options;
        char space = o.EscapeWhitespaces ? SpaceSymbol : ' ';
        int start = 0;
        if (o.RemoveExtraWhitespaces)
            while (start < text.Length && text[start] == ' ') start++;
        // SentencePiece returns nothing for empty input (no dummy prefix), and so does HF's Prepend.
        if (start == text.Length) return "";
        var sb = new StringBuilder(text.Length - start + 1);
        if (o.AddDummyPrefix)
        {
            bool startsWithSpace = text[start] == ' ' || (o.EscapeWhitespaces && text[start] == SpaceSymbol);
            if (!(o.DummyPrefixOnlyIfAbsent && startsWithSpace)) sb.Append(space);
        }
        bool prevSpace = o.RemoveExtraWhitespaces;
        for (int i = start; i < text.Length; i++)
        {
            char c = text[i];
            if (c == ' ')
            {
                if (o.RemoveExtraWhitespaces && prevSpace) continue;
                sb.Append(space);
                prevSpace = true;
                continue;
            }
            prevSpace = false;
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                sb.Append(c).Append(text[++i]);
            }
            else if (char.IsSurrogate(c))
            {
                // A lone surrogate has no UTF-8 form; SentencePiece sees U+FFFD where the bytes are invalid.
                sb.Append('\uFFFD');
            }
            else sb.Append(c);
        }
        if (o.RemoveExtraWhitespaces)
        {
            // SentencePiece trims trailing space symbols after escaping (so a literal '▁' goes too).
            int end = sb.Length;
            while (end > 0 && sb[end - 1] == space) end--;
            sb.Length = end;
        }
        return sb.ToString();
    }

    /// <summary>A symbol of the linked list the merges run over: a slice of the normalised text.</summary>
    private struct Symbol
    {
        public int Start;    // offset in the normalised text (chars)
        public int Length;   // chars; 0 once merged into its left neighbour
        public int Prev;     // index of the previous live symbol, -1 at the start (of a word)
        public int Next;     // index of the next live symbol, -1 at the end (of a word)
        public int Id;       // piece id (HF path, from the start; SentencePiece path: resolved at the end)
        public bool Frozen;  // a user-defined symbol: never merged
    }

    private void EncodeNormalized(string normalized, List<int> output)
    {
        if (normalized.Length == 0) return;
        var list = new List<Symbol>(normalized.Length);
        if (_merges is null) SplitForScores(normalized, list);
        else SplitForRanks(normalized, list);
        var symbols = CollectionsMarshal.AsSpan(list);
        if (_merges is null)
        {
            Dictionary<string, (string, string)>? unusedSplits = MergeByScore(normalized, symbols);
            EmitByScore(normalized, symbols, unusedSplits, output);
        }
        else
        {
            MergeByRank(symbols);
            foreach (ref readonly var s in symbols)
                if (s.Length > 0) output.Add(s.Id);
        }
    }

    /// <summary>Length of a user-defined symbol starting at <paramref name="pos"/> (longest match), or 0.</summary>
    private int MatchUserDefined(string text, int pos)
    {
        if (_userDefined is not { } set) return 0;
        foreach (int len in _userDefinedLengths)
            if (pos + len <= text.Length && set.Contains(text.AsSpan(pos, len))) return len;
        return 0;
    }

    private static int CharLength(string text, int pos) =>
        char.IsHighSurrogate(text[pos]) && pos + 1 < text.Length && char.IsLowSurrogate(text[pos + 1]) ? 2 : 1;

    // SentencePiece: one symbol per character (code point), or per user-defined symbol.
    private void SplitForScores(string text, List<Symbol> symbols)
    {
        for (int pos = 0; pos < text.Length;)
        {
            int len = MatchUserDefined(text, pos);
            bool frozen = len > 0;
            if (!frozen) len = CharLength(text, pos);
            int index = symbols.Count;
            symbols.Add(new Symbol { Start = pos, Length = len, Prev = index - 1, Next = pos + len < text.Length ? index + 1 : -1, Id = -1, Frozen = frozen });
            pos += len;
        }
    }

    // SentencePiece Model::Encode: the BPE loop, merges ranked by the merged piece's score.
    // Returns the splits recorded for UNUSED pieces (re-split at the end), or null.
    private Dictionary<string, (string, string)>? MergeByScore(string text, Span<Symbol> symbols)
    {
        var queue = new MergeQueue(symbols.Length);
        Dictionary<string, (string, string)>? unusedSplits = null;
        for (int i = 1; i < symbols.Length; i++) TryPush(i - 1, i, symbols);
        while (queue.TryPop(out var top))
        {
            ref var left = ref symbols[top.Left];
            ref var right = ref symbols[top.Right];
            // Stale: one side was merged away, or grew, since this pair was pushed.
            if (left.Length == 0 || right.Length == 0 || left.Length + right.Length != top.Length) continue;
            left.Length += right.Length;
            left.Next = right.Next;
            if (right.Next >= 0) symbols[right.Next].Prev = top.Left;
            right.Length = 0;
            TryPush(left.Prev, top.Left, symbols);
            TryPush(top.Left, left.Next, symbols);
        }
        return unusedSplits;

        void TryPush(int l, int r, Span<Symbol> symbols)
        {
            if (l < 0 || r < 0 || symbols[l].Frozen || symbols[r].Frozen) return;
            int len = symbols[l].Length + symbols[r].Length;
            var merged = text.AsSpan(symbols[l].Start, len);
            // Only pieces a merge may produce: NORMAL, USER_DEFINED, UNUSED (SentencePiece's pieces_).
            if (!_idsBySpan.TryGetValue(merged, out int id) || _types[id] is TokenType.Control or TokenType.Unknown or TokenType.Byte) return;
            queue.Push(new MergeCandidate { Key = MergeQueue.ScoreKey(_scores[id], _options.TiesGoRight ? int.MaxValue - l : l), Left = l, Right = r, Length = len, Id = id });
            if (_types[id] == TokenType.Unused)
            {
                // An UNUSED piece may be formed but is never output: remember how it was made so the
                // final pass can split it again (SentencePiece's rev_merge).
                (unusedSplits ??= new Dictionary<string, (string, string)>(StringComparer.Ordinal))[merged.ToString()] =
                    (text.Substring(symbols[l].Start, symbols[l].Length), text.Substring(symbols[r].Start, symbols[r].Length));
            }
        }
    }

    // sentencepiece_processor.cc: ids for the final symbols; unknown characters become byte pieces
    // (byte_fallback) or a single <unk> per run.
    private void EmitByScore(string text, ReadOnlySpan<Symbol> symbols, Dictionary<string, (string, string)>? unusedSplits, List<int> output)
    {
        bool lastWasUnknown = false;
        Span<byte> utf8 = stackalloc byte[4];
        foreach (ref readonly var s in symbols)
        {
            if (s.Length == 0) continue;
            var piece = text.AsSpan(s.Start, s.Length);
            if (unusedSplits is not null) Resegment(piece.ToString());
            else Emit(piece, utf8);
        }

        void Resegment(string piece)
        {
            if (_ids.TryGetValue(piece, out int id) && _types[id] == TokenType.Unused && unusedSplits!.TryGetValue(piece, out var parts))
            {
                Resegment(parts.Item1);
                Resegment(parts.Item2);
            }
            else Emit(piece, stackalloc byte[4]);
        }

        void Emit(ReadOnlySpan<char> piece, Span<byte> utf8)
        {
            int id = _idsBySpan.TryGetValue(piece, out int found) ? found : UnkId;
            if (id != UnkId)
            {
                output.Add(id);
                lastWasUnknown = false;
            }
            else if (_options.ByteFallback)
            {
                // An unknown symbol is always a single character (merges only produce known pieces).
                int n = Encoding.UTF8.GetBytes(piece, utf8);
                for (int k = 0; k < n; k++) output.Add(_byteToId[utf8[k]] >= 0 ? _byteToId[utf8[k]] : UnkId);
                lastWasUnknown = false;
            }
            else if (!lastWasUnknown)
            {
                output.Add(UnkId);
                lastWasUnknown = true;
            }
        }
    }

    // Hugging Face BPE: one symbol per character with its vocabulary id; characters outside the
    // vocabulary become byte pieces (when all their bytes exist) or <unk> (consecutive ones fused).
    private void SplitForRanks(string text, List<Symbol> symbols)
    {
        Span<byte> utf8 = stackalloc byte[4];
        bool split = _options.SplitBeforeSpaceSymbol;
        int wordStart = 0; // index of the first symbol of the current word
        for (int pos = 0; pos < text.Length;)
        {
            int len = MatchUserDefined(text, pos);
            if (len > 0)
            {
                // Hugging Face splits added tokens out before the model runs: a word of its own.
                AddWord(new Symbol { Start = pos, Length = len, Id = _ids[text.Substring(pos, len)], Frozen = true }, symbols, ref wordStart);
                pos += len;
                continue;
            }
            len = CharLength(text, pos);
            var ch = text.AsSpan(pos, len);
            if (split && ch[0] == SpaceSymbol && symbols.Count > wordStart) wordStart = symbols.Count;
            if (_idsBySpan.TryGetValue(ch, out int id))
                Add(new Symbol { Start = pos, Length = len, Id = id }, symbols, wordStart);
            else if (_options.ByteFallback && AllBytesKnown(ch, utf8, out int n))
                for (int k = 0; k < n; k++) Add(new Symbol { Start = pos, Length = len, Id = _byteToId[utf8[k]] }, symbols, wordStart);
            else if (_options.FuseUnknown && symbols.Count > wordStart && symbols[^1].Id == UnkId && !symbols[^1].Frozen)
                CollectionsMarshal.AsSpan(symbols)[^1].Length += len;
            else
                Add(new Symbol { Start = pos, Length = len, Id = UnkId }, symbols, wordStart);
            pos += len;
        }

        bool AllBytesKnown(ReadOnlySpan<char> ch, Span<byte> utf8, out int n)
        {
            n = Encoding.UTF8.GetBytes(ch, utf8);
            for (int k = 0; k < n; k++)
                if (_byteToId[utf8[k]] < 0) return false;
            return true;
        }

        static void Add(Symbol s, List<Symbol> symbols, int wordStart)
        {
            int index = symbols.Count;
            s.Prev = index > wordStart ? index - 1 : -1;
            s.Next = -1;
            if (s.Prev >= 0) CollectionsMarshal.AsSpan(symbols)[index - 1].Next = index;
            symbols.Add(s);
        }

        static void AddWord(Symbol s, List<Symbol> symbols, ref int wordStart)
        {
            s.Prev = s.Next = -1;
            symbols.Add(s);
            wordStart = symbols.Count;
        }
    }

    // Hugging Face Word::merge_all: the BPE loop, merges ranked by their position in the merge list.
    private void MergeByRank(Span<Symbol> symbols)
    {
        var merges = _merges!;
        var queue = new MergeQueue(symbols.Length);
        for (int i = 0; i < symbols.Length; i++) TryPush(i, symbols);
        while (queue.TryPop(out var top))
        {
            ref var left = ref symbols[top.Left];
            if (left.Length == 0 || left.Next < 0) continue;
            int next = left.Next;
            ref var right = ref symbols[next];
            // Stale unless the pair now at this position still merges into the same piece.
            if (!merges.TryGetValue(PairKey(left.Id, right.Id), out var m) || m.Id != top.Id) continue;
            left.Id = m.Id;
            left.Length += right.Length;
            left.Next = right.Next;
            if (right.Next >= 0) symbols[right.Next].Prev = top.Left;
            right.Length = 0;
            if (left.Prev >= 0) TryPush(left.Prev, symbols);
            TryPush(top.Left, symbols);
        }

        void TryPush(int l, Span<Symbol> symbols)
        {
            int r = symbols[l].Next;
            if (r < 0 || symbols[l].Frozen || symbols[r].Frozen) return;
            if (merges.TryGetValue(PairKey(symbols[l].Id, symbols[r].Id), out var m))
                queue.Push(new MergeCandidate { Key = MergeQueue.RankKey(m.Rank, l), Left = l, Right = r, Id = m.Id });
        }
    }

    // ---------------------------------------------------------------- decoding

    /// <summary>
    /// Decodes ids to text as SentencePiece does: '▁' becomes ' ', byte pieces are joined into UTF-8
    /// (invalid bytes become U+FFFD), control pieces such as &lt;s&gt; produce nothing, &lt;unk&gt; produces
    /// the unknown surface (" ⁇ "), and the first piece loses the leading space the dummy prefix added.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">An id is outside the vocabulary.</exception>
    public string Decode(IEnumerable<int> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var sb = new StringBuilder();
        var bytes = new List<byte>();
        var state = new LeadingSpaceState();
        foreach (int id in ids)
        {
            int b = _byteValue[CheckId(id)];
            if (b >= 0)
            {
                bytes.Add((byte)b);
                continue;
            }
            // The byte run before this piece is complete: decode it first.
            SentencePieceUtf8.Append(sb, CollectionsMarshal.AsSpan(bytes), final: true);
            bytes.Clear();
            sb.Append(DecodePiece(id, ref state, sb.Length > 0));
        }
        SentencePieceUtf8.Append(sb, CollectionsMarshal.AsSpan(bytes), final: true);
        return sb.ToString();
    }

    /// <summary>A decoder that turns ids arriving one at a time into text, never splitting a character.</summary>
    public TokenStreamDecoder CreateStreamDecoder() => new(this);

    /// <summary>SentencePiece's bookkeeping for removing the dummy-prefix space from the first piece.</summary>
    internal struct LeadingSpaceState
    {
        public bool PastStart; // is_bos_ws == false: no later piece may lose its '▁'
        public bool Consumed;  // bos_ws_seen: the previous piece was the one whose leading '▁' was dropped
    }

    /// <summary>
    /// The text of one non-byte piece. <paramref name="textSoFar"/> says whether earlier pieces
    /// produced any text; only the first visible piece may lose its leading '▁'
    /// (SentencePieceProcessor::Decode's is_bos_ws / bos_ws_seen).
    /// </summary>
    internal string DecodePiece(int id, ref LeadingSpaceState state, bool textSoFar)
    {
        if (state.Consumed || textSoFar) state.PastStart = true;
        bool atStart = !state.PastStart;
        state.Consumed = false;
        switch (_types[id])
        {
            case TokenType.Control: return "";
            case TokenType.Unknown: return _options.UnknownSurface;
        }
        var piece = _pieces[id].AsSpan();
        if (atStart && (_options.AddDummyPrefix || _options.RemoveExtraWhitespaces) && piece.Length > 0 && piece[0] == SpaceSymbol)
        {
            piece = piece[1..];
            // With remove_extra_whitespaces every leading space goes, so keep stripping.
            state.Consumed = !_options.RemoveExtraWhitespaces;
        }
        return piece.Contains(SpaceSymbol) ? piece.ToString().Replace(SpaceSymbol, ' ') : piece.ToString();
    }
}
