// The ILGPU backend: every IBackend op as hand-written ILGPU kernels (kernels/TinyLlama.Kernels), on
// CUDA, OpenCL or ILGPU's CPU accelerator. One instance per device. This file holds registration,
// allocation, transfers, the kernel cache and the host-side checks every launch goes through; each op
// family has its own IlgpuBackend.*.cs file. The CPU backend (Backends/Cpu) defines the semantics.
//
// Execution model: kernels are enqueued on the accelerator's default stream and run in order; the host
// waits only where it reads data back (Download, Synchronize). Kernels that meet a bad id record it in a
// small device error buffer (kernels/DeviceErrors.cs), which those same waits read and turn into an error.
// Every launch is preceded by host checks (dtype, shape, and that every element a layout can address lies
// inside its buffer), because an out-of-range access on the CPU accelerator can take the whole process down.
using System.Reflection;
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using TinyLlama.Kernels;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Ilgpu;

/// <summary>IBackend on one ILGPU accelerator.</summary>
public sealed partial class IlgpuBackend : IBackend, IDisposable
{
    private static int registered;

    private readonly Accelerator accelerator;
    private readonly object gate = new();
    private readonly Dictionary<MethodInfo, Delegate> kernels = new();

    private IlgpuBackend(Device device, Accelerator accelerator)
    {
        Device = device;
        this.accelerator = accelerator;
        Pool = new BufferPool(accelerator);
        GroupSize = Math.Min(GroupReduce.MaxGroupSize, accelerator.MaxNumThreadsPerGroup);
        errors = accelerator.Allocate1D<int>(DeviceErrors.Length);
        errors.MemSetToZero();
    }

    // [kind, value, position, limit] of the first bad id a kernel met since the last check (DeviceErrors).
    private readonly MemoryBuffer1D<int, Stride1D.Dense> errors;

    private ArrayView<int> ErrorView => errors.View;

    /// <summary>
    /// Device-to-host reads made so far by the calling thread (downloads and synchronisations): each is a point
    /// where the host waits. Counted per thread, so that code measuring its own round trips (a training step,
    /// a test) is not disturbed by other threads using the same device.
    /// </summary>
    public long HostReads => hostReads.Value;

    private readonly ThreadLocal<long> hostReads = new(() => 0);

    // Called with the gate held, after the stream has drained: turns a recorded device error into an exception.
    private void ThrowDeviceErrors()
    {
        Span<int> e = stackalloc int[DeviceErrors.Length];
        errors.View.CopyToCPU(Stream, e);
        Stream.Synchronize();
        if (e[0] == DeviceErrors.None) return;
        errors.MemSetToZero(Stream);
        Stream.Synchronize();
        throw new ArgumentException(e[0] switch
        {
            DeviceErrors.EmbeddingId => Functional.EmbeddingIdError(e[1], e[2], e[3]),
            DeviceErrors.CrossEntropyTarget => $"cross_entropy: target {e[1]} at row {e[2]} is out of range for {e[3]} classes",
            _ => $"a kernel reported error {e[0]} (value {e[1]}, position {e[2]})",
        });
    }

    /// <summary>
    /// Registers factories in <see cref="BackendRegistry"/> for <see cref="DeviceKind.Cuda"/>,
    /// <see cref="DeviceKind.OpenCL"/> and <see cref="DeviceKind.IlgpuCpu"/> (device index = ordinal of the
    /// accelerator among those of its kind). Idempotent.
    /// </summary>
    public static void Register()
    {
        if (Interlocked.Exchange(ref registered, 1) == 1) return;
        foreach (var kind in new[] { DeviceKind.Cuda, DeviceKind.OpenCL, DeviceKind.IlgpuCpu })
            BackendRegistry.Register(kind, index => Create(new Device(kind, index)));
    }

    /// <summary>A backend on the given ILGPU device; throws InvalidOperationException with the reason when it is absent.</summary>
    public static IlgpuBackend Create(Device device)
    {
        var found = IlgpuDevices.DevicesOf(device.Kind);
        if (device.Index < 0 || device.Index >= found.Count)
            throw new InvalidOperationException(IlgpuDevices.WhyMissing(device, found.Count));
        return new IlgpuBackend(device, found[device.Index].CreateAccelerator(IlgpuDevices.Context));
    }

    public Device Device { get; }

    /// <summary>The caching allocator of this device's memory.</summary>
    public BufferPool Pool { get; }

    /// <summary>The ILGPU accelerator (for kernels launched outside this class, e.g. benchmarks).</summary>
    public Accelerator Accelerator => accelerator;

    /// <summary>Threads per group of the one-group-per-row kernels (256, or less where the device allows less).</summary>
    public int GroupSize { get; }

    private AcceleratorStream Stream => accelerator.DefaultStream;

