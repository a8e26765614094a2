// What every checkpoint writer here shares: replacing a file atomically, and a tensor's raw bytes.
//
// Atomic replacement: write a temporary file in the target's directory, flush it to disk, then rename it
// over the target. A crash or exception mid-write leaves either the old file or the new one, never a
// truncated checkpoint (rename within one directory is atomic on POSIX file systems and NTFS). The temporary's
// name carries the writer's process id, so a later write of the same file removes what a killed writer left
// (a temporary whose process no longer runs) and never one that a live process is still writing.
//
// Raw bytes: the elements in row-major order as they lie in memory, little-endian (every platform .NET
// runs this engine on; checked). Block-quantized tensors (Q4_0, Q8_0, Q4_K, Q6_K) are byte tensors whose
// rows are the format's blocks, so their bytes are written as they are.
using System.Runtime.InteropServices;
using TinyLlama.Tensors;

namespace TinyLlama.Formats;

internal static class TensorFileIO
{
    /// <summary>Writes <paramref name="path"/> through <paramref name="write"/>, replacing any old file only once the new one is complete on disk.</summary>
    public static void WriteAtomically(string path, Action<Stream> write)
    {
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full)!;
        string name = Path.GetFileName(full);
        RemoveStaleTemporaries(dir, name);
        string temp = Path.Combine(dir, $".{name}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                write(stream);
                FaultInjection.Reach(FaultInjection.AtomicWrite, temp);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    /// <summary>Deletes the temporaries .NAME.PID.GUID.tmp in <paramref name="dir"/> whose process no longer runs.</summary>
    internal static void RemoveStaleTemporaries(string dir, string name)
    {
        if (!Directory.Exists(dir)) return;
        foreach (string file in Directory.EnumerateFiles(dir, $".{name}.*.tmp"))
        {
            string middle = Path.GetFileName(file)[(name.Length + 2)..^4];     // PID.GUID
            int dot = middle.IndexOf('.');
            if (dot <= 0 || !int.TryParse(middle.AsSpan(0, dot), out int pid) || pid <= 0 || IsRunning(pid)) continue;
            try { File.Delete(file); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    private static bool IsRunning(int pid)
    {
        try
        {
            using var process = System.Diagnostics.Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (ArgumentException) { return false; }           // no such process
        catch (InvalidOperationException) { return false; }
    }

    /// <summary>Writes the tensor's elements (any device, any strides) in row-major order, in its own dtype.</summary>
    public static void WriteData(Stream stream, Tensor t)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("checkpoint I/O assumes a little-endian host");
        switch (t.DType)
        {
            case DType.F32: WriteData<float>(stream, t); break;
            case DType.F16: WriteData<Half>(stream, t); break;
            case DType.BF16: WriteData<BFloat16>(stream, t); break;
            case DType.F64: WriteData<double>(stream, t); break;
            case DType.I32: WriteData<int>(stream, t); break;
            default:
                if (!t.DType.IsQuantized()) throw new ArgumentException($"cannot write {t.DType.Name()} tensors");
                stream.Write(BlockBytes(t));
                break;
        }
    }

    // Dense CPU tensors are written straight from their storage; anything else is gathered first.
    private static void WriteData<T>(Stream stream, Tensor t) where T : unmanaged
    {
        if (t.Storage is CpuStorage cpu && t.IsContiguous)
            stream.Write(MemoryMarshal.AsBytes(cpu.AsSpan<T>().Slice(t.Offset, t.Numel)));
        else
            stream.Write(MemoryMarshal.AsBytes(t.ToArray<T>().AsSpan()));
    }

    /// <summary>
    /// The bytes of a block-quantized tensor, row-major. Block tensors cannot be cast, so they are read
    /// from their storage directly (moved to the host and made dense first when they are not already).
    /// </summary>
    public static ReadOnlySpan<byte> BlockBytes(Tensor t)
    {
        if (!t.DType.IsQuantized()) throw new ArgumentException($"expected a block-quantized tensor, got {t.DType.Name()}");
        if (t.Device != Device.Cpu) t = t.Detach().To(Device.Cpu);
        if (!t.IsContiguous) t = t.Contiguous();
        var cpu = (CpuStorage)t.Storage;
        return cpu.AsSpan<byte>().Slice(t.Offset, t.Numel);
    }
}
