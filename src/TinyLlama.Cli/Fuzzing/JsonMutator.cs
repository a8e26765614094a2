// The JSON half of the fuzz harness's mutation engine: structure-aware mutations of a JSON document
// (config.json, tokenizer.json, adapter_config.json, an index file, a safetensors header, trainer state,
// Alpaca and ShareGPT records). The seed is parsed once into a tree; each input re-serializes it with one
// node, chosen uniformly in pre-order, written differently:
//   any value   -> 0, -1, 2^31, 2^63, 2^64, 1e309, -1e309, 1e-400, 1.5, "", null, true, [], {}, a lone
//                  surrogate escape, nesting 65 / 257 / 10,000 levels deep, or a copy of another value
//                  of the same kind (for data_offsets: overlapping or out-of-range ranges);
//   number      -> off by one either way, doubled, negated, quoted, given a fraction;
//   string      -> invalid UTF-8 bytes written raw into it, "\ud800" or "\udc00" escapes, "\u0000",
//                  10,000 characters, another string of the document, a dtype / type name;
//   object      -> a member duplicated (duplicate keys, same or another value), dropped, or added with an
//                  invalid UTF-8 or lone-surrogate key;
//   array       -> an element dropped, duplicated, two swapped, the order reversed, emptied.
// One input in eight instead damages the serialized text blindly (ByteMutator.Blind), and one in ten
// cuts it at a token boundary. Strings are written with their non-ASCII characters raw (as tokenizer.json
// files are), so invalid bytes land inside real UTF-8 text.
using System.Buffers;
using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace TinyLlama.Cli.Fuzzing;

/// <summary>A parsed JSON seed and the structure-aware mutations of it.</summary>
internal sealed class JsonMutator
{
    private static readonly JsonSerializerOptions Raw = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private static readonly string[] Scalars =
    [
        "0", "-1", "2147483648", "9223372036854775808", "18446744073709551616", "1e309", "-1e309", "1e-400", "1.5", "-0",
        "\"\"", "null", "true", "[]", "{}", "\"\\ud800\"", "\"x\\udc00\"",
    ];

    private static readonly string[] Names =
    [
        "F32", "F16", "BF16", "F64", "I32", "I64", "I8", "U8", "BOOL", "F8_E4M3", "Q4_0", "LORA", "BPE", "Unigram", "llama",
        "all-linear", "q_proj", "none", "human", "gpt", "system",
    ];

    private readonly JsonNode? root;
    private readonly List<JsonNode?> nodes = [];

    /// <summary>Parses <paramref name="seed"/> (valid JSON) once.</summary>
    public JsonMutator(byte[] seed)
    {
        Seed = seed;
        root = JsonNode.Parse(seed, documentOptions: new JsonDocumentOptions { MaxDepth = 1024 });
        Collect(root);
    }

    /// <summary>The seed's bytes.</summary>
    public byte[] Seed { get; }

    private void Collect(JsonNode? node)
    {
        nodes.Add(node);
        if (node is JsonObject o) foreach (var (_, v) in o) Collect(v);
        else if (node is JsonArray a) foreach (var v in a) Collect(v);
    }

    /// <summary>One mutated document.</summary>
    public byte[] Mutate(FuzzRandom rng)
    {
        if (rng.OneIn(8)) return ByteMutator.Mutate(Seed, new ByteLayout(), rng);
        if (rng.OneIn(10)) return CutAtToken(Seed, rng);
        var w = new Writer(this, rng.Next(nodes.Count), rng);
        w.Node(root);
        return w.Output.WrittenSpan.ToArray();
    }

    // A prefix ending just before or after a structural character.
    private static byte[] CutAtToken(byte[] text, FuzzRandom rng)
    {
        var cuts = new List<int>();
        for (int i = 0; i < text.Length; i++)
            if (text[i] is (byte)'{' or (byte)'}' or (byte)'[' or (byte)']' or (byte)',' or (byte)':' or (byte)'"') cuts.Add(i + rng.Next(2));
        return cuts.Count == 0 ? [] : text[..Math.Min(rng.Pick(cuts), text.Length)];
    }

    private sealed class Writer(JsonMutator owner, int target, FuzzRandom rng)
    {
        private int index;

        public ArrayBufferWriter<byte> Output { get; } = new();

        private void Text(string s) => Encoding.UTF8.GetBytes(s, Output);

        private void Bytes(ReadOnlySpan<byte> b) => Output.Write(b);

        private void Key(string key) { Text(JsonSerializer.Serialize(key, Raw)); Text(":"); }

        public void Node(JsonNode? node)
        {
            if (index++ == target) { Mutated(node); return; }
            Plain(node);
        }

        // The node as it is, its children still counted (one of them may be the target).
        private void Plain(JsonNode? node)
        {
            switch (node)
            {
                case JsonObject o:
                    Text("{");
                    bool first = true;
                    foreach (var (k, v) in o)
                    {
                        if (!first) Text(",");
                        first = false;
                        Key(k);
                        Node(v);
                    }
                    Text("}");
                    break;
                case JsonArray a:
                    Text("[");
                    for (int i = 0; i < a.Count; i++)
                    {
                        if (i > 0) Text(",");
                        Node(a[i]);
                    }
                    Text("]");
                    break;
                default:
                    Text(node is null ? "null" : node.ToJsonString(Raw));
                    break;
            }
        }

