// The CPU backend: the definition of every op, made fast with SIMD (System.Numerics.Tensors'
// TensorPrimitives, Vector256/512) and Parallel.For over rows. This file holds allocation, transfers,
// copies and fills; each op family has its own CpuBackend.*.cs file.
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

/// <summary>The CPU backend (a singleton: host memory is one device).</summary>
public sealed partial class CpuBackend : IBackend
{
    /// <summary>The one instance.</summary>
    public static CpuBackend Instance { get; } = new();

    private CpuBackend() { }

    public Device Device => Device.Cpu;

    public Storage Allocate(DType dtype, int length) => CpuStorage.Allocate(dtype, length);

    public void Upload<T>(ReadOnlySpan<T> source, Storage destination) where T : unmanaged =>
        source.CopyTo(Host(destination).AsSpan<T>());

    public void Download<T>(Tensor source, Span<T> destination) where T : unmanaged
    {
        if (!source.IsContiguous) throw new ArgumentException("Download needs a contiguous tensor");
        Host(source.Storage).AsSpan<T>().Slice(source.Offset, source.Numel).CopyTo(destination);
    }

    internal static CpuStorage Host(Storage s) =>
        s as CpuStorage ?? throw new ArgumentException($"the CPU backend cannot read a tensor on {s.Backend.Device}; move it with To(Device.Cpu)");

    internal static CpuStorage Host(Tensor t) => Host(t.Storage);

    /// <summary>The elements of a contiguous tensor as a span.</summary>
    internal static Span<T> Span<T>(Tensor t) where T : unmanaged
    {
        if (!t.IsContiguous) throw new ArgumentException($"expected a contiguous tensor, got strides {Shapes.Format(t.strides)} for shape {Shapes.Format(t.shape)}");
        return Host(t).AsSpan<T>().Slice(t.Offset, t.Numel);
    }

    internal static void CheckFloat(Tensor t, string op)
    {
        if (t.DType is not (DType.F32 or DType.F64))
            throw new NotSupportedException($"{op}: the CPU backend computes in f32 or f64, got {t.DType.Name()}");
    }

    // ---------------- copy and fill ----------------

    public void Copy(Tensor source, Tensor destination)
    {
        if (!source.shape.AsSpan().SequenceEqual(destination.shape))
            throw new ArgumentException($"copy: shape {Shapes.Format(source.shape)} into {Shapes.Format(destination.shape)}");
        var plan = new RowPlan(destination.shape, [source.strides, destination.strides], [source.Offset, destination.Offset]);
        var s = Host(source);
        var d = Host(destination);
        switch (source.DType)
        {
            case DType.F32: CopyTo<float>(s, d, plan); break;
            case DType.F64: CopyTo<double>(s, d, plan); break;
            case DType.F16: CopyTo<Half>(s, d, plan); break;
            case DType.BF16: CopyTo<BFloat16>(s, d, plan); break;
            case DType.I32: CopyTo<int>(s, d, plan); break;
            case DType.Q4 or DType.Q8_0 or DType.Q4_K or DType.Q6_K:
                if (s.DType != d.DType) throw new NotSupportedException($"cannot convert {s.DType.Name()} to {d.DType.Name()} by copying; dequantize instead");
                CopyTo<byte>(s, d, plan);
                break;
        }
    }

    private static void CopyTo<TS>(CpuStorage s, CpuStorage d, RowPlan plan) where TS : unmanaged
    {
        switch (d.DType)
        {
            case DType.F32: CopyTyped<TS, float>(s, d, plan); break;
            case DType.F64: CopyTyped<TS, double>(s, d, plan); break;
            case DType.F16: CopyTyped<TS, Half>(s, d, plan); break;
            case DType.BF16: CopyTyped<TS, BFloat16>(s, d, plan); break;
            case DType.I32: CopyTyped<TS, int>(s, d, plan); break;
            case DType.Q4 or DType.Q8_0 or DType.Q4_K or DType.Q6_K:
                if (s.DType != d.DType) throw new NotSupportedException($"cannot convert {s.DType.Name()} to {d.DType.Name()} by copying; quantize or dequantize instead");
                CopyTyped<TS, byte>(s, d, plan);
                break;
        }
    }

