// Reading GGUF files (version 3, llama.cpp's model format) in place, through one memory mapping.
//
// Format (ggml/docs/gguf.md and ggml's gguf.cpp; all little-endian):
//   magic        4 bytes "GGUF"
//   version      uint32, 3 (1 and 2 are older layouts; a byte-swapped 3 is a big-endian file)
//   tensor_count uint64
//   kv_count     uint64
//   kv_count x   key (string), value type (uint32), value        string = uint64 byte length + UTF-8 bytes
//                                                                 array  = element type (uint32) + uint64 count + elements
//   tensor_count x  name (string), n_dims (uint32, 1..4), ne[n_dims] (uint64 each), ggml type (uint32),
//                   offset (uint64, relative to the data section, a multiple of the alignment)
//   padding to general.alignment (a uint32 metadata entry; 32 when absent), then the data section.
// ne[0] is the row length, the fastest-varying dimension, so ne is the reverse of the row-major shape
// [rows, cols] used here. Block-quantized types pack ne[0] weights of a row into ne[0] / blockSize
// blocks of blockBytes bytes each; such a tensor is handed out as a byte tensor of its block DType with
// shape [..., rows, rowBytes], the layout the quantized kernels take.
//
// Every count, length and offset is checked against the bytes left in the file before anything is
// allocated or read, so a corrupt or hostile file ends in a one-line InvalidDataException naming the
// file, never in a huge allocation, an out-of-range read or another exception type.
using System.Text;
using TinyLlama.Tensors;

namespace TinyLlama.Formats;

/// <summary>A ggml tensor type this engine reads and writes: its id, name, DType and block geometry.</summary>
internal readonly record struct GgmlType(uint Id, string Name, DType DType, int BlockSize, int BlockBytes)
{
    /// <summary>Bytes of a row of <paramref name="rowLength"/> weights (a multiple of <see cref="BlockSize"/>).</summary>
    public long RowBytes(long rowLength) => rowLength / BlockSize * BlockBytes;
}

/// <summary>The ggml type table (ggml.h `enum ggml_type`), restricted to the types this engine stores.</summary>
internal static class GgmlTypes
{
    private static readonly GgmlType[] Supported =
    [
        new(0, "F32", DType.F32, 1, 4),
        new(1, "F16", DType.F16, 1, 2),
        new(2, "Q4_0", DType.Q4, 32, 18),
        new(8, "Q8_0", DType.Q8_0, 32, 34),
        new(12, "Q4_K", DType.Q4_K, 256, 144),
        new(14, "Q6_K", DType.Q6_K, 256, 210),
        new(26, "I32", DType.I32, 1, 4),
        new(28, "F64", DType.F64, 1, 8),
        new(30, "BF16", DType.BF16, 1, 2),
    ];

    // Names of every id up to BF16, for messages about the ones not supported (4 and 5 were removed from ggml).
    private static readonly string[] Names =
    [
        "F32", "F16", "Q4_0", "Q4_1", "(removed Q4_2)", "(removed Q4_3)", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K",
        "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
        "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];

    public static GgmlType? FromId(uint id)
    {
        foreach (var t in Supported)
            if (t.Id == id) return t;
        return null;
    }

    /// <summary>"unsupported type 3 (Q4_1)".</summary>
    public static string Unsupported(uint id) => id < Names.Length ? $"unsupported type {id} ({Names[id]})" : $"unsupported type {id}";

    /// <summary>The ggml type that stores <paramref name="dtype"/>.</summary>
    public static GgmlType FromDType(DType dtype)
    {
        foreach (var t in Supported)
            if (t.DType == dtype) return t;
        throw new ArgumentException($"GGUF cannot store {dtype.Name()} tensors");
    }
}

/// <summary>One tensor of a GGUF file.</summary>
/// <param name="Name">The tensor's name (llama.cpp's names, e.g. blk.0.attn_q.weight).</param>
/// <param name="GgmlType">The ggml type id (0 F32, 1 F16, 2 Q4_0, 8 Q8_0, 12 Q4_K, 14 Q6_K, 30 BF16, ...).</param>
/// <param name="DType">The DType of the tensor <see cref="GgufFile.Get"/> returns.</param>
/// <param name="Dimensions">ne in ggml order: ne[0] is the row length.</param>
/// <param name="Shape">The tensor's shape, outermost first; for block types the last entry is the row's byte count.</param>
/// <param name="Offset">First byte, relative to the data section.</param>
/// <param name="ByteCount">Bytes of data.</param>
public sealed record GgufTensorInfo(string Name, uint GgmlType, DType DType, long[] Dimensions, int[] Shape, long Offset, long ByteCount);

/// <summary>
/// One GGUF file, memory-mapped copy-on-write (the file is never written): metadata in file order and
/// tensors viewing the mapped bytes without copying.
/// </summary>
public sealed unsafe class GgufFile
{
    /// <summary>The only version read and written.</summary>
    public const uint Version = 3;

