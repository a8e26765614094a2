// CpuThreads, the CPU backend's one thread count (Backends/Cpu/CpuThreads.cs), and `--threads N`, the
// CLI option that sets it: bad counts are refused, Count = 1 forks nothing (the shared SpinPool has no
// workers and CpuParallel.For runs every block on the caller), a GEMM and a decoder run give the same
// numbers at 1 and 2 threads (row/column splits do not reorder any sum) and match a naive f64
// reference, and the CLI option reaches the backend for the verb and is undone afterwards. These
// tests change a process-wide setting, so their collection runs alone.
using System.Text.Json;
using TinyLlama.Autograd;
using TinyLlama.Backends.Cpu;
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tests.Cli;

namespace TinyLlama.Tests.Backends;

/// <summary>Runs the tests that change CpuThreads.Count one after another, with nothing else running.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class CpuThreadsCollection
{
    public const string Name = "cpu-threads";
}

[Collection(CpuThreadsCollection.Name)]
public class CpuThreadsTests
{
    /// <summary>Runs body with CpuThreads.Count = threads, then restores the previous count.</summary>
    private static T With<T>(int threads, Func<T> body)
    {
        int previous = CpuThreads.Count;
        CpuThreads.Count = threads;
        try { return body(); }
        finally { CpuThreads.Count = previous; }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    [InlineData(CpuThreads.Max + 1)]
    [InlineData(100_000)]
    public void BadCountsAreRefusedAndChangeNothing(int bad)
    {
        int before = CpuThreads.Count;
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => CpuThreads.Count = bad);
        Assert.Contains("thread count", e.Message);
        Assert.Equal(before, CpuThreads.Count);
    }

    [Fact]
    public void OneThreadMeansNoWorkersAndEveryBlockOnTheCaller()
    {
        var (poolThreads, seen, caller) = With(1, () =>
        {
            var ids = new HashSet<int>();
            int blocks = 0;
            // 4096 items x 1024 cost: far above the serial cutoff, so more threads would fork.
            CpuParallel.For(4096, 1024, (start, end) => { lock (ids) { ids.Add(Environment.CurrentManagedThreadId); blocks++; } });
            Assert.Equal(1, blocks);
            return (SpinPool.Shared.Threads, ids, Environment.CurrentManagedThreadId);
        });
        Assert.Equal(1, poolThreads);
        Assert.Equal([caller], seen);
        Assert.Equal(1, Options(1).MaxDegreeOfParallelism);

        // With two threads the same loop is split into blocks, and the pool has one worker.
        var (poolThreads2, blocks2) = With(2, () =>
        {
            int blocks = 0;
            CpuParallel.For(4096, 1024, (start, end) => Interlocked.Increment(ref blocks));
            return (SpinPool.Shared.Threads, blocks);
        });
        Assert.Equal(2, poolThreads2);
        Assert.True(blocks2 > 1, $"{blocks2} block(s) at 2 threads");
    }

    private static ParallelOptions Options(int threads) => With(threads, () => CpuThreads.Options);

    [Fact]
    public void ADisposedPoolStillRunsItsJobsOnTheCaller()
    {
        var pool = new SpinPool(2);
        pool.Dispose();
        var job = new CountingJob(10);
        pool.Run(job, 10);
        Assert.All(job.Done, d => Assert.Equal(1, d));
    }

    // Each thread takes its own share of a job's tasks from its own cursor, then the others' remaining ones: every
    // task must still run exactly once, for pools of 1-3 workers and every task count up to 40, also when the tasks
    // of one share are slow (the other threads then take over its tail), and a task that throws fails the Run.
    [Fact]
    public void EveryTaskRunsExactlyOnceWhateverTheShares()
    {
        foreach (int workers in new[] { 1, 2, 3 })
        {
            using var pool = new SpinPool(workers);
            for (int tasks = 1; tasks <= 40; tasks++)
                for (int rep = 0; rep < 20; rep++)
                {
                    var job = new CountingJob(tasks, slow: rep % 4 == 0 ? tasks / 2 : -1);
                    pool.Run(job, tasks);
                    Assert.All(job.Done, d => Assert.Equal(1, d));
                }
            var failing = new CountingJob(10, slow: -1, throwAt: 7);
            var e = Assert.Throws<AggregateException>(() => pool.Run(failing, 10));
            Assert.Contains("task 7", e.InnerException!.Message);
            Assert.All(failing.Done, d => Assert.Equal(1, d));
        }
    }

