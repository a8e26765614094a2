// Where a tensor's storage lives. Each device maps to one backend instance through BackendRegistry.
using TinyLlama.Backends;

namespace TinyLlama.Tensors;

/// <summary>The kinds of device a backend can run on.</summary>
public enum DeviceKind
{
    /// <summary>The SIMD, multithreaded CPU backend.</summary>
    Cpu,
    /// <summary>ILGPU on an NVIDIA GPU.</summary>
    Cuda,
    /// <summary>ILGPU on an OpenCL device.</summary>
    OpenCL,
    /// <summary>ILGPU's CPU accelerator (runs the GPU kernels on CPU threads; for tests).</summary>
    IlgpuCpu,
}

/// <summary>A device: a kind and an ordinal, printed as PyTorch does ("cpu", "cuda:0").</summary>
public readonly record struct Device(DeviceKind Kind, int Index = 0)
{
    /// <summary>The CPU backend.</summary>
    public static readonly Device Cpu = new(DeviceKind.Cpu);

    /// <summary>The backend that owns this device's storage and runs its ops.</summary>
    public IBackend Backend => BackendRegistry.Get(this);

    /// <summary>
    /// Parses cpu, cuda[:N], opencl[:N], ilgpu-cpu[:1]: N in decimal digits only (no sign, space or "+"),
    /// cpu with no ordinal but 0, ilgpu-cpu with 0 or 1 (1: shaped like a GPU).
    /// </summary>
    public static Device Parse(string s)
    {
        var parts = s.Split(':');
        int index = 0;
        if (parts.Length > 2 || (parts.Length == 2 && !int.TryParse(parts[1], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out index)))
            throw Unknown(s);
        DeviceKind kind = parts[0].ToLowerInvariant() switch
        {
            "cpu" => DeviceKind.Cpu,
            "cuda" => DeviceKind.Cuda,
            "opencl" => DeviceKind.OpenCL,
            "ilgpu-cpu" => DeviceKind.IlgpuCpu,
            _ => throw Unknown(s),
        };
        if ((kind == DeviceKind.Cpu && index != 0) || (kind == DeviceKind.IlgpuCpu && index > 1)) throw Unknown(s);
        return new Device(kind, index);
    }

    private static ArgumentException Unknown(string s) => new($"unknown device '{s}': expected cpu, cuda[:N], opencl[:N] or ilgpu-cpu[:1]");

    public override string ToString() => Kind switch
    {
        DeviceKind.Cpu => "cpu",
        DeviceKind.Cuda => $"cuda:{Index}",
        DeviceKind.OpenCL => $"opencl:{Index}",
        DeviceKind.IlgpuCpu => Index == 0 ? "ilgpu-cpu" : $"ilgpu-cpu:{Index}",
        _ => Kind.ToString(),
    };
}
