// Elementwise ops with NumPy broadcasting. Each op: validate and broadcast, compute through the
// backend, record the chain rule. Gradients of broadcast inputs are summed back to their shapes (SumTo).
// 16-bit float inputs are computed in f32 and the result is rounded back to their dtype.
using TinyLlama.Autograd;
using TinyLlama.Backends;

namespace TinyLlama.Tensors;

public sealed partial class Tensor
{
    // ---------------- forward helpers (no autograd) ----------------

    private static DType ComputeType(DType t) => t.IsHalf() ? DType.F32 : t;

    internal static Tensor UnaryRaw(UnaryOp op, Tensor x, double alpha = 0, double beta = 0)
    {
        if (!x.DType.IsFloat()) throw new ArgumentException($"{op}: expected a floating-point tensor, got {x.DType.Name()}");
        var xc = x.CastRaw(ComputeType(x.DType));
        var y = new Tensor(x.Shape, xc.DType, x.Device);
        x.Backend.Unary(op, xc, y, alpha, beta);
        return y.CastRaw(x.DType);
    }

    /// <summary>
    /// PyTorch's type promotion among float dtypes: f64 > f32 > {f16, bf16}; f16 with bf16 gives f32.
    /// </summary>
    public static DType PromoteTypes(DType a, DType b, string op)
    {
        if (a == b) return a;
        if (!a.IsFloat() || !b.IsFloat())
            throw new ArgumentException($"{op}: dtype mismatch, {a.Name()} and {b.Name()}; convert one with To()");
        if (a == DType.F64 || b == DType.F64) return DType.F64;
        return DType.F32;
    }

    internal static Tensor BinaryRaw(BinaryOp op, Tensor a, Tensor b)
    {
        string name = op.ToString().ToLowerInvariant();
        var promoted = PromoteTypes(a.DType, b.DType, name);
        if (a.DType != promoted) a = a.CastRaw(promoted);
        if (b.DType != promoted) b = b.CastRaw(promoted);
        if (!a.DType.IsFloat()) throw new ArgumentException($"{name}: expected floating-point tensors, got {a.DType.Name()}");
        if (a.Device != b.Device) throw new ArgumentException($"{name}: tensors on different devices, {a.Device} and {b.Device}");
        var outShape = Shapes.Broadcast(a.shape, b.shape, name);
        var ct = ComputeType(a.DType);
        var ac = a.CastRaw(ct).Detach().Expand(outShape);
        var bc = b.CastRaw(ct).Detach().Expand(outShape);
        var y = new Tensor(outShape, ct, a.Device);
        a.Backend.Binary(op, ac, bc, y);
        return y.CastRaw(a.DType);
    }

    /// <summary>Sums a (broadcast) gradient back down to shape: extra leading dims and expanded size-1 dims.</summary>
    public Tensor SumTo(int[] target)
    {
        if (shape.AsSpan().SequenceEqual(target)) return this;
        int lead = Rank - target.Length;
        if (lead < 0) throw new ArgumentException($"sum_to: cannot reduce {Shapes.Format(shape)} to {Shapes.Format(target)}");
        var dims = new List<int>();
        for (int i = 0; i < Rank; i++)
            if (i < lead || (target[i - lead] == 1 && shape[i] != 1)) dims.Add(i);
        var s = dims.Count > 0 ? Sum(dims.ToArray(), keepDim: true) : this;
        return s.Reshape(target);
    }

    private Tensor ScalarLike(double v) => Full([], v, DType, Device);

    // ---------------- arithmetic ----------------

    /// <summary>a + b.</summary>
    public static Tensor Add(Tensor a, Tensor b)
    {
        var y = BinaryRaw(BinaryOp.Add, a, b);
        return Engine.Record(y, "AddBackward", [a, b], g => [g.SumTo(a.shape), g.SumTo(b.shape)]);
    }

    /// <summary>a - b.</summary>
    public static Tensor Sub(Tensor a, Tensor b)
    {
        var y = BinaryRaw(BinaryOp.Sub, a, b);
        return Engine.Record(y, "SubBackward", [a, b], g => [g.SumTo(a.shape), (-g).SumTo(b.shape)]);
    }

