// The CPU backend's thread count, held in this one place: GEMM, batched matmul, attention, the
// row and element-wise loops (CpuParallel, RowPlan) and the decoder's SpinPool all read it, so
// `tinyllama --threads N` (llama.cpp's -t) bounds every parallel loop of a run. The default is one
// thread per core (Environment.ProcessorCount), as llama.cpp's. With Count = 1 every loop runs on the
// calling thread: the parallel paths test `Count > 1` before they fork, and the pool has no workers.
namespace TinyLlama.Backends.Cpu;

/// <summary>How many threads the CPU backend computes with (see the file header).</summary>
public static class CpuThreads
{
    /// <summary>The largest accepted count: far above any core count, low enough that a typo cannot start 100,000 threads.</summary>
    public const int Max = 1024;

    private static readonly object gate = new();
    private static int count = Math.Clamp(Environment.ProcessorCount, 1, Max);
    private static ParallelOptions options = new() { MaxDegreeOfParallelism = count };
    private static SpinPool? pool;

    /// <summary>
    /// Threads used by the CPU backend's parallel loops, 1 to <see cref="Max"/>; defaults to the
    /// number of cores. Setting a new value replaces the shared <see cref="SpinPool"/> (the old one's
    /// workers stop; jobs still handed to it run on their caller).
    /// </summary>
    public static int Count
    {
        get => Volatile.Read(ref count);
        set
        {
            if (value < 1 || value > Max)
                throw new ArgumentOutOfRangeException(nameof(value), value, $"the thread count must be between 1 and {Max}");
            SpinPool? old;
            lock (gate)
            {
                if (value == count) return;
                old = pool;
                pool = null;
                options = new ParallelOptions { MaxDegreeOfParallelism = value };
                Volatile.Write(ref count, value);
            }
            old?.Dispose();
        }
    }

    /// <summary>Options for Parallel.For: at most <see cref="Count"/> threads at once.</summary>
    public static ParallelOptions Options => Volatile.Read(ref options);

    /// <summary>The shared low-latency pool, created on first use with Count - 1 workers (the caller is the last thread).</summary>
    public static SpinPool Pool
    {
        get
        {
            var p = Volatile.Read(ref pool);
            if (p is not null) return p;
            lock (gate) return pool ??= new SpinPool(count - 1);
        }
    }
}
