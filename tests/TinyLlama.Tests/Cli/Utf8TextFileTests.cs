// Strict UTF-8 for the user's text files (Formats/Utf8Text.cs, Cli/TextFileOption.cs): the first invalid byte's
// offset against a naive decoder written from Unicode's Table 3-7 and against hand-counted cases, then every
// verb that reads a text file (perplexity --file / --ids-file, quantize --calib text / .ids, tokenize --jsonl,
// sft --data) answering a file with a bad byte by exit code 1 and one line naming the file and the offset.
using System.Text;
using TinyLlama.Formats;
using TinyLlama.Tests.Infrastructure;

namespace TinyLlama.Tests.Cli;

public class Utf8TextFileTests
{
    /// <summary>Unicode 15, Table 3-7 (well-formed UTF-8 byte sequences), one sequence at a time; -1 when all valid.</summary>
    private static int NaiveFirstInvalid(byte[] b)
    {
        int i = 0;
        while (i < b.Length)
        {
            byte x = b[i];
            int n;
            byte lo = 0x80, hi = 0xBF; // the allowed range of the second byte
            if (x <= 0x7F) n = 1;
            else if (x is >= 0xC2 and <= 0xDF) n = 2;
            else if (x is >= 0xE0 and <= 0xEF) { n = 3; if (x == 0xE0) lo = 0xA0; if (x == 0xED) hi = 0x9F; }
            else if (x is >= 0xF0 and <= 0xF4) { n = 4; if (x == 0xF0) lo = 0x90; if (x == 0xF4) hi = 0x8F; }
            else return i;
            if (i + n > b.Length) return i;
            for (int k = 1; k < n; k++)
            {
                byte min = k == 1 ? lo : (byte)0x80, max = k == 1 ? hi : (byte)0xBF;
                if (b[i + k] < min || b[i + k] > max) return i;
            }
            i += n;
        }
        return -1;
    }

    private static byte[] Bytes(string latin1) => Encoding.Latin1.GetBytes(latin1);

    [Theory]
    [InlineData("abc", -1)]
    [InlineData("ab\xFF", 2)]
    [InlineData("h\xC3(", 1)]                    // a lead byte followed by ASCII
    [InlineData("\xC0\xAF", 0)]                  // overlong '/'
    [InlineData("x\xED\xA0\x80", 1)]             // a UTF-16 surrogate, U+D800
    [InlineData("ab\xE2\x82", 2)]                // cut off by the end of the file
    [InlineData("\xC3\xA9\xE2\x82\xAC\xFF", 5)]  // "é€" then a bad byte
    [InlineData("\xF4\x90\x80\x80", 0)]          // above U+10FFFF
    public void FindInvalidGivesTheHandCountedOffset(string latin1, int expected)
    {
        var bytes = Bytes(latin1);
        Assert.Equal(expected, NaiveFirstInvalid(bytes));
        Assert.Equal(expected, Utf8Text.FindInvalid(bytes));
    }

    [Theory]
    [InlineData(1000, 0, 1000)]   // far past the first 512-character chunk
    [InlineData(511, 4, 515)]     // a 4-byte character (two UTF-16 units) across the chunk boundary
    [InlineData(510, 4, 514)]
    [InlineData(0, 4, 4)]
    public void FindInvalidCountsAcrossChunks(int asciiBefore, int emojiBytes, int expected)
    {
        var bytes = new List<byte>(Enumerable.Repeat((byte)'a', asciiBefore));
        if (emojiBytes > 0) bytes.AddRange(Encoding.UTF8.GetBytes("\U0001F600"));
        bytes.Add(0xFF);
        bytes.AddRange("tail"u8.ToArray());
        Assert.Equal(expected, Utf8Text.FindInvalid(bytes.ToArray()));
    }

