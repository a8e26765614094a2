// Data-parallel training from the command line: `mpirun -n P tinyllama sft ...` (issue 17).
//
// --distributed auto (the default) trains on every rank of an MPI job when the process was started by Open
// MPI's mpirun (it sets OMPI_COMM_WORLD_SIZE and OMPI_COMM_WORLD_RANK; PMIx launchers set PMIX_RANK), and
// alone otherwise; `mpi` insists on MPI, `none` trains alone even under mpirun, and `nccl` sums the gradients
// on CUDA GPUs with NCCL (Distributed/NcclCollective.cs; untested). --bucket-mb sizes the all-reduce
// buckets that overlap the backward pass (0: one all-reduce after it), --zero 1 shards AdamW's moments
// (ZeRO stage 1), --check-replicas verifies every step that the ranks' reduced gradients are the same bits,
// --collective-timeout bounds how long a rank waits in a collective for the others.
//
// A rank that fails prints "tinyllama: rank R of P: MESSAGE" and calls MPI_Abort, which makes mpirun end
// every rank; the other ranks never wait for it in a collective.
using System.CommandLine;
using TinyLlama.Backends.Ilgpu;
using TinyLlama.Tensors;
using TinyLlama.Training.Distributed;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Cli.Distributed;

/// <summary>The data-parallel flags of the sft verb.</summary>
internal sealed class DataParallelFlags
{
    private const double MaxBucketMb = 1 << 20;

    public readonly Option<string> Mode = new("--distributed")
    {
        Description = "auto (MPI when started by mpirun), none, mpi, or nccl (gradients summed on CUDA GPUs by NCCL)",
        DefaultValueFactory = _ => "auto",
    };
    public readonly Option<double> BucketMb = new("--bucket-mb") { Description = "With several ranks: MB of gradients per all-reduce bucket, sent during backward (0 = one all-reduce after backward)", DefaultValueFactory = _ => 4 };
    public readonly Option<int> Zero = new("--zero") { Description = "With several ranks: 1 shards the AdamW moments across ranks (ZeRO stage 1)" };
    public readonly Option<bool> CheckReplicas = new("--check-replicas") { Description = "With several ranks: verify every step that all ranks hold bit-identical reduced gradients" };
    public readonly Option<double> Timeout = new("--collective-timeout") { Description = "With several ranks: seconds a rank waits in a collective for the others before stopping", DefaultValueFactory = _ => 300 };

    public void AddTo(Command cmd)
    {
        foreach (var option in new Option[] { Mode, BucketMb, Zero, CheckReplicas, Timeout }) cmd.Options.Add(option);
    }

    /// <summary>The checked flag values (before any file is read).</summary>
    public DataParallelSettings Parse(ParseResult parse)
    {
        string mode = parse.GetValue(Mode)!;
        if (mode is not ("auto" or "none" or "mpi" or "nccl")) throw new CliException($"--distributed: expected auto, none, mpi or nccl, got '{mode}'", isUsage: true);
        double mb = OptionRange.Check("--bucket-mb", parse.GetValue(BucketMb), 0, MaxBucketMb);
        int zero = OptionRange.Check("--zero", parse.GetValue(Zero), 0, 1);
        double timeout = OptionRange.Check("--collective-timeout", parse.GetValue(Timeout), 0, 1e6, minOpen: true);
        if (mode == "auto") mode = LaunchedByMpi() ? "mpi" : "none";
        return new DataParallelSettings(mode, (long)(mb * (1 << 20)), zero, parse.GetValue(CheckReplicas), TimeSpan.FromSeconds(timeout));
    }

    /// <summary>True when an MPI launcher started this process (Open MPI's mpirun, or a PMIx launcher).</summary>
    public static bool LaunchedByMpi() =>
        Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE") is { Length: > 0 } || Environment.GetEnvironmentVariable("PMIX_RANK") is { Length: > 0 };

