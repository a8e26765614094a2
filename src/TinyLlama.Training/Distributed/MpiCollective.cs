// ICollective over MPI (MpiNative.cs: Open MPI's libmpi through P/Invoke) for data-parallel training
// launched by `mpirun -n P tinyllama sft ...`.
//
// One communication thread makes every MPI call: it initialises MPI with MPI_THREAD_FUNNELED (only the thread
// that called MPI_Init_thread calls MPI), then runs the calls queued by other threads in order. The trainer
// thread queues an all-reduce from inside the backward pass (GradientBuckets.cs) and keeps computing while
// the bucket travels: the overlap PyTorch's DistributedDataParallel gets from its reducer's NCCL stream.
// Synchronous members queue their call and wait for it.
//
// Polling: a blocking MPI_Allreduce busy-polls the shared-memory transport until the other ranks arrive, which on
// a machine with no core to spare takes the CPU from the backward pass it is meant to hide behind. So a bucket's
// all-reduce is started with MPI_Iallreduce and progressed with MPI_Test: tightly for its first polls and
// whenever a thread waits for it (Wait), otherwise once a millisecond, sleeping in between.
//
// Faults: a watchdog checks the running call once a second; a call that has waited longer than the timeout
// for the other ranks (one died without mpirun noticing, or hangs) ends this process with one line, and mpirun
// then ends the job. A rank that fails on its own calls Abort (MPI_Abort), which makes mpirun end every rank.
// The sums are MPI_Allreduce's (MPI_SUM over f32 or f64): every rank receives the same bits from one call,
// which the trainer can verify (--check-replicas hashes the reduced gradients and compares them across ranks).
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using TinyLlama.Tensors;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Training.Distributed;

/// <summary>Collectives among the ranks of an MPI job (Open MPI), all made on one communication thread.</summary>
public sealed unsafe class MpiCollective : ICollective, IDisposable
{
    // MPI counts are ints: longer buffers go in pieces of this many elements.
    private const int MaxCount = 1 << 30;

    private readonly MpiNative.Api api;
    private readonly BlockingCollection<Job> jobs = [];
    private readonly Thread thread;
    private readonly Timer watchdog;
    private readonly TimeSpan timeout;
    private readonly TextWriter errors;
    private Job? running;
    private long runningSince;
    private bool disposed;

    private sealed class Job(string name, Action work)
    {
        public string Name { get; } = name;
        public Action Work { get; } = work;
        public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    private MpiCollective(MpiNative.Api api, TimeSpan timeout, TextWriter errors)
    {
        this.api = api;
        this.timeout = timeout;
        this.errors = errors;
        thread = new Thread(Loop) { IsBackground = true, Name = "tinyllama mpi" };
        thread.Start();
        Run("MPI_Init_thread", () =>
        {
            int provided = api.InitThread(MpiNative.ThreadFunneled);
            if (provided < MpiNative.ThreadFunneled)
                throw new InvalidOperationException($"MPI: the library provides thread level {provided}, but a communication thread needs MPI_THREAD_FUNNELED");
            Rank = api.Rank();
            WorldSize = api.Size();
        });
        watchdog = new Timer(_ => Watch(), null, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1));
    }

    /// <summary>
    /// Initialises MPI (loading Open MPI's library) and starts the communication thread. A collective call that
    /// waits longer than <paramref name="timeout"/> for the other ranks ends the process with one line on
    /// <paramref name="errors"/> (the console's stderr when null).
    /// </summary>
    /// <exception cref="DllNotFoundException">Open MPI 4's libmpi.so.40 is not installed.</exception>
    public static MpiCollective Start(TimeSpan timeout, TextWriter? errors = null)
    {
        if (timeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(timeout), "the collective timeout must be positive");
        return new MpiCollective(MpiNative.Load(), timeout, errors ?? Console.Error);
    }

    public int Rank { get; private set; }

    public int WorldSize { get; private set; }

    /// <summary>Seconds the communication thread has spent inside MPI calls since the last <see cref="TakeBusySeconds"/>.</summary>
    public double TakeBusySeconds()
    {
        lock (jobs) { double s = busy; busy = 0; return s; }
    }

    private double busy;

    public void AllReduceSum(Span<double> values)
    {
        var copy = values.ToArray();
        Run("MPI_Allreduce", () =>
        {
            fixed (double* p = copy)
                for (int o = 0; o < copy.Length; o += MaxCount) api.AllReduceSum(p + o, Math.Min(MaxCount, copy.Length - o), api.Double);
        });
        copy.CopyTo(values);
    }

    public Task AllReduceSumAsync(float[] values, int offset, int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(count, values.Length - offset);
        return Enqueue("MPI_Iallreduce", () =>
        {
            fixed (float* p = values)
            {
                for (int o = 0; o < count; o += MaxCount)
                {
                    var request = api.StartAllReduceSum(p + offset + o, Math.Min(MaxCount, count - o), api.Float);
                    for (int polls = 0; !api.Test(ref request); polls++)
                    {
                        if (polls < TightPolls || Volatile.Read(ref waiters) > 0) Thread.SpinWait(20);
                        else Thread.Sleep(1);
                    }
                }
            }
        }).Done.Task;
    }