    /// <summary>Data alignment when general.alignment is absent.</summary>
    public const int DefaultAlignment = 32;

    /// <summary>The metadata key that sets the alignment.</summary>
    public const string AlignmentKey = "general.alignment";

    /// <summary>Deepest nesting of arrays accepted (the reader recurses once per level).</summary>
    public const int MaxArrayDepth = 64;

    internal static ReadOnlySpan<byte> Magic => "GGUF"u8;

    private readonly MappedFile file;
    private readonly long dataStart;
    private readonly Dictionary<string, GgufTensorInfo> byName;

    private GgufFile(string path, MappedFile file, long dataStart, int alignment, OrderedDictionary<string, GgufValue> metadata, List<GgufTensorInfo> tensors)
    {
        Path = path;
        this.file = file;
        this.dataStart = dataStart;
        Alignment = alignment;
        Metadata = metadata;
        Tensors = tensors;
        byName = new Dictionary<string, GgufTensorInfo>(tensors.Count, StringComparer.Ordinal);
        foreach (var t in tensors) byName[t.Name] = t;
    }

    /// <summary>The file's path.</summary>
    public string Path { get; }

    /// <summary>The data alignment (general.alignment, or 32).</summary>
    public int Alignment { get; }

    /// <summary>Every metadata entry, in file order.</summary>
    public IReadOnlyDictionary<string, GgufValue> Metadata { get; }

    /// <summary>Every tensor, in file order.</summary>
    public IReadOnlyList<GgufTensorInfo> Tensors { get; }

    /// <summary>True when the file holds a tensor of this name.</summary>
    public bool Contains(string name) => byName.ContainsKey(name);

    /// <summary>Type, shape and byte range of a tensor; <see cref="InvalidDataException"/> naming it when absent.</summary>
    public GgufTensorInfo GetInfo(string name) =>
        byName.TryGetValue(name, out var t) ? t : throw new InvalidDataException($"{Path}: tensor {MessageText.Quote(name)} is not in the file ({byName.Count} tensors)");

    /// <summary>
    /// The tensor in its stored type, viewing the mapped file (no copy): f32/f16/bf16 as such, block types
    /// as byte tensors [..., rows, rowBytes]. Writes stay private to this process (copy-on-write).
    /// </summary>
    public Tensor Get(string name)
    {
        var t = GetInfo(name);
        int length = (int)(t.ByteCount / t.DType.SizeOf()); // checked against int.MaxValue by Open
        return Tensor.FromStorage(new CpuStorage(t.DType, file.Pointer + dataStart + t.Offset, length, file), t.Shape);
    }

    /// <summary>Every tensor by name, each viewing the mapped file.</summary>
    public Dictionary<string, Tensor> GetAll()
    {
        var all = new Dictionary<string, Tensor>(Tensors.Count, StringComparer.Ordinal);
        foreach (var t in Tensors) all[t.Name] = Get(t.Name);
        return all;
    }