        // A subtree written without counting (copies of other nodes).
        private void Copy(JsonNode? node) => Text(node is null ? "null" : node.ToJsonString(Raw));

        private void Mutated(JsonNode? node)
        {
            var kind = node?.GetValueKind() ?? JsonValueKind.Null;
            int choice = rng.Next(4);
            if (choice == 0) { Generic(kind); return; }
            switch (kind)
            {
                case JsonValueKind.Number: NumberOp(node!.ToJsonString()); return;
                case JsonValueKind.String: StringOp(node!.GetValue<string>()); return;
                case JsonValueKind.Object: ObjectOp((JsonObject)node!); return;
                case JsonValueKind.Array: ArrayOp((JsonArray)node!); return;
                default: Generic(kind); return;
            }
        }

        private void Generic(JsonValueKind kind)
        {
            switch (rng.Next(3))
            {
                case 0:
                    Text(rng.Pick(Scalars));
                    return;
                case 1:
                    {
                        int depth = rng.Pick([65, 257, 10_000]);
                        bool objects = rng.OneIn(2);
                        for (int i = 0; i < depth; i++) Text(objects ? "{\"a\":" : "[");
                        Text("0");
                        for (int i = 0; i < depth; i++) Text(objects ? "}" : "]");
                        return;
                    }
                default:
                    {
                        // Another value of the same kind from elsewhere in the document.
                        var same = owner.nodes.Where(n => (n?.GetValueKind() ?? JsonValueKind.Null) == kind).ToList();
                        Copy(rng.Pick(same));
                        return;
                    }
            }
        }

        private void NumberOp(string raw)
        {
            double.TryParse(raw, NumberStyles.Float, CultureInfo.InvariantCulture, out double x);
            long n = double.IsFinite(x) && Math.Abs(x) < 9e18 ? (long)x : 0;
            string s = rng.Next(7) switch
            {
                0 => (n + 1).ToString(CultureInfo.InvariantCulture),
                1 => (n - 1).ToString(CultureInfo.InvariantCulture),
                2 => (n * 2).ToString(CultureInfo.InvariantCulture),
                3 => (-n).ToString(CultureInfo.InvariantCulture),
                4 => "\"" + raw + "\"",
                5 => raw + ".5",
                _ => ByteMutator.InterestingInt(n, rng).ToString(CultureInfo.InvariantCulture),
            };
            Text(s);
        }

        private void StringOp(string value)
        {
            int at = value.Length == 0 ? 0 : rng.Next(value.Length + 1);
            if (at > 0 && at < value.Length && char.IsLowSurrogate(value[at])) at--;
            string head = JsonBody(value[..at]), tail = JsonBody(value[at..]);
            switch (rng.Next(6))
            {
                case 0:
                    Text("\"" + head); Bytes(rng.Pick(ByteMutator.InvalidUtf8)); Text(tail + "\"");
                    return;
                case 1:
                    Text("\"" + head + rng.Pick(["\\ud800", "\\udc00", "\\udbff\\u0041", "\\u0000"]) + tail + "\"");
                    return;
                case 2:
                    Text("\"" + new string('a', 10_000) + "\"");
                    return;
                case 3:
                    Text(JsonSerializer.Serialize(rng.Pick(Names), Raw));
                    return;
                case 4:
                    Text("\"" + head + "\"");     // shortened
                    return;
                default:
                    Generic(JsonValueKind.String);
                    return;
            }
        }

        private static string JsonBody(string s) { string q = JsonSerializer.Serialize(s, Raw); return q[1..^1]; }

        private void ObjectOp(JsonObject o)
        {
            var members = o.ToList();
            Text("{");
            int pick = members.Count == 0 ? -1 : rng.Next(members.Count);
            int op = rng.Next(5);
            bool first = true;
            void Sep() { if (!first) Text(","); first = false; }
            for (int i = 0; i < members.Count; i++)
            {
                var (k, v) = members[i];
                if (i == pick && op == 0) continue;                               // dropped
                Sep(); Key(k); Copy(v);
                if (i == pick && op == 1) { Sep(); Key(k); Copy(v); }             // duplicate key, same value
                if (i == pick && op == 2) { Sep(); Key(k); Text(rng.Pick(Scalars)); } // duplicate key, another value
            }
            if (op == 3) { Sep(); Text("\""); Bytes(rng.Pick(ByteMutator.InvalidUtf8)); Text("\":1"); }
            if (op == 4) { Sep(); Text("\"\\ud800\":1"); }
            Text("}");
        }

        private void ArrayOp(JsonArray a)
        {
            var items = a.ToList();
            int n = items.Count;
            switch (rng.Next(5))
            {
                case 0 when n > 0: items.RemoveAt(rng.Next(n)); break;
                case 1 when n > 0: items.Insert(rng.Next(n), items[rng.Next(n)]); break;
                case 2 when n > 1: { int i = rng.Next(n), j = rng.Next(n); (items[i], items[j]) = (items[j], items[i]); break; }
                case 3: items.Reverse(); break;
                default: items.Clear(); break;
            }
            Text("[");
            for (int i = 0; i < items.Count; i++) { if (i > 0) Text(","); Copy(items[i]); }
            Text("]");
        }
    }
}