    /// <summary>For verbs that train on one process only: a one-line refusal under mpirun.</summary>
    public static void RefuseUnderMpi(string verb)
    {
        if (LaunchedByMpi())
            throw new CliException($"{verb} trains on one process; data-parallel training under mpirun is for sft (run {verb} without mpirun)");
    }
}

/// <summary>The values of <see cref="DataParallelFlags"/>: the resolved mode (none, mpi, nccl) and the trainer's settings.</summary>
internal sealed record DataParallelSettings(string Mode, long BucketBytes, int ZeroStage, bool CheckReplicas, TimeSpan Timeout)
{
    /// <summary>Joins the MPI job (none: one process) for a run that computes on <paramref name="device"/>.</summary>
    public DataParallel Start(Device device, TextWriter errors)
    {
        if (Mode == "none") return new DataParallel(SingleProcess.Instance, null, null, errors);
        if (Mode == "nccl")
        {
            NcclCollective.Load();
            if (device.Backend is not IlgpuBackend { Device.Kind: DeviceKind.Cuda })
                throw new CliException($"--distributed nccl needs --device cuda[:N]; this run computes on {device}");
        }
        MpiCollective mpi;
        try { mpi = MpiCollective.Start(Timeout, errors); }
        catch (DllNotFoundException e) { throw new CliException($"--distributed {Mode}: {e.Message}"); }
        if (Mode != "nccl") return new DataParallel(mpi, mpi, null, errors);
        try
        {
            var nccl = new NcclCollective(mpi, (IlgpuBackend)device.Backend);
            return new DataParallel(nccl, mpi, nccl, errors);
        }
        catch (Exception e)
        {
            new DataParallel(mpi, mpi, null, errors).Fail(e);
            throw;
        }
    }

    /// <summary>The trainer's options with the data-parallel settings (NCCL reduces whole device tensors: no host buckets).</summary>
    public SftOptions Apply(SftOptions options) =>
        options with { BucketBytes = Mode == "nccl" ? 0 : BucketBytes, ZeroStage = ZeroStage, CheckReplicas = CheckReplicas };
}

/// <summary>This process's place in a data-parallel run, and how it ends.</summary>
internal sealed class DataParallel(ICollective collective, MpiCollective? mpi, IDisposable? device, TextWriter errors) : IDisposable
{
    public ICollective Collective => collective;

    public int Rank => collective.Rank;

    public int WorldSize => collective.WorldSize;

    /// <summary>True on the rank that writes logs, checkpoints and outputs (rank 0; the only one alone).</summary>
    public bool IsRoot => collective.Rank == 0;

    /// <summary>True when this process is a rank of an MPI job.</summary>
    public bool IsMpi => mpi is not null;

    /// <summary>
    /// Reports <paramref name="e"/> as "tinyllama: rank R of P: MESSAGE" and aborts the MPI job (every rank ends);
    /// returns only when this process is not part of one.
    /// </summary>
    public void Fail(Exception e)
    {
        if (mpi is null) return;
        string message = e is CliException or ArgumentException or IOException or InvalidDataException or InvalidOperationException or NotSupportedException
            ? e.Message : $"{e.GetType().Name}: {e.Message}";
        errors.WriteLine($"tinyllama: rank {Rank} of {WorldSize}: {message.ReplaceLineEndings(" ")}");
        mpi.Abort(e is CliException { IsUsage: true } ? ExitCodes.Usage : ExitCodes.Failure);
    }

    /// <summary>Ends the run normally: every rank finalises MPI together.</summary>
    public void Dispose()
    {
        device?.Dispose();
        mpi?.Dispose();
    }
}

