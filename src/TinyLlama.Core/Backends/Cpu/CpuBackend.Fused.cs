// Fused LLaMA ops on the CPU: RMSNorm, RoPE, causal grouped-query attention, SwiGLU.
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

public sealed partial class CpuBackend
{
    public void RmsNorm(Tensor x, Tensor weight, double eps, Tensor y, Tensor rstd) => throw new NotImplementedException();
    public void RmsNormBackward(Tensor dy, Tensor x, Tensor weight, Tensor rstd, Tensor dx, Tensor dWeight) => throw new NotImplementedException();
    public void Rope(Tensor x, Tensor cos, Tensor sin, RopeLayout layout, bool inverse, Tensor y) => throw new NotImplementedException();
    public void Attention(Tensor q, Tensor k, Tensor v, double scale, bool causal, Tensor o, Tensor lse) => throw new NotImplementedException();
    public void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor dO, double scale, bool causal, Tensor dq, Tensor dk, Tensor dv) => throw new NotImplementedException();
    public void SwiGlu(Tensor gate, Tensor up, Tensor y) => throw new NotImplementedException();
    public void SwiGluBackward(Tensor gate, Tensor up, Tensor dy, Tensor dGate, Tensor dUp) => throw new NotImplementedException();
}