    /// <summary>a * b.</summary>
    public static Tensor Mul(Tensor a, Tensor b)
    {
        var y = BinaryRaw(BinaryOp.Mul, a, b);
        return Engine.Record(y, "MulBackward", [a, b], g => [
            a.RequiresGrad ? (g * b).SumTo(a.shape) : null,
            b.RequiresGrad ? (g * a).SumTo(b.shape) : null]);
    }

    /// <summary>a / b.</summary>
    public static Tensor Div(Tensor a, Tensor b)
    {
        var y = BinaryRaw(BinaryOp.Div, a, b);
        return Engine.Record(y, "DivBackward", [a, b], g => [
            a.RequiresGrad ? (g / b).SumTo(a.shape) : null,
            b.RequiresGrad ? (-g * a / (b * b)).SumTo(b.shape) : null]);
    }

    /// <summary>a ^ b elementwise.</summary>
    public static Tensor Pow(Tensor a, Tensor b)
    {
        var y = BinaryRaw(BinaryOp.Pow, a, b);
        return Engine.Record(y, "PowBackward", [a, b], g => [
            a.RequiresGrad ? (g * b * Pow(a, b - 1.0)).SumTo(a.shape) : null,
            b.RequiresGrad ? (g * y * a.Log()).SumTo(b.shape) : null]);
    }

    /// <summary>x ^ exponent.</summary>
    public Tensor Pow(double exponent)
    {
        var x = this;
        var y = BinaryRaw(BinaryOp.Pow, x, ScalarLike(exponent));
        return Engine.Record(y, "PowBackward", [x], g => [g * exponent * x.Pow(exponent - 1)]);
    }

    /// <summary>Elementwise maximum; the gradient goes to the larger input (split evenly on ties).</summary>
    public static Tensor Maximum(Tensor a, Tensor b) => MinMax(a, b, BinaryOp.Maximum);

    /// <summary>Elementwise minimum; the gradient goes to the smaller input (split evenly on ties).</summary>
    public static Tensor Minimum(Tensor a, Tensor b) => MinMax(a, b, BinaryOp.Minimum);

    private static Tensor MinMax(Tensor a, Tensor b, BinaryOp op)
    {
        var y = BinaryRaw(op, a, b);
        return Engine.Record(y, op + "Backward", [a, b], g =>
        {
            var wins = op == BinaryOp.Maximum ? a.Gt(b) : a.Lt(b);
            var ties = a.Eq(b) * 0.5;
            var wa = wins + ties;
            return [(g * wa).SumTo(a.shape), (g * (1.0 - wa)).SumTo(b.shape)];
        });
    }

    /// <summary>this + other.</summary>
    public Tensor Add(Tensor other) => Add(this, other);
    /// <summary>this + value.</summary>
    public Tensor Add(double value) => this + value;
    /// <summary>this - other.</summary>
    public Tensor Sub(Tensor other) => Sub(this, other);
    /// <summary>this * other.</summary>
    public Tensor Mul(Tensor other) => Mul(this, other);
    /// <summary>this * value.</summary>
    public Tensor Mul(double value) => this * value;
    /// <summary>this / other.</summary>
    public Tensor Div(Tensor other) => Div(this, other);

    public static Tensor operator +(Tensor a, Tensor b) => Add(a, b);
    public static Tensor operator -(Tensor a, Tensor b) => Sub(a, b);
    public static Tensor operator *(Tensor a, Tensor b) => Mul(a, b);
    public static Tensor operator /(Tensor a, Tensor b) => Div(a, b);
    public static Tensor operator -(Tensor a) => a.Neg();
    public static Tensor operator +(Tensor a, double b) => Add(a, a.ScalarLike(b));
    public static Tensor operator +(double a, Tensor b) => Add(b.ScalarLike(a), b);
    public static Tensor operator -(Tensor a, double b) => Sub(a, a.ScalarLike(b));
    public static Tensor operator -(double a, Tensor b) => Sub(b.ScalarLike(a), b);
    public static Tensor operator *(Tensor a, double b) => Mul(a, a.ScalarLike(b));
    public static Tensor operator *(double a, Tensor b) => Mul(b.ScalarLike(a), b);
    public static Tensor operator /(Tensor a, double b) => Div(a, a.ScalarLike(b));
    public static Tensor operator /(double a, Tensor b) => Div(b.ScalarLike(a), b);

