// Whether ops record autograd history on the current thread; NoGrad() turns recording off in a scope.
namespace TinyLlama.Autograd;

/// <summary>Thread-local switch for recording ops onto the autograd graph.</summary>
public static class GradMode
{
    [ThreadStatic] private static int disabledDepth;

    /// <summary>True unless inside a <see cref="NoGrad"/> scope.</summary>
    public static bool IsEnabled => disabledDepth == 0;

    /// <summary>Disables recording until the returned scope is disposed: <c>using var _ = GradMode.NoGrad();</c></summary>
    public static Scope NoGrad()
    {
        disabledDepth++;
        return new Scope();
    }

    /// <summary>
    /// Enables recording until the returned scope is disposed, even inside a NoGrad scope (activation
    /// checkpointing recomputes a block with autograd while the outer backward runs without it).
    /// </summary>
    public static EnableScope Enable()
    {
        var scope = new EnableScope(disabledDepth);
        disabledDepth = 0;
        return scope;
    }

    /// <summary>Restores the previous state when disposed.</summary>
    public readonly struct EnableScope(int saved) : IDisposable
    {
        public void Dispose() => disabledDepth = saved;
    }

    /// <summary>Restores recording when disposed.</summary>
    public readonly struct Scope : IDisposable
    {
        public void Dispose() => disabledDepth--;
    }
}