    [Fact]
    public void FindInvalidAgreesWithTheNaiveDecoderOnRandomBytes()
    {
        var rng = new Random(10);
        string[] pieces = ["a", "é", "€", "\U0001F600", " ", "\n"];
        for (int trial = 0; trial < 3000; trial++)
        {
            var bytes = new List<byte>();
            int parts = rng.Next(0, 700);
            for (int p = 0; p < parts; p++)
            {
                if (rng.Next(200) == 0) bytes.Add((byte)rng.Next(256)); // mostly valid text with a rare random byte
                else bytes.AddRange(Encoding.UTF8.GetBytes(pieces[rng.Next(pieces.Length)]));
            }
            var array = bytes.ToArray();
            Assert.Equal(NaiveFirstInvalid(array), Utf8Text.FindInvalid(array));
        }
    }

    [Fact]
    public void DecodeSkipsTheByteOrderMarkAndCountsItInTheOffset()
    {
        Assert.Equal("héllo", Utf8Text.Decode([0xEF, 0xBB, 0xBF, .. Encoding.UTF8.GetBytes("héllo")], "f"));
        var e = Assert.Throws<InvalidDataException>(() => Utf8Text.Decode([0xEF, 0xBB, 0xBF, (byte)'a', (byte)'b', 0xFF], "some.txt"));
        Assert.Equal("some.txt: not valid UTF-8 (byte offset 5)", e.Message);
    }

    // ---- every verb that reads a user's text file ----

    private static string BadFile(string dir, string name, byte[] content)
    {
        string path = Path.Combine(dir, name);
        File.WriteAllBytes(path, content);
        return path;
    }

    private static void AssertBadUtf8(string expectedPart, (int Code, string Out, string Err) run)
    {
        string line = CliRunner.AssertOneLineError(1, run.Code, run.Err);
        Assert.Contains(expectedPart, line);
    }

    [SkippableFact]
    public void EveryVerbThatReadsTextRejectsInvalidUtf8WithFileAndOffset()
    {
        var model = SharedData.Require("tiny-random-llama");
        var dir = Directory.CreateTempSubdirectory("tinyllama-utf8-").FullName;
        try
        {
            // "hello " then C3 28: a two-byte lead followed by '(' at offset 6.
            string text = BadFile(dir, "bad.txt", Bytes("hello \xC3( world"));
            string ids = BadFile(dir, "bad.ids", Bytes("1 450 11148\n1 \xFF 3\n"));
            string jsonl = BadFile(dir, "bad.jsonl", Bytes("{\"text\": \"fine\"}\n{\"text\": \"a\xFF" + "b\"}\n"));
            string data = BadFile(dir, "bad.json", Bytes("{\"instruction\": \"hi\", \"output\": \"ok\"}\n{\"instruction\": \"a\xFF b\", \"output\": \"c\"}\n"));

            AssertBadUtf8($"--file: {text}: not valid UTF-8 (byte offset 6)",
                CliRunner.Run("perplexity", "--model", model, "--file", text));
            AssertBadUtf8($"--ids-file: {ids}: not valid UTF-8 (byte offset 14)",
                CliRunner.Run("perplexity", "--model", model, "--ids-file", ids));
            AssertBadUtf8($"--calib: {text}: not valid UTF-8 (byte offset 6)",
                CliRunner.Run("quantize", "--model", model, "--out", Path.Combine(dir, "q.gguf"), "--type", "q4_0", "--method", "gptq", "--calib", text));
            AssertBadUtf8($"--calib: {ids}: not valid UTF-8 (byte offset 14)",
                CliRunner.Run("quantize", "--model", model, "--out", Path.Combine(dir, "q.gguf"), "--type", "q4_0", "--method", "gptq", "--calib", ids));
            Assert.False(File.Exists(Path.Combine(dir, "q.gguf")));
            AssertBadUtf8($"--jsonl: {jsonl}: not valid UTF-8 (byte offset 28)",
                CliRunner.Run("tokenize", "--tokenizer", model, "--jsonl", jsonl));
            AssertBadUtf8($"{data}:2: not valid UTF-8 (byte offset 56)",
                CliRunner.Run("sft", "--model", model, "--data", data, "--format", "alpaca", "--out", Path.Combine(dir, "out"),
                    "--batch-size", "1", "--lr", "1e-3", "--steps", "1"));
        }
        finally { Directory.Delete(dir, true); }
    }
}
