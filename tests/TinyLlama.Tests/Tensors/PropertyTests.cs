// FsCheck properties: broadcasting rules, view round trips, and elementwise results through views.
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using TinyLlama.Tensors;

namespace TinyLlama.Tests.Tensors;

public class PropertyTests
{
    private static Gen<int[]> SmallShape(int maxRank) =>
        Gen.Choose(0, maxRank).SelectMany(rank => Gen.Choose(1, 4).ArrayOf(rank));

    [Property(MaxTest = 200)]
    public Property BroadcastFollowsNumPyRules()
    {
        var gen = SmallShape(4).SelectMany(a => SmallShape(4).Select(b => (a, b)));
        return Prop.ForAll(gen.ToArbitrary(), pair =>
        {
            var (a, b) = pair;
            // Expected by the rule: align right; equal, or one of them 1.
            int n = Math.Max(a.Length, b.Length);
            bool ok = true;
            var expected = new int[n];
            for (int i = 0; i < n; i++)
            {
                int da = i < n - a.Length ? 1 : a[i - (n - a.Length)];
                int db = i < n - b.Length ? 1 : b[i - (n - b.Length)];
                if (da != db && da != 1 && db != 1) ok = false;
                expected[i] = Math.Max(da, db);
            }
            var ta = Tensor.Zeros(a);
            var tb = Tensor.Zeros(b);
            if (!ok) return Throws(() => { _ = ta + tb; });
            return (ta + tb).Shape.SequenceEqual(expected);
        });
    }

    private static bool Throws(Action a)
    {
        try { a(); return false; }
        catch (ArgumentException) { return true; }
    }

    [Property(MaxTest = 100)]
    public Property PermuteThenInversePermuteIsIdentity()
    {
        var gen = SmallShape(4).Where(s => s.Length > 0).SelectMany(shape =>
            Gen.Shuffle(Enumerable.Range(0, shape.Length).ToArray()).Select(p => (shape, perm: p.ToArray())));
        return Prop.ForAll(gen.ToArbitrary(), x =>
        {
            var t = Tensor.RandN(x.shape, new Generator(1));
            var inverse = new int[x.perm.Length];
            for (int i = 0; i < x.perm.Length; i++) inverse[x.perm[i]] = i;
            var back = t.Permute(x.perm).Permute(inverse);
            return back.Shape.SequenceEqual(t.Shape) && back.ToArray<float>().SequenceEqual(t.ToArray<float>());
        });
    }

    [Property(MaxTest = 100)]
    public Property ReshapeRoundTripAndRowMajorOrder()
    {
        var gen = SmallShape(4).Where(s => s.Length > 0).SelectMany(shape =>
            Gen.Shuffle(Enumerable.Range(0, shape.Length).ToArray()).Select(p => (shape, perm: p.ToArray())));
        return Prop.ForAll(gen.ToArbitrary(), x =>
        {
            // Reshape of a permuted (non-contiguous) tensor to 1-D then back gives the same values.
            var t = Tensor.Arange(Shapes.Numel(x.shape)).Reshape(x.shape).Permute(x.perm);
            var flat = t.Reshape(-1);
            var back = flat.Reshape(t.Shape);
            return back.ToArray<float>().SequenceEqual(t.ToArray<float>()) && flat.ToArray<float>().SequenceEqual(t.Contiguous().ToArray<float>());
        });
    }

    [Property(MaxTest = 100)]
    public Property ElementwiseOnViewsEqualsElementwiseOnCopies()
    {
        var gen = SmallShape(3).Where(s => s.Length >= 2);
        return Prop.ForAll(gen.ToArbitrary(), shape =>
        {
            var a = Tensor.RandN(shape, new Generator(2)).Transpose(0, -1);
            var b = Tensor.RandN(shape, new Generator(3)).Transpose(0, -1);
            // Products and sums are exact either way, so they must agree bit for bit. Exp on a strided
            // row runs the scalar MathF.Exp while a dense row runs TensorPrimitives' SIMD exp; the two
            // may differ by about one ulp, so exp is compared at 1e-6 relative.
            var exact = (a * b + a).ToArray<float>().SequenceEqual((a.Contiguous() * b.Contiguous() + a.Contiguous()).ToArray<float>());
            var e1 = a.Exp().ToArray<float>();
            var e2 = a.Contiguous().Exp().ToArray<float>();
            return exact && e1.Zip(e2).All(p => Math.Abs(p.First - p.Second) <= 1e-6 * Math.Abs(p.Second));
        });
    }
}
