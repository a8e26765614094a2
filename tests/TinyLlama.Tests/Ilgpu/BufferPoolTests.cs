// The ILGPU backend's caching allocator: size classes, reuse of explicitly released and of finalized
// storages, and the steady state of a training loop (after a warm-up step, repeating the same step
// allocates no new device memory).
using TinyLlama.Autograd;
using TinyLlama.Backends.Ilgpu;
using TinyLlama.Tensors;
using static TinyLlama.Tests.Ilgpu.IlgpuTestUtil;

namespace TinyLlama.Tests.Ilgpu;

[Collection("ilgpu")]
public class BufferPoolTests
{
    [Fact]
    public void SizeClassesRoundUpByAtMostAQuarter()
    {
        Assert.Equal(256, BufferPool.SizeClass(1));
        Assert.Equal(256, BufferPool.SizeClass(256));
        Assert.Equal(512, BufferPool.SizeClass(257));
        Assert.Equal(1024, BufferPool.SizeClass(900));
        Assert.Equal(1024, BufferPool.SizeClass(1000));
        Assert.Equal(1280, BufferPool.SizeClass(1025));
        for (long bytes = 1; bytes < 10_000_000; bytes = bytes * 3 / 2 + 1)
        {
            long size = BufferPool.SizeClass(bytes);
            Assert.True(size >= bytes && size % 256 == 0, $"{bytes} -> {size}");
            Assert.True(bytes <= 256 || size <= bytes * 1.25 + 256, $"{bytes} -> {size}: too much slack");
        }
    }

    private static void CollectGarbage()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
    }

    [Fact]
    public void ReleasedAndFinalizedStoragesAreReused()
    {
        var pool = Backend.Pool;
        // A size class no other test uses (~3.3 MB).
        const int length = 830_001;
        var s = (IlgpuStorage)Backend.Allocate(DType.F32, length);
        long misses = pool.Statistics.Misses, hits = pool.Statistics.Hits;
        s.Dispose();
        var again = (IlgpuStorage)Backend.Allocate(DType.F32, length - 1000);   // same class
        Assert.Equal(misses, pool.Statistics.Misses);
        Assert.Equal(hits + 1, pool.Statistics.Hits);
        Assert.Equal(0.0, Tensor.FromStorage(again, [5]).Sum().Item());           // reused memory comes back zeroed
        again.Dispose();

        AllocateAndDrop(length);
        CollectGarbage();                                                          // the finalizer queues the lease
        long before = pool.Statistics.Misses;
        var third = Backend.Allocate(DType.F32, length);
        Assert.Equal(before, pool.Statistics.Misses);
        GC.KeepAlive(third);
    }

    private static void AllocateAndDrop(int length) => Backend.Allocate(DType.F32, length);

    [Fact]
    public void RepeatedTrainingStepsAllocateNoNewDeviceMemory()
    {
        var pool = Backend.Pool;
        var w1 = (RandN(90, DType.F32, 6, 10) * 0.3).To(Dev).Detach().RequiresGrad_();
        var w2 = (RandN(91, DType.F32, 10, 4) * 0.3).To(Dev).Detach().RequiresGrad_();
        var x = RandN(92, DType.F32, 9, 6).To(Dev);
        var targets = Tensor.FromArray(new[] { 0, 1, 2, 3, 0, 1, 2, 3, 0 }, Dev);
        var moments = new[] { w1, w2 }.Select(w => (M: Tensor.Zeros(w.Shape, DType.F32, Dev), V: Tensor.Zeros(w.Shape, DType.F32, Dev))).ToArray();
        int step = 0;
        double Step()
        {
            step++;
            var loss = Functional.CrossEntropy(x.MatMul(w1).Gelu().MatMul(w2), targets);
            loss.Backward();
            using (GradMode.NoGrad())
            {
                var ws = new[] { w1, w2 };
                for (int i = 0; i < 2; i++)
                {
                    Backend.AdamWStep(ws[i], ws[i].Grad!, moments[i].M, moments[i].V, 0.01, 0.9, 0.999, 1e-8, 0.01, step);
                    ws[i].ZeroGrad();
                }
            }
            double value = loss.Item();
            CollectGarbage();   // end of step: dead temporaries are finalized and their buffers queued for reuse
            return value;
        }

        Step();   // warm-up: fills the pool
        Step();
        var warm = pool.Statistics;
        var losses = new[] { Step(), Step(), Step() };
        var after = pool.Statistics;
        Assert.Equal(warm.Misses, after.Misses);
        Assert.Equal(warm.ReservedBytes, after.ReservedBytes);
        Assert.True(after.Hits > warm.Hits, "the steps should have been served from the cache");
        Assert.True(losses[2] < losses[0], $"training should make progress: {string.Join(", ", losses)}");
    }
}
