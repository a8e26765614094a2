// Structure-aware mutators for each file format the program reads. Each one walks a valid seed once to
// find its structure (a ByteLayout, see ByteMutator.cs) and then makes mutated copies of it:
//   safetensors   u64 header length | JSON header | data. The header is mutated as JSON (JsonMutator:
//                 dtypes, shapes, data_offsets overlapping or out of range, duplicate keys, bad UTF-8) with
//                 the length prefix rewritten to match (off by one in one input in six); or the length
//                 field, truncation at the header end and at each tensor's end, NaN/inf weights.
//                 (Format: https://github.com/huggingface/safetensors, README "Format".)
//   GGUF          magic, version, tensor and metadata counts, then key/type/value records (strings and
//                 arrays length-prefixed), tensor infos (name, n_dims, dims, type, offset), padding, data.
//                 Every length, count, type, dim and offset is an integer field; every record end a
//                 boundary. (Format: ggml's docs/gguf.md.)
//   llama2.c      seven int32 header fields, then float32 arrays; each array end is a boundary.
//   protobuf      tokenizer.model's ModelProto: every tag and length prefix is a varint field, every
//                 field end a boundary, strings (pieces) and fixed32 floats (scores) found by walking the
//                 messages that parse as messages. (Encoding: protobuf.dev/programming-guides/encoding.)
//   JSON          JsonMutator; JSON Lines: one line mutated as JSON, or lines dropped, duplicated, joined.
using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace TinyLlama.Cli.Fuzzing;

/// <summary>Makes mutated copies of one seed file.</summary>
internal interface IMutator
{
    /// <summary>The unmutated seed.</summary>
    byte[] Seed { get; }

    /// <summary>One mutated copy, deterministic from <paramref name="rng"/>'s state.</summary>
    byte[] Mutate(FuzzRandom rng);
}

/// <summary>A binary format mutated through its <see cref="ByteLayout"/>.</summary>
internal sealed class BinaryMutator(byte[] seed, ByteLayout layout) : IMutator
{
    public byte[] Seed => seed;

    public ByteLayout Layout => layout;

    public byte[] Mutate(FuzzRandom rng) => ByteMutator.Mutate(seed, layout, rng);

    /// <summary>A GGUF file.</summary>
    public static BinaryMutator Gguf(byte[] file) => new(file, FormatLayouts.Gguf(file));

    /// <summary>A llama2.c .bin.</summary>
    public static BinaryMutator Llama2C(byte[] file) => new(file, FormatLayouts.Llama2C(file));

    /// <summary>A protobuf message (tokenizer.model).</summary>
    public static BinaryMutator Protobuf(byte[] file) => new(file, FormatLayouts.Protobuf(file));
}

/// <summary>JSON documents.</summary>
internal sealed class JsonFileMutator(byte[] seed) : IMutator
{
    private readonly JsonMutator json = new(seed);

    public byte[] Seed => seed;

    public byte[] Mutate(FuzzRandom rng) => json.Mutate(rng);
}

/// <summary>JSON Lines: one record mutated as JSON, or the lines themselves.</summary>
internal sealed class JsonLinesMutator : IMutator
{
    private readonly byte[][] lines;
    private readonly JsonMutator[] records;

    public JsonLinesMutator(byte[] seed)
    {
        Seed = seed;
        lines = Encoding.UTF8.GetString(seed).Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(Encoding.UTF8.GetBytes).ToArray();
        records = lines.Select(l => new JsonMutator(l)).ToArray();
    }

    public byte[] Seed { get; }

    public byte[] Mutate(FuzzRandom rng)
    {
        var output = lines.ToList();
        int i = rng.Next(lines.Length);
        switch (rng.Next(6))
        {
            case 0: output.RemoveAt(i); break;
            case 1: output.Insert(i, lines[rng.Next(lines.Length)]); break;
            case 2: output[i] = [.. output[i], .. (i + 1 < output.Count ? output[i + 1] : [])]; if (i + 1 < output.Count) output.RemoveAt(i + 1); break;
            case 3: output.Insert(i, rng.Pick<byte[]>([[], " "u8.ToArray(), "\r"u8.ToArray(), [0xEF, 0xBB, 0xBF]])); break;
            default: output[i] = records[i].Mutate(rng); break;
        }
        var result = new List<byte>();
        foreach (var line in output) { result.AddRange(line); result.Add((byte)'\n'); }
        return [.. result];
    }
}

