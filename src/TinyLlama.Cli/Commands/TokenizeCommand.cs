// `tinyllama tokenize --tokenizer PATH --jsonl FILE`: encodes each line {"text": ...} of a JSON-lines
// file and prints one JSON array of token ids per line (no BOS), e.g. [450, 11148]. Other tools
// script against this output, so its shape is fixed: one line out per line in, ids separated by ", ".
using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using TinyLlama.Tokenizers;

namespace TinyLlama.Cli.Commands;

internal static class TokenizeCommand
{
    public static Command Create()
    {
        var tokenizer = new Option<string>("--tokenizer")
        {
            Description = "A SentencePiece tokenizer.model, a Hugging Face tokenizer.json, or a directory holding one",
            Required = true,
        };
        var jsonl = new Option<string>("--jsonl")
        {
            Description = "Input file, one JSON object {\"text\": \"...\"} per line",
            Required = true,
        };
        var cmd = new Command("tokenize", "Encode texts to Llama token ids: one JSON array of ids per input line.") { tokenizer, jsonl };
        cmd.SetAction(parse =>
        {
            string tokenizerPath = parse.GetValue(tokenizer)!;
            string inputPath = parse.GetValue(jsonl)!;
            if (!File.Exists(tokenizerPath) && !Directory.Exists(tokenizerPath))
                throw new CliException($"--tokenizer: not found: {tokenizerPath}");
            if (File.Exists(tokenizerPath)) TextFileOption.RequireRegular(tokenizerPath, "--tokenizer");
            var lines = new StringReader(TextFileOption.Read(inputPath, "--jsonl")); // strict UTF-8, before the tokenizer loads
            var tok = LlamaTokenizer.Load(tokenizerPath);
            var output = parse.InvocationConfiguration.Output;
            var line = new StringBuilder();
            int lineNumber = 0;
            while (lines.ReadLine() is { } text)
            {
                lineNumber++;
                string input = ReadText(text, inputPath, lineNumber);
                line.Clear().Append('[');
                int[] ids = tok.Encode(input);
                for (int i = 0; i < ids.Length; i++)
                {
                    if (i > 0) line.Append(", ");
                    line.Append(ids[i].ToString(CultureInfo.InvariantCulture));
                }
                output.WriteLine(line.Append(']').ToString());
            }
            return ExitCodes.Success;
        });
        return cmd;
    }

    /// <summary>The "text" field of one JSON line; a one-line CliException naming file:line otherwise.</summary>
    private static string ReadText(string line, string path, int lineNumber)
    {
        try
        {
            using var doc = JsonDocument.Parse(line);
            TinyLlama.Formats.JsonText.CheckEscapes(Encoding.UTF8.GetBytes(line), $"{path}:{lineNumber}");
            if (doc.RootElement.ValueKind == JsonValueKind.Object &&
                doc.RootElement.TryGetProperty("text", out var text) && text.ValueKind == JsonValueKind.String)
                return text.GetString()!;
            throw new CliException($"{path}:{lineNumber}: expected a JSON object with a string field \"text\"");
        }
        catch (InvalidOperationException) // GetString of a lone surrogate escape such as "\ud800"
        {
            throw new CliException($"{path}:{lineNumber}: the \"text\" string holds a lone surrogate escape (\\uD800-\\uDFFF without its pair), which is not text");
        }
        catch (JsonException e)
        {
            // System.Text.Json appends " LineNumber: 0 | BytePositionInLine: n." (positions within
            // this one line); report the column instead, next to the file's line number.
            string message = e.Message.ReplaceLineEndings(" ");
            int cut = message.IndexOf(" LineNumber:", StringComparison.Ordinal);
            if (cut >= 0) message = message[..cut];
            string column = e.BytePositionInLine is long b ? string.Create(CultureInfo.InvariantCulture, $" (column {b + 1})") : "";
            throw new CliException($"{path}:{lineNumber}: malformed JSON{column}: {message}");
        }
    }
}
