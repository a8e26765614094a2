// ICollective for ranks that train on CUDA GPUs through the ILGPU backend: gradients are summed in device
// memory by NVIDIA's NCCL (ncclAllReduce over the raw device pointers of the gradients' IlgpuStorage), with
// MPI only for the start-up (rank 0's ncclUniqueId is broadcast to the others, as NCCL's documentation
// describes for MPI jobs: "Creating a communicator with options", ncclGetUniqueId + ncclCommInitRank) and for
// the few host-side values (token counts, losses, ZeRO's gathers).
//
// NCCL's C API (nccl.h, NCCL 2.x; libnccl.so.2): ncclGetUniqueId(ncclUniqueId*), ncclCommInitRank(ncclComm_t*,
// int nranks, ncclUniqueId (128 bytes, by value), int rank), ncclAllReduce(send, recv, size_t count,
// ncclDataType_t (ncclFloat32 = 7, ncclFloat64 = 8), ncclRedOp_t (ncclSum = 0), comm, cudaStream_t),
// ncclCommDestroy, ncclGetErrorString. The reduction runs on CUDA's legacy default stream after the ILGPU
// stream has been synchronised, and the context is synchronised after it (cuCtxSynchronize, libcuda.so.1),
// so it is ordered with the kernels before and after without sharing ILGPU's stream.
//
// UNTESTED: written without a GPU or libnccl on the machine it was written on; selecting it where libnccl.so.2
// is missing fails with one line. Lives in the CLI because it joins the training library's ICollective with
// the ILGPU backend's storages.
using System.Runtime.InteropServices;
using TinyLlama.Backends.Ilgpu;
using TinyLlama.Tensors;
using TinyLlama.Training.Distributed;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Cli.Distributed;

/// <summary>Gradients all-reduced on CUDA devices by NCCL; everything else through MPI.</summary>
internal sealed unsafe class NcclCollective : ICollective, IDisposable
{
    private const string Library = "libnccl.so.2";
    private const int NcclFloat32 = 7, NcclFloat64 = 8, NcclSum = 0;

    [StructLayout(LayoutKind.Sequential, Size = 128)]
    private struct UniqueId
    {
        public fixed byte Internal[128];
    }

    private readonly MpiCollective mpi;
    private readonly IlgpuBackend backend;
    private readonly IntPtr comm;
    private readonly delegate* unmanaged<void*, void*, nuint, int, int, IntPtr, IntPtr, int> allReduce;
    private readonly delegate* unmanaged<IntPtr, int> commDestroy;
    private readonly delegate* unmanaged<int, IntPtr> errorString;
    private readonly delegate* unmanaged<int> ctxSynchronize;

    /// <summary>A communicator over the ranks of <paramref name="mpi"/>, each on its <paramref name="backend"/> (a CUDA device).</summary>
    /// <exception cref="Cli.CliException">libnccl.so.2 or libcuda.so.1 is missing, or the device is not CUDA.</exception>
    public NcclCollective(MpiCollective mpi, IlgpuBackend backend)
    {
        if (backend.Device.Kind != DeviceKind.Cuda)
            throw new CliException($"--distributed nccl needs --device cuda[:N]; this run computes on {backend.Device}");
        this.mpi = mpi;
        this.backend = backend;
        var nccl = Load();
        if (!NativeLibrary.TryLoad("libcuda.so.1", out var cuda))
            throw new CliException("--distributed nccl: libcuda.so.1 (the CUDA driver) could not be loaded");
        IntPtr Get(IntPtr lib, string name) => NativeLibrary.TryGetExport(lib, name, out var p) ? p
            : throw new CliException($"--distributed nccl: {name} is missing from the loaded library");
        var getUniqueId = (delegate* unmanaged<UniqueId*, int>)Get(nccl, "ncclGetUniqueId");
        var commInitRank = (delegate* unmanaged<IntPtr*, int, UniqueId, int, int>)Get(nccl, "ncclCommInitRank");
        allReduce = (delegate* unmanaged<void*, void*, nuint, int, int, IntPtr, IntPtr, int>)Get(nccl, "ncclAllReduce");
        commDestroy = (delegate* unmanaged<IntPtr, int>)Get(nccl, "ncclCommDestroy");
        errorString = (delegate* unmanaged<int, IntPtr>)Get(nccl, "ncclGetErrorString");
        ctxSynchronize = (delegate* unmanaged<int>)Get(cuda, "cuCtxSynchronize");

        UniqueId id;
        if (mpi.Rank == 0) Check(getUniqueId(&id), "ncclGetUniqueId");
        mpi.Broadcast(new Span<byte>(&id, sizeof(UniqueId)), root: 0);
        IntPtr c;
        Check(commInitRank(&c, mpi.WorldSize, id, mpi.Rank), "ncclCommInitRank");
        comm = c;
    }

    /// <summary>Loads libnccl.so.2, or fails with one line: checked before MPI starts.</summary>
    /// <exception cref="CliException">The library is not installed.</exception>
    public static IntPtr Load() => NativeLibrary.TryLoad(Library, out var nccl) ? nccl
        : throw new CliException($"--distributed nccl: {Library} (NVIDIA's NCCL 2) could not be loaded; install it, or use --distributed mpi");

    public int Rank => mpi.Rank;

    public int WorldSize => mpi.WorldSize;

    public void AllReduceSum(Span<double> values) => mpi.AllReduceSum(values);

    /// <summary>Sums each gradient in place on the device; gradients in host memory go through MPI.</summary>
    public void AllReduceGradients(IReadOnlyList<Tensor> gradients)
    {
        var onHost = new List<Tensor>();
        backend.Synchronize();
        foreach (var g in gradients)
        {
            if (g.Storage is not IlgpuStorage storage || !g.IsContiguous || g.DType is not (DType.F32 or DType.F64))
            {
                onHost.Add(g);
                continue;
            }
            int size = g.DType == DType.F32 ? 4 : 8;
            var p = (void*)(storage.DevicePointer + (nint)g.Offset * size);
            Check(allReduce(p, p, (nuint)g.Numel, g.DType == DType.F32 ? NcclFloat32 : NcclFloat64, NcclSum, comm, IntPtr.Zero), "ncclAllReduce");
        }
        int rc = ctxSynchronize();
        if (rc != 0) throw new InvalidOperationException($"NCCL: cuCtxSynchronize failed with CUDA error {rc}");
        if (onHost.Count > 0) mpi.AllReduceGradients(onHost);
    }

    public Task AllReduceSumAsync(float[] values, int offset, int count) => mpi.AllReduceSumAsync(values, offset, count);

    public void Wait(Task reduction) => mpi.Wait(reduction);

    public void AllGather(ReadOnlySpan<byte> mine, Span<byte> all) => mpi.AllGather(mine, all);

    public void Broadcast(Span<byte> values, int root) => mpi.Broadcast(values, root);

    public void Barrier() => mpi.Barrier();

    public void Dispose() => commDestroy(comm);

    private void Check(int result, string call)
    {
        if (result != 0) throw new InvalidOperationException($"NCCL: {call} failed: {Marshal.PtrToStringUTF8(errorString(result)) ?? result.ToString(System.Globalization.CultureInfo.InvariantCulture)}");
    }
}
