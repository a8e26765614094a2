// Elementwise ops on the CPU: a RowPlan walks the operands row by row; contiguous rows (stride 1) and
// broadcast scalars (stride 0) go to TensorPrimitives' SIMD kernels, anything else to a scalar loop.
using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

public sealed partial class CpuBackend
{
    public void Unary(UnaryOp op, Tensor x, Tensor y, double alpha = 0, double beta = 0)
    {
        CheckFloat(x, op.ToString());
        var plan = new RowPlan(y.shape, [x.strides, y.strides], [x.Offset, y.Offset]);
        if (x.DType == DType.F32) UnaryTyped<float>(op, Host(x), Host(y), plan, (float)alpha, (float)beta);
        else UnaryTyped<double>(op, Host(x), Host(y), plan, alpha, beta);
    }

    private static void UnaryTyped<T>(UnaryOp op, CpuStorage xs, CpuStorage ys, RowPlan plan, T alpha, T beta)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int sx = plan.InnerStrides[0], sy = plan.InnerStrides[1];
        plan.Run(item =>
        {
            Span<int> o = stackalloc int[2];
            int n = plan.Locate(item, o);
            var x = xs.AsSpan<T>();
            var y = ys.AsSpan<T>();
            if (sx == 1 && sy == 1 && UnaryContiguous(op, x.Slice(o[0], n), y.Slice(o[1], n), alpha, beta)) return;
            for (int i = 0, xi = o[0], yi = o[1]; i < n; i++, xi += sx, yi += sy)
                y[yi] = ApplyUnary(op, x[xi], alpha, beta);
        });
    }

    /// <summary>SIMD path for a contiguous row; false when the op has none (or x and y overlap unsafely).</summary>
    private static bool UnaryContiguous<T>(UnaryOp op, Span<T> x, Span<T> y, T alpha, T beta)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        bool sameStart = Unsafe.AreSame(ref x[0], ref y[0]);
        switch (op)
        {
            case UnaryOp.Neg: TensorPrimitives.Negate<T>(x, y); return true;
            case UnaryOp.Exp: TensorPrimitives.Exp<T>(x, y); return true;
            case UnaryOp.Log: TensorPrimitives.Log<T>(x, y); return true;
            case UnaryOp.Sqrt: TensorPrimitives.Sqrt<T>(x, y); return true;
            case UnaryOp.Abs: TensorPrimitives.Abs<T>(x, y); return true;
            case UnaryOp.Sigmoid: TensorPrimitives.Sigmoid<T>(x, y); return true;
            case UnaryOp.Tanh: TensorPrimitives.Tanh<T>(x, y); return true;
            case UnaryOp.Square: TensorPrimitives.Multiply<T>(x, x, y); return true;
            case UnaryOp.Reciprocal: TensorPrimitives.Reciprocal<T>(x, y); return true;
            case UnaryOp.Relu: TensorPrimitives.Max<T>(x, T.Zero, y); return true;
            case UnaryOp.Clamp: TensorPrimitives.Max<T>(x, alpha, y); TensorPrimitives.Min<T>(y, beta, y); return true;
            case UnaryOp.Silu when !sameStart && !x.Overlaps(y):
                TensorPrimitives.Sigmoid<T>(x, y);
                TensorPrimitives.Multiply<T>(x, y, y);
                return true;
            default: return false;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static T ApplyUnary<T>(UnaryOp op, T x, T alpha, T beta) where T : unmanaged, IFloatingPointIeee754<T>
    {
        switch (op)
        {
            case UnaryOp.Neg: return -x;
            case UnaryOp.Exp: return T.Exp(x);
            case UnaryOp.Log: return T.Log(x);
            case UnaryOp.Sqrt: return T.Sqrt(x);
            case UnaryOp.Rsqrt: return T.One / T.Sqrt(x);
            case UnaryOp.Abs: return T.Abs(x);
            case UnaryOp.Sign: return T.IsNaN(x) ? x : T.CreateTruncating(T.Sign(x));
            case UnaryOp.Sigmoid: return T.One / (T.One + T.Exp(-x));
            case UnaryOp.Tanh: return T.Tanh(x);
            case UnaryOp.Relu: return x > T.Zero ? x : T.Zero;
            case UnaryOp.Square: return x * x;
            case UnaryOp.Reciprocal: return T.One / x;
            case UnaryOp.Silu: return x / (T.One + T.Exp(-x));
            case UnaryOp.SiluGrad:
            {
                T s = T.One / (T.One + T.Exp(-x));
                return s * (T.One + x * (T.One - s));
            }
            case UnaryOp.Gelu:
            {
                double d = double.CreateTruncating(x);
                return T.CreateTruncating(0.5 * d * (1.0 + Scalar.Erf(d * 0.7071067811865476)));
            }
            case UnaryOp.GeluGrad:
            {
                // d/dx [x Phi(x)] = Phi(x) + x phi(x)
                double d = double.CreateTruncating(x);
                double cdf = 0.5 * (1.0 + Scalar.Erf(d * 0.7071067811865476));
                double pdf = Math.Exp(-0.5 * d * d) * 0.3989422804014327;
                return T.CreateTruncating(cdf + d * pdf);
            }
            case UnaryOp.Clamp: return T.Min(T.Max(x, alpha), beta);
            default: throw new NotSupportedException(op.ToString());
        }
    }

    public void Binary(BinaryOp op, Tensor a, Tensor b, Tensor y)
    {
        CheckFloat(a, op.ToString());
        if (a.DType != b.DType || a.DType != y.DType)
            throw new ArgumentException($"{op}: dtypes {a.DType.Name()}, {b.DType.Name()} -> {y.DType.Name()} differ");
        var plan = new RowPlan(y.shape, [a.strides, b.strides, y.strides], [a.Offset, b.Offset, y.Offset]);
        if (a.DType == DType.F32) BinaryTyped<float>(op, Host(a), Host(b), Host(y), plan);
        else BinaryTyped<double>(op, Host(a), Host(b), Host(y), plan);
    }

    private static void BinaryTyped<T>(BinaryOp op, CpuStorage asg, CpuStorage bsg, CpuStorage ysg, RowPlan plan)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int sa = plan.InnerStrides[0], sb = plan.InnerStrides[1], sy = plan.InnerStrides[2];
        plan.Run(item =>
        {
            Span<int> o = stackalloc int[3];
            int n = plan.Locate(item, o);
            var a = asg.AsSpan<T>();
            var b = bsg.AsSpan<T>();
            var y = ysg.AsSpan<T>();
            if (sy == 1 && BinaryFast(op, a, o[0], sa, b, o[1], sb, y.Slice(o[2], n))) return;
            for (int i = 0, ai = o[0], bi = o[1], yi = o[2]; i < n; i++, ai += sa, bi += sb, yi += sy)
                y[yi] = ApplyBinary(op, a[ai], b[bi]);
        });
    }

    /// <summary>SIMD paths: both rows contiguous, or one a broadcast scalar (stride 0).</summary>
    private static bool BinaryFast<T>(BinaryOp op, Span<T> a, int ao, int sa, Span<T> b, int bo, int sb, Span<T> y)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int n = y.Length;
        if (sa == 1 && sb == 1)
        {
            ReadOnlySpan<T> x = a.Slice(ao, n), z = b.Slice(bo, n);
            switch (op)
            {
                case BinaryOp.Add: TensorPrimitives.Add(x, z, y); return true;
                case BinaryOp.Sub: TensorPrimitives.Subtract(x, z, y); return true;
                case BinaryOp.Mul: TensorPrimitives.Multiply(x, z, y); return true;
                case BinaryOp.Div: TensorPrimitives.Divide(x, z, y); return true;
                case BinaryOp.Maximum: TensorPrimitives.Max(x, z, y); return true;
                case BinaryOp.Minimum: TensorPrimitives.Min(x, z, y); return true;
            }
        }
        else if (sa == 1 && sb == 0)
        {
            ReadOnlySpan<T> x = a.Slice(ao, n);
            T s = b[bo];
            switch (op)
            {
                case BinaryOp.Add: TensorPrimitives.Add(x, s, y); return true;
                case BinaryOp.Sub: TensorPrimitives.Subtract(x, s, y); return true;
                case BinaryOp.Mul: TensorPrimitives.Multiply(x, s, y); return true;
                case BinaryOp.Div: TensorPrimitives.Divide(x, s, y); return true;
                case BinaryOp.Maximum: TensorPrimitives.Max(x, s, y); return true;
                case BinaryOp.Minimum: TensorPrimitives.Min(x, s, y); return true;
            }
        }
        else if (sa == 0 && sb == 1)
        {
            T s = a[ao];
            ReadOnlySpan<T> z = b.Slice(bo, n);
            switch (op)
            {
                case BinaryOp.Add: TensorPrimitives.Add(z, s, y); return true;
                case BinaryOp.Sub: TensorPrimitives.Subtract(s, z, y); return true;
                case BinaryOp.Mul: TensorPrimitives.Multiply(z, s, y); return true;
                case BinaryOp.Div: TensorPrimitives.Divide(s, z, y); return true;
                case BinaryOp.Maximum: TensorPrimitives.Max(z, s, y); return true;
                case BinaryOp.Minimum: TensorPrimitives.Min(z, s, y); return true;
            }
        }
        return false;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static T ApplyBinary<T>(BinaryOp op, T a, T b) where T : unmanaged, IFloatingPointIeee754<T> => op switch
    {
        BinaryOp.Add => a + b,
        BinaryOp.Sub => a - b,
        BinaryOp.Mul => a * b,
        BinaryOp.Div => a / b,
        BinaryOp.Pow => T.Pow(a, b),
        BinaryOp.Maximum => T.IsNaN(a) || T.IsNaN(b) ? T.NaN : T.Max(a, b),
        BinaryOp.Minimum => T.IsNaN(a) || T.IsNaN(b) ? T.NaN : T.Min(a, b),
        BinaryOp.Eq => a == b ? T.One : T.Zero,
        BinaryOp.Ne => a != b ? T.One : T.Zero,
        BinaryOp.Lt => a < b ? T.One : T.Zero,
        BinaryOp.Le => a <= b ? T.One : T.Zero,
        BinaryOp.Gt => a > b ? T.One : T.Zero,
        BinaryOp.Ge => a >= b ? T.One : T.Zero,
        _ => throw new NotSupportedException(op.ToString()),
    };

    public void Where(Tensor cond, Tensor a, Tensor b, Tensor y)
    {
        CheckFloat(a, "where");
        var plan = new RowPlan(y.shape, [cond.strides, a.strides, b.strides, y.strides], [cond.Offset, a.Offset, b.Offset, y.Offset]);
        switch (cond.DType)
        {
            case DType.F32: WhereTyped<float>(cond, a, b, y, plan); break;
            case DType.F64: WhereTyped<double>(cond, a, b, y, plan); break;
            case DType.I32: WhereTyped<int>(cond, a, b, y, plan); break;
            default: throw new NotSupportedException($"where: condition of dtype {cond.DType.Name()}");
        }
    }

    private static void WhereTyped<TC>(Tensor cond, Tensor a, Tensor b, Tensor y, RowPlan plan) where TC : unmanaged
    {
        if (a.DType == DType.F32) WhereTyped<TC, float>(Host(cond), Host(a), Host(b), Host(y), plan);
        else WhereTyped<TC, double>(Host(cond), Host(a), Host(b), Host(y), plan);
    }

    private static void WhereTyped<TC, T>(CpuStorage cs, CpuStorage asg, CpuStorage bsg, CpuStorage ysg, RowPlan plan)
        where TC : unmanaged where T : unmanaged
    {
        var st = plan.InnerStrides;
        plan.Run(item =>
        {
            Span<int> o = stackalloc int[4];
            int n = plan.Locate(item, o);
            var c = cs.AsSpan<TC>();
            var a = asg.AsSpan<T>();
            var b = bsg.AsSpan<T>();
            var y = ysg.AsSpan<T>();
            for (int i = 0, ci = o[0], ai = o[1], bi = o[2], yi = o[3]; i < n; i++, ci += st[0], ai += st[1], bi += st[2], yi += st[3])
                y[yi] = Scalar.ToDouble(c[ci]) != 0 ? a[ai] : b[bi];
        });
    }
}