    /// <summary>
    /// Maps and validates a GGUF file. Every problem with its structure is a one-line
    /// <see cref="InvalidDataException"/> naming the file.
    /// </summary>
    public static GgufFile Open(string path)
    {
        var info = new FileInfo(path);
        if (!info.Exists) throw new FileNotFoundException($"{path}: GGUF file not found", path);
        long length = info.Length;
        if (length < 24)
            throw new InvalidDataException($"{path}: file is {length} bytes, shorter than the 24-byte GGUF header");
        var file = MappedFile.Open(path, length);
        try
        {
            return Parse(path, file);
        }
        catch
        {
            file.ReleaseUnused();
            throw;
        }
    }

    private static GgufFile Parse(string path, MappedFile file)
    {
        var c = new Cursor(path, file.Pointer, file.Length);
        if (!file.Span(0, 4).SequenceEqual(Magic))
            throw c.Bad($"not a GGUF file (the first bytes are {Convert.ToHexString(file.Span(0, 4))}, expected 'GGUF')");
        c.Position = 4;
        uint version = c.U32("version");
        if (version != Version)
            throw c.Bad(version switch
            {
                1 or 2 => $"GGUF version {version} is not supported (only version 3, which llama.cpp writes since 2023)",
                0x03000000 => "a big-endian GGUF file (version 3 byte-swapped); only little-endian files are supported",
                _ => $"unknown GGUF version {version} (expected 3)",
            });
        ulong tensorCount = c.U64("tensor count");
        ulong kvCount = c.U64("metadata count");
        // The smallest entry is a 1-character key: 8 + 1 + 4 + 1 bytes; the smallest tensor info 8 + 1 + 4 + 8 + 4 + 8.
        if (kvCount > (ulong)(c.Remaining / 14))
            throw c.Bad($"header claims {kvCount} metadata entries, more than the remaining {c.Remaining} bytes can hold");
        if (tensorCount > (ulong)(c.Remaining / 33))
            throw c.Bad($"header claims {tensorCount} tensors, more than the remaining {c.Remaining} bytes can hold");

        var metadata = new OrderedDictionary<string, GgufValue>((int)kvCount, StringComparer.Ordinal);
        for (ulong i = 0; i < kvCount; i++)
        {
            string key = c.String($"metadata key {i}");
            string what = $"metadata {MessageText.Quote(key)}";
            if (metadata.ContainsKey(key)) throw c.Bad($"{what} appears twice");
            uint type = c.U32($"{what} type");
            if (type > (uint)GgufValueType.Float64) throw c.Bad($"{what} has unknown value type {type}");
            metadata.Add(key, c.Value((GgufValueType)type, what, 0));
        }

        int alignment = DefaultAlignment;
        if (metadata.TryGetValue(AlignmentKey, out var a))
        {
            if (a.Value is not uint u || u == 0 || (u & (u - 1)) != 0 || u > 1 << 30)
                throw c.Bad($"{AlignmentKey} must be a uint32 power of two, got {a.Type} {a}");
            alignment = (int)u;
        }

        var tensors = new List<GgufTensorInfo>((int)tensorCount);
        var names = new HashSet<string>((int)tensorCount, StringComparer.Ordinal);
        for (ulong i = 0; i < tensorCount; i++)
        {
            var t = c.TensorInfo(i, alignment);
            if (!names.Add(t.Name)) throw c.Bad($"tensor {MessageText.Quote(t.Name)} appears twice");
            tensors.Add(t);
        }

        long dataStart = (c.Position + alignment - 1) / alignment * alignment;
        long dataLength = file.Length - dataStart; // negative when a file without tensors ends early: harmless then
        var ordered = tensors.OrderBy(t => t.Offset).ToList();
        GgufTensorInfo? previous = null;
        foreach (var t in ordered)
        {
            if (t.Offset > dataLength || t.ByteCount > dataLength - t.Offset)
                throw c.Bad($"tensor {MessageText.Quote(t.Name)} [{t.Offset}, {t.Offset + t.ByteCount}) runs past the end of the file (the data section holds {Math.Max(dataLength, 0)} bytes)");
            if (t.ByteCount == 0) continue;
            if (previous is not null && t.Offset < previous.Offset + previous.ByteCount)
                throw c.Bad($"tensors {MessageText.Quote(previous.Name)} and {MessageText.Quote(t.Name)} overlap");
            previous = t;
        }
        return new GgufFile(path, file, dataStart, alignment, metadata, tensors);
    }