/// <summary>A safetensors file: its JSON header mutated as JSON, or its bytes through the layout.</summary>
internal sealed class SafetensorsMutator : IMutator
{
    private readonly JsonMutator header;
    private readonly byte[] data;
    private readonly ByteLayout layout;

    public SafetensorsMutator(byte[] seed)
    {
        Seed = seed;
        int n = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(seed));
        header = new JsonMutator(seed[8..(8 + n)]);
        data = seed[(8 + n)..];
        layout = FormatLayouts.Safetensors(seed);
    }

    public byte[] Seed { get; }

    public byte[] Mutate(FuzzRandom rng)
    {
        if (rng.OneIn(2)) return ByteMutator.Mutate(Seed, layout, rng);
        var h = header.Mutate(rng);
        // Safetensors pads the header with spaces to 8 bytes; keep that or not.
        if (rng.OneIn(2)) h = [.. h, .. Enumerable.Repeat((byte)' ', (8 - h.Length % 8) % 8)];
        long length = h.Length + (rng.OneIn(6) ? rng.Pick([-1, 1]) : 0);
        var file = new byte[8 + h.Length + data.Length];
        BinaryPrimitives.WriteInt64LittleEndian(file, length);
        h.CopyTo(file, 8);
        data.CopyTo(file, 8 + h.Length);
        return file;
    }
}

