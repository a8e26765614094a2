// `--device cpu|cuda[:N]|opencl[:N]|ilgpu-cpu`, accepted by every verb (a recursive root option).
// A GPU kind that this machine lacks falls back to the CPU backend with a one-line warning naming why
// (`check`, which has nothing to do without the device, fails instead with that line); a malformed value is
// a usage error for every verb, at parse time.
using System.CommandLine;
using TinyLlama.Backends.Ilgpu;
using TinyLlama.Tensors;

namespace TinyLlama.Cli;

internal static class DeviceOption
{
    public static Option<string> Create()
    {
        var option = new Option<string>("--device")
        {
            Description = "Where to compute: cpu, cuda[:N], opencl[:N] or ilgpu-cpu[:1] (ILGPU's CPU accelerator, for testing kernels; :1 shaped like a GPU, taking the GPU code paths)",
            DefaultValueFactory = _ => "cpu",
            Recursive = true,
        };
        // Checked when parsed, so every verb refuses a malformed device, also the verbs that compute nothing.
        option.Validators.Add(result =>
        {
            if (result.Tokens.Count != 1) return;
            try { Device.Parse(result.Tokens[0].Value); }
            catch (ArgumentException e) { result.AddError("--device: " + e.Message); }
        });
        return option;
    }

    /// <summary>The device the verb should use; without <paramref name="fallBack"/>, a missing GPU is a one-line failure instead of the CPU.</summary>
    public static Device Resolve(ParseResult parse, bool fallBack = true)
    {
        var name = parse.GetValue<string>("--device") ?? "cpu";
        var requested = Device.Parse(name); // well-formed: the option's validator refused anything else at parse time
        try
        {
            return IlgpuDevices.Resolve(name);
        }
        catch (InvalidOperationException e) when (requested.Kind is DeviceKind.Cuda or DeviceKind.OpenCL)
        {
            if (!fallBack) throw new CliException($"--device {name}: {e.Message}");
            parse.InvocationConfiguration.Error.WriteLine($"tinyllama: warning: {e.Message}; falling back to --device cpu");
            return Device.Cpu;
        }
    }
}
