// BenchmarkDotNet entry point: runs the suites selected by --filter.
using BenchmarkDotNet.Running;

BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
