// A flat, typed buffer owned by one backend. Tensors are views (shape, strides, offset) onto a storage.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TinyLlama.Backends;

namespace TinyLlama.Tensors;

/// <summary>A flat buffer of <see cref="Length"/> elements of <see cref="DType"/> on one device.</summary>
public abstract class Storage
{
    protected Storage(DType dtype, int length)
    {
        DType = dtype;
        Length = length;
        DisposeScope.Track(this);   // device storages join the innermost open dispose scope
    }

    /// <summary>Element type.</summary>
    public DType DType { get; }

    /// <summary>Number of elements.</summary>
    public int Length { get; }

    /// <summary>The backend that owns this buffer.</summary>
    public abstract IBackend Backend { get; }

    /// <summary>Size in bytes.</summary>
    public long Bytes => (long)Length * DType.SizeOf();
}

/// <summary>
/// Host memory: a managed array, or unmanaged memory kept alive by an owner (a memory-mapped file),
/// so a checkpoint can be used in place without copying.
/// </summary>
public sealed unsafe class CpuStorage : Storage
{
    private readonly Array? array;
    private readonly void* pointer;
    private readonly object? owner;

    /// <summary>Wraps a managed array whose element type matches <paramref name="dtype"/>.</summary>
    public CpuStorage(DType dtype, Array data) : base(dtype, data.Length)
    {
        if (data.GetType().GetElementType() != dtype.ClrType())
            throw new ArgumentException($"array of {data.GetType().GetElementType()?.Name} cannot back a {dtype.Name()} storage");
        array = data;
    }

    /// <summary>Wraps unmanaged memory; <paramref name="owner"/> must keep it valid for the storage's lifetime.</summary>
    public CpuStorage(DType dtype, void* data, int length, object owner) : base(dtype, length)
    {
        pointer = data;
        this.owner = owner;
    }

    /// <summary>Allocates a zero-filled managed buffer.</summary>
    public static CpuStorage Allocate(DType dtype, int length) =>
        new(dtype, Array.CreateInstance(dtype.ClrType(), length));

    public override IBackend Backend => Backends.Cpu.CpuBackend.Instance;

    /// <summary>The whole buffer as a span of <typeparamref name="T"/> (which must match the dtype's element type).</summary>
    public Span<T> AsSpan<T>() where T : unmanaged
    {
        if (typeof(T) != DType.ClrType())
            throw new InvalidOperationException($"{DType.Name()} storage viewed as {typeof(T).Name}");
        if (array is not null)
            return MemoryMarshal.CreateSpan(ref Unsafe.As<byte, T>(ref MemoryMarshal.GetArrayDataReference(array)), Length);
        GC.KeepAlive(owner);
        return new Span<T>(pointer, Length);
    }

    /// <summary>
    /// Pins the buffer so that its address stays fixed until the handle is disposed (for code that
    /// keeps raw pointers across calls, such as the CPU decoder's worker threads).
    /// </summary>
    public System.Buffers.MemoryHandle Pin()
    {
        if (array is null) return new System.Buffers.MemoryHandle(pointer);
        var handle = GCHandle.Alloc(array, GCHandleType.Pinned);
        return new System.Buffers.MemoryHandle((void*)handle.AddrOfPinnedObject(), handle);
    }

    /// <summary>True when the storage wraps memory it does not own (e.g. a memory-mapped checkpoint).</summary>
    public bool IsExternal => array is null;
}
