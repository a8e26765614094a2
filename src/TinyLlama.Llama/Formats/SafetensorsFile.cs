// Reading Hugging Face safetensors files in place, through one memory mapping per file.
//
// Format (https://github.com/huggingface/safetensors, README "Format" and safetensors/src/tensor.rs):
//   bytes [0, 8)       N, the header length, unsigned 64-bit little-endian
//   bytes [8, 8+N)     a UTF-8 JSON object: tensor name -> {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
//                      plus an optional "__metadata__": {string: string}
//   bytes [8+N, EOF)   the byte buffer; a tensor's bytes are [begin, end) relative to its start, row-major, little-endian
// The reference implementation caps N at 100,000,000 bytes and pads the header with spaces so the
// buffer starts 8-byte aligned. Its reader (tensor.rs `read_metadata` and `Metadata::validate`) insists
// that the header starts with '{', and that the tensors tile the buffer exactly: sorted by offset, each
// begins where the previous one ended, the first at 0, and the last ends at the end of the file. This
// reader holds files to the same rules and also allows nothing but spaces after the JSON object. That
// is what catches a header length off by a byte or a few: the JSON still parses (a padding space cut off,
// or a data byte taken in), but every tensor would be read shifted, and the buffer is no longer covered.
//
// Why a memory mapping: a 2.2 GB TinyLlama checkpoint is used where it lies. Get(name) wraps the mapped
// bytes in a CpuStorage whose owner is the mapping, so no tensor data is copied and the OS pages it in
// on first touch. The mapping stays alive as long as this object or any tensor from it does.
//
// Alignment: a tensor's first byte is 8 + N + begin into the file. The reference writer makes that a
// multiple of the element size, but nothing in the format requires it, so a span of float may start at
// an odd address. x64 and ARM64 load unaligned scalars and vectors (Vector256.LoadUnsafe and friends)
// correctly, so this is a performance question, not a correctness one; we do not copy to realign.
using System.Buffers.Binary;
using System.Text.Json;
using TinyLlama.Tensors;

namespace TinyLlama.Formats;

/// <summary>Name, element type, shape and byte range of one tensor in a safetensors file.</summary>
/// <param name="Name">The tensor's key in the header.</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Sizes, outermost first (do not mutate).</param>
/// <param name="Begin">First byte, relative to the start of the data buffer.</param>
/// <param name="End">One past the last byte, relative to the start of the data buffer.</param>
public sealed record SafetensorsEntry(string Name, DType DType, int[] Shape, long Begin, long End);

/// <summary>
/// One safetensors file, memory-mapped copy-on-write (the file itself is never written). The header is parsed and validated by <see cref="Open"/>;
/// <see cref="Get"/> returns tensors over the mapped bytes without copying.
/// </summary>
public sealed unsafe class SafetensorsFile
{
    /// <summary>The reference implementation's limit on the header length (safetensors/src/tensor.rs MAX_HEADER_SIZE).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private readonly MappedFile file;
    private readonly long dataStart;
    private readonly Dictionary<string, SafetensorsEntry> entries;

    private SafetensorsFile(string path, MappedFile file, long dataStart, Dictionary<string, SafetensorsEntry> entries,
        IReadOnlyList<string> names, IReadOnlyDictionary<string, string> metadata)
    {
        Path = path;
        this.file = file;
        this.dataStart = dataStart;
        this.entries = entries;
        Names = names;
        Metadata = metadata;
    }

    /// <summary>The file's path.</summary>
    public string Path { get; }

    /// <summary>Tensor names in the order of their data (ascending begin offset).</summary>
    public IReadOnlyList<string> Names { get; }

    /// <summary>The header's "__metadata__" map (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Number of tensors.</summary>
    public int Count => entries.Count;

    /// <summary>True when the file holds a tensor of this name.</summary>
    public bool Contains(string name) => entries.ContainsKey(name);

    /// <summary>Dtype, shape and byte range of a tensor; <see cref="InvalidDataException"/> naming it when absent.</summary>
    public SafetensorsEntry GetInfo(string name) =>
        entries.TryGetValue(name, out var e) ? e : throw new InvalidDataException($"{Path}: tensor {MessageText.Quote(name)} is not in the file ({entries.Count} tensors)");

