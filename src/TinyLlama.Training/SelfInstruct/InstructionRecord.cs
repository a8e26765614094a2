// Alpaca records ({"instruction", "input", "output"}, tatsu-lab/stanford_alpaca's alpaca_data.json fields)
// as Self-Instruct reads its seed tasks and writes what it generated. Seed files are read by
// SftRecordReader (JSON array or JSON Lines, errors as "file:line: ..."); output is JSON Lines, one record a
// line, written atomically (TensorFileIO.WriteAtomically: a temporary renamed over the target).
using System.Text.Encodings.Web;
using System.Text.Json;
using TinyLlama.Formats;
using TinyLlama.Training.Data;

namespace TinyLlama.Training.SelfInstruct;

/// <summary>One Alpaca record; <paramref name="Input"/> is "" for a task without input.</summary>
public sealed record InstructionRecord(string Instruction, string Input, string Output)
{
    /// <summary>
    /// The seed tasks in <paramref name="path"/> (JSON array or JSON Lines): "instruction" and "output" strings,
    /// an optional "input" string. A problem is one <see cref="InvalidDataException"/> line "file:line: ...".
    /// </summary>
    public static IReadOnlyList<InstructionRecord> ReadAll(string path)
    {
        var records = new List<InstructionRecord>();
        SftRecordReader.ForEachInFile(path, (record, ctx) =>
        {
            string instruction = ctx.RequireString(record, "instruction");
            string input = ctx.OptionalString(record, "input") ?? "";
            string output = ctx.RequireString(record, "output");
            if (instruction.Trim().Length == 0) throw ctx.Error("instruction", "is empty");
            records.Add(new InstructionRecord(instruction, input, output));
        });
        return records;
    }

    /// <summary>Writes <paramref name="records"/> as Alpaca JSON Lines to <paramref name="path"/>, atomically.</summary>
    public static void WriteJsonLines(string path, IEnumerable<InstructionRecord> records)
    {
        ArgumentNullException.ThrowIfNull(records);
        TensorFileIO.WriteAtomically(path, stream =>
        {
            var options = new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
            foreach (var r in records)
            {
                using (var writer = new Utf8JsonWriter(stream, options))
                {
                    writer.WriteStartObject();
                    writer.WriteString("instruction", r.Instruction);
                    writer.WriteString("input", r.Input);
                    writer.WriteString("output", r.Output);
                    writer.WriteEndObject();
                }
                stream.WriteByte((byte)'\n');
            }
        });
    }
}
