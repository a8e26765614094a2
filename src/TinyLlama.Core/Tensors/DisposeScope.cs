// Deterministic release of device memory, after TorchSharp's `torch.NewDisposeScope()`: while a scope is
// open on a thread, every storage that holds releasable memory (an ILGPU device buffer; CPU arrays belong to
// the GC and are not tracked) created on that thread is recorded in it, and disposing the scope releases
// them all at once. A training step opened in a scope hands its activations, gradients and temporaries back
// to the device's pool when it ends, so a long run never waits on the finalizer for its memory.
//
// Rules:
//  - Scopes nest (a thread-static stack); a storage belongs to the innermost open scope.
//  - MoveToOuter(tensor) hands a result's storage to the enclosing scope (or to nobody, the GC, when there
//    is none): the way to return a tensor from a scoped computation.
//  - DisposeScope.Untracked() opens a region whose allocations no scope records: for state that must
//    outlive the step that first needs it (optimizer moments, RoPE tables, caches grown on demand).
//  - Disposing releases storages no matter which tensors still view them: a later use of such a tensor
//    throws ObjectDisposedException naming the released storage rather than reading freed memory.
namespace TinyLlama.Tensors;

/// <summary>
/// Records the releasable storages created on this thread while it is open and releases them on
/// <see cref="Dispose"/> (TorchSharp's <c>DisposeScope</c>). Open one with <see cref="Tensor.NewDisposeScope"/>.
/// </summary>
public sealed class DisposeScope : IDisposable
{
    [ThreadStatic] private static DisposeScope? current;

    private readonly DisposeScope? outer;
    private readonly bool tracking;
    private HashSet<IDisposable>? owned = new(ReferenceEqualityComparer.Instance);

    private DisposeScope(bool tracking)
    {
        this.tracking = tracking;
        outer = current;
        current = this;
    }

    /// <summary>Opens a scope on the calling thread (it must be disposed on the same thread).</summary>
    internal static DisposeScope Open() => new(tracking: true);

    /// <summary>
    /// Opens a region in which no scope records new storages (they are left to whoever keeps them, and to the
    /// GC): for long-lived state first created inside a scoped step, such as optimizer moments or caches.
    /// </summary>
    public static IDisposable Untracked() => new DisposeScope(tracking: false);

    /// <summary>The innermost scope open on this thread, or null.</summary>
    public static DisposeScope? Current => current;

    /// <summary>Storages this scope will release.</summary>
    public int Count => owned?.Count ?? 0;

    /// <summary>Called by every storage's constructor: records it in the innermost open scope that tracks.</summary>
    internal static void Track(Storage storage)
    {
        if (storage is not IDisposable disposable) return;
        var scope = current;
        if (scope is { tracking: true, owned: not null }) scope.owned.Add(disposable);
    }

    /// <summary>
    /// Hands <paramref name="tensor"/>'s storage to the enclosing scope (or to nobody when there is none), so
    /// it survives this scope's disposal; returns the tensor.
    /// </summary>
    public Tensor MoveToOuter(Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (owned is null) throw new ObjectDisposedException(nameof(DisposeScope));
        if (tensor.Storage is IDisposable d && owned.Remove(d))
        {
            var target = outer;
            while (target is { tracking: false }) target = target.outer;
            target?.owned?.Add(d);
        }
        return tensor;
    }

    /// <summary>Takes <paramref name="tensor"/>'s storage out of every scope: its owner must release it.</summary>
    public Tensor Detach(Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (owned is null) throw new ObjectDisposedException(nameof(DisposeScope));
        if (tensor.Storage is IDisposable d) owned.Remove(d);
        return tensor;
    }

    /// <summary>Closes the scope and releases every storage it still holds. Scopes close innermost first.</summary>
    public void Dispose()
    {
        var held = owned;
        if (held is null) return;
        if (!ReferenceEquals(current, this))
            throw new InvalidOperationException("dispose scopes must be closed innermost first, on the thread that opened them");
        current = outer;
        owned = null;
        foreach (var d in held) d.Dispose();
    }
}