/// <summary>
/// `tinyllama mpi-selftest` (hidden): under mpirun, each MPI call of the binding once with values whose result is
/// known (sums of rank-dependent values in f64 and f32, an all-gather of each rank's id, a broadcast from the
/// last rank, a barrier); every rank checks its results and rank 0 prints them as one JSON line. A wrong result
/// fails the job with one line naming the rank and the call. With --allreduce-mb X it then times an f32
/// all-reduce of X MB (after a barrier, so no rank waits for another: the transfer alone), median of --repeats.
/// </summary>
internal static class MpiSelfTestCommand
{
    public static Command Create()
    {
        var megabytes = new Option<double>("--allreduce-mb") { Description = "Then time an f32 all-reduce of this many MB" };
        var repeats = new Option<int>("--repeats") { Description = "Timed all-reduces (the median is printed)", DefaultValueFactory = _ => 5 };
        var cmd = new Command("mpi-selftest", "Checks the MPI binding under mpirun (for tests).") { megabytes, repeats };
        cmd.Hidden = true;
        cmd.SetAction(parse =>
        {
            double mb = OptionRange.Check("--allreduce-mb", parse.GetValue(megabytes), 0, 1 << 14);
            int n = OptionRange.Check("--repeats", parse.GetValue(repeats), 1, 1000);
            var output = parse.InvocationConfiguration.Output;
            using var dp = new DataParallelSettings("mpi", 0, 0, false, TimeSpan.FromSeconds(60)).Start(Device.Cpu, parse.InvocationConfiguration.Error);
            try
            {
                var c = dp.Collective;
                int r = c.Rank, P = c.WorldSize;
                Span<double> d = [r + 1.0, 0.5 * r];
                c.AllReduceSum(d);
                Expect(d[0] == P * (P + 1) / 2.0 && d[1] == 0.25 * P * (P - 1), "MPI_Allreduce (f64)", d[0]);
                var f = new float[5];
                for (int i = 0; i < f.Length; i++) f[i] = r * 10 + i;
                c.Wait(c.AllReduceSumAsync(f, 1, 3));
                for (int i = 1; i < 4; i++) Expect(f[i] == 10f * P * (P - 1) / 2 + P * i, "MPI_Allreduce (f32, offset)", f[i]);
                Expect(f[0] == r * 10 && f[4] == r * 10 + 4, "MPI_Allreduce (f32, outside the range)", f[0]);
                var all = new byte[2 * P];
                c.AllGather([(byte)r, (byte)(100 + r)], all);
                for (int k = 0; k < P; k++) Expect(all[2 * k] == k && all[2 * k + 1] == 100 + k, "MPI_Allgather", all[2 * k]);
                Span<byte> b = [(byte)(r + 7), (byte)r];
                c.Broadcast(b, root: P - 1);
                Expect(b[0] == P - 1 + 7 && b[1] == P - 1, "MPI_Bcast", b[0]);
                c.Barrier();
                if (r == 0)
                    output.WriteLine(JsonLine.Format(("ranks", P), ("allreduce_f64", d[0]), ("allreduce_f32", (double)f[1]), ("allgather", string.Join(",", all)), ("broadcast", (int)b[0])));
                if (mb > 0)
                {
                    var buffer = new float[(int)(mb * (1 << 20) / sizeof(float))];
                    var seconds = new double[n];
                    for (int i = 0; i < n; i++)
                    {
                        c.Barrier();
                        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
                        c.Wait(c.AllReduceSumAsync(buffer, 0, buffer.Length));
                        seconds[i] = System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalSeconds;
                    }
                    Array.Sort(seconds);
                    if (r == 0) output.WriteLine(JsonLine.Format(("allreduce_bytes", 4L * buffer.Length), ("median_s", seconds[n / 2]), ("gb_per_s", 4.0 * buffer.Length / seconds[n / 2] / 1e9)));
                }
                return ExitCodes.Success;
            }
            catch (Exception e)
            {
                dp.Fail(e);
                throw;
            }
        });
        return cmd;
    }

    private static void Expect(bool ok, string call, double got)
    {
        if (!ok) throw new InvalidOperationException($"{call} returned a wrong result ({got.ToString(System.Globalization.CultureInfo.InvariantCulture)})");
    }
}
