// MessageText (src/TinyLlama.Llama/Formats/MessageText.cs): file-supplied text in error messages. Each
// character class the file header lists is checked by hand against its escape; printable text of any
// script passes unchanged; the length bound never splits an escape or a surrogate pair.
using TinyLlama.Formats;

namespace TinyLlama.Tests.Formats;

public class MessageTextTests
{
    [Theory]
    [InlineData("a\nb", "a\\nb")]                 // line feed
    [InlineData("a\rb", "a\\rb")]                 // carriage return
    [InlineData("a\tb", "a\\tb")]
    [InlineData("a\0b", "a\\x00b")]               // other C0 controls
    [InlineData("\u001B[31mred", "\\x1B[31mred")] // ESC: a terminal escape sequence stays inert text
    [InlineData("a\u007Fb", "a\\x7Fb")]           // DEL
    [InlineData("a\u0085b", "a\\x85b")]           // C1 NEXT LINE, a line break to ReplaceLineEndings
    [InlineData("a\u2028b\u2029", "a\\u2028b\\u2029")] // line and paragraph separators
    [InlineData("x\u202Eyz", "x\\u202Eyz")]       // RIGHT-TO-LEFT OVERRIDE (Trojan Source)
    [InlineData("\u2066a\u2069\u061C\u200E\u200F", "\\u2066a\\u2069\\u061C\\u200E\\u200F")] // isolates, ALM, LRM, RLM
    [InlineData("a\u200Bb\uFEFF", "a\\u200Bb\\uFEFF")] // zero-width space, byte order mark
    [InlineData("a\\nb", "a\\\\nb")]              // a real backslash is doubled, so \n above is unambiguous
    [InlineData("\U000E0041", "\\U000E0041")]     // TAG LATIN CAPITAL LETTER A: a format character above the BMP
    public void EscapesEveryControlFormatAndSeparatorCharacter(string text, string expected)
    {
        Assert.Equal(expected, MessageText.Escape(text));
        Assert.Equal($"'{expected}'", MessageText.Quote(text));
    }

    [Fact]
    public void LoneSurrogatesAreEscapedAndPairsKept()
    {
        // Built in code: an attribute argument cannot hold a lone surrogate (its UTF-8 blob turns it into U+FFFD).
        Assert.Equal("a\\uD800b", MessageText.Escape("a" + '\uD800' + "b"));
        Assert.Equal("\\uDC00x", MessageText.Escape('\uDC00' + "x"));
        Assert.Equal("\\uDC00\\uD800", MessageText.Escape(new string(['\uDC00', '\uD800'])));   // the wrong order is no pair
        Assert.Equal("🦙", MessageText.Escape(new string(['\uD83E', '\uDD99'])));
    }

    [Theory]
    [InlineData("model.layers.0.self_attn.q_proj.weight")]
    [InlineData("▁Hello")]
    [InlineData("é 中文 Ελληνικά")]
    [InlineData("🦙 <0x0A> </s>")]
    [InlineData("")]
    public void PrintableTextPassesUnchanged(string text)
    {
        Assert.Equal(text, MessageText.Escape(text));
        Assert.Equal($"'{text}'", MessageText.Quote(text));
    }

    [Fact]
    public void NullIsShownAsSuch() => Assert.Equal("(null)", MessageText.Quote(null));

    [Fact]
    public void LongTextIsCutAndItsLengthSaid()
    {
        string text = new('a', 5000);
        string quoted = MessageText.Quote(text);
        Assert.Equal($"'{new string('a', MessageText.MaxChars)}...' (5000 characters)", quoted);
        Assert.Equal($"{new string('a', 20)}... (5000 characters)", MessageText.Escape(text, 20));
        // Exactly at the bound: nothing cut.
        Assert.Equal(new string('b', MessageText.MaxChars), MessageText.Escape(new string('b', MessageText.MaxChars)));
    }

    [Fact]
    public void TheCutNeverSplitsAnEscapeOrASurrogatePair()
    {
        // 9 characters, then escapes of 2 and of 6 characters, then an emoji (a surrogate pair).
        Assert.Equal("aaaaaaaaa... (11 characters)", MessageText.Escape("aaaaaaaaa\n\u202E", 10));
        Assert.Equal("aaaaaaaaa\\n... (11 characters)", MessageText.Escape("aaaaaaaaa\n\u202E", 11));
        Assert.Equal("aaaaaaaaa... (11 characters)", MessageText.Escape("aaaaaaaaa🦙", 10));
        Assert.Equal("aaaaaaaaa🦙", MessageText.Escape("aaaaaaaaa🦙", 11));
    }

    [Fact]
    public void OutputIsOneLineOfBoundedLengthForAnyText()
    {
        var rng = new Random(13);
        for (int trial = 0; trial < 500; trial++)
        {
            var chars = new char[rng.Next(400)];
            for (int i = 0; i < chars.Length; i++) chars[i] = (char)(rng.Next(4) == 0 ? rng.Next(0x20) : rng.Next(0x10000));
            string quoted = MessageText.Quote(new string(chars));
            Assert.DoesNotContain('\n', quoted);
            Assert.Equal(quoted, quoted.ReplaceLineEndings(" "));
            Assert.True(quoted.Length <= MessageText.MaxChars + 40, $"{quoted.Length} characters");
            for (int i = 0; i < quoted.Length; i++)
            {
                Assert.False(char.IsControl(quoted[i]), $"U+{(int)quoted[i]:X4} passed through");
                if (char.IsHighSurrogate(quoted[i])) Assert.True(char.IsSurrogatePair(quoted, i++), "a lone high surrogate passed through");
                else Assert.False(char.IsLowSurrogate(quoted[i]), "a lone low surrogate passed through");
            }
        }
    }
}
