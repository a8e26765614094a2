// Factories: zeros, ones, full, arange, seeded random normal/uniform, and tensors from host arrays.
namespace TinyLlama.Tensors;

public sealed partial class Tensor
{
    /// <summary>A tensor of zeros.</summary>
    public static Tensor Zeros(int[] shape, DType dtype = DType.F32, Device? device = null) =>
        new((int[])shape.Clone(), dtype, device ?? Device.Cpu);

    /// <summary>A tensor of ones.</summary>
    public static Tensor Ones(int[] shape, DType dtype = DType.F32, Device? device = null) => Full(shape, 1.0, dtype, device);

    /// <summary>A tensor filled with value.</summary>
    public static Tensor Full(int[] shape, double value, DType dtype = DType.F32, Device? device = null)
    {
        var t = Zeros(shape, dtype, device);
        if (value != 0) t.Backend.Fill(t, value);
        return t;
    }

    /// <summary>Zeros with another tensor's shape, dtype and device.</summary>
    public static Tensor ZerosLike(Tensor t) => Zeros(t.shape, t.DType, t.Device);

    /// <summary>Ones with another tensor's shape, dtype and device.</summary>
    public static Tensor OnesLike(Tensor t) => Ones(t.shape, t.DType, t.Device);

    /// <summary>A 0-dimensional tensor holding one value.</summary>
    public static Tensor Scalar(double value, DType dtype = DType.F32, Device? device = null) => Full([], value, dtype, device);

    /// <summary>0, 1, ..., n-1.</summary>
    public static Tensor Arange(int n, DType dtype = DType.F32, Device? device = null) => Arange(0, n, 1, dtype, device);

    /// <summary>start, start+step, ... below end.</summary>
    public static Tensor Arange(double start, double end, double step = 1, DType dtype = DType.F32, Device? device = null)
    {
        if (step == 0) throw new ArgumentException("arange: step must be non-zero");
        int n = Math.Max(0, (int)Math.Ceiling((end - start) / step));
        var values = new double[n];
        for (int i = 0; i < n; i++) values[i] = start + i * step;
        return FromDoubles(values, [n], dtype, device);
    }

    /// <summary>Standard normal samples (times std, plus mean) from a seeded generator.</summary>
    public static Tensor RandN(int[] shape, Generator? generator = null, DType dtype = DType.F32, Device? device = null, double mean = 0, double std = 1)
    {
        var g = generator ?? Generator.Default;
        var values = new double[Shapes.Numel(shape)];
        for (int i = 0; i < values.Length; i++) values[i] = mean + std * g.NextNormal();
        return FromDoubles(values, shape, dtype, device);
    }

    /// <summary>Uniform samples in [low, high) from a seeded generator.</summary>
    public static Tensor Rand(int[] shape, Generator? generator = null, DType dtype = DType.F32, Device? device = null, double low = 0, double high = 1)
    {
        var g = generator ?? Generator.Default;
        var values = new double[Shapes.Numel(shape)];
        for (int i = 0; i < values.Length; i++) values[i] = low + (high - low) * g.NextDouble();
        return FromDoubles(values, shape, dtype, device);
    }

    /// <summary>A tensor over a copy of host data (float, double, Half, BFloat16 or int), on a device.</summary>
    public static Tensor FromArray<T>(T[] data, int[] shape, Device? device = null) where T : unmanaged
    {
        if (Shapes.Numel(shape) != data.Length)
            throw new ArgumentException($"from array: {data.Length} values do not fill shape {Shapes.Format(shape)}");
        var t = new Tensor((int[])shape.Clone(), DTypes.Of<T>(), device ?? Device.Cpu);
        t.Backend.Upload<T>(data, t.Storage);
        return t;
    }

    /// <summary>A 1-D tensor over a copy of host data.</summary>
    public static Tensor FromArray<T>(T[] data, Device? device = null) where T : unmanaged => FromArray(data, [data.Length], device);

    /// <summary>Doubles converted to the requested dtype.</summary>
    public static Tensor FromDoubles(double[] values, int[] shape, DType dtype = DType.F32, Device? device = null)
    {
        var t = FromArray(values, shape);
        if (dtype != DType.F64) t = t.CastRaw(dtype);
        return device is Device d && d != Device.Cpu ? t.To(d) : t;
    }

    /// <summary>Wraps existing host storage as a dense tensor (no copy).</summary>
    public static Tensor FromStorage(Storage storage, int[] shape, int offset = 0)
    {
        if (offset + Shapes.Numel(shape) > storage.Length)
            throw new ArgumentException($"shape {Shapes.Format(shape)} at offset {offset} does not fit a storage of {storage.Length} elements");
        return new Tensor(storage, (int[])shape.Clone(), Shapes.ContiguousStrides(shape), offset);
    }

    // ---------------- reading values back ----------------

    /// <summary>The elements in row-major order converted to <typeparamref name="T"/> (float, double, Half, BFloat16, int; byte for the raw bytes of any block dtype).</summary>
    public T[] ToArray<T>() where T : unmanaged
    {
        var src = this;
        if (Device != Device.Cpu) src = Detach().Contiguous().To(Device.Cpu);
        var target = DTypes.Of<T>();
        if (target == DType.Q4 && DType.IsQuantized()) target = DType;     // bytes of any block type, as stored
        var dense = src.DType == target ? src.Detach() : src.Detach().CastRaw(target);
        if (!dense.IsContiguous) dense = dense.CastCopy();
        var result = new T[Numel];
        dense.Backend.Download<T>(dense, result);
        return result;
    }

    private Tensor CastCopy()
    {
        var y = new Tensor(Shape, DType, Device);
        Backend.Copy(this, y);
        return y;
    }

    /// <summary>The value of a one-element tensor.</summary>
    public double Item()
    {
        if (Numel != 1) throw new InvalidOperationException($"item: tensor of shape {Shapes.Format(shape)} has {Numel} elements, not 1");
        return DType == DType.I32 ? ToArray<int>()[0] : ToArray<double>()[0];
    }

    /// <summary>The element at a full index (one entry per dim).</summary>
    public double GetValue(params int[] index)
    {
        if (index.Length != Rank) throw new ArgumentException($"index has {index.Length} entries for a tensor of rank {Rank}");
        var t = Detach();
        for (int i = 0; i < index.Length; i++) t = t.Select(0, index[i]);
        return t.Item();
    }
}
