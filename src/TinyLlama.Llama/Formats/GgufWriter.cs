// Writing GGUF version 3 files: metadata of any of the 13 value types, tensor infos, and the data section
// with every tensor starting at a multiple of the alignment. The layout is the one GgufFile.cs reads
// (ggml/docs/gguf.md); like ggml's gguf_write and gguf-py's GGUFWriter, each tensor's data is padded with
// zeros to the alignment, the last one included, and tensors are written in the order given.
//
// Tensor infos come from the tensors themselves: the DType picks the ggml type, the shape is reversed
// into ne, and for block types the last dimension (bytes per row) becomes the row length in weights.
// The file is written atomically (TensorFileIO.WriteAtomically).
using System.Runtime.InteropServices;
using System.Text;
using TinyLlama.Tensors;

namespace TinyLlama.Formats;

/// <summary>Saves metadata and tensors as a GGUF version 3 file.</summary>
public static class GgufWriter
{
    /// <summary>
    /// Writes <paramref name="metadata"/> (in the order given) and <paramref name="tensors"/> (any device;
    /// f32, f16, bf16, f64, i32 or a block DType of shape [..., rows, rowBytes]) to <paramref name="path"/>,
    /// atomically. A uint32 general.alignment entry sets the alignment (default 32).
    /// </summary>
    /// <exception cref="ArgumentException">A duplicate key or name, a bad alignment, or a tensor GGUF cannot describe.</exception>
    public static void Save(string path, IEnumerable<KeyValuePair<string, GgufValue>> metadata, IEnumerable<KeyValuePair<string, Tensor>> tensors)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("GGUF I/O assumes a little-endian host");
        var kvs = metadata.ToList();
        var keys = new HashSet<string>(StringComparer.Ordinal);
        int alignment = GgufFile.DefaultAlignment;
        foreach (var (key, value) in kvs)
        {
            if (!keys.Add(key)) throw new ArgumentException($"GGUF metadata key '{key}' is given twice");
            if (key == GgufFile.AlignmentKey)
            {
                if (value.Value is not uint u || u == 0 || (u & (u - 1)) != 0 || u > 1 << 30)
                    throw new ArgumentException($"{GgufFile.AlignmentKey} must be a uint32 power of two, got {value.Type} {value}");
                alignment = (int)u;
            }
        }

        var list = tensors.ToList();
        var names = new HashSet<string>(StringComparer.Ordinal);
        var infos = new List<(string Name, long[] Ne, GgmlType Type, long Offset)>(list.Count);
        long offset = 0;
        foreach (var (name, t) in list)
        {
            if (!names.Add(name)) throw new ArgumentException($"GGUF tensor '{name}' is given twice");
            var type = GgmlTypes.FromDType(t.DType);
            if (t.Rank is < 1 or > 4) throw new ArgumentException($"GGUF tensor '{name}' has rank {t.Rank}; GGUF stores 1 to 4 dimensions");
            var ne = new long[t.Rank];
            for (int d = 0; d < t.Rank; d++) ne[d] = t.Size(t.Rank - 1 - d);
            if (type.BlockSize > 1)
            {
                if (ne[0] % type.BlockBytes != 0)
                    throw new ArgumentException($"GGUF tensor '{name}' is {type.Name} with rows of {ne[0]} bytes, not a multiple of the {type.BlockBytes}-byte block");
                ne[0] = ne[0] / type.BlockBytes * type.BlockSize;
            }
            infos.Add((name, ne, type, offset));
            long bytes = (long)t.Numel * t.DType.SizeOf();
            offset += Align(bytes, alignment);
        }

        TensorFileIO.WriteAtomically(path, stream =>
        {
            using var w = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
            w.Write(GgufFile.Magic);
            w.Write(GgufFile.Version);
            w.Write((ulong)infos.Count);
            w.Write((ulong)kvs.Count);
            foreach (var (key, value) in kvs)
            {
                WriteString(w, key);
                w.Write((uint)value.Type);
                WriteValue(w, value.Value);
            }
            foreach (var (name, ne, type, tensorOffset) in infos)
            {
                WriteString(w, name);
                w.Write((uint)ne.Length);
                foreach (long n in ne) w.Write((ulong)n);
                w.Write(type.Id);
                w.Write((ulong)tensorOffset);
            }
            Pad(w, alignment);
            w.Flush();
            foreach (var (_, t) in list)
            {
                TensorFileIO.WriteData(stream, t);
                Pad(w, alignment);
            }
        });
    }

    private static long Align(long n, int alignment) => (n + alignment - 1) / alignment * alignment;

    private static void Pad(BinaryWriter w, int alignment)
    {
        w.Flush();
        long position = w.BaseStream.Position;
        for (long i = position; i < Align(position, alignment); i++) w.Write((byte)0);
    }

    private static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    private static void WriteValue(BinaryWriter w, object? value)
    {
        switch (value)
        {
            case byte v: w.Write(v); break;
            case sbyte v: w.Write(v); break;
            case ushort v: w.Write(v); break;
            case short v: w.Write(v); break;
            case uint v: w.Write(v); break;
            case int v: w.Write(v); break;
            case float v: w.Write(v); break;
            case bool v: w.Write((byte)(v ? 1 : 0)); break;
            case string v: WriteString(w, v); break;
            case ulong v: w.Write(v); break;
            case long v: w.Write(v); break;
            case double v: w.Write(v); break;
            case GgufArray a: WriteArray(w, a); break;
            case null: throw new ArgumentException("a GGUF array holds a null element");
            default: throw new ArgumentException($"GGUF cannot store a {value.GetType().Name}");
        }
    }

    private static void WriteArray(BinaryWriter w, GgufArray a)
    {
        w.Write((uint)a.ElementType);
        w.Write((ulong)a.Count);
        switch (a.Items)
        {
            case byte[] v: w.Write(v); break;
            case sbyte[] v: w.Write(MemoryMarshal.AsBytes(v.AsSpan())); break;
            case ushort[] v: w.Write(MemoryMarshal.AsBytes(v.AsSpan())); break;
            case short[] v: w.Write(MemoryMarshal.AsBytes(v.AsSpan())); break;
            case uint[] v: w.Write(MemoryMarshal.AsBytes(v.AsSpan())); break;
            case int[] v: w.Write(MemoryMarshal.AsBytes(v.AsSpan())); break;
            case float[] v: w.Write(MemoryMarshal.AsBytes(v.AsSpan())); break;
            case ulong[] v: w.Write(MemoryMarshal.AsBytes(v.AsSpan())); break;
            case long[] v: w.Write(MemoryMarshal.AsBytes(v.AsSpan())); break;
            case double[] v: w.Write(MemoryMarshal.AsBytes(v.AsSpan())); break;
            default:
                foreach (object? item in a.Items) WriteValue(w, item);
                break;
        }
    }
}
