// Reverse-mode autograd: order the graph topologically (iterative DFS, so deep models do not overflow
// the stack), then walk it backwards once, summing gradients where a tensor fans out (micrograd's `+=`).
// A leaf's gradient is final for the pass once it is accumulated (every use of it has been added in), which
// is when its post-accumulate-grad hooks run: data-parallel training starts reducing it there.
using TinyLlama.Tensors;

namespace TinyLlama.Autograd;

/// <summary>Runs backward passes and records ops.</summary>
public static class Engine
{
    /// <summary>
    /// Attaches a backward rule to <paramref name="output"/> when grad mode is on and any input requires grad.
    /// The rule returns one gradient per input (null for inputs that need none), already reduced to the input's shape.
    /// </summary>
    public static Tensor Record(Tensor output, string name, Tensor[] inputs, Func<Tensor, Tensor?[]> backward)
    {
        if (!GradMode.IsEnabled) return output;
        foreach (var t in inputs)
        {
            if (t.RequiresGrad)
            {
                output.SetGradFn(new Node(name, inputs, backward));
                return output;
            }
        }
        return output;
    }

    /// <summary>True when an op on these inputs will be recorded (lets an op skip saving what backward needs).</summary>
    public static bool WillRecord(Tensor a) => GradMode.IsEnabled && a.RequiresGrad;

    /// <inheritdoc cref="WillRecord(Tensor)"/>
    public static bool WillRecord(Tensor a, Tensor b) => GradMode.IsEnabled && (a.RequiresGrad || b.RequiresGrad);

    internal static void Backward(Tensor root, Tensor? gradient, bool retainGraph)
    {
        if (!root.RequiresGrad)
            throw new InvalidOperationException("Backward: the tensor does not require grad and has no grad_fn");
        if (gradient is null)
        {
            if (root.Numel != 1)
                throw new InvalidOperationException($"Backward: grad can be implicitly created only for scalar outputs, but the output has shape {Shapes.Format(root.shape)}; pass a gradient");
            gradient = Tensor.Ones(root.shape, root.DType, root.Device);
        }
        else if (!gradient.shape.AsSpan().SequenceEqual(root.shape))
        {
            throw new ArgumentException($"Backward: gradient shape {Shapes.Format(gradient.shape)} does not match output shape {Shapes.Format(root.shape)}");
        }

        var order = TopologicalOrder(root);
        var grads = new Dictionary<Tensor, Tensor>(ReferenceEqualityComparer.Instance) { [root] = gradient };
        using var noGrad = GradMode.NoGrad();
        for (int i = order.Count - 1; i >= 0; i--)
        {
            var t = order[i];
            if (!grads.Remove(t, out var g)) continue;
            if (t.GradFn is null || t.RetainsGrad)
                Accumulate(t, g);
            var node = t.GradFn;
            if (node is null) continue;
            var inputGrads = node.Apply(g);
            if (!retainGraph) node.Release();
            var inputs = node.Inputs;
            if (inputGrads.Length != inputs.Count)
                throw new InvalidOperationException($"{node.Name} returned {inputGrads.Length} gradients for {inputs.Count} inputs");
            for (int j = 0; j < inputs.Count; j++)
            {
                var gi = inputGrads[j];
                var input = inputs[j];
                if (gi is null || !input.RequiresGrad) continue;
                // Type promotion can hand back a wider gradient; a tensor's gradient has its own dtype.
                if (gi.DType != input.DType) gi = gi.To(input.DType);
                if (!gi.shape.AsSpan().SequenceEqual(input.shape))
                    throw new InvalidOperationException($"{node.Name} returned a gradient of shape {Shapes.Format(gi.shape)} for input {j} of shape {Shapes.Format(input.shape)}");
                grads[input] = grads.TryGetValue(input, out var acc) ? acc + gi : gi;
            }
        }
    }

    /// <summary>
    /// Leaf gradients accumulate across backward calls, into a buffer the leaf owns; then the leaf's
    /// post-accumulate-grad hooks run (see Tensor.RegisterPostAccumulateGradHook).
    /// </summary>
    private static void Accumulate(Tensor t, Tensor g)
    {
        if (t.Grad is null) t.Grad = g.Clone();
        else t.Grad.Add_(g);
        t.PostAccumulateGradHooks?.Invoke(t);
    }

    /// <summary>Tensors reachable from root through grad_fn inputs, each after all of its inputs.</summary>
    private static List<Tensor> TopologicalOrder(Tensor root)
    {
        var order = new List<Tensor>();
        var visited = new HashSet<Tensor>(ReferenceEqualityComparer.Instance);
        var stack = new Stack<(Tensor Tensor, int NextInput)>();
        visited.Add(root);
        stack.Push((root, 0));
        while (stack.Count > 0)
        {
            var (t, next) = stack.Pop();
            var inputs = t.GradFn?.Inputs;
            if (inputs is not null && next < inputs.Count)
            {
                stack.Push((t, next + 1));
                var child = inputs[next];
                if (child.RequiresGrad && visited.Add(child)) stack.Push((child, 0));
            }
            else
            {
                order.Add(t);
            }
        }
        return order;
    }
}
