// Creation, dtypes, views without copies, printing, and the seeded generator.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TinyLlama.Tensors;

namespace TinyLlama.Tests.Tensors;

public class TensorBasicsTests
{
    // Buffers of weight-matrix size start on a 64-byte line (an AVX-512 load is one line) and stay there through a
    // compacting collection; each dtype's span and pinned pointer address the same zero-filled elements; small
    // buffers are plain arrays. The llama2.c loader reads straight into such buffers.
    [Theory]
    [InlineData(DType.F32, 4)]
    [InlineData(DType.F64, 8)]
    [InlineData(DType.F16, 2)]
    [InlineData(DType.BF16, 2)]
    [InlineData(DType.I32, 4)]
    [InlineData(DType.Q4, 1)]
    public unsafe void LargeCpuBuffersStartOnACacheLine(DType dtype, int size)
    {
        var storages = new List<CpuStorage>();
        for (int i = 0; i < 8; i++)
        {
            storages.Add(CpuStorage.Allocate(dtype, CpuStorage.AlignFromBytes / size + 3 * i));
            _ = new byte[1000 * (i + 1)]; // garbage between them, so a compacting collection has something to move
        }
        var small = CpuStorage.Allocate(dtype, 100);
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        foreach (var storage in storages)
        {
            using var pin = storage.Pin();
            Assert.Equal(0, (long)(nuint)pin.Pointer % CpuStorage.LineBytes);
            var bytes = dtype switch
            {
                DType.F32 => MemoryMarshal.AsBytes(storage.AsSpan<float>()),
                DType.F64 => MemoryMarshal.AsBytes(storage.AsSpan<double>()),
                DType.F16 => MemoryMarshal.AsBytes(storage.AsSpan<Half>()),
                DType.BF16 => MemoryMarshal.AsBytes(storage.AsSpan<BFloat16>()),
                DType.I32 => MemoryMarshal.AsBytes(storage.AsSpan<int>()),
                _ => storage.AsSpan<byte>(),
            };
            Assert.Equal((long)storage.Length * size, bytes.Length);
            Assert.True(Unsafe.AsPointer(ref MemoryMarshal.GetReference(bytes)) == pin.Pointer, "the span and the pinned pointer address the same first element");
            Assert.True(bytes.IndexOfAnyExcept((byte)0) < 0, "a new buffer is zero-filled");
            bytes[^1] = 7;
            bytes[0] = 9;
            Assert.Equal(9, ((byte*)pin.Pointer)[0]);
            Assert.Equal(7, ((byte*)pin.Pointer)[bytes.Length - 1]);
        }
        Assert.Equal(100, small.Length);
    }

    [Fact]
    public void ViewsShareStorageAndDoNotCopy()
    {
        var x = Tensor.Arange(24).Reshape(2, 3, 4);
        var t = x.Permute(2, 0, 1);
        Assert.Same(x.Storage, t.Storage);
        Assert.False(t.IsContiguous);
        Assert.Equal(new[] { 4, 2, 3 }, t.Shape);
        Assert.Equal(x.GetValue(1, 2, 3), t.GetValue(3, 1, 2));
        var s = x.Narrow(2, 1, 2);
        Assert.Same(x.Storage, s.Storage);
        Assert.Equal(new[] { 2, 3, 2 }, s.Shape);
        Assert.Equal(x.GetValue(1, 1, 2), s.GetValue(1, 1, 1));
        var e = Tensor.Arange(3).Unsqueeze(0).Expand(4, 3);
        Assert.Equal(0, e.Strides[0]);
        Assert.Equal(new double[] { 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2 }, e.ToArray<double>());
        Assert.Equal(new[] { 3 }, Tensor.Zeros([1, 3, 1]).Squeeze().Shape);
        Assert.Equal(x.GetValue(1, 2, 0), x[1][2].GetValue(0));
        var stepped = Tensor.Arange(10).Slice(0, 1, 9, 3);
        Assert.Equal(new double[] { 1, 4, 7 }, stepped.ToArray<double>());
    }

