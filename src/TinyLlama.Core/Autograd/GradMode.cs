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

    /// <summary>Restores recording when disposed.</summary>
    public readonly struct Scope : IDisposable
    {
        public void Dispose() => disabledDepth--;
    }
}
