// Device discovery for the ILGPU backend: one ILGPU Context for the process (CPU accelerator, CUDA and
// OpenCL devices, ILGPU.Algorithms enabled for the math intrinsics), the native-library mapping ILGPU
// needs on Linux, and the resolution of a device name ("cuda", "opencl:1", "ilgpu-cpu") to a Device with
// a one-line explanation when the hardware is missing.
//
// Why the resolver: ILGPU imports the CUDA driver as [DllImport("cuda")] and OpenCL as "opencl"; on
// Linux the runtime then probes libcuda.so / libopencl.so, which are often only installed with the
// developer packages (the driver itself installs libcuda.so.1, the ICD loader libOpenCL.so.1). When the load fails
// ILGPU silently reports no device, so the resolver maps the names to the versioned libraries, and
// Resolve explains a missing device by trying to load the library itself.
using System.Reflection;
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;
using TinyLlama.Backends.Cpu;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Ilgpu;

/// <summary>ILGPU devices of this machine: listing, and resolving names to <see cref="Device"/>s.</summary>
public static class IlgpuDevices
{
    /// <summary>
    /// The CPU accelerator's shape: 4-thread warps, 4 warps per group, one multiprocessor (16 OS threads).
    /// The kernels assume no warp size, and on this accelerator every group barrier is an OS-level
    /// rendezvous of all the group's threads: measured on a loaded 2-core machine, a shared-memory tree
    /// reduction cost 3.4 ms per 16-thread group (5 barriers) against 129 ms per 256-thread group
    /// (9 barriers), so small groups keep the tests fast.
    /// </summary>
    public static readonly CPUDevice CpuAcceleratorDevice = new(numThreadsPerWarp: 4, numWarpsPerMultiprocessor: 4, numMultiprocessors: 1);

    /// <summary>
    /// ilgpu-cpu:1, the CPU accelerator shaped like a GPU: 32-thread warps, 8 warps per group (256 threads).
    /// The backend takes its GPU code paths there (tiled GEMM, FlashAttention, the tiled fused LoRA, the int4
    /// mat-vec and tiled kernels), so `tinyllama check --device ilgpu-cpu:1` runs the GPU dispatch without a
    /// GPU; slower than ilgpu-cpu (256 OS threads meet at every barrier).
    /// </summary>
    public static readonly CPUDevice GpuShapedCpuDevice = new(numThreadsPerWarp: 32, numWarpsPerMultiprocessor: 8, numMultiprocessors: 1);

    private static readonly object Gate = new();
    private static Context? context;
    private static bool resolverInstalled;

    /// <summary>The process-wide ILGPU context (created on first use).</summary>
    internal static Context Context
    {
        get
        {
            lock (Gate)
            {
                if (context is not null) return context;
                InstallNativeResolver();
                context = Context.Create(builder => builder
                    .CPU(CpuAcceleratorDevice)
                    .CPU(GpuShapedCpuDevice)
                    .Cuda()
                    .OpenCL()
                    .EnableAlgorithms());
                return context;
            }
        }
    }

    /// <summary>ILGPU devices of one kind, in ordinal order.</summary>
    internal static IReadOnlyList<ILGPU.Runtime.Device> DevicesOf(DeviceKind kind)
    {
        var list = new List<ILGPU.Runtime.Device>();
        switch (kind)
        {
            case DeviceKind.IlgpuCpu: foreach (var d in Context.GetCPUDevices()) list.Add(d); break;
            case DeviceKind.Cuda: foreach (var d in Context.GetCudaDevices()) list.Add(d); break;
            case DeviceKind.OpenCL: foreach (var d in Context.GetCLDevices()) list.Add(d); break;
            default: throw new ArgumentException($"{kind} is not an ILGPU device kind");
        }
        return list;
    }

