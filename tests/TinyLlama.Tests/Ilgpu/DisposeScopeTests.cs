// Deterministic release of device memory (Tensor.NewDisposeScope, after TorchSharp's): on ILGPU's CPU
// accelerator, whose BufferPool counts the bytes leased to live storages (InUseBytes), a scope gives back
// exactly what was created in it, except what was moved out or created untracked; and the trainer, which
// runs each step in a scope, keeps device memory flat over many steps with no forced garbage collection.
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Training.Trainer;
using TinyLlama.Tests.Training;
using static TinyLlama.Tests.Ilgpu.IlgpuTestUtil;

namespace TinyLlama.Tests.Ilgpu;

[Collection("ilgpu")] // the pool's counters are shared by every test on the device
public class DisposeScopeTests
{
    private static long InUse => Backend.Pool.Statistics.InUseBytes;

    // Device storages that earlier code dropped without disposing are returned by their finalizers at some
    // later collection, which would move InUseBytes in the middle of a measurement: settle them first.
    private static void SettleFinalizers()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
    }

    [Fact]
    public void ScopeReleasesWhatWasCreatedInItExceptWhatMovedOut()
    {
        var a = Tensor.RandN([64, 64], new Generator(1)).To(Dev);   // outside any scope: untouched
        double sumA = a.To(Device.Cpu).ToArray<float>().Sum(v => (double)v);
        SettleFinalizers();
        long before = InUse;
        Tensor kept, untracked, inner;
        using (var scope = Tensor.NewDisposeScope())
        {
            var b = a * 2;                                // (64, 64) f32 = 16 KiB
            var c = (b + a).Sum();
            Assert.True(scope.Count >= 2, $"the scope recorded {scope.Count} storages");
            kept = scope.MoveToOuter(b.Detach() * 3);
            using (DisposeScope.Untracked()) untracked = a + a;   // tensor + tensor: no scalar temporary left to the GC
            using (var nested = Tensor.NewDisposeScope())
            {
                inner = nested.MoveToOuter(a - 1);        // into the outer scope, which then releases it
                var scratch = a * a;
            }
            Assert.True(InUse > before);
            Assert.True(Math.Abs(c.Item() - 3 * sumA) <= 1e-3, $"sum(3a) = {c.Item()}, expected {3 * sumA}");
        }
        // Only kept and untracked still hold memory: two buffers of the size class of 16 KiB.
        Assert.Equal(before + 2 * TinyLlama.Backends.Ilgpu.BufferPool.SizeClass(64 * 64 * 4), InUse);
        Assert.Equal((a * 6).To(Device.Cpu).ToArray<float>(), kept.To(Device.Cpu).ToArray<float>());
        Assert.Equal((a * 2).To(Device.Cpu).ToArray<float>(), untracked.To(Device.Cpu).ToArray<float>());
        // A tensor whose storage the scope released says so instead of reading freed memory.
        var e = Assert.Throws<ObjectDisposedException>(() => inner.To(Device.Cpu).ToArray<float>());
        Assert.Contains("released", e.Message);
        Assert.Null(DisposeScope.Current);
    }

    [Fact]
    public void ScopesCloseInnermostFirstAndIgnoreCpuTensors()
    {
        using (var scope = Tensor.NewDisposeScope())
        {
            _ = Tensor.Ones([1000]) * 2;                  // CPU memory belongs to the GC: not recorded
            Assert.Equal(0, scope.Count);
            var inner = Tensor.NewDisposeScope();
            Assert.Throws<InvalidOperationException>(() => scope.Dispose());
            inner.Dispose();
        }
        Assert.Null(DisposeScope.Current);
    }

    [Fact]
    public void TrainingStepsKeepDeviceMemoryFlatWithoutGarbageCollection()
    {
        var examples = SftTrainerTests.SyntheticExamples(12, 37, 3);
        var model = new LlamaForCausalLM(Tests.Model.LlamaTests.Tiny(), new Generator(11), DType.F32, Dev);
        var loader = new TinyLlama.Training.Data.SftDataLoader(examples, 3, shuffle: true, seed: 5, padId: 0, maxLength: 32);
        const int steps = 24;
        var trainer = new SftTrainer(model, loader, new SftOptions { Steps = steps, Lr = 1e-2, GradClip = 1.0, GradAccum = 2 });
        SettleFinalizers();   // before the steps only: garbage of earlier tests and of the set-up is returned now
        int collections = GC.CollectionCount(0);
        var inUse = new long[steps];
        for (int s = 0; s < steps; s++)
        {
            trainer.TrainStep();
            inUse[s] = InUse;
        }
        // After the first step (which creates the AdamW moments and the RoPE tables), every step ends holding
        // exactly the same device memory: the parameters, the moments and the tables; no leases wait on a finalizer.
        for (int s = 1; s < steps; s++)
            Assert.True(inUse[s] == inUse[1], $"device memory in use after step {s + 1}: {inUse[s]} bytes, after step 2: {inUse[1]} (GCs meanwhile: {GC.CollectionCount(0) - collections})");
        foreach (var p in trainer.Trainable) Assert.Null(p.Param.Grad);
    }
}
