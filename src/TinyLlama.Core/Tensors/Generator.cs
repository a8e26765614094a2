// A seeded random number generator that gives the same numbers on every machine:
// SplitMix64 expands the seed into xoshiro256** state (Blackman and Vigna, 2018); uniforms use the top
// 24 (f32) or 53 (f64) bits; normals come from the Box-Muller transform computed in double.
namespace TinyLlama.Tensors;

/// <summary>Deterministic pseudo-random generator (xoshiro256**), independent of System.Random's algorithm.</summary>
public sealed class Generator
{
    private ulong s0, s1, s2, s3;
    private double? spareNormal;

    /// <summary>Seeds the state from a 64-bit seed.</summary>
    public Generator(ulong seed) => Reseed(seed);

    /// <summary>The generator used when none is given; reseed it with <see cref="ManualSeed"/>.</summary>
    public static Generator Default { get; } = new(0);

    /// <summary>Reseeds <see cref="Default"/>, like torch.manual_seed.</summary>
    public static void ManualSeed(ulong seed) => Default.Reseed(seed);

    /// <summary>Resets the state from a seed.</summary>
    public void Reseed(ulong seed)
    {
        ulong x = seed;
        s0 = SplitMix(ref x); s1 = SplitMix(ref x); s2 = SplitMix(ref x); s3 = SplitMix(ref x);
        spareNormal = null;
    }

    /// <summary>The full state, so a training checkpoint can restore it exactly.</summary>
    public ulong[] GetState() => [s0, s1, s2, s3, spareNormal is double d ? (ulong)BitConverter.DoubleToInt64Bits(d) : 0, spareNormal.HasValue ? 1UL : 0UL];

    /// <summary>Restores a state from <see cref="GetState"/>.</summary>
    public void SetState(ulong[] state)
    {
        if (state.Length != 6) throw new ArgumentException("generator state must have 6 words");
        (s0, s1, s2, s3) = (state[0], state[1], state[2], state[3]);
        spareNormal = state[5] != 0 ? BitConverter.Int64BitsToDouble((long)state[4]) : null;
    }

    private static ulong SplitMix(ref ulong x)
    {
        ulong z = x += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>The next 64 random bits.</summary>
    public ulong NextUInt64()
    {
        ulong result = ulong.RotateLeft(s1 * 5, 7) * 9;
        ulong t = s1 << 17;
        s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3;
        s2 ^= t;
        s3 = ulong.RotateLeft(s3, 45);
        return result;
    }

    /// <summary>Uniform in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));

    /// <summary>Uniform in [0, 1) with 24 random bits.</summary>
    public float NextSingle() => (NextUInt64() >> 40) * (1.0f / (1 << 24));

    /// <summary>Uniform integer in [0, n).</summary>
    public int NextInt(int n)
    {
        if (n <= 0) throw new ArgumentOutOfRangeException(nameof(n));
        return (int)((NextUInt64() >> 32) * (ulong)n >> 32);
    }

    /// <summary>Standard normal by Box-Muller; the second value of each pair is kept for the next call.</summary>
    public double NextNormal()
    {
        if (spareNormal is double s)
        {
            spareNormal = null;
            return s;
        }
        double u1 = 1.0 - NextDouble(); // (0, 1]
        double u2 = NextDouble();
        double r = Math.Sqrt(-2.0 * Math.Log(u1));
        double theta = 2.0 * Math.PI * u2;
        spareNormal = r * Math.Sin(theta);
        return r * Math.Cos(theta);
    }
}