    /// <summary>Waits for every enqueued kernel and copy to finish.</summary>
    public void Synchronize()
    {
        lock (gate)
        {
            hostReads.Value++;
            accelerator.Synchronize();
            ThrowDeviceErrors();
        }
    }

    public void Dispose()
    {
        lock (gate)
        {
            accelerator.Synchronize();
            Pool.Trim();
            errors.Dispose();
            accelerator.Dispose();
            hostReads.Dispose();
        }
    }

    // ---------------- allocation and transfers ----------------

    public Storage Allocate(DType dtype, int length)
    {
        if (length < 0) throw new ArgumentException($"allocate: negative length {length}");
        lock (gate)
        {
            var storage = new IlgpuStorage(this, dtype, length, Pool.Rent(Math.Max(1L, (long)length * dtype.SizeOf())));
            if (length > 0) storage.DeviceBytes.MemSetToZero(Stream);
            return storage;
        }
    }

    public void Upload<T>(ReadOnlySpan<T> source, Storage destination) where T : unmanaged
    {
        var s = Own(destination, "upload");
        CheckElementType<T>(s, "upload");
        if (source.Length > s.Length) throw new ArgumentException($"upload: {source.Length} elements into a storage of {s.Length}");
        if (source.IsEmpty) return;
        var bytes = MemoryMarshal.AsBytes(source);
        lock (gate)
        {
            s.DeviceBytes.SubView(0, bytes.Length).CopyFromCPU(Stream, bytes);
            Stream.Synchronize();   // the host span may die as soon as we return
        }
    }

    public void Download<T>(Tensor source, Span<T> destination) where T : unmanaged
    {
        var s = Own(source.Storage, "download");
        CheckElementType<T>(s, "download");
        if (!source.IsContiguous) throw new ArgumentException("Download needs a contiguous tensor");
        if (destination.Length < source.Numel) throw new ArgumentException($"download: {source.Numel} elements into a span of {destination.Length}");
        if (source.Numel == 0) return;
        int size = s.DType.SizeOf();
        var bytes = MemoryMarshal.AsBytes(destination[..source.Numel]);
        lock (gate)
        {
            hostReads.Value++;
            s.DeviceBytes.SubView((long)source.Offset * size, bytes.Length).CopyToCPU(Stream, bytes);
            Stream.Synchronize();
            ThrowDeviceErrors();
        }
    }

    private static void CheckElementType<T>(Storage s, string op) where T : unmanaged
    {
        if (typeof(T) != s.DType.ClrType())
            throw new InvalidOperationException($"{op}: {s.DType.Name()} storage accessed as {typeof(T).Name}");
    }

    // ---------------- host-side checks and views ----------------

    /// <summary>The storage of t, which must live on this backend.</summary>
    private IlgpuStorage Own(Storage s, string op)
    {
        if (s is IlgpuStorage d && ReferenceEquals(d.Backend, this)) return d;
        throw new ArgumentException($"{op}: tensor on {s.Backend.Device}, but this backend runs on {Device}; move it with To()");
    }

    private IlgpuStorage Own(Tensor t, string op) => Own(t.Storage, op);

    /// <summary>The whole storage of t as elements of T (kernels add t's offset themselves, through a layout).</summary>
    private ArrayView<T> Whole<T>(Tensor t, string op) where T : unmanaged => Own(t, op).View<T>();

    /// <summary>The elements of a contiguous t, from its offset.</summary>
    private ArrayView<T> Dense<T>(Tensor t, string op) where T : unmanaged => CheckDense(t, op).View<T>().SubView(t.Offset, t.Numel);

    /// <summary>Throws unless t lives here, is contiguous and fits its storage.</summary>
    private IlgpuStorage CheckDense(Tensor t, string op)
    {
        var s = Own(t, op);
        if (!t.IsContiguous)
            throw new ArgumentException($"{op}: expected a contiguous tensor, got strides {Shapes.Format(t.Strides)} for shape {Shapes.Format(t.Shape)}");
        if ((long)t.Offset + t.Numel > s.Length)
            throw new ArgumentException($"{op}: a tensor of {t.Numel} elements at offset {t.Offset} overruns its storage of {s.Length}");
        return s;
    }

    /// <summary>t itself when contiguous, else a dense copy on this device (for small side inputs such as a weight row or a table).</summary>
    private Tensor Contiguous(Tensor t)
    {
        if (t.IsContiguous) return t;
        var d = Tensor.FromStorage(Allocate(t.DType, t.Numel), t.Shape);
        Copy(t, d);
        return d;
    }

