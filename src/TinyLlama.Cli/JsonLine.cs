// One-line JSON objects in the layout the CLI documents: {"key": value, "key": value}.
// Values are serialised by System.Text.Json (so strings are escaped correctly); only the separators
// are ours, to match the documented examples byte for byte.
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace TinyLlama.Cli;

internal static class JsonLine
{
    private static readonly JsonSerializerOptions Options = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>{"k1": v1, "k2": v2} from (key, value) pairs; doubles are written round-trippable.</summary>
    public static string Format(params (string Key, object? Value)[] fields)
    {
        var sb = new StringBuilder("{");
        for (int i = 0; i < fields.Length; i++)
        {
            if (i > 0) sb.Append(", ");
            sb.Append(JsonSerializer.Serialize(fields[i].Key, Options)).Append(": ");
            sb.Append(fields[i].Value switch
            {
                double d when double.IsFinite(d) => d.ToString("R", CultureInfo.InvariantCulture),
                double => "null",
                IEnumerable<int> ids => "[" + string.Join(", ", ids) + "]",
                var v => JsonSerializer.Serialize(v, Options),
            });
        }
        return sb.Append('}').ToString();
    }
}
