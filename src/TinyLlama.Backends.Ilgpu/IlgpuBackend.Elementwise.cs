// Copy, Fill, Unary, Binary and Where on the ILGPU backend: host dispatch on dtype to the generic
// kernels in kernels/TinyLlama.Kernels/Elementwise.cs, one thread per element over merged strided layouts.
using ILGPU;
using ILGPU.Runtime;
using TinyLlama.Kernels;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Ilgpu;

public sealed partial class IlgpuBackend
{
    // ---------------- copy ----------------

    public void Copy(Tensor source, Tensor destination)
    {
        if (!source.Shape.AsSpan().SequenceEqual(destination.Shape))
            throw new ArgumentException($"copy: shape {Shapes.Format(source.Shape)} into {Shapes.Format(destination.Shape)}");
        if ((destination.DType.IsQuantized() || source.DType.IsQuantized()) && source.DType != destination.DType)
            throw new NotSupportedException($"cannot convert {source.DType.Name()} to {destination.DType.Name()} by copying; quantize or dequantize instead");
        lock (gate)
        {
            var l = Layouts("copy", destination.Shape, source, destination);
            if (destination.Numel == 0) return;
            if (source.DType == destination.DType)
            {
                switch (source.DType)
                {
                    case DType.F32: CopySame<float>(source, l[0], destination, l[1]); break;
                    case DType.F64: CopySame<double>(source, l[0], destination, l[1]); break;
                    case DType.F16 or DType.BF16: CopySame<ushort>(source, l[0], destination, l[1]); break;
                    case DType.I32: CopySame<int>(source, l[0], destination, l[1]); break;
                    case DType.Q4 or DType.Q8_0 or DType.Q4_K or DType.Q6_K: CopySame<byte>(source, l[0], destination, l[1]); break;
                }
                return;
            }
            switch (source.DType)
            {
                case DType.F32: CopyFrom<float, F32>(source, l[0], destination, l[1]); break;
                case DType.F64: CopyFrom<double, F64>(source, l[0], destination, l[1]); break;
                case DType.F16: CopyFrom<ushort, F16>(source, l[0], destination, l[1]); break;
                case DType.BF16: CopyFrom<ushort, BF16>(source, l[0], destination, l[1]); break;
                case DType.I32: CopyFrom<int, I32>(source, l[0], destination, l[1]); break;
            }
        }
    }

    private void CopySame<T>(Tensor src, StridedLayout sl, Tensor dst, StridedLayout dl) where T : unmanaged
    {
        var k = Auto(ElementwiseKernels.CopyForwardKernel<T>, accelerator.LoadAutoGroupedStreamKernel);
        k(dst.Numel, Whole<T>(src, "copy"), sl, Whole<T>(dst, "copy"), dl);
    }

    private void CopyFrom<TS, TSE>(Tensor src, StridedLayout sl, Tensor dst, StridedLayout dl)
        where TS : unmanaged where TSE : struct, IElement<TS>
    {
        switch (dst.DType)
        {
            case DType.F32: Convert<TS, TSE, float, F32>(src, sl, dst, dl); break;
            case DType.F64: Convert<TS, TSE, double, F64>(src, sl, dst, dl); break;
            case DType.F16: Convert<TS, TSE, ushort, F16>(src, sl, dst, dl); break;
            case DType.BF16: Convert<TS, TSE, ushort, BF16>(src, sl, dst, dl); break;
            case DType.I32: Convert<TS, TSE, int, I32>(src, sl, dst, dl); break;
        }
    }

    private void Convert<TS, TSE, TD, TDE>(Tensor src, StridedLayout sl, Tensor dst, StridedLayout dl)
        where TS : unmanaged where TSE : struct, IElement<TS> where TD : unmanaged where TDE : struct, IElement<TD>
    {
        var k = Auto(ElementwiseKernels.ConvertForwardKernel<TS, TSE, TD, TDE>, accelerator.LoadAutoGroupedStreamKernel);
        k(dst.Numel, Whole<TS>(src, "copy"), sl, Whole<TD>(dst, "copy"), dl);
    }