    /// <summary>
    /// The tensor in its stored dtype, viewing the mapped file (no copy). Writes to it are allowed and
    /// stay private to this process (copy-on-write); the file is never modified.
    /// </summary>
    public Tensor Get(string name)
    {
        var e = GetInfo(name);
        int numel = Shapes.Numel(e.Shape); // checked against int.MaxValue by Open
        var storage = new CpuStorage(e.DType, file.Pointer + dataStart + e.Begin, numel, file);
        return Tensor.FromStorage(storage, e.Shape);
    }

    /// <summary>Every tensor, by name, each viewing the mapped file.</summary>
    public Dictionary<string, Tensor> GetAll()
    {
        var all = new Dictionary<string, Tensor>(entries.Count, StringComparer.Ordinal);
        foreach (string name in Names) all[name] = Get(name);
        return all;
    }

    /// <summary>
    /// Maps and validates a safetensors file. Every problem with its structure is reported as a one-line
    /// <see cref="InvalidDataException"/> that names the file.
    /// </summary>
    public static SafetensorsFile Open(string path)
    {
        long length = new FileInfo(path).Exists ? new FileInfo(path).Length
            : throw new FileNotFoundException($"{path}: safetensors file not found", path);
        if (length < 8)
            throw new InvalidDataException($"{path}: file is {length} bytes, shorter than the 8-byte header length");

        var file = MappedFile.Open(path, length);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(file.Span(0, 8));
        if (n > MaxHeaderBytes)
            throw new InvalidDataException($"{path}: header length {n} is absurd (more than the {MaxHeaderBytes:N0}-byte limit); not a safetensors file?");
        if ((long)n > length - 8)
            throw new InvalidDataException($"{path}: header length {n} runs past the end of the file ({length} bytes)");

        long dataStart = 8 + (long)n;
        long dataLength = length - dataStart;
        byte[] header = file.Span(8, (int)n).ToArray();
        var (entries, names, metadata) = ParseHeader(path, header, dataLength);
        return new SafetensorsFile(path, file, dataStart, entries, names, metadata);
    }

