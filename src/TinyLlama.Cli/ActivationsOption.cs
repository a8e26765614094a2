// `--f32-activations`, accepted by every verb (a recursive root option, like --threads): decode block-quantized
// models (q4_0, q8_0, q4_K, q6_K) with f32 activations instead of llama.cpp's way, activations quantized to
// Q8_0 / Q8_K once per mat-vec and integer dot products (Generation/CpuDecoder.cs). The f32 way is about half
// as fast and gives the module path's logits bit for bit; the default is the integer way. Program sets
// CpuDecoder.DefaultActivations from it before the verb runs and puts the previous value back afterwards.
using System.CommandLine;
using TinyLlama.Generation;

namespace TinyLlama.Cli;

internal static class ActivationsOption
{
    public const string Name = "--f32-activations";

    public static Option<bool> Create() => new(Name)
    {
        Description = "Decode quantized models with f32 activations (exact module-path logits, slower) instead of Q8 activations and integer dot products",
        Recursive = true,
    };

    /// <summary>Sets CpuDecoder.DefaultActivations to Float32 when the flag was given; returns the value to restore, or null.</summary>
    public static DecoderActivations? Apply(ParseResult parse)
    {
        if (!parse.GetValue<bool>(Name)) return null;
        var previous = CpuDecoder.DefaultActivations;
        CpuDecoder.DefaultActivations = DecoderActivations.Float32;
        return previous;
    }
}
