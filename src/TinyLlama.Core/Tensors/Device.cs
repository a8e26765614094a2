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

    /// <summary>Parses cpu, cuda, cuda:1, opencl, ilgpu-cpu.</summary>
    public static Device Parse(string s)
    {
        var parts = s.Split(':');
        int index = 0;
        if (parts.Length > 2 || (parts.Length == 2 && !int.TryParse(parts[1], out index)))
            throw new ArgumentException($"unknown device '{s}': expected cpu, cuda[:N], opencl[:N] or ilgpu-cpu[:1]");
        DeviceKind kind = parts[0].ToLowerInvariant() switch
        {
            "cpu" => DeviceKind.Cpu,
            "cuda" => DeviceKind.Cuda,
            "opencl" => DeviceKind.OpenCL,
            "ilgpu-cpu" => DeviceKind.IlgpuCpu,
            _ => throw new ArgumentException($"unknown device '{s}': expected cpu, cuda[:N], opencl[:N] or ilgpu-cpu[:1]"),
        };
        return new Device(kind, index);
    }

    public override string ToString() => Kind switch
    {
        DeviceKind.Cpu => "cpu",
        DeviceKind.Cuda => $"cuda:{Index}",
        DeviceKind.OpenCL => $"opencl:{Index}",
        DeviceKind.IlgpuCpu => Index == 0 ? "ilgpu-cpu" : $"ilgpu-cpu:{Index}",
        _ => Kind.ToString(),
    };
}
