// Data-loading errors: each is an InvalidDataException whose message is one line naming the file, the
// line (JSON Lines: the line; JSON array: where the record starts) and the field.
using TinyLlama.Training.Data;
using static TinyLlama.Tests.Training.DataTestUtil;

namespace TinyLlama.Tests.Training;

public class DataErrorTests
{
    private const string Good = "{\"instruction\": \"Q\", \"output\": \"a\"}";

    [Fact]
    public void MissingField_NamesFileLineAndField()
    {
        string jsonl = Good + "\n" + Good + "\n{\"instruction\": \"Q\"}\n";
        Assert.Equal("data.jsonl:3: field \"output\" is missing", ErrorOf(jsonl, SftFormat.Alpaca));
        var e = Assert.Throws<InvalidDataException>(() => Parse(jsonl, SftFormat.Alpaca));
        Assert.Equal("data.jsonl", e.Data[SftDataError.FileKey]);
        Assert.Equal(3, e.Data[SftDataError.LineKey]);
        Assert.Equal("output", e.Data[SftDataError.FieldKey]);
    }

    [Fact]
    public void MissingField_InJsonArray_NamesTheLineWhereTheRecordStarts()
    {
        string array = "[\n  " + Good + ",\n  {\n    \"input\": \"x\",\n    \"output\": \"y\"\n  }\n]";
        Assert.Equal("train.json:3: field \"instruction\" is missing", ErrorOf(array, SftFormat.Alpaca, "train.json"));
    }

    [Fact]
    public void WrongType_NamesTheField()
    {
        Assert.Equal("data.jsonl:1: field \"output\" must be a string, not a number",
            ErrorOf("{\"instruction\": \"Q\", \"output\": 5}", SftFormat.Alpaca));
        Assert.Equal("data.jsonl:2: field \"input\" must be a string, not an array",
            ErrorOf(Good + "\n{\"instruction\": \"Q\", \"input\": [], \"output\": \"a\"}", SftFormat.Alpaca));
        Assert.Equal("data.jsonl:1: field \"conversations\" must be an array, not a string",
            ErrorOf("{\"conversations\": \"hi\"}", SftFormat.ShareGpt));
        Assert.Equal("data.jsonl:1: field \"conversations[0].value\" must be a string, not null",
            ErrorOf("{\"conversations\": [{\"from\": \"human\", \"value\": null}]}", SftFormat.ShareGpt));
        Assert.Equal("data.jsonl:1: field \"quality\" must be \"good\" or \"bad\", not \"great\"",
            ErrorOf("{\"instruction\": \"Q\", \"output\": \"a\", \"quality\": \"great\"}", SftFormat.Alpaca));
        Assert.Equal("data.jsonl:2: a record must be a JSON object, not an array",
            ErrorOf(Good + "\n[1, 2]\n", SftFormat.Alpaca));
        Assert.Equal("data.json:3: a record must be a JSON object, not a number",
            ErrorOf("[\n  " + Good + ",\n  7\n]", SftFormat.Alpaca, "data.json"));
    }

    [Fact]
    public void MalformedJson_NamesFileAndLine()
    {
        string jsonl = ErrorOf(Good + "\n{\"instruction\": \"Q\", \"output\": }\n", SftFormat.Alpaca);
        Assert.StartsWith("data.jsonl:2: malformed JSON (column ", jsonl);
        Assert.DoesNotContain("\n", jsonl);

        string array = ErrorOf("[\n  " + Good + ",\n  {\"instruction\": \"Q\",\n   \"output\": \"a\" \"x\"}\n]", SftFormat.Alpaca, "train.json");
        Assert.StartsWith("train.json:4: malformed JSON (column ", array);

        string unclosed = ErrorOf("[\n  " + Good + ",\n", SftFormat.Alpaca, "train.json");
        Assert.StartsWith("train.json:", unclosed);
        Assert.Contains("malformed JSON", unclosed);

        Assert.StartsWith("train.json:2: malformed JSON", ErrorOf("[" + Good + "]\n]", SftFormat.Alpaca, "train.json"));
        Assert.Equal("empty.json: the file holds no records", ErrorOf(" \n", SftFormat.Alpaca, "empty.json"));
    }

    [Fact]
    public void UnknownRole_NamesTheTurnField()
    {
        string msg = ErrorOf("{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"bot\", \"value\": \"Yo\"}]}", SftFormat.ShareGpt);
        Assert.Equal("data.jsonl:1: field \"conversations[1].from\" has unknown role \"bot\" (expected human, user, gpt, assistant or system)", msg);
        msg = ErrorOf("{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"human\", \"value\": \"Yo\"}]}", SftFormat.ShareGpt);
        Assert.Equal("data.jsonl:1: field \"conversations[1].from\" is \"human\" but an assistant turn was expected (turns must alternate)", msg);
        // A value from the file is escaped: a role or quality holding a newline stays one line (found by the fuzz
        // harness at a million ShareGPT inputs).
        msg = ErrorOf("{\"conversations\": [{\"from\": \"hum\\nan\", \"value\": \"Hi\"}]}", SftFormat.ShareGpt);
        Assert.Equal("data.jsonl:1: field \"conversations[0].from\" has unknown role \"hum\\nan\" (expected human, user, gpt, assistant or system)", msg);
        msg = ErrorOf("{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"human\\r\", \"value\": \"Yo\"}]}", SftFormat.ShareGpt);
        Assert.DoesNotContain('\r', msg);
    }

    [Fact]
    public void UnknownFormat_NamesFileAndFormat_AndWrongFormatGivesAHint()
    {
        string path = Path.Combine(Path.GetTempPath(), $"sft-{Guid.NewGuid():N}.jsonl");
        File.WriteAllText(path, Good + "\n");
        try
        {
            var e = Assert.Throws<InvalidDataException>(() => SftDataset.Load(path, "xml", ByteTokenizer, 4096));
            Assert.Equal($"{path}: unknown data format \"xml\" (--format must be alpaca, sharegpt or auto)", e.Message);
            Assert.Equal("format", e.Data[SftDataError.FieldKey]);
            // Loading the real file goes through the same path as the in-memory parser.
            Assert.Equal(AlpacaTemplate.Tokenize(ByteTokenizer, "Q", null, "a").InputIds, SftDataset.Load(path, "alpaca", ByteTokenizer, 4096).Examples[0].InputIds);
        }
        finally { File.Delete(path); }

        Assert.Equal("data.jsonl:1: the record has neither field \"instruction\" (alpaca) nor field \"conversations\" (sharegpt)",
            ErrorOf("{\"prompt\": \"Q\"}", SftFormat.Auto));
        Assert.Equal("data.jsonl:1: field \"instruction\" is missing (the record has \"conversations\": use --format sharegpt)",
            ErrorOf("{\"conversations\": []}", SftFormat.Alpaca));
        Assert.Equal("data.jsonl:1: field \"conversations\" is missing (the record has \"instruction\": use --format alpaca)",
            ErrorOf(Good, SftFormat.ShareGpt));
    }
}