    /// <summary>Waits for a reduction of <see cref="AllReduceSumAsync"/>, which from now on is progressed without pause.</summary>
    public void Wait(Task reduction)
    {
        Interlocked.Increment(ref waiters);
        try { reduction.GetAwaiter().GetResult(); }
        finally { Interlocked.Decrement(ref waiters); }
    }

    // MPI_Test calls in a row before the communication thread starts sleeping between them.
    private const int TightPolls = 200;
    private int waiters;

    /// <summary>Sums the gradients across ranks after the backward pass: f32 ones in pieces of a flat buffer, others one by one in f64.</summary>
    public void AllReduceGradients(IReadOnlyList<Tensor> gradients) => GradientBuckets.ReduceAll(this, gradients);

    public void AllGather(ReadOnlySpan<byte> mine, Span<byte> all)
    {
        if (all.Length != (long)mine.Length * WorldSize) throw new ArgumentException($"all-gather: the result holds {all.Length} bytes, expected {WorldSize} x {mine.Length}");
        var send = mine.ToArray();
        var recv = new byte[all.Length];
        // Pieces of at most MaxCount bytes per rank, gathered into a staging buffer and placed rank by rank.
        int piece = Math.Max(1, Math.Min(MaxCount, send.Length));
        var stage = new byte[(long)piece * WorldSize];
        for (int o = 0; o < send.Length; o += piece)
        {
            int n = Math.Min(piece, send.Length - o);
            int start = o;
            Run("MPI_Allgather", () => { fixed (byte* s = send, r = stage) api.AllGather(s + start, r, n, api.Byte); });
            for (int rank = 0; rank < WorldSize; rank++)
                stage.AsSpan(rank * n, n).CopyTo(recv.AsSpan(rank * send.Length + start, n));
        }
        recv.CopyTo(all);
    }

    public void Broadcast(Span<byte> values, int root)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(root);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(root, WorldSize);
        var copy = values.ToArray();
        Run("MPI_Bcast", () =>
        {
            fixed (byte* p = copy)
                for (int o = 0; o < copy.Length; o += MaxCount) api.Broadcast(p + o, Math.Min(MaxCount, copy.Length - o), api.Byte, root);
        });
        copy.CopyTo(values);
    }

    public void Barrier() => Run("MPI_Barrier", api.Barrier);

    /// <summary>
    /// Ends the whole job: MPI_Abort with <paramref name="code"/>, which makes mpirun stop every rank. Called from
    /// any thread (the communication thread may be blocked in a collective that will never complete).
    /// </summary>
    public void Abort(int code)
    {
        errors.Flush();
        api.Abort(code);
        MpiNative.ExitNow(code);
    }

    /// <summary>Finalises MPI (a collective: every rank calls it at the end) and stops the communication thread.</summary>
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        watchdog.Dispose();
        try { Run("MPI_Finalize", api.FinalizeMpi); }
        finally
        {
            jobs.CompleteAdding();
            thread.Join();
        }
    }

    private void Run(string name, Action work)
    {
        ObjectDisposedException.ThrowIf(disposed && name != "MPI_Finalize", this);
        Enqueue(name, work).Done.Task.GetAwaiter().GetResult();
    }

    private Job Enqueue(string name, Action work)
    {
        var job = new Job(name, work);
        jobs.Add(job);
        return job;
    }

    private void Loop()
    {
        foreach (var job in jobs.GetConsumingEnumerable())
        {
            long start = Stopwatch.GetTimestamp();
            Volatile.Write(ref runningSince, start);
            Volatile.Write(ref running, job);
            try
            {
                job.Work();
                Volatile.Write(ref running, null);
                lock (jobs) busy += Stopwatch.GetElapsedTime(start).TotalSeconds;
                job.Done.SetResult();
            }
            catch (Exception e)
            {
                Volatile.Write(ref running, null);
                job.Done.SetException(e);
            }
        }
    }

    // Once a second: a call that has waited past the timeout means another rank is gone or stuck.
    private void Watch()
    {
        var job = Volatile.Read(ref running);
        if (job is null) return;
        double waited = Stopwatch.GetElapsedTime(Volatile.Read(ref runningSince)).TotalSeconds;
        if (waited <= timeout.TotalSeconds || job.Name == "MPI_Init_thread") return;
        errors.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"tinyllama: rank {Rank} of {WorldSize}: {job.Name} has waited {waited:F0} s for the other ranks (--collective-timeout {timeout.TotalSeconds:F0}): another rank failed or hangs; stopping"));
        errors.Flush();
        MpiNative.ExitNow(1);
    }
}
