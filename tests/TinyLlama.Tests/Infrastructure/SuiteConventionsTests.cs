// Conventions of the suite itself, checked on the compiled tests.
//
// Skip.If / Skip.IfNot throw Xunit.SkipException, which only a [SkippableFact] or [SkippableTheory] reports as
// skipped; under a plain [Fact] or [Theory] it reports a failure. Five Q4_0 prefill tests had that mix, so on a
// machine without AVX2 they failed where they meant to skip (seen with DOTNET_EnableAVX=0). The check reads
// each test method's IL for a call to a Skip method.
using System.Reflection;
using System.Reflection.Emit;

namespace TinyLlama.Tests.Infrastructure;

public class SuiteConventionsTests
{
    [Fact]
    public void EveryTestThatCanSkipIsSkippable()
    {
        var offenders = new List<string>();
        int checkedMethods = 0;
        foreach (var type in typeof(SuiteConventionsTests).Assembly.GetTypes())
            foreach (var method in type.GetMethods(BindingFlags.Instance | BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            {
                // Exactly [Fact] or [Theory]: the Skippable attributes derive from them.
                bool plain = method.GetCustomAttributes().Any(a => a.GetType() == typeof(FactAttribute) || a.GetType() == typeof(TheoryAttribute));
                if (!plain) continue;
                checkedMethods++;
                if (CallsSkip(method)) offenders.Add($"{type.FullName}.{method.Name}");
            }
        Assert.True(checkedMethods > 100, $"only {checkedMethods} test methods found");
        Assert.True(offenders.Count == 0, "Skip.If under a plain [Fact]/[Theory] fails instead of skipping; use [SkippableFact]/[SkippableTheory]: " + string.Join(", ", offenders));
    }

    [Fact]
    public void TheSkipCheckFindsACallToSkip()
    {
        Assert.True(CallsSkip(typeof(SuiteConventionsTests).GetMethod(nameof(Sample), BindingFlags.NonPublic | BindingFlags.Static)!));
        Assert.True(CallsSkip(typeof(SuiteConventionsTests).GetMethod(nameof(AsyncSample), BindingFlags.NonPublic | BindingFlags.Static)!));
        Assert.False(CallsSkip(typeof(SuiteConventionsTests).GetMethod(nameof(TheSkipCheckFindsACallToSkip))!));
    }

    private static void Sample(bool absent) => Skip.If(absent, "a sample that skips");

    private static async Task AsyncSample(bool absent)
    {
        await Task.Yield();
        Skip.If(absent, "a sample that skips after an await");
    }

    // True when the method's IL (an async method's: its state machine's MoveNext) calls a method of Xunit.Skip
    // (call or callvirt with a method token).
    private static bool CallsSkip(MethodInfo method)
    {
        if (method.GetCustomAttribute<System.Runtime.CompilerServices.AsyncStateMachineAttribute>() is { } async
            && async.StateMachineType.GetMethod("MoveNext", BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public) is { } moveNext)
            method = moveNext;
        var il = method.GetMethodBody()?.GetILAsByteArray();
        if (il is null) return false;
        for (int i = 0; i + 4 < il.Length; i++)
        {
            if (il[i] != OpCodes.Call.Value && il[i] != OpCodes.Callvirt.Value) continue;
            int token = BitConverter.ToInt32(il, i + 1);
            if ((token >> 24) is not (0x0A or 0x06 or 0x2B)) continue; // MemberRef, MethodDef, MethodSpec
            try
            {
                if (method.Module.ResolveMethod(token, method.DeclaringType?.GetGenericArguments(), method.GetGenericArguments())?.DeclaringType == typeof(Skip)) return true;
            }
            catch (ArgumentException) { } // a byte that only looked like a call opcode
        }
        return false;
    }
}
