// Shared pieces of the ILGPU backend tests: the device (ILGPU's CPU accelerator, which runs the real
// kernels on CPU threads, so these tests need no GPU), a collection that runs the ILGPU test classes one
// at a time (they share one accelerator and the machine's few cores), seeded inputs, strided views built
// identically on the CPU and on the device, and the element-wise comparison with its tolerances.
//
// Tolerances, by dtype, and why:
//  - f64: 1e-12 relative (+1e-12 absolute): both backends compute in double; only the order of sums and
//    the libm behind exp/log/tanh differ.
//  - f32: 1e-5 relative (+1e-6 absolute, for results that cancel towards 0): the CPU uses SIMD
//    (different summation order, FMA in places, vectorised exp/sigmoid) where the kernels use scalar
//    code; a few ulps of difference compound over sums of up to ~100 terms.
//  - f16/bf16 inputs to MatMul: the same 16-bit values reach both backends and widen exactly to f32, so
//    the products are compared at the f32 tolerance (the ~1e-2 of a 16-bit format is the error against
//    an f32 computation on unrounded inputs, not between two f32 accumulations of the same inputs).
using TinyLlama.Backends;
using TinyLlama.Backends.Ilgpu;
using TinyLlama.Tensors;

namespace TinyLlama.Tests.Ilgpu;

/// <summary>Runs the ILGPU test classes one after another.</summary>
[CollectionDefinition("ilgpu", DisableParallelization = true)]
public sealed class IlgpuCollection;

public static class IlgpuTestUtil
{
    /// <summary>ILGPU's CPU accelerator, with the backend registered.</summary>
    public static Device Dev { get; } = IlgpuDevices.Resolve("ilgpu-cpu");

    /// <summary>The ILGPU backend of <see cref="Dev"/>.</summary>
    public static IlgpuBackend Backend => (IlgpuBackend)Dev.Backend;

    /// <summary>The CPU backend (the definition every op is compared with).</summary>
    public static IBackend Cpu => Device.Cpu.Backend;

    /// <summary>Seeded standard normal samples on the CPU.</summary>
    public static Tensor RandN(ulong seed, DType dtype, params int[] shape) => Tensor.RandN(shape, new Generator(seed), dtype);

    /// <summary>Seeded uniform samples on the CPU.</summary>
    public static Tensor Rand(ulong seed, DType dtype, double low, double high, params int[] shape) =>
        Tensor.Rand(shape, new Generator(seed), dtype, low: low, high: high);

    /// <summary>
    /// The same view of one base tensor on the CPU and on the device: the base is copied to the device
    /// densely and the view function is applied to both, so the device tensor has the CPU view's strides.
    /// </summary>
    public static (Tensor Cpu, Tensor Dev) Both(Tensor cpuBase, Func<Tensor, Tensor>? view = null)
    {
        var d = cpuBase.To(Dev);
        return view is null ? (cpuBase, d) : (view(cpuBase), view(d));
    }

    /// <summary>Zero tensors of one shape on both backends.</summary>
    public static (Tensor Cpu, Tensor Dev) Zeros(DType dtype, params int[] shape) =>
        (Tensor.Zeros(shape, dtype), Tensor.Zeros(shape, dtype, Dev));

    /// <summary>Relative tolerance for comparing the two backends in a dtype (see the file header).</summary>
    public static double Rtol(DType t) => t == DType.F64 ? 1e-12 : 1e-5;

    /// <summary>Absolute tolerance floor for results near zero.</summary>
    public static double Atol(DType t) => t == DType.F64 ? 1e-12 : 1e-6;

    /// <summary>Asserts shape equality and |actual - expected| &lt;= atol + rtol |expected| element by element (NaN matches NaN).</summary>
    public static void AssertClose(Tensor expected, Tensor actual, double rtol, double atol, string what)
    {
        Assert.True(expected.Shape.AsSpan().SequenceEqual(actual.Shape), $"{what}: shape {Shapes.Format(actual.Shape)}, expected {Shapes.Format(expected.Shape)}");
        var e = expected.ToArray<double>();
        var a = actual.ToArray<double>();
        for (int i = 0; i < e.Length; i++)
        {
            if (double.IsNaN(e[i]) || double.IsNaN(a[i]))
            {
                Assert.True(double.IsNaN(e[i]) && double.IsNaN(a[i]), $"{what}[{i}]: {a[i]:G17}, expected {e[i]:G17}");
                continue;
            }
            if (double.IsInfinity(e[i]) || double.IsInfinity(a[i]))
            {
                Assert.True(e[i] == a[i], $"{what}[{i}]: {a[i]:G17}, expected {e[i]:G17}");
                continue;
            }
            double err = Math.Abs(a[i] - e[i]);
            Assert.True(err <= atol + rtol * Math.Abs(e[i]), $"{what}[{i}]: {a[i]:G17}, expected {e[i]:G17} (error {err:G3})");
        }
    }

    /// <summary><see cref="AssertClose(Tensor, Tensor, double, double, string)"/> with the dtype's tolerances.</summary>
    public static void AssertClose(Tensor expected, Tensor actual, string what) =>
        AssertClose(expected, actual, Rtol(expected.DType), Atol(expected.DType), what);

    /// <summary>Asserts the two tensors hold exactly the same values (compared as doubles; NaN matches NaN).</summary>
    public static void AssertEqual(Tensor expected, Tensor actual, string what) => AssertClose(expected, actual, 0, 0, what);

    /// <summary>Bit patterns of a 16-bit tensor (f16 or bf16), for exact conversion checks.</summary>
    public static ushort[] Bits(Tensor t) => t.DType == DType.F16
        ? t.ToArray<Half>().Select(BitConverter.HalfToUInt16Bits).ToArray()
        : t.ToArray<BFloat16>().Select(b => b.Bits).ToArray();

    public static readonly DType[] FloatTypes = [DType.F32, DType.F64];

    /// <summary>xunit data: the two compute dtypes.</summary>
    public static TheoryData<DType> ComputeTypes => new() { DType.F32, DType.F64 };
}
