// A caching allocator for device memory, so a training step reuses the buffers of the previous step
// instead of allocating (cudaMalloc synchronises the device and costs far more than a kernel launch).
//
// Design:
//  - Requests are rounded up to a size class: 256 bytes, then four classes per power of two
//    (1, 1.25, 1.5, 1.75 x 2^k), so at most 25% of a buffer is slack. Free buffers wait in one stack per
//    class; a request takes the most recently freed buffer of its class (a hit) or allocates (a miss).
//  - The pool owns every buffer it ever allocated (the `owned` set), and storages only lease them. So a
//    storage's finalizer never touches the accelerator and never races ILGPU's own finalizers: it only
//    enqueues its lease on a concurrent queue, which the next Rent drains into the free stacks.
//  - Reuse is safe without synchronisation because all work runs in order on the accelerator's one
//    stream: a kernel that reads a buffer was enqueued before the buffer could be freed, so it runs
//    before any kernel that writes the buffer's next tenant.
//  - On an allocation failure the pool collects garbage (running pending finalizers), frees every cached
//    buffer and tries once more.
using System.Collections.Concurrent;
using ILGPU;
using ILGPU.Runtime;

namespace TinyLlama.Backends.Ilgpu;

/// <summary>Counters of a <see cref="BufferPool"/>.</summary>
/// <param name="ReservedBytes">Device memory the pool holds (leased plus cached).</param>
/// <param name="CachedBytes">Device memory held in free lists, ready for reuse.</param>
/// <param name="InUseBytes">Device memory leased to live storages (or waiting for their finalizer to return it).</param>
/// <param name="Buffers">Number of device buffers the pool holds.</param>
/// <param name="Hits">Requests served from the free lists.</param>
/// <param name="Misses">Requests that allocated new device memory.</param>
public readonly record struct PoolStatistics(long ReservedBytes, long CachedBytes, long InUseBytes, int Buffers, long Hits, long Misses);

/// <summary>One device buffer owned by a pool, leased to one storage at a time.</summary>
internal sealed class PooledBuffer(MemoryBuffer1D<byte, Stride1D.Dense> memory, long sizeClass)
{
    public readonly MemoryBuffer1D<byte, Stride1D.Dense> Memory = memory;
    public readonly long SizeClass = sizeClass;
}

/// <summary>Size-class caching allocator over one accelerator.</summary>
public sealed class BufferPool
{
    private readonly Accelerator accelerator;
    private readonly object gate = new();
    private readonly Dictionary<long, Stack<PooledBuffer>> free = new();
    private readonly HashSet<PooledBuffer> owned = new();
    private readonly ConcurrentQueue<PooledBuffer> returned = new();
    private long reservedBytes, cachedBytes, hits, misses;

    internal BufferPool(Accelerator accelerator) => this.accelerator = accelerator;

    /// <summary>The size class (bytes actually allocated) for a request of <paramref name="bytes"/>.</summary>
    public static long SizeClass(long bytes)
    {
        if (bytes <= 256) return 256;
        long power = 256;
        while (power * 2 < bytes) power *= 2;          // power < bytes <= 2 power
        long step = power / 4;
        long size = power + (bytes - power + step - 1) / step * step;
        return (size + 255) / 256 * 256;
    }

    /// <summary>A buffer of at least <paramref name="bytes"/> bytes (contents undefined).</summary>
    internal PooledBuffer Rent(long bytes)
    {
        long size = SizeClass(bytes);
        lock (gate)
        {
            DrainReturned();
            if (TryTakeFree(size, out var buffer)) { hits++; return buffer; }
            misses++;
            return Allocate(size);
        }
    }

    /// <summary>Gives a buffer back for reuse (explicit release, on the caller's thread).</summary>
    internal void Return(PooledBuffer buffer)
    {
        lock (gate) PushFree(buffer);
    }

    /// <summary>Gives a buffer back from a finalizer: only enqueued, drained by the next <see cref="Rent"/>.</summary>
    internal void ReturnFromFinalizer(PooledBuffer buffer) => returned.Enqueue(buffer);

    /// <summary>Frees every cached buffer's device memory (leased buffers are untouched).</summary>
    public void Trim()
    {
        lock (gate)
        {
            DrainReturned();
            foreach (var stack in free.Values)
                while (stack.Count > 0)
                {
                    var b = stack.Pop();
                    owned.Remove(b);
                    reservedBytes -= b.SizeClass;
                    cachedBytes -= b.SizeClass;
                    b.Memory.Dispose();
                }
        }
    }

    /// <summary>Current counters.</summary>
    public PoolStatistics Statistics
    {
        get
        {
            lock (gate)
            {
                DrainReturned();
                return new PoolStatistics(reservedBytes, cachedBytes, reservedBytes - cachedBytes, owned.Count, hits, misses);
            }
        }
    }

    private PooledBuffer Allocate(long size)
    {
        MemoryBuffer1D<byte, Stride1D.Dense> memory;
        try
        {
            memory = accelerator.Allocate1D<byte>(size);
        }
        catch (Exception e) when (e is OutOfMemoryException or AcceleratorException)
        {
            // Storages that are garbage but not yet finalized still hold leases: collect them, then
            // release the cache, and try once more.
            Monitor.Exit(gate);
            try
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }
            finally
            {
                Monitor.Enter(gate);
            }
            DrainReturned();
            if (TryTakeFree(size, out var recycled)) return recycled;
            Trim();
            memory = accelerator.Allocate1D<byte>(size);
        }
        var buffer = new PooledBuffer(memory, size);
        owned.Add(buffer);
        reservedBytes += size;
        return buffer;
    }

    private bool TryTakeFree(long size, out PooledBuffer buffer)
    {
        if (free.TryGetValue(size, out var stack) && stack.Count > 0)
        {
            buffer = stack.Pop();
            cachedBytes -= size;
            return true;
        }
        buffer = null!;
        return false;
    }

    private void PushFree(PooledBuffer buffer)
    {
        if (!free.TryGetValue(buffer.SizeClass, out var stack)) free[buffer.SizeClass] = stack = new Stack<PooledBuffer>();
        stack.Push(buffer);
        cachedBytes += buffer.SizeClass;
    }

    private void DrainReturned()
    {
        while (returned.TryDequeue(out var buffer)) PushFree(buffer);
    }
}