    /// <summary>
    /// The device named by <paramref name="name"/> (cpu, cuda[:N], opencl[:N], ilgpu-cpu), with the ILGPU
    /// backend registered. Throws <see cref="InvalidOperationException"/> with a one-line reason when the
    /// named GPU is not present.
    /// </summary>
    public static Device Resolve(string name)
    {
        var device = Device.Parse(name);
        if (device.Kind == DeviceKind.Cpu) return device;
        IlgpuBackend.Register();
        var found = DevicesOf(device.Kind);
        if (device.Index < 0 || device.Index >= found.Count)
            throw new InvalidOperationException(WhyMissing(device, found.Count));
        return device;
    }

    /// <summary>One line per device kind: what this machine has.</summary>
    public static string Describe()
    {
        var lines = new List<string> { $"cpu: CPU backend, {CpuThreads.Count} threads" };
        foreach (var kind in new[] { DeviceKind.IlgpuCpu, DeviceKind.Cuda, DeviceKind.OpenCL })
        {
            var found = DevicesOf(kind);
            if (found.Count == 0)
            {
                lines.Add(WhyMissing(new Device(kind), 0));
                continue;
            }
            for (int i = 0; i < found.Count; i++)
                lines.Add($"{new Device(kind, i)}: {found[i].Name} ({found[i].MemorySize / (1 << 20)} MiB, warp {found[i].WarpSize}, up to {found[i].MaxNumThreadsPerGroup} threads per group)");
        }
        return string.Join(Environment.NewLine, lines);
    }

    /// <summary>The reason a device is not available, in one line.</summary>
    internal static string WhyMissing(Device device, int count)
    {
        string what = device.Kind == DeviceKind.Cuda ? "CUDA" : device.Kind == DeviceKind.OpenCL ? "OpenCL" : "ILGPU CPU";
        if (count > 0) return $"no {what} device {device.Index}: this machine has {count} ({string.Join(", ", Enumerable.Range(0, count).Select(i => new Device(device.Kind, i)))})";
        if (device.Kind == DeviceKind.Cuda)
        {
            string library = OperatingSystem.IsWindows() ? "nvcuda.dll" : "libcuda.so.1";
            return CanLoad(library)
                ? $"no CUDA device: the NVIDIA driver ({library}) loaded but reports no usable GPU"
                : $"no CUDA device: {library} could not be loaded (is the NVIDIA driver installed?)";
        }
        if (device.Kind == DeviceKind.OpenCL)
        {
            string library = OperatingSystem.IsWindows() ? "OpenCL.dll" : "libOpenCL.so.1";
            return CanLoad(library)
                ? $"no OpenCL device: the OpenCL loader ({library}) found no platform with a device ILGPU supports"
                : $"no OpenCL device: {library} could not be loaded (is an OpenCL runtime installed?)";
        }
        return "no ILGPU CPU accelerator";
    }

    private static bool CanLoad(string library)
    {
        if (!NativeLibrary.TryLoad(library, out var handle)) return false;
        NativeLibrary.Free(handle);
        return true;
    }

    /// <summary>Maps ILGPU's "cuda" and "opencl" imports to the versioned driver libraries (once per process).</summary>
    private static void InstallNativeResolver()
    {
        if (resolverInstalled) return;
        resolverInstalled = true;
        try
        {
            NativeLibrary.SetDllImportResolver(typeof(Context).Assembly, ResolveNative);
        }
        catch (InvalidOperationException)
        {
            // Someone else installed a resolver for ILGPU first; theirs stays in charge.
        }
    }

    private static IntPtr ResolveNative(string name, Assembly assembly, DllImportSearchPath? searchPath)
    {
        string key = name.ToLowerInvariant();
        string[] candidates = key switch
        {
            "cuda" when OperatingSystem.IsLinux() => ["libcuda.so.1", "libcuda.so"],
            "opencl" when OperatingSystem.IsLinux() => ["libOpenCL.so.1", "libOpenCL.so"],
            _ => [],
        };
        foreach (var candidate in candidates)
            if (NativeLibrary.TryLoad(candidate, out var handle)) return handle;
        return IntPtr.Zero;   // fall back to the runtime's default probing (ILGPU then reports no device)
    }
}
