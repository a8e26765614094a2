// Device memory of one tensor storage on an ILGPU accelerator: a buffer leased from the backend's
// BufferPool, viewed as the storage's element type. F16 and BF16 live as their raw 16-bit patterns
// (ushort on the device, System.Half / BFloat16 on the host: same bits), Q4 as bytes.
// The lease goes back to the pool when the storage is released explicitly (Dispose, or the DisposeScope it
// was created in) or, failing both, finalized.
using ILGPU;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Ilgpu;

/// <summary>A storage in device memory of an <see cref="IlgpuBackend"/>.</summary>
public sealed class IlgpuStorage : Storage, IDisposable
{
    private readonly IlgpuBackend backend;
    private PooledBuffer? buffer;

    internal IlgpuStorage(IlgpuBackend backend, DType dtype, int length, PooledBuffer buffer) : base(dtype, length)
    {
        this.backend = backend;
        this.buffer = buffer;
        GC.AddMemoryPressure(Math.Max(1, buffer.SizeClass));   // lets the GC see device memory, so dead storages are finalized sooner
    }

    ~IlgpuStorage()
    {
        var b = buffer;
        if (b is null) return;
        GC.RemoveMemoryPressure(Math.Max(1, b.SizeClass));
        backend.Pool.ReturnFromFinalizer(b);
    }

    public override IBackend Backend => backend;

    /// <summary>The storage's bytes on the device.</summary>
    internal ArrayView<byte> DeviceBytes =>
        (buffer ?? throw new ObjectDisposedException(nameof(IlgpuStorage), "this storage's device memory was released")).Memory.View.SubView(0, Bytes);

    /// <summary>
    /// The device address of the first element (a CUDA device pointer on the CUDA accelerator), for libraries that
    /// take raw device buffers (NCCL's all-reduce). Valid while this storage is alive and not disposed.
    /// </summary>
    public IntPtr DevicePointer =>
        (buffer ?? throw new ObjectDisposedException(nameof(IlgpuStorage), "this storage's device memory was released")).Memory.NativePtr;

    /// <summary>The elements as a view of <typeparamref name="T"/> (float, double, ushort for f16/bf16, int, byte).</summary>
    internal ArrayView<T> View<T>() where T : unmanaged => DeviceBytes.Cast<T>();

    /// <summary>
    /// Returns the device memory to the pool now instead of at finalization. Only for code that owns the
    /// storage and knows no tensor still views it (any later use throws ObjectDisposedException).
    /// </summary>
    public void Dispose()
    {
        var b = Interlocked.Exchange(ref buffer, null);
        if (b is null) return;
        GC.SuppressFinalize(this);
        GC.RemoveMemoryPressure(Math.Max(1, b.SizeClass));
        backend.Pool.Return(b);
    }
}
