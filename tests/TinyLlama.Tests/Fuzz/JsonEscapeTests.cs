// The unclean class the fuzz harness found in every JSON reader: a string escape that decodes to a lone
// UTF-16 surrogate ("\ud800", "\udc00") is well-formed JSON, and System.Text.Json's GetString then threw
// InvalidOperationException (a stack trace); adapter_config.json was also read without a UTF-8 check
// ("Cannot transcode invalid UTF-8"), and config.json decoded invalid bytes to U+FFFD. Now each reader
// refuses such a file with one InvalidDataException naming it. JsonText's scan is checked by hand first.
using System.Text;
using TinyLlama.Cli;
using TinyLlama.Cli.Fuzzing;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Tests.Formats;
using TinyLlama.Training.Data;
using TinyLlama.Training.Lora;

namespace TinyLlama.Tests.Fuzz;

public class JsonEscapeTests
{
    [Theory]
    [InlineData("""{"a": "x"}""", -1)]
    [InlineData("""{"a": "\ud83e\udd99"}""", -1)]          // a paired surrogate (🦙): fine
    [InlineData("""{"a": "\\ud800"}""", -1)]               // an escaped backslash, then text
    [InlineData("""{"a": "\u00e9\n\"\ud800"}""", 17)]      // after other escapes
    [InlineData("""{"a": "\ud800"}""", 7)]                 // high with nothing after
    [InlineData("""{"a": "\ud800\u0041"}""", 7)]           // high followed by a non-surrogate
    [InlineData("""{"a": "\udc00x"}""", 7)]                // low with no high before it
    [InlineData("""{"\udbff": 1}""", 2)]                    // in a key
    [InlineData("""{"a": "x\ud800""", 8)]                  // cut off
    public void FindLoneSurrogateEscape_HandChecked(string json, int expected) =>
        Assert.Equal(expected, JsonText.FindLoneSurrogateEscape(Encoding.UTF8.GetBytes(json)));

    [Fact]
    public void SafetensorsHeaderNameWithLoneSurrogate()
    {
        using var dir = new TempDir();
        string path = dir.File("model.safetensors");
        FormatTestUtil.WriteRawSafetensors(path, """{"w\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}""", new byte[4]);
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path));
        FormatTestUtil.AssertMessage(e, path, "\\ud800", "lone UTF-16 surrogate");
    }

    [Fact]
    public void ConfigJsonWithLoneSurrogateOrInvalidUtf8()
    {
        using var dir = new TempDir();
        string path = dir.File("config.json");
        File.WriteAllText(path, FuzzSeeds.Config.ToJson().Replace("\"llama\"", "\"lla\\udc00ma\""));
        FormatTestUtil.AssertMessage(Assert.Throws<InvalidDataException>(() => LlamaConfig.FromJson(path)), path, "\\udc00");
        var bytes = Encoding.UTF8.GetBytes(FuzzSeeds.Config.ToJson().Replace("\"llama\"", "\"lla#ma\""));
        bytes[Array.IndexOf(bytes, (byte)'#')] = 0xFF;
        File.WriteAllBytes(path, bytes);
        FormatTestUtil.AssertMessage(Assert.Throws<InvalidDataException>(() => LlamaConfig.FromJson(path)), path, "not valid UTF-8");
    }

    [Fact]
    public void IndexWeightMapWithLoneSurrogate()
    {
        using var dir = new TempDir();
        string path = dir.File(Checkpoint.IndexName);
        File.WriteAllText(path, """{"weight_map": {"model.norm.weight": "model-\ud800.safetensors"}}""");
        FormatTestUtil.AssertMessage(Assert.Throws<InvalidDataException>(() => Checkpoint.LoadSharded(path)), path, "\\ud800");
    }

    [Fact]
    public void AdapterConfigWithInvalidUtf8OrLoneSurrogate()
    {
        using var dir = new TempDir();
        string path = dir.File(PeftAdapter.ConfigFileName);
        var bytes = Encoding.UTF8.GetBytes("""{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj#"]}""");
        bytes[Array.IndexOf(bytes, (byte)'#')] = 0xC3;
        File.WriteAllBytes(path, bytes);
        FormatTestUtil.AssertMessage(Assert.Throws<InvalidDataException>(() => PeftAdapter.ReadConfig(dir.Path)), path, "not valid UTF-8");
        File.WriteAllText(path, """{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj\ud800"]}""");
        FormatTestUtil.AssertMessage(Assert.Throws<InvalidDataException>(() => PeftAdapter.ReadConfig(dir.Path)), path, "\\ud800");
    }

    [Theory]
    [InlineData("data.jsonl", "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"x\\udc00\", \"output\": \"b\"}\n", 2)]
    [InlineData("data.json", "[\n{\"conversations\": [{\"from\": \"human\", \"value\": \"\\ud800\"}, {\"from\": \"gpt\", \"value\": \"b\"}]}\n]", 2)]
    public void SftDataWithLoneSurrogate(string name, string content, int line)
    {
        using var dir = new TempDir();
        string path = dir.File(name);
        File.WriteAllText(path, content);
        var e = Assert.Throws<InvalidDataException>(() => SftDataset.Load(path, "auto", FuzzSeeds.ByteTokenizer(), 64));
        FormatTestUtil.AssertMessage(e, $"{path}:{line}", "lone UTF-16 surrogate");
    }

    [Fact]
    public void TokenizerJsonWithABrokenLiteralIsOneBoundedLine()
    {
        // Found by the fuzz suite: System.Text.Json quoted the rest of the (indented) file in its message.
        using var dir = new TempDir();
        string path = dir.File("tokenizer.json");
        var text = Encoding.UTF8.GetString(FuzzSeeds.TokenizerJson()).Replace("\"fuse_unk\": true", "\"fuse_unk\": tr\ne");
        File.WriteAllText(path, text);
        var e = Assert.Throws<InvalidDataException>(() => TinyLlama.Tokenizers.LlamaTokenizer.Load(path));
        FormatTestUtil.AssertMessage(e, path, "not valid JSON");
        Assert.True(e.Message.Length < 300 + path.Length + 40, e.Message);
    }

    [Fact]
    public void TokenizeJsonlWithLoneSurrogateIsOneLine()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("tokenizer.model"), FuzzSeeds.SentencePieceModel());
        string input = dir.File("in.jsonl");
        File.WriteAllText(input, "{\"text\": \"ok\"}\n{\"text\": \"\\ud800\"}\n");
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = Program.Run(["tokenize", "--tokenizer", dir.File("tokenizer.model"), "--jsonl", input], stdout, stderr);
        Assert.Equal(ExitCodes.Failure, code);
        string err = stderr.ToString().TrimEnd();
        Assert.DoesNotContain('\n', err);
        Assert.Contains($"{input}:2", err);
    }
}