    /// <summary>Bounds-checked little-endian reads over the mapping.</summary>
    private unsafe struct Cursor(string path, byte* start, long length)
    {
        private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

        public long Position;

        public readonly long Remaining => length - Position;

        public readonly InvalidDataException Bad(string what) => new($"{path}: {what}");

        private readonly void Need(long bytes, string what)
        {
            if (bytes > Remaining)
                throw Bad($"{what} at byte {Position} runs past the end of the file ({length} bytes)");
        }

        private T Read<T>(string what) where T : unmanaged
        {
            Need(sizeof(T), what);
            T v = System.Runtime.CompilerServices.Unsafe.ReadUnaligned<T>(start + Position);
            Position += sizeof(T);
            return v;
        }

        public uint U32(string what) => Read<uint>(what);

        public ulong U64(string what) => Read<ulong>(what);

        public string String(string what)
        {
            ulong n = U64(what);
            if (n > (ulong)Remaining)
                throw Bad($"{what}: string length {n} at byte {Position - 8} is more than the remaining {Remaining} bytes");
            string s;
            try
            {
                s = StrictUtf8.GetString(start + Position, (int)Math.Min(n, int.MaxValue));
            }
            catch (DecoderFallbackException)
            {
                throw Bad($"{what}: string at byte {Position - 8} is not valid UTF-8");
            }
            catch (ArgumentException)
            {
                throw Bad($"{what}: string length {n} at byte {Position - 8} is larger than this engine supports");
            }
            Position += (long)n;
            return s;
        }

        // what: "metadata 'key'", the key already made printable (MessageText.Quote).
        public GgufValue Value(GgufValueType type, string what, int depth) => type switch
        {
            GgufValueType.UInt8 => GgufValue.UInt8(Read<byte>(what)),
            GgufValueType.Int8 => GgufValue.Int8(Read<sbyte>(what)),
            GgufValueType.UInt16 => GgufValue.UInt16(Read<ushort>(what)),
            GgufValueType.Int16 => GgufValue.Int16(Read<short>(what)),
            GgufValueType.UInt32 => GgufValue.UInt32(Read<uint>(what)),
            GgufValueType.Int32 => GgufValue.Int32(Read<int>(what)),
            GgufValueType.Float32 => GgufValue.Float32(Read<float>(what)),
            GgufValueType.Bool => GgufValue.Bool(Bool(what)),
            GgufValueType.String => GgufValue.String(String(what)),
            GgufValueType.UInt64 => GgufValue.UInt64(Read<ulong>(what)),
            GgufValueType.Int64 => GgufValue.Int64(Read<long>(what)),
            GgufValueType.Float64 => GgufValue.Float64(Read<double>(what)),
            _ => GgufValue.Array(Array(what, depth)),
        };

        private bool Bool(string what)
        {
            byte b = Read<byte>(what);
            return b <= 1 ? b == 1 : throw Bad($"{what} has bool byte {b} at byte {Position - 1} (expected 0 or 1)");
        }