    private static void CopyTyped<TS, TD>(CpuStorage s, CpuStorage d, RowPlan plan) where TS : unmanaged where TD : unmanaged
    {
        int ss = plan.InnerStrides[0], ds = plan.InnerStrides[1];
        plan.Run(item =>
        {
            Span<int> o = stackalloc int[2];
            int n = plan.Locate(item, o);
            var src = s.AsSpan<TS>();
            var dst = d.AsSpan<TD>();
            if (ss == 1 && ds == 1)
            {
                if (typeof(TS) == typeof(TD))
                {
                    System.Runtime.InteropServices.MemoryMarshal.Cast<TS, TD>(src.Slice(o[0], n)).CopyTo(dst.Slice(o[1], n));
                    return;
                }
                if (typeof(TS) == typeof(float) && typeof(TD) == typeof(Half))
                {
                    System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(
                        System.Runtime.InteropServices.MemoryMarshal.Cast<TS, float>(src.Slice(o[0], n)),
                        System.Runtime.InteropServices.MemoryMarshal.Cast<TD, Half>(dst.Slice(o[1], n)));
                    return;
                }
                if (typeof(TS) == typeof(Half) && typeof(TD) == typeof(float))
                {
                    System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(
                        System.Runtime.InteropServices.MemoryMarshal.Cast<TS, Half>(src.Slice(o[0], n)),
                        System.Runtime.InteropServices.MemoryMarshal.Cast<TD, float>(dst.Slice(o[1], n)));
                    return;
                }
            }
            int si = o[0], di = o[1];
            for (int i = 0; i < n; i++, si += ss, di += ds)
                dst[di] = Convert<TS, TD>(src[si]);
        });
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    private static TD Convert<TS, TD>(TS v) where TS : unmanaged where TD : unmanaged
    {
        if (typeof(TS) == typeof(TD)) return System.Runtime.CompilerServices.Unsafe.As<TS, TD>(ref v);
        // f32 -> bf16/f16 rounds once from the float itself; everything else goes through double exactly.
        if (typeof(TS) == typeof(float) && typeof(TD) == typeof(BFloat16))
        {
            var b = BFloat16.FromSingle(System.Runtime.CompilerServices.Unsafe.As<TS, float>(ref v));
            return System.Runtime.CompilerServices.Unsafe.As<BFloat16, TD>(ref b);
        }
        if (typeof(TD) == typeof(int))
        {
            double x = Scalar.ToDouble(v);
            if (double.IsNaN(x) || x < int.MinValue || x > int.MaxValue)
                throw new OverflowException($"cannot convert {x} to int32");
            int i = (int)x; // truncates toward zero, as PyTorch's .to(int32)
            return System.Runtime.CompilerServices.Unsafe.As<int, TD>(ref i);
        }
        return Scalar.FromDouble<TD>(Scalar.ToDouble(v));
    }

    public void Fill(Tensor destination, double value)
    {
        var plan = new RowPlan(destination.shape, [destination.strides], [destination.Offset]);
        var d = Host(destination);
        switch (destination.DType)
        {
            case DType.F32: FillTyped(d, plan, (float)value); break;
            case DType.F64: FillTyped(d, plan, value); break;
            case DType.F16: FillTyped(d, plan, (Half)value); break;
            case DType.BF16: FillTyped(d, plan, BFloat16.FromSingle((float)value)); break;
            case DType.I32: FillTyped(d, plan, checked((int)value)); break;
            case DType.Q4 or DType.Q8_0 or DType.Q4_K or DType.Q6_K: FillTyped(d, plan, checked((byte)value)); break;
        }
    }

    private static void FillTyped<T>(CpuStorage d, RowPlan plan, T value) where T : unmanaged
    {
        int ds = plan.InnerStrides[0];
        plan.Run(item =>
        {
            Span<int> o = stackalloc int[1];
            int n = plan.Locate(item, o);
            var dst = d.AsSpan<T>();
            if (ds == 1) dst.Slice(o[0], n).Fill(value);
            else for (int i = 0, di = o[0]; i < n; i++, di += ds) dst[di] = value;
        });
    }
}