    // ---------------- fill ----------------

    public void Fill(Tensor destination, double value)
    {
        lock (gate)
        {
            var l = Layouts("fill", destination.Shape, destination)[0];
            if (destination.Numel == 0) return;
            switch (destination.DType)
            {
                case DType.F32: FillTyped(destination, l, (float)value); break;
                case DType.F64: FillTyped(destination, l, value); break;
                // 16-bit patterns computed on the host exactly as the CPU backend rounds them.
                case DType.F16: FillTyped(destination, l, BitConverter.HalfToUInt16Bits((System.Half)value)); break;
                case DType.BF16: FillTyped(destination, l, BFloat16.FromSingle((float)value).Bits); break;
                case DType.I32: FillTyped(destination, l, checked((int)value)); break;
                case DType.Q4 or DType.Q8_0 or DType.Q4_K or DType.Q6_K: FillTyped(destination, l, checked((byte)value)); break;
            }
        }
    }

    private void FillTyped<T>(Tensor dst, StridedLayout l, T value) where T : unmanaged
    {
        var k = Auto(ElementwiseKernels.FillForwardKernel<T>, accelerator.LoadAutoGroupedStreamKernel);
        k(dst.Numel, Whole<T>(dst, "fill"), l, value);
    }

    // ---------------- unary and binary ----------------

    public void Unary(UnaryOp op, Tensor x, Tensor y, double alpha = 0, double beta = 0)
    {
        CheckFloat(x, op.ToString());
        CheckSameDType(op.ToString(), x, y);
        int code = UnaryCode(op);
        lock (gate)
        {
            var l = Layouts(op.ToString(), y.Shape, x, y);
            if (y.Numel == 0) return;
            if (x.DType == DType.F32)
            {
                var k = Auto(ElementwiseKernels.UnaryForwardKernel<float, F32>, accelerator.LoadAutoGroupedStreamKernel);
                k(y.Numel, Whole<float>(x, "unary"), l[0], Whole<float>(y, "unary"), l[1], code, (float)alpha, (float)beta);
            }
            else
            {
                var k = Auto(ElementwiseKernels.UnaryForwardKernel<double, F64>, accelerator.LoadAutoGroupedStreamKernel);
                k(y.Numel, Whole<double>(x, "unary"), l[0], Whole<double>(y, "unary"), l[1], code, alpha, beta);
            }
        }
    }

    public void Binary(BinaryOp op, Tensor a, Tensor b, Tensor y)
    {
        CheckFloat(a, op.ToString());
        if (a.DType != b.DType || a.DType != y.DType)
            throw new ArgumentException($"{op}: dtypes {a.DType.Name()}, {b.DType.Name()} -> {y.DType.Name()} differ");
        int code = BinaryCode(op);
        lock (gate)
        {
            var l = Layouts(op.ToString(), y.Shape, a, b, y);
            if (y.Numel == 0) return;
            if (a.DType == DType.F32) BinaryTyped<float>(a, b, y, l, code);
            else BinaryTyped<double>(a, b, y, l, code);
        }
    }

    private void BinaryTyped<T>(Tensor a, Tensor b, Tensor y, StridedLayout[] l, int code) where T : unmanaged, System.Numerics.IFloatingPointIeee754<T>
    {
        var k = Auto(ElementwiseKernels.BinaryForwardKernel<T>, accelerator.LoadAutoGroupedStreamKernel);
        k(y.Numel, Whole<T>(a, "binary"), l[0], Whole<T>(b, "binary"), l[1], Whole<T>(y, "binary"), l[2], code);
    }