    [Fact]
    public void ViewOfNonContiguousFailsButReshapeCopies()
    {
        var x = Tensor.Arange(6).Reshape(2, 3).Transpose(0, 1);
        Assert.Throws<InvalidOperationException>(() => x.View(6));
        Assert.Equal(new double[] { 0, 3, 1, 4, 2, 5 }, x.Reshape(6).ToArray<double>());
    }

    [Fact]
    public void Bf16AndF16ConversionsRoundToNearestEven()
    {
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even gives 1.
        Assert.Equal(1.0f, BFloat16.FromSingle(1f + 1f / 256).ToSingle());
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even gives 1 + 2^-6.
        Assert.Equal(1f + 1f / 64, BFloat16.FromSingle(1f + 3f / 256).ToSingle());
        Assert.True(float.IsNaN(BFloat16.FromSingle(float.NaN).ToSingle()));
        var x = Tensor.FromArray(new float[] { 1.00390625f, -3.5f, 65504f });
        Assert.Equal(new float[] { 1f, -3.5f, 65536f }, x.To(DType.BF16).ToArray<float>());
        Assert.Equal(new float[] { 1.00390625f, -3.5f, 65504f }, x.To(DType.F16).ToArray<float>());
    }

    [Fact]
    public void CastGradientFlowsBackInTheSourceDtype()
    {
        var x = Tensor.FromArray(new float[] { 1, 2 }).RequiresGrad_();
        (x.To(DType.F64) * 3.0).Sum().Backward();
        Assert.Equal(DType.F32, x.Grad!.DType);
        Assert.Equal(new float[] { 3, 3 }, x.Grad.ToArray<float>());
    }

    [Fact]
    public void SeededGeneratorIsDeterministicAndWellDistributed()
    {
        var a = Tensor.RandN([10000], new Generator(123)).ToArray<float>();
        var b = Tensor.RandN([10000], new Generator(123)).ToArray<float>();
        Assert.Equal(a, b);
        double mean = a.Average(v => (double)v);
        double var = a.Average(v => (v - mean) * (v - mean));
        Assert.InRange(mean, -0.05, 0.05);
        Assert.InRange(var, 0.95, 1.05);
        // The first draws are fixed forever (same seed, same numbers on every machine): a change of
        // algorithm breaks saved experiments, so it must be deliberate.
        var g = new Generator(0);
        Assert.Equal(0x99EC5F36CB75F2B4UL, g.NextUInt64());
        var u = Tensor.Rand([1000], new Generator(5)).ToArray<float>();
        Assert.All(u, v => Assert.InRange(v, 0f, 1f));
    }

    [Fact]
    public void ToStringShowsValuesShapeDtypeAndDevice()
    {
        var x = Tensor.FromArray(new float[] { 1.5f, -2f, 0.25f, 3f }, [2, 2]);
        Assert.Equal("tensor([[ 1.5000, -2.0000],\n        [ 0.2500,  3.0000]], shape=[2, 2], dtype=float32, device=cpu)", x.ToString());
        var big = Tensor.Arange(2000).Reshape(2, 1000);
        var s = big.ToString();
        Assert.Contains("...", s);
        Assert.Contains("shape=[2, 1000]", s);
        Assert.True(s.Length < 300, s);
        Assert.Contains("requires_grad=True", Tensor.Zeros([1]).RequiresGrad_().ToString());
        Assert.Equal("tensor([1, 2], shape=[2], dtype=int32, device=cpu)", Tensor.FromArray(new[] { 1, 2 }).ToString());
    }

    [Fact]
    public void ItemAndCreationHelpers()
    {
        Assert.Equal(7.0, Tensor.Full([1, 1], 7).Item());
        Assert.Throws<InvalidOperationException>(() => Tensor.Zeros([2]).Item());
        Assert.Equal(new double[] { 2, 2.5, 3, 3.5 }, Tensor.Arange(2, 4, 0.5, DType.F64).ToArray<double>());
        Assert.Equal(new double[] { 1, 1 }, Tensor.Ones([2], DType.BF16).ToArray<double>());
        Assert.Throws<ArgumentException>(() => Tensor.FromArray(new float[3], [2, 2]));
    }
}
