// Writing Hugging Face safetensors files, and the dtype names the format uses.
//
// Format: see SafetensorsFile.cs (https://github.com/huggingface/safetensors). The writer follows the
// reference implementation's choices (safetensors/src/tensor.rs `prepare` and `serialize`):
//   - tensors ordered by element size, largest first, then by name, so that with the data buffer starting
//     8-byte aligned every tensor starts at a multiple of its own element size;
//   - the JSON header padded with spaces to a multiple of 8 bytes, so the data buffer starts 8-byte aligned;
//   - "__metadata__" first in the header.
// Files are written atomically (TensorFileIO.WriteAtomically: a temporary file renamed over the target).
using System.Buffers.Binary;
using System.Text.Json;
using TinyLlama.Tensors;

namespace TinyLlama.Formats;

/// <summary>Saving tensors as safetensors, and the format's dtype names.</summary>
public static class Safetensors
{
    /// <summary>Every dtype name the safetensors specification defines (safetensors/src/tensor.rs `Dtype`).</summary>
    private static readonly HashSet<string> KnownDTypes =
    [
        "BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "I16", "U16", "F16", "BF16",
        "I32", "U32", "F32", "C64", "F64", "I64", "U64",
    ];

    internal const string SupportedDTypeNames = "F32, F16, BF16, F64, I32";

    /// <summary>The tensor dtype for a safetensors dtype name, or null when this engine has no such type.</summary>
    public static DType? ParseDType(string name) => name switch
    {
        "F32" => DType.F32,
        "F16" => DType.F16,
        "BF16" => DType.BF16,
        "F64" => DType.F64,
        "I32" => DType.I32,
        _ => null,
    };

    /// <summary>True for names the specification defines, supported here or not.</summary>
    public static bool IsKnownDType(string name) => KnownDTypes.Contains(name);

    /// <summary>The safetensors name of a dtype (F32, F16, BF16, F64, I32).</summary>
    public static string DTypeName(DType dtype) => dtype switch
    {
        DType.F32 => "F32",
        DType.F16 => "F16",
        DType.BF16 => "BF16",
        DType.F64 => "F64",
        DType.I32 => "I32",
        _ => throw new ArgumentException($"safetensors cannot store {dtype.Name()} tensors (supported: {SupportedDTypeNames})"),
    };

    /// <summary>
    /// Writes <paramref name="tensors"/> (any device, any strides; stored dense, in their own dtype) and
    /// optional string <paramref name="metadata"/> to <paramref name="path"/>, atomically: an existing file
    /// is replaced only once the new one is complete on disk.
    /// </summary>
    public static void Save(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var ordered = tensors.OrderByDescending(kv => kv.Value.DType.SizeOf()).ThenBy(kv => kv.Key, StringComparer.Ordinal).ToList();
        byte[] header = BuildHeader(ordered, metadata);

        TensorFileIO.WriteAtomically(path, stream =>
        {
            Span<byte> n = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(n, (ulong)header.Length);
            stream.Write(n);
            stream.Write(header);
            foreach (var (_, t) in ordered) TensorFileIO.WriteData(stream, t);
        });
    }

    // The JSON header, space-padded to a multiple of 8 bytes.
    private static byte[] BuildHeader(List<KeyValuePair<string, Tensor>> ordered, IReadOnlyDictionary<string, string>? metadata)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal)) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, t) in ordered)
            {
                if (name == "__metadata__") throw new ArgumentException("'__metadata__' is reserved by the safetensors format and cannot name a tensor");
                long bytes = (long)t.Numel * t.DType.SizeOf();
                w.WriteStartObject(name);
                w.WriteString("dtype", DTypeName(t.DType));
                w.WriteStartArray("shape");
                foreach (int s in t.Shape) w.WriteNumberValue(s);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += bytes;
            }
            w.WriteEndObject();
        }
        int padded = (int)((ms.Length + 7) / 8 * 8);
        while (ms.Length < padded) ms.WriteByte((byte)' ');
        return ms.ToArray();
    }
}
