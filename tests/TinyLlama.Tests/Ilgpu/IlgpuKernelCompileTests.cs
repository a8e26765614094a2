// Every kernel instantiation the ILGPU backend launches compiles for the GPUs the CPU-accelerator tests
// cannot run on: to PTX for sm_80 (what ILGPU 1.5.3 emits for an A100 or H100) and to OpenCL C 2.0.
// The CPU accelerator accepts constructs a GPU backend rejects (and vice versa), so this catches GPU-only
// compile failures on machines without a GPU. It compiles only: no driver is needed.
using System.Reflection;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.OpenCL;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;
using TinyLlama.Backends.Ilgpu;
using TinyLlama.Kernels;

namespace TinyLlama.Tests.Ilgpu;

[Collection("ilgpu")]
public class IlgpuKernelCompileTests
{
    /// <summary>The kernel classes of the ILGPU backend (not the optimised GEMM / attention files, which have their own tests).</summary>
    private static readonly Type[] KernelClasses =
    [
        typeof(ElementwiseKernels), typeof(ReduceKernels), typeof(SoftmaxKernels), typeof(CrossEntropyKernels), typeof(EmbeddingKernels),
        typeof(RmsNormKernels), typeof(RopeKernels), typeof(SwiGluKernels), typeof(AdamWKernels), typeof(NaiveMatMulKernels), typeof(NaiveAttentionKernels),
        typeof(LoraLinearKernels),
    ];

    /// <summary>One instantiation of each kernel per element type the backend launches it with.</summary>
    private static readonly Delegate[] Instantiations =
    [
        ElementwiseKernels.CopyForwardKernel<float>, ElementwiseKernels.CopyForwardKernel<double>, ElementwiseKernels.CopyForwardKernel<ushort>,
        ElementwiseKernels.CopyForwardKernel<int>, ElementwiseKernels.CopyForwardKernel<byte>,
        ElementwiseKernels.ConvertForwardKernel<double, F64, ushort, F16>, ElementwiseKernels.ConvertForwardKernel<float, F32, ushort, BF16>,
        ElementwiseKernels.ConvertForwardKernel<ushort, F16, float, F32>, ElementwiseKernels.ConvertForwardKernel<ushort, BF16, double, F64>,
        ElementwiseKernels.ConvertForwardKernel<double, F64, int, I32>, ElementwiseKernels.ConvertForwardKernel<int, I32, float, F32>,
        ElementwiseKernels.FillForwardKernel<float>, ElementwiseKernels.FillForwardKernel<ushort>, ElementwiseKernels.FillForwardKernel<byte>,
        ElementwiseKernels.UnaryForwardKernel<float, F32>, ElementwiseKernels.UnaryForwardKernel<double, F64>,
        ElementwiseKernels.BinaryForwardKernel<float>, ElementwiseKernels.BinaryForwardKernel<double>,
        ElementwiseKernels.WhereForwardKernel<int, I32, float>, ElementwiseKernels.WhereForwardKernel<double, F64, double>,
        ReduceKernels.ReduceForwardKernel<float>, ReduceKernels.ReduceForwardKernel<double>,
        ReduceKernels.ArgReduceForwardKernel<float>, ReduceKernels.ArgReduceForwardKernel<double>,
        ReduceKernels.ReduceGroupForwardKernel<float>, ReduceKernels.ReduceGroupForwardKernel<double>,
        ReduceKernels.ArgReduceGroupForwardKernel<float>, ReduceKernels.ArgReduceGroupForwardKernel<double>,
        ReduceKernels.SumOfSquaresForwardKernel<float, F32>, ReduceKernels.SumOfSquaresForwardKernel<double, F64>,
        ReduceKernels.SumOfSquaresFinishKernel<float, F32>, ReduceKernels.SumOfSquaresFinishKernel<double, F64>,
        SoftmaxKernels.SoftmaxForwardKernel<float>, SoftmaxKernels.SoftmaxForwardKernel<double>,
        SoftmaxKernels.SoftmaxBackwardKernel<float>, SoftmaxKernels.SoftmaxBackwardKernel<double>,
        CrossEntropyKernels.CrossEntropyForwardKernel<float>, CrossEntropyKernels.CrossEntropyForwardKernel<double>,
        CrossEntropyKernels.CrossEntropyBackwardKernel<float>, CrossEntropyKernels.CrossEntropyBackwardKernel<double>,
        EmbeddingKernels.EmbeddingForwardKernel<float>, EmbeddingKernels.EmbeddingForwardKernel<ushort>,
        EmbeddingKernels.EmbeddingBackwardKernel<float, F32>, EmbeddingKernels.EmbeddingBackwardKernel<double, F64>,
        RmsNormKernels.RmsNormForwardKernel<float>, RmsNormKernels.RmsNormForwardKernel<double>,
        RmsNormKernels.RmsNormBackwardKernel<float>, RmsNormKernels.RmsNormBackwardKernel<double>,
        RmsNormKernels.RmsNormWeightBackwardKernel<float>, RmsNormKernels.RmsNormWeightReduceKernel<float>,
        RopeKernels.RopeForwardKernel<float>, RopeKernels.RopeForwardKernel<double>,
        SwiGluKernels.SwiGluForwardKernel<float>, SwiGluKernels.SwiGluBackwardKernel<float>, SwiGluKernels.SwiGluBackwardKernel<double>,
        AdamWKernels.AdamWStepKernel<float>, AdamWKernels.AdamWStepKernel<double>,
        NaiveMatMulKernels.MatMulForwardKernel<float, F32, float, F32>, NaiveMatMulKernels.MatMulForwardKernel<ushort, F16, float, F32>,
        NaiveMatMulKernels.MatMulForwardKernel<ushort, BF16, float, F32>, NaiveMatMulKernels.MatMulForwardKernel<double, F64, double, F64>,
        NaiveAttentionKernels.AttentionForwardKernel<float>, NaiveAttentionKernels.AttentionForwardKernel<double>,
        NaiveAttentionKernels.AttentionDeltaBackwardKernel<float>, NaiveAttentionKernels.AttentionQueryBackwardKernel<float>,
        NaiveAttentionKernels.AttentionKeyValueBackwardKernel<float>, NaiveAttentionKernels.AttentionKeyValueBackwardKernel<double>,
        LoraLinearKernels.LoraLinearForwardKernel<float>, LoraLinearKernels.LoraLinearForwardKernel<double>,
        // Block formats (internal kernels; the warp-shuffle versions need sub-groups on OpenCL and are compiled to PTX in their own tests).
        DequantizeBlocksKernels.DequantizeKernel<Q8_0Format, float, F32>, DequantizeBlocksKernels.DequantizeKernel<Q4_KFormat, double, F64>,
        DequantizeBlocksKernels.DequantizeKernel<Q6_KFormat, float, F32>,
        MatMulBlocksKernels.MatMulBlocksForwardKernel1<Q8_0Format, float, F32>, MatMulBlocksKernels.MatMulBlocksForwardKernel1<Q4_KFormat, double, F64>,
        MatMulBlocksKernels.MatMulBlocksForwardKernel1<Q6_KFormat, float, F32>, MatMulBlocksKernels.MatMulBlocksForwardKernel3<Q6_KFormat>,
        IntegerDotQ4Kernels.QuantizeQ8_0Kernel, IntegerDotQ4Kernels.IntegerMatVecKernel1<PortableDot>,
    ];

