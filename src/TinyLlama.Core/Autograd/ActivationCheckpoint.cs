// Activation checkpointing (Chen et al., "Training Deep Nets with Sublinear Memory Cost", 2016;
// torch.utils.checkpoint): run a block without recording its intermediate activations, and in the
// backward pass run it again with autograd on, then backpropagate through the recomputed graph.
// Memory per block drops to its input; compute rises by one extra forward.
using TinyLlama.Tensors;

namespace TinyLlama.Autograd;

/// <summary>Recompute-in-backward wrapper for a block of ops.</summary>
public static class ActivationCheckpoint
{
    /// <summary>
    /// y = block(x), keeping only x. <paramref name="parameters"/> are the trainable tensors the block
    /// uses (their gradients accumulate during the recomputation). <paramref name="rng"/>, if the block
    /// draws random numbers (dropout), is rewound so the recomputation sees the same draws.
    /// </summary>
    public static Tensor Run(Func<Tensor, Tensor> block, Tensor x, IReadOnlyList<Tensor> parameters, Generator? rng = null)
    {
        bool anyGrad = x.RequiresGrad || parameters.Any(p => p.RequiresGrad);
        if (!GradMode.IsEnabled || !anyGrad) return block(x);
        var rngState = rng?.GetState();
        Tensor y;
        using (GradMode.NoGrad()) y = block(x.Detach());
        var inputs = new Tensor[] { x }.Concat(parameters.Where(p => p.RequiresGrad)).ToArray();
        return Engine.Record(y, "CheckpointBackward", inputs, g =>
        {
            var after = rng?.GetState();
            if (rngState is not null) rng!.SetState(rngState);
            Tensor? dx;
            using (GradMode.Enable())
            {
                var xi = x.Detach();
                if (x.RequiresGrad) xi.RequiresGrad = true;
                var yi = block(xi);
                // Parameters are leaves: their gradients accumulate straight into .Grad here.
                if (yi.RequiresGrad) yi.Backward(g);
                dx = xi.Grad;
            }
            if (after is not null) rng!.SetState(after);
            var grads = new Tensor?[inputs.Length];
            grads[0] = dx;
            return grads;
        });
    }
}