/// <summary>Walks valid seed files to find their structure.</summary>
internal static class FormatLayouts
{
    public static ByteLayout Safetensors(byte[] file)
    {
        var layout = new ByteLayout();
        int n = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(file));
        layout.Ints.Add(new IntField(0, 8, IntEncoding.LittleEndian, n));
        layout.Boundaries.AddRange([0, 8, 8 + n]);
        using var doc = JsonDocument.Parse(file.AsMemory(8, n));
        foreach (var member in doc.RootElement.EnumerateObject())
        {
            if (member.Name == "__metadata__") continue;
            var offsets = member.Value.GetProperty("data_offsets");
            int begin = 8 + n + offsets[0].GetInt32(), end = 8 + n + offsets[1].GetInt32();
            layout.Boundaries.Add(end);
            if (end - begin >= 4) layout.Floats.Add(begin);
        }
        layout.Boundaries.Sort();
        return layout;
    }

    public static ByteLayout Llama2C(byte[] file)
    {
        var layout = new ByteLayout();
        var h = new int[7];
        for (int i = 0; i < 7; i++)
        {
            h[i] = BinaryPrimitives.ReadInt32LittleEndian(file.AsSpan(4 * i));
            layout.Ints.Add(new IntField(4 * i, 4, IntEncoding.LittleEndian, h[i]));
        }
        int dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kvDim = h[4] * (dim / heads), vocab = Math.Abs(h[5]), seq = h[6];
        int hs = dim / heads;
        long[] sizes =
        [
            (long)vocab * dim, (long)layers * dim, (long)layers * dim * dim, (long)layers * kvDim * dim, (long)layers * kvDim * dim,
            (long)layers * dim * dim, (long)layers * dim, (long)layers * hidden * dim, (long)layers * dim * hidden, (long)layers * hidden * dim,
            dim, (long)seq * hs / 2, (long)seq * hs / 2, h[5] < 0 ? (long)vocab * dim : 0,
        ];
        long at = 28;
        layout.Boundaries.Add(28);
        foreach (var s in sizes)
        {
            if (s > 0) layout.Floats.Add((int)at);
            at += 4 * s;
            layout.Boundaries.Add((int)Math.Min(at, file.Length));
        }
        return layout;
    }

    public static ByteLayout Gguf(byte[] file)
    {
        var layout = new ByteLayout();
        int p = 4;
        long U(int width)
        {
            long v = width == 4 ? BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(p)) : BinaryPrimitives.ReadInt64LittleEndian(file.AsSpan(p));
            layout.Ints.Add(new IntField(p, width, IntEncoding.LittleEndian, v));
            p += width;
            return v;
        }
        void Str()
        {
            int len = (int)U(8);
            layout.Strings.Add((p, p + len));
            p += len;
        }
        void Value(uint type)
        {
            switch (type)
            {
                case 0 or 1 or 7: p += 1; break;
                case 2 or 3: p += 2; break;
                case 4 or 5: U(4); break;
                case 6: layout.Floats.Add(p); p += 4; break;
                case 8: Str(); break;
                case 9:
                    {
                        uint elem = (uint)U(4);
                        long count = U(8);
                        for (long i = 0; i < count; i++) Value(elem);
                        break;
                    }
                case 10 or 11: U(8); break;
                case 12: p += 8; break;
                default: throw new InvalidDataException($"GGUF seed: unknown value type {type}");
            }
        }
        layout.Boundaries.Add(4);
        U(4);                       // version
        long tensors = U(8), kvs = U(8);
        layout.Boundaries.Add(p);
        int alignment = 32;
        for (long i = 0; i < kvs; i++)
        {
            int keyStart = p + 8;
            Str();
            string key = Encoding.UTF8.GetString(file, keyStart, p - keyStart);
            uint type = (uint)U(4);
            if (key == "general.alignment") alignment = (int)BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(p));
            Value(type);
            layout.Boundaries.Add(p);
        }
        var offsets = new List<long>();
        for (long i = 0; i < tensors; i++)
        {
            Str();
            uint dims = (uint)U(4);
            for (uint d = 0; d < dims; d++) U(8);
            U(4);                   // ggml type
            offsets.Add(U(8));
            layout.Boundaries.Add(p);
        }
        int dataStart = (p + alignment - 1) / alignment * alignment;
        layout.Boundaries.Add(dataStart);
        foreach (var o in offsets)
        {
            layout.Boundaries.Add((int)(dataStart + o));
            if (dataStart + o + 4 <= file.Length) layout.Floats.Add((int)(dataStart + o));
        }
        layout.Boundaries.Add(file.Length);
        layout.Boundaries.Sort();
        return layout;
    }

    public static ByteLayout Protobuf(byte[] file)
    {
        var layout = new ByteLayout();
        WalkMessage(file, 0, file.Length, layout, depth: 0);
        layout.Boundaries.Sort();
        return layout;
    }

    // Records the message's fields; returns false (recording nothing more) when [start, end) is not a message.
    private static bool WalkMessage(byte[] b, int start, int end, ByteLayout layout, int depth)
    {
        int p = start;
        var found = new ByteLayout();
        while (p < end)
        {
            if (!ReadVarint(b, ref p, end, out ulong tag, out int tagStart)) return false;
            found.Ints.Add(new IntField(tagStart, p - tagStart, IntEncoding.Varint, (long)tag));
            switch ((int)(tag & 7))
            {
                case 0:
                    {
                        if (!ReadVarint(b, ref p, end, out ulong v, out int vs)) return false;
                        found.Ints.Add(new IntField(vs, p - vs, IntEncoding.Varint, (long)v));
                        break;
                    }
                case 1: if ((p += 8) > end) return false; break;
                case 5:
                    if (p + 4 > end) return false;
                    found.Floats.Add(p);
                    p += 4;
                    break;
                case 2:
                    {
                        if (!ReadVarint(b, ref p, end, out ulong len, out int ls) || len > (ulong)(end - p)) return false;
                        found.Ints.Add(new IntField(ls, p - ls, IntEncoding.Varint, (long)len));
                        int payload = p;
                        p += (int)len;
                        // A sub-message if it parses as one; otherwise a string.
                        if (depth > 2 || len == 0 || !WalkMessage(b, payload, p, found, depth + 1)) found.Strings.Add((payload, p));
                        break;
                    }
                default: return false;
            }
            if (depth <= 1) found.Boundaries.Add(p);
        }
        layout.Ints.AddRange(found.Ints);
        layout.Floats.AddRange(found.Floats);
        layout.Strings.AddRange(found.Strings);
        layout.Boundaries.AddRange(found.Boundaries);
        return true;
    }

    private static bool ReadVarint(byte[] b, ref int p, int end, out ulong value, out int start)
    {
        start = p;
        value = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            if (p >= end) return false;
            byte x = b[p++];
            value |= (ulong)(x & 0x7F) << shift;
            if ((x & 0x80) == 0) return true;
        }
        return false;
    }
}
