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
/// <remarks>
/// Buffers that <see cref="Allocate"/> makes at the large-object size or above (weight matrices) start on a 64-byte
/// cache line: they live on the pinned object heap, which never moves them, with up to a line of slack in front.
/// An AVX-512 load of 16 floats is then one line, not two: the GC heap aligns arrays to 8 bytes only, and the
/// CPU decoder's multi-row products ran ~10% slower on such weights (benchmarks/RESULTS.md). Arrays this large went
/// to the large-object heap before, which is likewise collected only with generation 2 and not compacted by default.
/// </remarks>
public sealed unsafe class CpuStorage : Storage
{
    /// <summary>Bytes from which <see cref="Allocate"/> aligns a buffer (the large-object heap's threshold).</summary>
    internal const int AlignFromBytes = 85_000;

    /// <summary>The line that <see cref="Allocate"/>'s large buffers start on.</summary>
    internal const int LineBytes = 64;

    private readonly Array? array;
    private readonly int startBytes; // bytes of the array before the storage's first element (alignment slack)
    private readonly void* pointer;
    private readonly object? owner;

    /// <summary>Wraps a managed array whose element type matches <paramref name="dtype"/>.</summary>
    public CpuStorage(DType dtype, Array data) : this(dtype, data, data.Length, 0) { }

    private CpuStorage(DType dtype, Array data, int length, int startBytes) : base(dtype, length)
    {
        if (data.GetType().GetElementType() != dtype.ClrType())
            throw new ArgumentException($"array of {data.GetType().GetElementType()?.Name} cannot back a {dtype.Name()} storage");
        array = data;
        this.startBytes = startBytes;
    }

    /// <summary>Wraps unmanaged memory; <paramref name="owner"/> must keep it valid for the storage's lifetime.</summary>
    public CpuStorage(DType dtype, void* data, int length, object owner) : base(dtype, length)
    {
        pointer = data;
        this.owner = owner;
    }

    /// <summary>Allocates a zero-filled managed buffer (from <see cref="AlignFromBytes"/> on, starting on a cache line).</summary>
    public static CpuStorage Allocate(DType dtype, int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        var type = dtype.ClrType();
        int size = dtype.SizeOf();
        if ((long)length * size < AlignFromBytes) return new(dtype, Array.CreateInstance(type, length));
        int slack = LineBytes / size;
        if (length > Array.MaxLength - slack) return new(dtype, Array.CreateInstance(type, length)); // no room for slack
        Array data = dtype switch
        {
            DType.F32 => GC.AllocateArray<float>(length + slack, pinned: true),
            DType.F64 => GC.AllocateArray<double>(length + slack, pinned: true),
            DType.F16 => GC.AllocateArray<Half>(length + slack, pinned: true),
            DType.BF16 => GC.AllocateArray<BFloat16>(length + slack, pinned: true),
            DType.I32 => GC.AllocateArray<int>(length + slack, pinned: true),
            _ => GC.AllocateArray<byte>(length + slack, pinned: true),
        };
        // Pinned: the address is final. Arrays start 8-byte aligned, so the gap to the next line is whole elements.
        nuint address = (nuint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(data));
        return new(dtype, data, length, (int)((LineBytes - address % LineBytes) % LineBytes));
    }

    public override IBackend Backend => Backends.Cpu.CpuBackend.Instance;

    /// <summary>The whole buffer as a span of <typeparamref name="T"/> (which must match the dtype's element type).</summary>
    public Span<T> AsSpan<T>() where T : unmanaged
    {
        if (typeof(T) != DType.ClrType())
            throw new InvalidOperationException($"{DType.Name()} storage viewed as {typeof(T).Name}");
        if (array is not null)
            return MemoryMarshal.CreateSpan(ref Unsafe.As<byte, T>(ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(array), startBytes)), Length);
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
        return new System.Buffers.MemoryHandle((byte*)handle.AddrOfPinnedObject() + startBytes, handle);
    }

    /// <summary>True when the storage wraps memory it does not own (e.g. a memory-mapped checkpoint).</summary>
    public bool IsExternal => array is null;
}