    // ---------------- unary functions ----------------

    private Tensor Unary(UnaryOp op, string name, Func<Tensor, Tensor, Tensor> backward, double alpha = 0, double beta = 0)
    {
        var x = this;
        var y = UnaryRaw(op, x, alpha, beta);
        return Engine.Record(y, name, [x], g => [backward(g, y)]);
    }

    /// <summary>-x.</summary>
    public Tensor Neg() => Unary(UnaryOp.Neg, "NegBackward", (g, _) => -g);

    /// <summary>e^x; d/dx = e^x.</summary>
    public Tensor Exp() => Unary(UnaryOp.Exp, "ExpBackward", (g, y) => g * y);

    /// <summary>ln x; d/dx = 1/x.</summary>
    public Tensor Log() { var x = this; return Unary(UnaryOp.Log, "LogBackward", (g, _) => g / x); }

    /// <summary>sqrt x; d/dx = 1 / (2 sqrt x).</summary>
    public Tensor Sqrt() => Unary(UnaryOp.Sqrt, "SqrtBackward", (g, y) => g * 0.5 / y);

    /// <summary>1 / sqrt x; d/dx = -x^(-3/2) / 2 = -y^3 / 2.</summary>
    public Tensor Rsqrt() => Unary(UnaryOp.Rsqrt, "RsqrtBackward", (g, y) => g * y * y * y * -0.5);

    /// <summary>|x|; d/dx = sign x (0 at 0).</summary>
    public Tensor Abs() { var x = this; return Unary(UnaryOp.Abs, "AbsBackward", (g, _) => g * UnaryRaw(UnaryOp.Sign, x)); }

    /// <summary>x^2.</summary>
    public Tensor Square() { var x = this; return Unary(UnaryOp.Square, "SquareBackward", (g, _) => g * x * 2.0); }

    /// <summary>1 / (1 + e^-x); d/dx = y (1 - y).</summary>
    public Tensor Sigmoid() => Unary(UnaryOp.Sigmoid, "SigmoidBackward", (g, y) => g * y * (1.0 - y));

    /// <summary>tanh x; d/dx = 1 - y^2.</summary>
    public Tensor Tanh() => Unary(UnaryOp.Tanh, "TanhBackward", (g, y) => g * (1.0 - y * y));

    /// <summary>max(x, 0).</summary>
    public Tensor Relu() { var x = this; return Unary(UnaryOp.Relu, "ReluBackward", (g, _) => g * x.Gt(0)); }

    /// <summary>x sigmoid(x) (SiLU / swish).</summary>
    public Tensor Silu() { var x = this; return Unary(UnaryOp.Silu, "SiluBackward", (g, _) => g * UnaryRaw(UnaryOp.SiluGrad, x)); }

    /// <summary>x Phi(x) with the exact normal CDF (PyTorch's default GELU).</summary>
    public Tensor Gelu() { var x = this; return Unary(UnaryOp.Gelu, "GeluBackward", (g, _) => g * UnaryRaw(UnaryOp.GeluGrad, x)); }

    /// <summary>min(max(x, min), max); the gradient passes where min &lt;= x &lt;= max.</summary>
    public Tensor Clamp(double min, double max)
    {
        if (min > max) throw new ArgumentException($"clamp: min {min} is greater than max {max}");
        var x = this;
        return Unary(UnaryOp.Clamp, "ClampBackward", (g, _) => g * x.Ge(min) * x.Le(max), min, max);
    }

    // ---------------- comparisons and selection (no gradient) ----------------

    private Tensor Compare(BinaryOp op, Tensor other) => BinaryRaw(op, Detach(), other.Detach());

