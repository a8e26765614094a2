// The tensor: a strided view (shape, strides, offset) onto a Storage, plus the autograd fields.
// Views (reshape, permute, narrow, expand, ...) share storage and never copy; see Tensor.Views.cs.
// Ops live in Ops/, each forward next to its backward.
using TinyLlama.Autograd;
using TinyLlama.Backends;

namespace TinyLlama.Tensors;

/// <summary>An n-dimensional array with reverse-mode autograd, on a device.</summary>
public sealed partial class Tensor
{
    internal readonly int[] shape;
    internal readonly int[] strides;
    private bool requiresGrad;

    internal Tensor(Storage storage, int[] shape, int[] strides, int offset)
    {
        Storage = storage;
        this.shape = shape;
        this.strides = strides;
        Offset = offset;
        Numel = Shapes.Numel(shape);
    }

    /// <summary>
    /// Opens a <see cref="DisposeScope"/> on the calling thread (TorchSharp's <c>torch.NewDisposeScope()</c>):
    /// device storages created until it is disposed are released then, except those moved out of it.
    /// </summary>
    public static DisposeScope NewDisposeScope() => DisposeScope.Open();

    /// <summary>A new dense tensor owning fresh zero-filled storage.</summary>
    internal Tensor(int[] shape, DType dtype, Device device)
        : this(device.Backend.Allocate(dtype, Shapes.Numel(shape)), shape, Shapes.ContiguousStrides(shape), 0)
    {
    }

    /// <summary>The buffer this tensor views.</summary>
    public Storage Storage { get; }

    /// <summary>Index of element [0, 0, ...] in <see cref="Storage"/>.</summary>
    public int Offset { get; }

    /// <summary>Number of elements.</summary>
    public int Numel { get; }

    /// <summary>Sizes, outermost first (a copy).</summary>
    public int[] Shape => (int[])shape.Clone();

    /// <summary>Strides in elements (a copy).</summary>
    public int[] Strides => (int[])strides.Clone();

    /// <summary>Number of dimensions.</summary>
    public int Rank => shape.Length;

    /// <summary>Element type.</summary>
    public DType DType => Storage.DType;

    /// <summary>The backend that runs this tensor's ops.</summary>
    public IBackend Backend => Storage.Backend;

    /// <summary>Where the storage lives.</summary>
    public Device Device => Storage.Backend.Device;

    /// <summary>Size of one dimension (negative counts from the end).</summary>
    public int Size(int dim) => shape[Shapes.NormalizeDim(dim, Rank, "size")];

    /// <summary>True when the elements are laid out densely in row-major order (so a span covers them).</summary>
    public bool IsContiguous
    {
        get
        {
            int expected = 1;
            for (int i = shape.Length - 1; i >= 0; i--)
            {
                if (shape[i] == 1) continue;
                if (strides[i] != expected) return false;
                expected *= shape[i];
            }
            return true;
        }
    }

    // ---------------- autograd ----------------

    /// <summary>The op that produced this tensor, or null for a leaf.</summary>
    public Node? GradFn { get; internal set; }

    /// <summary>True for tensors created by the user rather than by a recorded op.</summary>
    public bool IsLeaf => GradFn is null;

    /// <summary>
    /// Whether gradients flow to this tensor. Settable on leaves only (as in PyTorch: an op output's
    /// flag follows its inputs).
    /// </summary>
    public bool RequiresGrad
    {
        get => requiresGrad;
        set
        {
            if (!IsLeaf) throw new InvalidOperationException("RequiresGrad can only be changed on leaf tensors; use Detach() for a non-leaf");
            if (value && !DType.IsFloat()) throw new InvalidOperationException($"only floating-point tensors can require gradients, not {DType.Name()}");
            requiresGrad = value;
        }
    }

    /// <summary>Sets <see cref="RequiresGrad"/> and returns this tensor, for chaining.</summary>
    public Tensor RequiresGrad_(bool value = true)
    {
        RequiresGrad = value;
        return this;
    }

    /// <summary>The accumulated gradient (leaves, and non-leaves after <see cref="RetainGrad"/>).</summary>
    public Tensor? Grad { get; set; }

    internal bool RetainsGrad { get; private set; }

    /// <summary>Keeps the gradient of a non-leaf tensor in <see cref="Grad"/> after backward.</summary>
    public void RetainGrad() => RetainsGrad = true;

    // The post-accumulate-grad hooks (null when none: the common case costs one null check per leaf).
    internal Action<Tensor>? PostAccumulateGradHooks;

    /// <summary>
    /// Calls <paramref name="hook"/> with this leaf each time a backward pass has accumulated into its
    /// <see cref="Grad"/> (PyTorch's <c>register_post_accumulate_grad_hook</c>): a backward adds the
    /// contributions of every use of the leaf first, so the hook sees the gradient that pass leaves. It runs on
    /// the thread running the backward; data-parallel training starts a gradient all-reduce from it while the
    /// backward goes on. Dispose the returned handle to remove the hook.
    /// </summary>
    public IDisposable RegisterPostAccumulateGradHook(Action<Tensor> hook)
    {
        ArgumentNullException.ThrowIfNull(hook);
        if (!IsLeaf) throw new InvalidOperationException("post-accumulate-grad hooks go on leaf tensors");
        PostAccumulateGradHooks += hook;
        return new HookHandle(this, hook);
    }

    private sealed class HookHandle(Tensor owner, Action<Tensor> hook) : IDisposable
    {
        public void Dispose() => owner.PostAccumulateGradHooks -= hook;
    }

    /// <summary>Clears <see cref="Grad"/>.</summary>
    public void ZeroGrad() => Grad = null;

    /// <summary>A tensor sharing this storage with no autograd history.</summary>
    public Tensor Detach() => new(Storage, shape, strides, Offset);

    /// <summary>Runs reverse-mode autograd from this tensor (a scalar unless <paramref name="gradient"/> is given).</summary>
    public void Backward(Tensor? gradient = null, bool retainGraph = false) =>
        Engine.Backward(this, gradient, retainGraph);

    internal void SetGradFn(Node node)
    {
        GradFn = node;
        requiresGrad = true;
    }
}
