// The judge's input files, JSON Lines (or a JSON array) read by SftRecordReader, so every problem is one
// line "file:line: ...":
//   questions: {"id": "q1" or 1, "question": "...", "answer": "..." (optional: the reference answer)}
//   answers:   {"id": "q1" or 1, "answer": "..."}, one per question, matched by id (MT-bench's model answer
//              files carry question_id the same way).
// Ids are strings or integers (an integer id 7 and a string id "7" are the same question). A repeated id,
// an answer for no question is an error naming the file and line; a question with no answer names the
// answers file and the question's id.
using System.Text.Json;
using TinyLlama.Training.Data;

namespace TinyLlama.Training.Judging;

/// <summary>Reads the judge's questions and answers files.</summary>
public static class JudgeFiles
{
    /// <summary>The questions in <paramref name="path"/>, in file order.</summary>
    public static IReadOnlyList<JudgeQuestion> ReadQuestions(string path)
    {
        var questions = new List<JudgeQuestion>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        SftRecordReader.ForEachInFile(path, (record, ctx) =>
        {
            string id = Id(record, ctx);
            if (!seen.Add(id)) throw ctx.Error("id", $"\"{Escape(id)}\" is repeated");
            questions.Add(new JudgeQuestion(id, ctx.RequireString(record, "question"), ctx.OptionalString(record, "answer")));
        });
        return questions;
    }

    /// <summary>
    /// The answers in <paramref name="path"/> by question id; every one of <paramref name="questions"/> (read
    /// from <paramref name="questionsPath"/>) must have exactly one and every answer must belong to one of them.
    /// </summary>
    public static IReadOnlyDictionary<string, string> ReadAnswers(string path, string questionsPath, IReadOnlyList<JudgeQuestion> questions)
    {
        ArgumentNullException.ThrowIfNull(questions);
        var ids = questions.Select(q => q.Id).ToHashSet(StringComparer.Ordinal);
        var answers = new Dictionary<string, string>(StringComparer.Ordinal);
        SftRecordReader.ForEachInFile(path, (record, ctx) =>
        {
            string id = Id(record, ctx);
            string answer = ctx.RequireString(record, "answer");
            if (!ids.Contains(id)) throw ctx.Error("id", $"\"{Escape(id)}\" is not a question in {questionsPath}");
            if (!answers.TryAdd(id, answer)) throw ctx.Error("id", $"\"{Escape(id)}\" is answered twice");
        });
        foreach (var q in questions)
            if (!answers.ContainsKey(q.Id))
                throw SftDataError.At(path, 0, null, $"no answer for question \"{Escape(q.Id)}\" of {questionsPath}");
        return answers;
    }

    private static string Id(JsonElement record, RecordContext ctx)
    {
        if (!record.TryGetProperty("id", out var id)) throw ctx.Error("id", "is missing");
        return id.ValueKind switch
        {
            JsonValueKind.String => id.GetString()!,
            JsonValueKind.Number when id.TryGetInt64(out long n) => n.ToString(System.Globalization.CultureInfo.InvariantCulture),
            _ => throw ctx.Error("id", $"must be a string or an integer, not {RecordContext.Describe(id.ValueKind)}{(id.ValueKind == JsonValueKind.Number ? " with a fraction or out of range" : "")}"),
        };
    }

    private static string Escape(string s) => TinyLlama.Formats.MessageText.Escape(s);
}