        private GgufArray Array(string what, int depth)
        {
            if (depth >= MaxArrayDepth) throw Bad($"{what} nests arrays more than {MaxArrayDepth} deep");
            uint type = U32($"{what} array type");
            if (type > (uint)GgufValueType.Float64) throw Bad($"{what} is an array of unknown value type {type}");
            var elementType = (GgufValueType)type;
            ulong count = U64($"{what} array length");
            // Smallest encoding of one element: strings 8 bytes (the length), arrays 12 (type and count).
            int min = elementType switch
            {
                GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
                GgufValueType.UInt16 or GgufValueType.Int16 => 2,
                GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
                GgufValueType.Array => 12,
                _ => 8,
            };
            if (count > (ulong)(Remaining / min))
                throw Bad($"{what} is an array of {count} {elementType} at byte {Position - 12}, more than the remaining {Remaining} bytes can hold");
            if (count > (ulong)System.Array.MaxLength)
                throw Bad($"{what} is an array of {count} elements, more than this engine supports");
            int n = (int)count;
            switch (elementType)
            {
                case GgufValueType.UInt8: return new(Block<byte>(n));
                case GgufValueType.Int8: return new(Block<sbyte>(n));
                case GgufValueType.UInt16: return new(Block<ushort>(n));
                case GgufValueType.Int16: return new(Block<short>(n));
                case GgufValueType.UInt32: return new(Block<uint>(n));
                case GgufValueType.Int32: return new(Block<int>(n));
                case GgufValueType.Float32: return new(Block<float>(n));
                case GgufValueType.UInt64: return new(Block<ulong>(n));
                case GgufValueType.Int64: return new(Block<long>(n));
                case GgufValueType.Float64: return new(Block<double>(n));
                case GgufValueType.Bool:
                    var bools = new bool[n];
                    for (int i = 0; i < n; i++) bools[i] = Bool(what);
                    return new(bools);
                case GgufValueType.String:
                    var strings = new string[n];
                    for (int i = 0; i < n; i++) strings[i] = String($"{what} element {i}");
                    return new(strings);
                default:
                    var arrays = new GgufArray[n];
                    for (int i = 0; i < n; i++) arrays[i] = Array(what, depth + 1);
                    return new(arrays);
            }
        }

        // n elements in one copy; the caller has checked n * sizeof(T) against the remaining bytes.
        private T[] Block<T>(int n) where T : unmanaged
        {
            var items = new T[n];
            new ReadOnlySpan<T>(start + Position, n).CopyTo(items);
            Position += (long)n * sizeof(T);
            return items;
        }

        public GgufTensorInfo TensorInfo(ulong index, int alignment)
        {
            string name = String($"tensor {index} name");
            string where = $"tensor {MessageText.Quote(name)}";
            uint nDims = U32($"{where} dimension count");
            if (nDims is < 1 or > 4) throw Bad($"{where} has {nDims} dimensions (GGML allows 1 to 4)");
            var ne = new long[nDims];
            for (int d = 0; d < nDims; d++)
            {
                ulong size = U64($"{where} dimension {d}");
                if (size > int.MaxValue) throw Bad($"{where} has dimension {d} of {size}, more than a tensor here may hold");
                ne[d] = (long)size;
            }
            uint typeId = U32($"{where} type");
            if (GgmlTypes.FromId(typeId) is not GgmlType type) throw Bad($"{where} has {GgmlTypes.Unsupported(typeId)}");
            ulong offset = U64($"{where} offset");
            if (offset % (ulong)alignment != 0) throw Bad($"{where} has offset {offset}, not a multiple of the alignment {alignment}");
            if (offset > long.MaxValue) throw Bad($"{where} has offset {offset}, past the end of the file");
            if (ne[0] % type.BlockSize != 0)
                throw Bad($"{where} has row length {ne[0]}, not a multiple of the {type.Name} block size {type.BlockSize}");

            // Shape outermost first; the row (ne[0]) in elements, or in bytes for block types.
            long rowItems = type.BlockSize == 1 ? ne[0] : type.RowBytes(ne[0]);
            var shape = new int[nDims];
            Int128 items = rowItems;
            shape[nDims - 1] = (int)Math.Min(rowItems, int.MaxValue);
            for (int d = 1; d < nDims; d++)
            {
                shape[nDims - 1 - d] = (int)ne[d];
                items *= ne[d];
            }
            if (rowItems > int.MaxValue || items > int.MaxValue)
                throw Bad($"{where} has {items} elements, more than the {int.MaxValue} a tensor here may hold");
            long bytes = (long)items * type.DType.SizeOf();
            return new GgufTensorInfo(name, typeId, type.DType, ne, shape, (long)offset, bytes);
        }
    }
}
