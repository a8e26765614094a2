// A thin P/Invoke layer over the few MPI calls data-parallel training needs: init (with a thread level),
// rank and size, all-reduce (sum), all-gather, broadcast, barrier, abort and finalize (MPI 3.1 standard,
// chapters 5 and 8, for what each call does).
//
// Why not MPI.NET: its NuGet package (1.4.0) is compiled against Microsoft MPI (it imports msmpi.dll, whose
// handles are 32-bit integer constants) and does not load on Linux with Open MPI.
//
// This binds Open MPI's ABI (Open MPI 4.x, libmpi.so.40, Debian's libopenmpi3): in Open MPI an MPI handle is
// the address of an exported global object (MPI_COMM_WORLD is &ompi_mpi_comm_world, MPI_FLOAT is
// &ompi_mpi_float, MPI_SUM is &ompi_mpi_op_sum), so each handle is taken with dlsym; MPI_IN_PLACE is the
// pointer value 1 and MPI_THREAD_FUNNELED is 1. MPICH and Intel MPI use 32-bit integer handles instead and
// would need their own table. The library is loaded on first use only, so nothing changes for a process
// that never trains on several ranks, and a machine without Open MPI gets one clear line.
//
// The library is opened with RTLD_GLOBAL (as mpi4py does): Open MPI loads its transport components as
// plugins that resolve libmpi's symbols from the global namespace.
using System.Runtime.InteropServices;

namespace TinyLlama.Training.Distributed;

/// <summary>The MPI calls TinyLlama uses, over Open MPI's libmpi.so.40. Every method returns only on MPI_SUCCESS.</summary>
internal static unsafe class MpiNative
{
    /// <summary>The shared library loaded (Open MPI 4.x's soname).</summary>
    public const string LibraryName = "libmpi.so.40";

    /// <summary>MPI_THREAD_FUNNELED: only the thread that called MPI_Init_thread makes MPI calls.</summary>
    public const int ThreadFunneled = 1;

    private static readonly Lock Gate = new();
    private static Api? api;

    /// <summary>The exported functions and handles, loading the library on first use.</summary>
    /// <exception cref="DllNotFoundException">Open MPI's library is not installed (one line naming it and the package).</exception>
    public static Api Load()
    {
        lock (Gate)
        {
            return api ??= new Api(Open());
        }
    }

    private static IntPtr Open()
    {
        const int RtldNow = 2, RtldGlobal = 0x100;
        IntPtr handle = dlopen(LibraryName, RtldNow | RtldGlobal);
        if (handle == IntPtr.Zero)
            throw new DllNotFoundException($"MPI: {LibraryName} (Open MPI 4) could not be loaded ({Marshal.PtrToStringUTF8(dlerror()) ?? "not found"}); install Debian's openmpi-bin and libopenmpi-dev, and launch with mpirun");
        return handle;
    }

    [DllImport("libc.so.6")]
    private static extern IntPtr dlopen(string file, int mode);

    [DllImport("libc.so.6")]
    private static extern IntPtr dlerror();

    /// <summary>Ends this process at once with <paramref name="code"/> (no managed shutdown): the watchdog's last resort.</summary>
    [DllImport("libc.so.6", EntryPoint = "_exit")]
    public static extern void ExitNow(int code);

    /// <summary>Function pointers and handle addresses read from the loaded library.</summary>
    internal sealed class Api
    {
        public readonly IntPtr CommWorld, Float, Double, Byte, OpSum;
        private readonly delegate* unmanaged<int*, byte***, int, int*, int> initThread;
        private readonly delegate* unmanaged<int*, int> initialized, finalized;
        private readonly delegate* unmanaged<int> finalize;
        private readonly delegate* unmanaged<IntPtr, int*, int> commRank, commSize;
        private readonly delegate* unmanaged<void*, void*, int, IntPtr, IntPtr, IntPtr, int> allreduce;
        private readonly delegate* unmanaged<void*, void*, int, IntPtr, IntPtr, IntPtr, IntPtr*, int> iallreduce;
        private readonly delegate* unmanaged<IntPtr*, int*, void*, int> test;
        private readonly delegate* unmanaged<void*, int, IntPtr, void*, int, IntPtr, IntPtr, int> allgather;
        private readonly delegate* unmanaged<void*, int, IntPtr, int, IntPtr, int> bcast;
        private readonly delegate* unmanaged<IntPtr, int> barrier;
        private readonly delegate* unmanaged<IntPtr, int, int> abort;