    private static EntryPointDescription EntryPoint(MethodInfo kernel) =>
        kernel.GetParameters()[0].ParameterType == typeof(Index1D)
            ? EntryPointDescription.FromImplicitlyGroupedKernel(kernel)
            : EntryPointDescription.FromExplicitlyGroupedKernel(kernel);

    [Fact]
    public void EveryKernelIsInTheCompileList()
    {
        var covered = Instantiations.Select(d => d.Method.IsGenericMethod ? d.Method.GetGenericMethodDefinition() : d.Method).ToHashSet();
        foreach (var type in KernelClasses)
            foreach (var m in type.GetMethods(BindingFlags.Public | BindingFlags.Static).Where(m => m.Name.EndsWith("Kernel", StringComparison.Ordinal)))
                Assert.True(covered.Contains(m), $"{type.Name}.{m.Name} is not compiled by this test; add its instantiations");
    }

    [Fact]
    public void EveryKernelCompilesToPtxForSm80()
    {
        using var ptx = new PTXBackend(IlgpuDevices.Context, new CudaCapabilityContext(CudaArchitecture.SM_80), CudaArchitecture.SM_80, CudaInstructionSet.ISA_71, null);
        foreach (var kernel in Instantiations)
        {
            var compiled = (PTXCompiledKernel)ptx.Compile(EntryPoint(kernel.Method), new KernelSpecialization());
            Assert.Contains(".target sm_80", compiled.PTXAssembly);
        }
    }

    [Fact]
    public void EveryKernelCompilesToOpenClC()
    {
        var capabilities = new CLCapabilityContext(float16: false, float64: true, genericAddressSpace: true, int64_Atomics: true, subGroups: false);
        using var cl = new CLBackend(IlgpuDevices.Context, capabilities, CLDeviceVendor.Other, CLCVersion.CL20);
        foreach (var kernel in Instantiations)
        {
            var compiled = (CLCompiledKernel)cl.Compile(EntryPoint(kernel.Method), new KernelSpecialization());
            Assert.Contains("kernel", compiled.Source);
        }
    }
}