    /// <summary>1 where x == other, else 0 (in x's dtype).</summary>
    public Tensor Eq(Tensor other) => Compare(BinaryOp.Eq, other);
    public Tensor Ne(Tensor other) => Compare(BinaryOp.Ne, other);
    public Tensor Lt(Tensor other) => Compare(BinaryOp.Lt, other);
    public Tensor Le(Tensor other) => Compare(BinaryOp.Le, other);
    public Tensor Gt(Tensor other) => Compare(BinaryOp.Gt, other);
    public Tensor Ge(Tensor other) => Compare(BinaryOp.Ge, other);
    public Tensor Eq(double v) => Compare(BinaryOp.Eq, ScalarLike(v));
    public Tensor Ne(double v) => Compare(BinaryOp.Ne, ScalarLike(v));
    public Tensor Lt(double v) => Compare(BinaryOp.Lt, ScalarLike(v));
    public Tensor Le(double v) => Compare(BinaryOp.Le, ScalarLike(v));
    public Tensor Gt(double v) => Compare(BinaryOp.Gt, ScalarLike(v));
    public Tensor Ge(double v) => Compare(BinaryOp.Ge, ScalarLike(v));

    /// <summary>cond != 0 ? a : b elementwise, with broadcasting; gradients flow to the chosen side.</summary>
    public static Tensor Where(Tensor cond, Tensor a, Tensor b)
    {
        var promoted = PromoteTypes(a.DType, b.DType, "where");
        if (a.DType != promoted) a = a.To(promoted);
        if (b.DType != promoted) b = b.To(promoted);
        var outShape = Shapes.Broadcast(Shapes.Broadcast(cond.shape, a.shape, "where"), b.shape, "where");
        var ct = ComputeType(a.DType);
        var y = new Tensor(outShape, ct, a.Device);
        a.Backend.Where(cond.Detach().CastRaw(cond.DType.IsHalf() ? DType.F32 : cond.DType).Expand(outShape),
                        a.Detach().CastRaw(ct).Expand(outShape), b.Detach().CastRaw(ct).Expand(outShape), y);
        y = y.CastRaw(a.DType);
        return Engine.Record(y, "WhereBackward", [a, b], g =>
        {
            var zero = Zeros([], g.DType, g.Device);
            return [Where(cond, g, zero).SumTo(a.shape), Where(cond, zero, g).SumTo(b.shape)];
        });
    }

    // ---------------- in-place updates (optimizers, gradient accumulation) ----------------

    private void CheckInPlace(string op)
    {
        if (GradMode.IsEnabled && RequiresGrad)
            throw new InvalidOperationException($"{op}: in-place update of a tensor that requires grad; wrap it in GradMode.NoGrad()");
    }

    /// <summary>this += other (broadcast to this shape), without autograd.</summary>
    public Tensor Add_(Tensor other)
    {
        CheckInPlace("add_");
        if (DType.IsHalf() || other.DType != DType) { CopyFrom_(Detach() + other.Detach().To(DType)); return this; }
        Backend.Binary(BinaryOp.Add, Detach(), other.Detach().Expand(shape), this);
        return this;
    }

    /// <summary>this *= value, without autograd.</summary>
    public Tensor Mul_(double value)
    {
        CheckInPlace("mul_");
        if (DType.IsHalf()) { CopyFrom_(Detach() * value); return this; }
        Backend.Binary(BinaryOp.Mul, Detach(), ScalarLike(value).Expand(shape), this);
        return this;
    }

    /// <summary>this *= other (broadcast to this shape, same device), without autograd.</summary>
    public Tensor Mul_(Tensor other)
    {
        CheckInPlace("mul_");
        if (DType.IsHalf() || other.DType != DType) { CopyFrom_(Detach() * other.Detach()); return this; }
        Backend.Binary(BinaryOp.Mul, Detach(), other.Detach().Expand(shape), this);
        return this;
    }

    /// <summary>Copies src (broadcast to this shape, converting dtype, moved from its device if needed) into this tensor's elements.</summary>
    public Tensor CopyFrom_(Tensor src)
    {
        CheckInPlace("copy_");
        var source = src.Device == Device ? src.Detach() : src.Detach().Contiguous().To(Device);
        Backend.Copy(source.Expand(shape), this);
        return this;
    }

    /// <summary>Sets every element to value.</summary>
    public Tensor Fill_(double value)
    {
        CheckInPlace("fill_");
        Backend.Fill(this, value);
        return this;
    }

    /// <summary>Sets every element to 0.</summary>
    public Tensor Zero_() => Fill_(0);
}
