// Softmax and log-softmax over one dim. The backend works on the last dim of a dense tensor, so
// another dim is transposed to the end (and back). Backward uses the saved output only:
// softmax: dx = y (dy - sum(dy y)); log-softmax: dx = dy - exp(y) sum(dy).
using TinyLlama.Autograd;

namespace TinyLlama.Tensors;

public sealed partial class Tensor
{
    /// <summary>softmax over dim.</summary>
    public Tensor Softmax(int dim = -1) => SoftmaxImpl(dim, log: false);

    /// <summary>log softmax over dim.</summary>
    public Tensor LogSoftmax(int dim = -1) => SoftmaxImpl(dim, log: true);

    private Tensor SoftmaxImpl(int dim, bool log)
    {
        var x = this;
        string name = log ? "log_softmax" : "softmax";
        if (!DType.IsFloat()) throw new ArgumentException($"{name}: expected a floating-point tensor, got {DType.Name()}");
        if (Rank == 0) return Engine.Record(log ? ZerosLike(this) : OnesLike(this), name, [x], g => [ZerosLike(g)]);
        int d = Shapes.NormalizeDim(dim, Rank, name);
        var ct = ComputeType(DType);
        var xt = Detach().CastRaw(ct).Transpose(d, -1).Contiguous();
        var yt = new Tensor(xt.Shape, ct, Device);
        Backend.Softmax(xt, yt, log);
        var y = yt.Transpose(d, -1).CastRaw(DType);
        return Engine.Record(y, log ? "LogSoftmaxBackward" : "SoftmaxBackward", [x], g =>
        {
            var gt = g.CastRaw(ct).Transpose(d, -1).Contiguous();
            var dx = new Tensor(gt.Shape, ct, g.Device);
            g.Backend.SoftmaxBackward(yt, gt, dx, log);
            return [dx.Transpose(d, -1).CastRaw(x.DType)];
        });
    }
}
