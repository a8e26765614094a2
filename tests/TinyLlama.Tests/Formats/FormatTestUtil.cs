// Helpers for the checkpoint-format tests: a self-deleting temporary directory, raw safetensors files
// built byte by byte (to produce exactly the corruption a test wants), and bitwise tensor comparison.
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using TinyLlama.Tensors;

namespace TinyLlama.Tests.Formats;

/// <summary>A fresh directory under the system temp folder, deleted on dispose.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir() => Directory.CreateDirectory(Path);

    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "tinyllama-formats-" + Guid.NewGuid().ToString("N"));

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

public static class FormatTestUtil
{
    /// <summary>Writes an 8-byte header length (the real one unless overridden), the header text, then data.</summary>
    public static void WriteRawSafetensors(string path, string header, byte[]? data = null, ulong? headerLength = null)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var bytes = new byte[8 + h.Length + (data?.Length ?? 0)];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, headerLength ?? (ulong)h.Length);
        h.CopyTo(bytes, 8);
        data?.CopyTo(bytes, 8 + h.Length);
        File.WriteAllBytes(path, bytes);
    }

    /// <summary>The raw bytes of a tensor's elements in row-major order.</summary>
    public static byte[] RawBytes(Tensor t) => t.DType switch
    {
        DType.F32 => MemoryMarshal.AsBytes(t.ToArray<float>().AsSpan()).ToArray(),
        DType.F16 => MemoryMarshal.AsBytes(t.ToArray<Half>().AsSpan()).ToArray(),
        DType.BF16 => MemoryMarshal.AsBytes(t.ToArray<BFloat16>().AsSpan()).ToArray(),
        DType.F64 => MemoryMarshal.AsBytes(t.ToArray<double>().AsSpan()).ToArray(),
        DType.I32 => MemoryMarshal.AsBytes(t.ToArray<int>().AsSpan()).ToArray(),
        _ => throw new ArgumentException(t.DType.ToString()),
    };

    /// <summary>Asserts same dtype, shape and identical bits.</summary>
    public static void AssertBitEqual(Tensor expected, Tensor actual, string name)
    {
        Assert.True(expected.DType == actual.DType, $"{name}: dtype {actual.DType} != {expected.DType}");
        Assert.True(expected.Shape.SequenceEqual(actual.Shape), $"{name}: shape {Shapes.Format(actual.Shape)} != {Shapes.Format(expected.Shape)}");
        var a = RawBytes(expected);
        var b = RawBytes(actual);
        int first = a.AsSpan().CommonPrefixLength(b);
        Assert.True(first == a.Length && a.Length == b.Length, $"{name}: bytes differ from byte {first}");
    }

    /// <summary>Asserts the exception is a one-line message naming the file and containing each fragment.</summary>
    public static void AssertMessage(Exception e, string file, params string[] fragments)
    {
        Assert.DoesNotContain('\n', e.Message);
        Assert.Contains(file, e.Message);
        foreach (var f in fragments) Assert.Contains(f, e.Message);
    }
}
