// The byte-level half of the fuzz harness's mutation engine (the JSON half is JsonMutator.cs): a seeded
// generator, a description of where a seed file's structure lies (ByteLayout: the offsets where one record
// ends and the next begins, the integer fields that hold lengths, counts, offsets and type codes, the
// UTF-8 strings and the float fields), and the mutations that use it: truncation at every structural
// boundary, integer fields set to 0, -1, huge and off-by-one values, varints re-encoded with another value
// (protobuf's length prefixes), invalid UTF-8 and NaN/infinity written into strings and floats, plus the
// structure-blind ones every fuzzer has (bit flips, byte insertion and deletion, chunk duplication).
//
// Everything is deterministic from (seed, input index): FuzzRandom is SplitMix64 (Steele, Lea and Flood,
// "Fast splittable pseudorandom number generators", OOPSLA 2014), so a failing input can be rebuilt from
// the two numbers the report prints. The layouts themselves come from FormatLayouts.cs.
using System.Buffers.Binary;

namespace TinyLlama.Cli.Fuzzing;

/// <summary>SplitMix64: a tiny, fast, seedable generator (the same sequence on every platform).</summary>
internal sealed class FuzzRandom(ulong seed)
{
    private ulong state = seed;

    /// <summary>The generator for input <paramref name="index"/> of a run with <paramref name="seed"/>.</summary>
    public static FuzzRandom ForInput(ulong seed, long index) => new(seed * 0x9E3779B97F4A7C15UL ^ (ulong)index * 0xD1B54A32D192ED03UL);

    public ulong NextU64()
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, n) (n > 0).</summary>
    public int Next(int n) => (int)(NextU64() % (ulong)n);

    /// <summary>True with probability 1/n.</summary>
    public bool OneIn(int n) => Next(n) == 0;

    public T Pick<T>(IReadOnlyList<T> items) => items[Next(items.Count)];
}

/// <summary>How an integer field is stored.</summary>
internal enum IntEncoding { LittleEndian, Varint }

/// <summary>An integer field of a binary file: where it is, how wide, how encoded.</summary>
/// <param name="Offset">First byte.</param>
/// <param name="Width">Bytes (1, 2, 4, 8 for little-endian; the encoded length for a varint).</param>
/// <param name="Encoding">Little-endian two's complement or protobuf base-128 varint.</param>
/// <param name="Value">The value the seed holds (for off-by-one mutations).</param>
internal readonly record struct IntField(int Offset, int Width, IntEncoding Encoding, long Value);

/// <summary>Where a seed file's structure lies; every list may be empty.</summary>
internal sealed class ByteLayout
{
    /// <summary>Offsets where a structural unit ends (header end, each record, each tensor's data).</summary>
    public List<int> Boundaries { get; } = [];

    /// <summary>Lengths, counts, offsets, dimensions, type codes.</summary>
    public List<IntField> Ints { get; } = [];

    /// <summary>UTF-8 text spans (keys, names, pieces): [start, end).</summary>
    public List<(int Start, int End)> Strings { get; } = [];

    /// <summary>Offsets of 4-byte little-endian floats (scores, weights).</summary>
    public List<int> Floats { get; } = [];
}

