// A worker pool for many tiny parallel jobs (one decode step runs ~30 of them, each 20-200 us).
//
// Parallel.For wakes thread-pool threads through the OS for every call, which costs several
// microseconds each time and more when the threads went to sleep in between: at ~30 calls per token
// that alone caps decoding at a few hundred tokens per second. Here, as in llama.cpp's thread pool,
// the workers stay awake between jobs: each spins on a job counter for a while (SpinMicroseconds)
// after finishing, so the next job starts within a microsecond, and only then blocks on a monitor so
// an idle process burns no CPU. The spin yields the core between checks (SpinWait: sched_yield on
// Linux) to any other thread that is ready to run: spinning in place instead (Thread.SpinWait alone)
// took the cores from the threads doing the work whenever there were more busy threads than cores;
// two `bench generate` processes on this 2-core VM then decoded 19 tokens/s each, against ~740 for
// one alone (benchmarks/RESULTS.md, session 10).
//
// A job is an IPoolJob with `tasks` independent pieces; the caller's thread works too. Each thread has
// an equal share of the pieces and a cursor of its own on its own cache line: it takes its share's pieces
// in order with an interlocked increment of its own cursor (a cache line no other thread writes while it
// works), then helps with the other shares' remaining pieces through their cursors, so a thread that was
// descheduled or got slow pieces does not hold the job up. Every piece is taken exactly once. With one
// shared counter instead, every piece moved that counter's cache line between the cores: on this 2-vCPU
// VM a line takes ~280 ns each way (570 ns ping-pong), and a decode step hands out 300-600 pieces;
// `bench generate` tg128 went from 798-809 to 853-898 tokens/s. Run returns when all pieces are done.
// Only one job runs at a time: a Run that finds the pool busy (another thread is generating) runs its
// job on the calling thread, which is correct, only slower. Dispose stops the
// workers (CpuThreads replaces the shared pool when the thread count changes); a disposed pool runs
// its jobs on the caller.
namespace TinyLlama.Backends.Cpu;

/// <summary>A piece of parallel work: <see cref="Execute"/> is called once for every task index.</summary>
public interface IPoolJob
{
    /// <summary>Runs task <paramref name="task"/> (0 &lt;= task &lt; the count given to <see cref="SpinPool.Run"/>).</summary>
    void Execute(int task);
}

/// <summary>Workers that spin between jobs, for low-latency fork-join over tiny jobs (see the file header).</summary>
public sealed class SpinPool : IDisposable
{
    /// <summary>How long an idle worker spins before it blocks.</summary>
    private const int SpinMicroseconds = 2000;

    private readonly object gate = new();
    private readonly object runLock = new();
    private readonly int workers;
    private IPoolJob? job;
    private int tasks;
    // Task cursors, one per thread on its own cache line (index t * Pad): thread t first takes the tasks of its own
    // share [t tasks / T, (t + 1) tasks / T) from its cursor, then helps the others through theirs.
    private const int Pad = 16;
    private readonly int[] cursors, ends;
    private int active;    // workers still inside the current job
    private int generation; // bumped once per job; workers wait for it to change
    private int sleepers;  // workers blocked on the monitor
    private Exception? failure;
    private volatile bool stopped;

    /// <summary>The process-wide pool: <see cref="CpuThreads.Count"/> threads, its workers and the caller.</summary>
    public static SpinPool Shared => CpuThreads.Pool;

    /// <param name="workers">Background threads (the caller of <see cref="Run"/> is one more).</param>
    public SpinPool(int workers)
    {
        this.workers = workers;
        cursors = new int[(workers + 1) * Pad];
        ends = new int[(workers + 1) * Pad];
        for (int i = 0; i < workers; i++)
        {
            int index = i + 1;
            new Thread(() => WorkerLoop(index)) { IsBackground = true, Name = $"SpinPool worker {i}" }.Start();
        }
    }

    /// <summary>Threads that execute a job: the workers and the caller.</summary>
    public int Threads => workers + 1;

    /// <summary>Runs job.Execute(i) for every i in [0, tasks) across the pool; returns when all are done.</summary>
    public void Run(IPoolJob job, int tasks)
    {
        if (tasks <= 0) return;
        if (workers == 0 || tasks == 1 || stopped || !Monitor.TryEnter(runLock))
        {
            for (int i = 0; i < tasks; i++) job.Execute(i);
            return;
        }
        try
        {
            if (stopped)
            {
                for (int i = 0; i < tasks; i++) job.Execute(i);
                return;
            }
            this.job = job;
            this.tasks = tasks;
            failure = null;
            int threads = workers + 1;
            for (int t = 0; t < threads; t++)
            {
                cursors[t * Pad] = (int)((long)t * tasks / threads);
                ends[t * Pad] = (int)((long)(t + 1) * tasks / threads);
            }
            Volatile.Write(ref active, workers);
            Interlocked.Increment(ref generation); // publishes the fields above to the workers
            if (Volatile.Read(ref sleepers) > 0)
                lock (gate) Monitor.PulseAll(gate);
            Work(0);
            var spin = new SpinWait();
            while (Volatile.Read(ref active) != 0) spin.SpinOnce(sleep1Threshold: -1);
            this.job = null;
            if (failure is not null) throw new AggregateException("a SpinPool task failed", failure);
        }
        finally
        {
            Monitor.Exit(runLock);
        }
    }

    /// <summary>Stops the workers once the running job (if any) is done; later jobs run on their caller.</summary>
    public void Dispose()
    {
        lock (runLock)
        {
            if (stopped) return;
            stopped = true;
            Interlocked.Increment(ref generation);
            lock (gate) Monitor.PulseAll(gate);
        }
    }

    // Takes task indices until none are left: its own share first, then the other threads' remaining ones.
    private void Work(int self)
    {
        var j = job!;
        int threads = workers + 1;
        for (int k = 0; k < threads; k++)
        {
            int t = (self + k) % threads, end = ends[t * Pad];
            for (int i = Interlocked.Increment(ref cursors[t * Pad]) - 1; i < end; i = Interlocked.Increment(ref cursors[t * Pad]) - 1)
            {
                try { j.Execute(i); }
                catch (Exception e) { Interlocked.CompareExchange(ref failure, e, null); }
            }
        }
    }

    private void WorkerLoop(int self)
    {
        int seen = Volatile.Read(ref generation);
        while (true)
        {
            // Spin for a while, then block until Run bumps the generation.
            long deadline = System.Diagnostics.Stopwatch.GetTimestamp() + SpinMicroseconds * System.Diagnostics.Stopwatch.Frequency / 1_000_000;
            var spin = new SpinWait();
            while (Volatile.Read(ref generation) == seen)
            {
                if (System.Diagnostics.Stopwatch.GetTimestamp() < deadline)
                {
                    spin.SpinOnce(sleep1Threshold: -1);
                    continue;
                }
                lock (gate)
                {
                    Interlocked.Increment(ref sleepers); // a full fence: Run either sees us or we see its new generation
                    while (Volatile.Read(ref generation) == seen) Monitor.Wait(gate);
                    Interlocked.Decrement(ref sleepers);
                }
            }
            if (stopped) return;
            seen = Volatile.Read(ref generation);
            Work(self);
            Interlocked.Decrement(ref active);
        }
    }
}