    /// <summary>
    /// Layouts of several operands of one shape, with the dimensions that are contiguous in every operand
    /// merged (and size-1 dimensions dropped), each checked to stay inside its storage.
    /// </summary>
    private StridedLayout[] Layouts(string op, int[] shape, params Tensor[] operands)
    {
        foreach (var t in operands)
        {
            if (!t.Shape.AsSpan().SequenceEqual(shape))
                throw new ArgumentException($"{op}: operand of shape {Shapes.Format(t.Shape)} where {Shapes.Format(shape)} is expected");
            Own(t, op);
        }
        var strides = operands.Select(t => t.Strides).ToArray();
        var sizes = new List<int>();
        var merged = new List<int[]>();
        for (int d = 0; d < shape.Length; d++)
        {
            if (shape[d] == 1) continue;
            if (sizes.Count > 0)
            {
                var last = merged[^1];
                bool contiguous = true;
                for (int o = 0; o < operands.Length; o++)
                    if (last[o] != (long)strides[o][d] * shape[d]) { contiguous = false; break; }
                if (contiguous)
                {
                    sizes[^1] *= shape[d];
                    for (int o = 0; o < operands.Length; o++) last[o] = strides[o][d];
                    continue;
                }
            }
            sizes.Add(shape[d]);
            merged.Add(operands.Select((_, o) => strides[o][d]).ToArray());
        }
        if (sizes.Count > StridedLayout.MaxRank)
            throw new ArgumentException($"{op}: a view of shape {Shapes.Format(shape)} needs {sizes.Count} strided dimensions after merging; the ILGPU backend supports {StridedLayout.MaxRank}");
        var layouts = new StridedLayout[operands.Length];
        for (int o = 0; o < operands.Length; o++)
        {
            var layout = new StridedLayout { Rank = sizes.Count, Offset = operands[o].Offset };
            for (int d = 0; d < sizes.Count; d++) layout.Set(d, sizes[d], merged[d][o]);
            CheckInside(op, layout, operands[o]);
            layouts[o] = layout;
        }
        return layouts;
    }

    /// <summary>A layout over some dims of t (kept or reduced dims of a reduction, batch dims of a matmul).</summary>
    private static StridedLayout LayoutOf(string op, int[] sizes, int[] strides, int offset)
    {
        if (sizes.Length > StridedLayout.MaxRank)
            throw new ArgumentException($"{op}: {sizes.Length} dimensions; the ILGPU backend supports {StridedLayout.MaxRank} per layout");
        var layout = new StridedLayout { Rank = sizes.Length, Offset = offset };
        for (int d = 0; d < sizes.Length; d++) layout.Set(d, sizes[d], strides[d]);
        return layout;
    }

    /// <summary>Throws unless every element the layout addresses lies in [0, storage length).</summary>
    private static void CheckInside(string op, StridedLayout layout, Tensor t)
    {
        if (t.Numel == 0) return;   // addresses nothing
        long lo = layout.Offset, hi = layout.Offset;
        for (int d = 0; d < layout.Rank; d++)
        {
            long extent = (long)(layout.Size(d) - 1) * layout.Stride(d);
            if (extent < 0) lo += extent; else hi += extent;
        }
        if (lo < 0 || hi >= t.Storage.Length)
            throw new ArgumentException($"{op}: a view (shape {Shapes.Format(t.Shape)}, strides {Shapes.Format(t.Strides)}, offset {t.Offset}) reaches outside its storage of {t.Storage.Length} elements");
    }

    private static void CheckFloat(Tensor t, string op)
    {
        if (t.DType is not (DType.F32 or DType.F64))
            throw new NotSupportedException($"{op}: the ILGPU backend computes in f32 or f64, got {t.DType.Name()}");
    }

    private static void CheckSameDType(string op, Tensor first, params Tensor[] others)
    {
        foreach (var t in others)
            if (t.DType != first.DType)
                throw new ArgumentException($"{op}: dtypes {first.DType.Name()} and {t.DType.Name()} differ");
    }

    private static void CheckShape(string op, Tensor t, params int[] shape)
    {
        if (!t.Shape.AsSpan().SequenceEqual(shape))
            throw new ArgumentException($"{op}: expected shape {Shapes.Format(shape)}, got {Shapes.Format(t.Shape)}");
    }

    // ---------------- kernel cache ----------------

    /// <summary>The loaded form of an auto-grouped kernel (compiled once per backend and type instantiation).</summary>
    private TLoaded Auto<TKernel, TLoaded>(TKernel kernel, Func<TKernel, TLoaded> load) where TKernel : Delegate where TLoaded : Delegate
    {
        if (!kernels.TryGetValue(kernel.Method, out var loaded)) kernels[kernel.Method] = loaded = load(kernel);
        return (TLoaded)loaded;
    }

    /// <summary>Launch shape of a one-group-per-row kernel.</summary>
    private KernelConfig Rows(int rows) => new(rows, GroupSize);
}
