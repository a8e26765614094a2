// Entry point of the BenchmarkDotNet suites: every [Benchmark] class in this assembly is offered, so
// a suite added in a new file is picked up without touching this one. See benchmarks/README.md.
using BenchmarkDotNet.Running;

namespace TinyLlama.Benchmarks;

public static class Program
{
    /// <summary>Runs the suites selected by args (e.g. --filter '*Gemm*'), or asks interactively.</summary>
    public static void Main(string[] args) => BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
}
