// Maps a Device to its backend instance. The CPU backend is built in; other backends add a factory for
// their device kinds when the program asks them to: a library user references TinyLlama.Backends.Ilgpu and
// calls IlgpuBackend.Register() once (the CLI does so when --device names a GPU). Nothing registers itself
// on assembly load: .NET loads an assembly only when one of its types is used, which Tensor never does.
using TinyLlama.Tensors;

namespace TinyLlama.Backends;

/// <summary>Finds the backend for a device.</summary>
public static class BackendRegistry
{
    private static readonly Dictionary<DeviceKind, Func<int, IBackend>> Factories = new();
    private static readonly Dictionary<Device, IBackend> Instances = new();
    private static readonly object Gate = new();

    /// <summary>Registers how to create the backend for a device kind (one instance per device).</summary>
    public static void Register(DeviceKind kind, Func<int, IBackend> factory)
    {
        lock (Gate) Factories[kind] = factory;
    }

    /// <summary>The backend of a device, created on first use.</summary>
    public static IBackend Get(Device device)
    {
        if (device.Kind == DeviceKind.Cpu) return Cpu.CpuBackend.Instance;
        lock (Gate)
        {
            if (Instances.TryGetValue(device, out var backend)) return backend;
            if (!Factories.TryGetValue(device.Kind, out var factory))
                throw new NotSupportedException($"device '{device}' has no backend registered (available: cpu{string.Concat(Factories.Keys.Select(k => ", " + new Device(k)))}); for ILGPU devices reference TinyLlama.Backends.Ilgpu and call IlgpuBackend.Register() first");
            backend = factory(device.Index);
            Instances[device] = backend;
            return backend;
        }
    }
}