/// <summary>Byte-level mutations, structure-aware where a <see cref="ByteLayout"/> says where things are.</summary>
internal static class ByteMutator
{
    /// <summary>Byte sequences that are never valid UTF-8 (stray continuation, lone lead, overlong, surrogate, beyond U+10FFFF, 0xFF).</summary>
    public static readonly byte[][] InvalidUtf8 =
    [
        [0x80], [0xC3], [0xC0, 0x80], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xFF], [0xE2, 0x82],
    ];

    /// <summary>Applies 1-3 mutations, each chosen among those the layout allows.</summary>
    public static byte[] Mutate(byte[] seed, ByteLayout layout, FuzzRandom rng)
    {
        byte[] data = seed;
        int rounds = 1 + (rng.OneIn(3) ? rng.Next(3) : 0);
        for (int r = 0; r < rounds; r++)
        {
            // After the first change the layout's offsets may no longer hold; later rounds are blind ones.
            data = r == 0 ? MutateOnce(data, layout, rng) : Blind(data, rng);
        }
        return data;
    }

    private static byte[] MutateOnce(byte[] data, ByteLayout layout, FuzzRandom rng)
    {
        switch (rng.Next(10))
        {
            case 0 or 1 when layout.Ints.Count > 0:
                return SetInt(data, rng.Pick(layout.Ints), rng);
            case 2 when layout.Boundaries.Count > 0:
                {
                    int at = Math.Min(rng.Pick(layout.Boundaries), data.Length);
                    // Exactly at the boundary, or one byte either side of it.
                    at = Math.Clamp(at + rng.Next(3) - 1, 0, data.Length);
                    return data[..at];
                }
            case 3 when layout.Strings.Count > 0:
                return BreakString(data, rng.Pick(layout.Strings), rng);
            case 4 when layout.Floats.Count > 0:
                {
                    int at = rng.Pick(layout.Floats);
                    float[] bad = [float.NaN, float.PositiveInfinity, float.NegativeInfinity, float.MaxValue, -0f, 1e-45f];
                    var copy = (byte[])data.Clone();
                    BinaryPrimitives.WriteSingleLittleEndian(copy.AsSpan(at), rng.Pick(bad));
                    return copy;
                }
            case 5 when layout.Boundaries.Count > 1:
                {
                    // Duplicate or drop one whole structural unit (between two consecutive boundaries).
                    var b = layout.Boundaries;
                    int i = rng.Next(b.Count - 1);
                    int start = Math.Min(b[i], data.Length), end = Math.Min(b[i + 1], data.Length);
                    if (start >= end) return Blind(data, rng);
                    return rng.OneIn(2)
                        ? [.. data.AsSpan(0, end), .. data.AsSpan(start, end - start), .. data.AsSpan(end)]
                        : [.. data.AsSpan(0, start), .. data.AsSpan(end)];
                }
            default:
                return Blind(data, rng);
        }
    }

    /// <summary>Mutations that know nothing of the format.</summary>
    public static byte[] Blind(byte[] data, FuzzRandom rng)
    {
        if (data.Length == 0) return [(byte)rng.Next(256)];
        var copy = (byte[])data.Clone();
        switch (rng.Next(6))
        {
            case 0: // flip 1-8 bits
                for (int i = 1 + rng.Next(8); i > 0; i--) copy[rng.Next(copy.Length)] ^= (byte)(1 << rng.Next(8));
                return copy;
            case 1: // overwrite a byte with an interesting value
                copy[rng.Next(copy.Length)] = rng.Pick<byte>([0x00, 0xFF, 0x7F, 0x80, 0x01, (byte)'"', (byte)'{', (byte)'\\']);
                return copy;
            case 2: // insert 1-4 random bytes
                {
                    int at = rng.Next(data.Length + 1);
                    var ins = new byte[1 + rng.Next(4)];
                    for (int i = 0; i < ins.Length; i++) ins[i] = (byte)rng.Next(256);
                    return [.. data.AsSpan(0, at), .. ins, .. data.AsSpan(at)];
                }
            case 3: // delete 1-16 bytes
                {
                    int at = rng.Next(data.Length), n = Math.Min(1 + rng.Next(16), data.Length - at);
                    return [.. data.AsSpan(0, at), .. data.AsSpan(at + n)];
                }
            case 4: // truncate anywhere
                return data[..rng.Next(data.Length)];
            default: // append garbage
                {
                    var tail = new byte[1 + rng.Next(16)];
                    for (int i = 0; i < tail.Length; i++) tail[i] = (byte)rng.Next(256);
                    return [.. data, .. tail];
                }
        }
    }

    /// <summary>The values a length, count, offset or type field is set to: 0, -1, huge, off by one, random.</summary>
    public static long InterestingInt(long current, FuzzRandom rng) => rng.Next(12) switch
    {
        0 => 0,
        1 => -1,
        2 => current + 1,
        3 => current - 1,
        4 => int.MaxValue,
        5 => (long)int.MaxValue + 1,
        6 => uint.MaxValue,
        7 => long.MaxValue,
        8 => 1L << 40,
        9 => current * 2,
        10 => rng.Next(64),
        _ => (long)rng.NextU64(),
    };

    private static byte[] SetInt(byte[] data, IntField field, FuzzRandom rng)
    {
        long value = InterestingInt(field.Value, rng);
        if (field.Encoding == IntEncoding.LittleEndian)
        {
            var copy = (byte[])data.Clone();
            var span = copy.AsSpan(field.Offset, field.Width);
            switch (field.Width)
            {
                case 1: span[0] = (byte)value; break;
                case 2: BinaryPrimitives.WriteInt16LittleEndian(span, (short)value); break;
                case 4: BinaryPrimitives.WriteInt32LittleEndian(span, (int)value); break;
                default: BinaryPrimitives.WriteInt64LittleEndian(span, value); break;
            }
            return copy;
        }
        // A varint is re-encoded, so the file grows or shrinks by the difference (as a real writer would).
        var encoded = Varint((ulong)value);
        return [.. data.AsSpan(0, field.Offset), .. encoded, .. data.AsSpan(field.Offset + field.Width)];
    }

    /// <summary>Protobuf base-128 varint encoding (negative values take 10 bytes, as protobuf writes them).</summary>
    public static byte[] Varint(ulong value)
    {
        var bytes = new List<byte>(10);
        do
        {
            byte b = (byte)(value & 0x7F);
            value >>= 7;
            bytes.Add(value != 0 ? (byte)(b | 0x80) : b);
        } while (value != 0);
        return [.. bytes];
    }

    // Invalid UTF-8 inside a text span: replaces one position's bytes, or is inserted there.
    private static byte[] BreakString(byte[] data, (int Start, int End) span, FuzzRandom rng)
    {
        var bad = rng.Pick(InvalidUtf8);
        int at = span.Start + (span.End > span.Start ? rng.Next(span.End - span.Start) : 0);
        if (rng.OneIn(2) && at + bad.Length <= span.End)
        {
            var copy = (byte[])data.Clone();
            bad.CopyTo(copy, at);
            return copy;
        }
        // Inserted: the length prefix no longer matches, which is a mutation of its own.
        return [.. data.AsSpan(0, at), .. bad, .. data.AsSpan(at)];
    }
}