    public void Where(Tensor cond, Tensor a, Tensor b, Tensor y)
    {
        CheckFloat(a, "where");
        CheckSameDType("where", a, b, y);
        lock (gate)
        {
            var l = Layouts("where", y.Shape, cond, a, b, y);
            if (y.Numel == 0) return;
            switch (cond.DType)
            {
                case DType.F32: WhereTyped<float, F32>(cond, a, b, y, l); break;
                case DType.F64: WhereTyped<double, F64>(cond, a, b, y, l); break;
                case DType.I32: WhereTyped<int, I32>(cond, a, b, y, l); break;
                default: throw new NotSupportedException($"where: condition of dtype {cond.DType.Name()}");
            }
        }
    }

    private void WhereTyped<TC, TCE>(Tensor cond, Tensor a, Tensor b, Tensor y, StridedLayout[] l) where TC : unmanaged where TCE : struct, IElement<TC>
    {
        if (a.DType == DType.F32) WhereTyped<TC, TCE, float>(cond, a, b, y, l);
        else WhereTyped<TC, TCE, double>(cond, a, b, y, l);
    }

    private void WhereTyped<TC, TCE, T>(Tensor cond, Tensor a, Tensor b, Tensor y, StridedLayout[] l)
        where TC : unmanaged where TCE : struct, IElement<TC> where T : unmanaged
    {
        var k = Auto(ElementwiseKernels.WhereForwardKernel<TC, TCE, T>, accelerator.LoadAutoGroupedStreamKernel);
        k(y.Numel, Whole<TC>(cond, "where"), l[0], Whole<T>(a, "where"), l[1], Whole<T>(b, "where"), l[2], Whole<T>(y, "where"), l[3]);
    }

    /// <summary>The kernel's code for a unary op (explicit, so reordering the enum cannot silently change the math).</summary>
    internal static int UnaryCode(UnaryOp op) => op switch
    {
        UnaryOp.Neg => ElementwiseKernels.Neg,
        UnaryOp.Exp => ElementwiseKernels.Exp,
        UnaryOp.Log => ElementwiseKernels.Log,
        UnaryOp.Sqrt => ElementwiseKernels.Sqrt,
        UnaryOp.Rsqrt => ElementwiseKernels.Rsqrt,
        UnaryOp.Abs => ElementwiseKernels.Abs,
        UnaryOp.Sign => ElementwiseKernels.Sign,
        UnaryOp.Sigmoid => ElementwiseKernels.Sigmoid,
        UnaryOp.Tanh => ElementwiseKernels.Tanh,
        UnaryOp.Relu => ElementwiseKernels.Relu,
        UnaryOp.Square => ElementwiseKernels.Square,
        UnaryOp.Reciprocal => ElementwiseKernels.Reciprocal,
        UnaryOp.Silu => ElementwiseKernels.Silu,
        UnaryOp.SiluGrad => ElementwiseKernels.SiluGrad,
        UnaryOp.Gelu => ElementwiseKernels.Gelu,
        UnaryOp.GeluGrad => ElementwiseKernels.GeluGrad,
        UnaryOp.Clamp => ElementwiseKernels.Clamp,
        _ => throw new NotSupportedException($"unary op {op}"),
    };

    /// <summary>The kernel's code for a binary op.</summary>
    internal static int BinaryCode(BinaryOp op) => op switch
    {
        BinaryOp.Add => ElementwiseKernels.Add,
        BinaryOp.Sub => ElementwiseKernels.Sub,
        BinaryOp.Mul => ElementwiseKernels.Mul,
        BinaryOp.Div => ElementwiseKernels.Div,
        BinaryOp.Pow => ElementwiseKernels.Pow,
        BinaryOp.Maximum => ElementwiseKernels.Maximum,
        BinaryOp.Minimum => ElementwiseKernels.Minimum,
        BinaryOp.Eq => ElementwiseKernels.Eq,
        BinaryOp.Ne => ElementwiseKernels.Ne,
        BinaryOp.Lt => ElementwiseKernels.Lt,
        BinaryOp.Le => ElementwiseKernels.Le,
        BinaryOp.Gt => ElementwiseKernels.Gt,
        BinaryOp.Ge => ElementwiseKernels.Ge,
        _ => throw new NotSupportedException($"binary op {op}"),
    };
}