        public Api(IntPtr lib)
        {
            IntPtr Get(string name) => NativeLibrary.TryGetExport(lib, name, out var p) ? p
                : throw new DllNotFoundException($"MPI: {LibraryName} has no symbol {name}: it is not Open MPI 4 (MPICH-style libraries are not supported)");
            CommWorld = Get("ompi_mpi_comm_world");
            Float = Get("ompi_mpi_float");
            Double = Get("ompi_mpi_double");
            Byte = Get("ompi_mpi_byte");
            OpSum = Get("ompi_mpi_op_sum");
            initThread = (delegate* unmanaged<int*, byte***, int, int*, int>)Get("MPI_Init_thread");
            initialized = (delegate* unmanaged<int*, int>)Get("MPI_Initialized");
            finalized = (delegate* unmanaged<int*, int>)Get("MPI_Finalized");
            finalize = (delegate* unmanaged<int>)Get("MPI_Finalize");
            commRank = (delegate* unmanaged<IntPtr, int*, int>)Get("MPI_Comm_rank");
            commSize = (delegate* unmanaged<IntPtr, int*, int>)Get("MPI_Comm_size");
            allreduce = (delegate* unmanaged<void*, void*, int, IntPtr, IntPtr, IntPtr, int>)Get("MPI_Allreduce");
            iallreduce = (delegate* unmanaged<void*, void*, int, IntPtr, IntPtr, IntPtr, IntPtr*, int>)Get("MPI_Iallreduce");
            test = (delegate* unmanaged<IntPtr*, int*, void*, int>)Get("MPI_Test");
            allgather = (delegate* unmanaged<void*, int, IntPtr, void*, int, IntPtr, IntPtr, int>)Get("MPI_Allgather");
            bcast = (delegate* unmanaged<void*, int, IntPtr, int, IntPtr, int>)Get("MPI_Bcast");
            barrier = (delegate* unmanaged<IntPtr, int>)Get("MPI_Barrier");
            abort = (delegate* unmanaged<IntPtr, int, int>)Get("MPI_Abort");
        }

        /// <summary>MPI_Init_thread(NULL, NULL, required, &amp;provided) unless already initialized; returns provided.</summary>
        public int InitThread(int required)
        {
            int flag, provided;
            Check(initialized(&flag), "MPI_Initialized");
            if (flag != 0) return required;
            Check(initThread(null, null, required, &provided), "MPI_Init_thread");
            return provided;
        }

        /// <summary>MPI_Finalize, once, when MPI was initialized and not finalized yet.</summary>
        public void FinalizeMpi()
        {
            int inited, done;
            Check(initialized(&inited), "MPI_Initialized");
            Check(finalized(&done), "MPI_Finalized");
            if (inited != 0 && done == 0) Check(finalize(), "MPI_Finalize");
        }

        public int Rank()
        {
            int r;
            Check(commRank(CommWorld, &r), "MPI_Comm_rank");
            return r;
        }

        public int Size()
        {
            int s;
            Check(commSize(CommWorld, &s), "MPI_Comm_size");
            return s;
        }

        /// <summary>In-place MPI_Allreduce(MPI_IN_PLACE, buffer, count, type, MPI_SUM, MPI_COMM_WORLD).</summary>
        public void AllReduceSum(void* buffer, int count, IntPtr type) =>
            Check(allreduce((void*)1, buffer, count, type, OpSum, CommWorld), "MPI_Allreduce");

        /// <summary>In-place MPI_Iallreduce (MPI 3): starts the sum and returns its request (an MPI_Request, a pointer in Open MPI).</summary>
        public IntPtr StartAllReduceSum(void* buffer, int count, IntPtr type)
        {
            IntPtr request;
            Check(iallreduce((void*)1, buffer, count, type, OpSum, CommWorld, &request), "MPI_Iallreduce");
            return request;
        }

        /// <summary>MPI_Test(&amp;request, &amp;flag, MPI_STATUS_IGNORE): progresses the request; true once it is complete (and freed).</summary>
        public bool Test(ref IntPtr request)
        {
            int flag;
            fixed (IntPtr* r = &request) Check(test(r, &flag, null), "MPI_Test");
            return flag != 0;
        }

        /// <summary>MPI_Allgather of <paramref name="count"/> elements per rank: rank r's block lands at r * count in recv.</summary>
        public void AllGather(void* send, void* recv, int count, IntPtr type) =>
            Check(allgather(send, count, type, recv, count, type, CommWorld), "MPI_Allgather");

        public void Broadcast(void* buffer, int count, IntPtr type, int root) =>
            Check(bcast(buffer, count, type, root, CommWorld), "MPI_Bcast");

        public void Barrier() => Check(barrier(CommWorld), "MPI_Barrier");

        /// <summary>MPI_Abort(MPI_COMM_WORLD, code): mpirun ends every rank; does not return in practice.</summary>
        public void Abort(int code) => abort(CommWorld, code);

        // With the default error handler (MPI_ERRORS_ARE_FATAL) a failing call aborts the job inside MPI; this
        // covers libraries configured otherwise.
        private static void Check(int rc, string call)
        {
            if (rc != 0) throw new InvalidOperationException($"MPI: {call} failed with error code {rc}");
        }
    }
}