    private sealed class CountingJob(int n, int slow = -1, int throwAt = -1) : IPoolJob
    {
        public readonly int[] Done = new int[n];
        public void Execute(int task)
        {
            if (task >= slow && slow >= 0) Thread.SpinWait(2000);
            Interlocked.Increment(ref Done[task]);
            if (task == throwAt) throw new InvalidOperationException($"task {task} failed");
        }
    }

    [Fact]
    public void GemmGivesTheSameResultAtOneAndTwoThreadsAndMatchesTheReference()
    {
        // 2 M N K = 2 * 192 * 160 * 200 ~ 12 MFLOP: above Gemm.ParallelMinFlops, so two threads split it.
        const int m = 192, n = 160, k = 200;
        var g = new Generator(5);
        var a = new float[m * k];
        var b = new float[k * n];
        for (int i = 0; i < a.Length; i++) a[i] = g.NextSingle() * 2 - 1;
        for (int i = 0; i < b.Length; i++) b[i] = g.NextSingle() * 2 - 1;
        float[] Run() => Tensor.FromArray(a, [m, k]).MatMul(Tensor.FromArray(b, [k, n])).ToArray<float>();
        var one = With(1, Run);
        var two = With(2, Run);
        Assert.Equal(one, two); // bitwise: the split is over rows and columns, never over K
        // Reference in f64; bound 4 sqrt(K) u sum |a b| as in GemmTests (sum |a b| <= K here).
        double bound = 4 * Math.Sqrt(k) * Math.Pow(2, -24) * k;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int p = 0; p < k; p++) s += (double)a[i * k + p] * b[p * n + j];
                Assert.True(Math.Abs(one[i * n + j] - s) <= bound, $"C[{i},{j}] = {one[i * n + j]}, reference {s}");
            }
    }

    [Fact]
    public void DecoderGivesTheSameLogitsAtOneAndTwoThreads()
    {
        var model = new LlamaForCausalLM(LlamaConfig.Preset("stories260K"), new Generator(3), DType.F32, Device.Cpu);
        model.Eval();
        float[][] Decode()
        {
            using var _ = GradMode.NoGrad();
            var cache = model.NewCache(1, 8);
            using var decoder = CpuDecoder.TryCreate(model, cache, out var why);
            Assert.True(decoder is not null, why);
            return [.. new[] { 5, 17, 200, 3, 9 }.Select(t => decoder.Step(t).ToArray())];
        }
        var one = With(1, Decode);
        var two = With(2, Decode);
        Assert.Equal(one.Length, two.Length);
        for (int s = 0; s < one.Length; s++) Assert.Equal(one[s], two[s]);
    }

    [Fact]
    public void ThreadsOptionReachesTheBackendForTheVerbOnly()
    {
        int before = CpuThreads.Count;
        foreach (var args in new[]
        {
            new[] { "--threads", "1", "bench", "generate", "--preset", "stories260K", "-p", "8", "-n", "4", "-r", "1", "--json" },
            new[] { "bench", "generate", "--preset", "stories260K", "-p", "8", "-n", "4", "-r", "1", "--json", "--threads", "1" },
        })
        {
            var (code, output, err) = CliRunner.Run(args);
            Assert.True(code == 0, err);
            Assert.Equal(1, JsonDocument.Parse(output).RootElement.GetProperty("threads").GetInt32());
            Assert.Equal(before, CpuThreads.Count);
        }
        // Without --threads the verb runs at the backend's current count.
        var (code2, output2, err2) = CliRunner.Run("bench", "generate", "--preset", "stories260K", "-p", "8", "-n", "4", "-r", "1", "--json");
        Assert.True(code2 == 0, err2);
        Assert.Equal(before, JsonDocument.Parse(output2).RootElement.GetProperty("threads").GetInt32());
    }
}
