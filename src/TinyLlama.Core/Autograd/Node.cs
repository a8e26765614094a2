// One recorded op on the autograd graph: its inputs and the closure that maps the output's gradient
// to the inputs' gradients. The closure holds the saved tensors; releasing it frees them.
using TinyLlama.Tensors;

namespace TinyLlama.Autograd;

/// <summary>Backward rule of one op application (PyTorch's grad_fn).</summary>
public sealed class Node
{
    private Func<Tensor, Tensor?[]>? backward;

    internal Node(string name, Tensor[] inputs, Func<Tensor, Tensor?[]> backward)
    {
        Name = name;
        Inputs = inputs;
        this.backward = backward;
    }

    /// <summary>Op name, e.g. "MulBackward".</summary>
    public string Name { get; }

    /// <summary>The op's tensor inputs, in the order the backward returns their gradients.</summary>
    public IReadOnlyList<Tensor> Inputs { get; }

    /// <summary>True once backward has run without retainGraph, after which the saved tensors are gone.</summary>
    public bool IsReleased => backward is null;

    internal Tensor?[] Apply(Tensor gradOutput)
    {
        var fn = backward ?? throw new InvalidOperationException(
            $"{Name}: trying to backward through the graph a second time; its saved tensors were freed after the first backward. Pass retainGraph: true to the first Backward call to keep them.");
        return fn(gradOutput);
    }

    internal void Release() => backward = null;

    public override string ToString() => Name;
}