    private static (Dictionary<string, SafetensorsEntry>, List<string>, Dictionary<string, string>) ParseHeader(string path, byte[] header, long dataLength)
    {
        // JsonDocument accepts invalid UTF-8 inside strings and only fails when a string is decoded, with an
        // InvalidOperationException; validating first keeps every failure an InvalidDataException.
        JsonText.Check(header, path + ": JSON header");
        // The JSON object, then padding: spaces only (what the reference writer pads with). JSON itself
        // allows other white space around the object; checked below, once the object is known to parse.
        int jsonEnd = header.Length;
        while (jsonEnd > 0 && header[jsonEnd - 1] == (byte)' ') jsonEnd--;
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header.AsMemory(0, jsonEnd));
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: header is not valid JSON ({e.Message.ReplaceLineEndings(" ")})");
        }

        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{path}: header is not a JSON object (found {root.ValueKind})");
            if (header[0] != (byte)'{' || header[jsonEnd - 1] != (byte)'}')
                throw new InvalidDataException($"{path}: header of {header.Length} bytes is not one JSON object padded with spaces "
                    + $"(it {(header[0] != (byte)'{' ? $"starts with byte 0x{header[0]:X2}" : $"has byte 0x{header[jsonEnd - 1]:X2} after the closing '}}'")}); is the header length off?");

            var entries = new Dictionary<string, SafetensorsEntry>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            bool sawMetadata = false;
            foreach (var prop in root.EnumerateObject())
            {
                string name = prop.Name;
                if (name == "__metadata__")
                {
                    if (sawMetadata) throw new InvalidDataException($"{path}: header has two '__metadata__' entries");
                    sawMetadata = true;
                    ReadMetadata(path, prop.Value, metadata);
                    continue;
                }
                if (entries.ContainsKey(name))
                    throw new InvalidDataException($"{path}: tensor {MessageText.Quote(name)} appears twice in the header");
                entries[name] = ReadEntry(path, name, prop.Value, dataLength);
            }

            // Exact tiling: sorted by offset, each tensor begins where the previous one ended (an empty
            // tensor, of no bytes, sits at that point), the first at 0, and the last ends with the buffer.
            var ordered = entries.Values.OrderBy(e => e.Begin).ThenBy(e => e.End).ToList();
            SafetensorsEntry? previous = null;
            long covered = 0;
            foreach (var e in ordered)
            {
                if (e.Begin < covered)
                    throw new InvalidDataException($"{path}: tensors {MessageText.Quote(previous!.Name)} [{previous.Begin}, {previous.End}) and {MessageText.Quote(e.Name)} [{e.Begin}, {e.End}) overlap");
                if (e.Begin > covered)
                    throw new InvalidDataException($"{path}: bytes [{covered}, {e.Begin}) of the data buffer belong to no tensor (the next, {MessageText.Quote(e.Name)}, begins at {e.Begin}); the tensors must cover the buffer exactly");
                covered = e.End;
                previous = e;
            }
            if (covered != dataLength)
                throw new InvalidDataException($"{path}: the tensors cover {covered} bytes but the data buffer after the {header.Length}-byte header holds {dataLength}; a header length off by {dataLength - covered}, or trailing bytes?");
            return (entries, ordered.Select(e => e.Name).ToList(), metadata);
        }
    }

    private static void ReadMetadata(string path, JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind == JsonValueKind.Null) return;
        if (value.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{path}: '__metadata__' must be an object of strings, found {value.ValueKind}");
        foreach (var m in value.EnumerateObject())
        {
            if (m.Value.ValueKind != JsonValueKind.String)
                throw new InvalidDataException($"{path}: '__metadata__' entry {MessageText.Quote(m.Name)} must be a string, found {m.Value.ValueKind}");
            metadata[m.Name] = m.Value.GetString()!;
        }
    }

    private static SafetensorsEntry ReadEntry(string path, string name, JsonElement value, long dataLength)
    {
        string where = $"{path}: tensor {MessageText.Quote(name)}";
        if (value.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{where} must be an object with dtype, shape and data_offsets, found {value.ValueKind}");

        if (!value.TryGetProperty("dtype", out var dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
            throw new InvalidDataException($"{where} has no string 'dtype'");
        string dtypeName = dtypeElement.GetString()!;
        if (Safetensors.ParseDType(dtypeName) is not DType dtype)
            throw new InvalidDataException(Safetensors.IsKnownDType(dtypeName)
                ? $"{where} has dtype {dtypeName}, which is not supported (supported: {Safetensors.SupportedDTypeNames})"
                : $"{where} has unknown dtype {MessageText.Quote(dtypeName)} (supported: {Safetensors.SupportedDTypeNames})");

        if (!value.TryGetProperty("shape", out var shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
            throw new InvalidDataException($"{where} has no 'shape' array");
        var shape = new int[shapeElement.GetArrayLength()];
        long numel = 1;
        int k = 0;
        foreach (var s in shapeElement.EnumerateArray())
        {
            if (s.ValueKind != JsonValueKind.Number || !s.TryGetInt64(out long size))
                throw new InvalidDataException($"{where} has a shape entry that is not an integer: {MessageText.Escape(s.GetRawText())}");
            if (size < 0)
                throw new InvalidDataException($"{where} has negative shape entry {size} in {MessageText.Escape(shapeElement.GetRawText())}");
            if (size > int.MaxValue)
                throw new InvalidDataException($"{where} has shape entry {size}, more than the {int.MaxValue} elements a tensor may hold");
            shape[k++] = (int)size;
            numel = numel * size;
            if (numel > int.MaxValue)
                throw new InvalidDataException($"{where} has shape {MessageText.Escape(shapeElement.GetRawText())}, more than the {int.MaxValue} elements a tensor may hold");
        }

        if (!value.TryGetProperty("data_offsets", out var offsets) || offsets.ValueKind != JsonValueKind.Array || offsets.GetArrayLength() != 2)
            throw new InvalidDataException($"{where} has no 'data_offsets' pair [begin, end]");
        long[] be = new long[2];
        int j = 0;
        foreach (var o in offsets.EnumerateArray())
        {
            if (o.ValueKind != JsonValueKind.Number || !o.TryGetInt64(out be[j]) || be[j] < 0)
                throw new InvalidDataException($"{where} has data_offsets {MessageText.Escape(offsets.GetRawText())}: entries must be non-negative integers");
            j++;
        }
        long begin = be[0], end = be[1];
        if (end < begin)
            throw new InvalidDataException($"{where} has data_offsets [{begin}, {end}] with end before begin");
        if (end > dataLength)
            throw new InvalidDataException($"{where} has data_offsets [{begin}, {end}] out of range: the data buffer holds {dataLength} bytes");
        long expected = numel * dtype.SizeOf();
        if (end - begin != expected)
            throw new InvalidDataException($"{where} spans {end - begin} bytes but shape {Shapes.Format(shape)} of {dtypeName} needs {expected} (numel {numel} x {dtype.SizeOf()})");
        return new SafetensorsEntry(name, dtype, shape, begin, end);
    }
}
