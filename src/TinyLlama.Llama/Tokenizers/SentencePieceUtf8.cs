// UTF-8 decoding exactly as SentencePiece does it when it turns byte-fallback pieces back into text
// (util.cc DecodeUTF8 / IsValidDecodeUTF8 and SentencePieceProcessor::Decode's ProcessBytePieces).
//
// SentencePiece looks at one character at a time: a lead byte announces a length of 1-4 bytes; the
// character is valid when that many bytes are present, the trailing ones are 10xxxxxx, the code
// point is not overlong, not a surrogate (U+D800..DFFF) and at most U+10FFFF. An invalid start
// costs exactly one byte and produces one U+FFFD, and decoding resumes at the next byte. (.NET's
// Encoding.UTF8 replaces "maximal subparts" instead, so E2 82 followed by 'A' gives one U+FFFD
// there but two here; to decode as Llama does we need our own loop.)
using System.Text;

namespace TinyLlama.Tokenizers;

internal static class SentencePieceUtf8
{
    /// <summary>The length a lead byte announces (SentencePiece's masks), or 0 for a byte that cannot start a character.</summary>
    public static int AnnouncedLength(byte lead) =>
        lead < 0x80 ? 1 :
        (lead & 0xE0) == 0xC0 ? 2 :
        (lead & 0xF0) == 0xE0 ? 3 :
        (lead & 0xF8) == 0xF0 ? 4 : 0;

    private static bool IsTrail(byte b) => (b & 0xC0) == 0x80;

    private static bool IsValidCodePoint(int c) => c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF);

    /// <summary>
    /// Decodes the character at the start of <paramref name="bytes"/>; false (SentencePiece's
    /// "invalid, consumed 1") when it is not a complete, valid UTF-8 character.
    /// </summary>
    public static bool TryDecode(ReadOnlySpan<byte> bytes, out int codePoint, out int length)
    {
        codePoint = 0xFFFD;
        length = 1;
        byte b0 = bytes[0];
        int n = AnnouncedLength(b0);
        if (n == 1)
        {
            codePoint = b0;
            return true;
        }
        if (n == 0 || bytes.Length < n) return false;
        int cp;
        switch (n)
        {
            case 2:
                if (!IsTrail(bytes[1])) return false;
                cp = ((b0 & 0x1F) << 6) | (bytes[1] & 0x3F);
                if (cp < 0x80) return false;
                break;
            case 3:
                if (!IsTrail(bytes[1]) || !IsTrail(bytes[2])) return false;
                cp = ((b0 & 0x0F) << 12) | ((bytes[1] & 0x3F) << 6) | (bytes[2] & 0x3F);
                if (cp < 0x800) return false;
                break;
            default:
                if (!IsTrail(bytes[1]) || !IsTrail(bytes[2]) || !IsTrail(bytes[3])) return false;
                cp = ((b0 & 0x07) << 18) | ((bytes[1] & 0x3F) << 12) | ((bytes[2] & 0x3F) << 6) | (bytes[3] & 0x3F);
                if (cp < 0x10000) return false;
                break;
        }
        if (!IsValidCodePoint(cp)) return false;
        codePoint = cp;
        length = n;
        return true;
    }

    /// <summary>
    /// Appends the text of a run of byte pieces. With <paramref name="final"/> false, stops before a
    /// character that may still be completed by bytes yet to come and returns how many bytes it used;
    /// with <paramref name="final"/> true, uses them all (incomplete characters become U+FFFD).
    /// </summary>
    public static int Append(StringBuilder sb, ReadOnlySpan<byte> bytes, bool final)
    {
        int offset = 0;
        while (offset < bytes.Length)
        {
            var rest = bytes[offset..];
            int announced = AnnouncedLength(rest[0]);
            if (!final && announced > rest.Length && AllTrail(rest[1..]))
                break; // a prefix of a character: wait for the rest
            if (TryDecode(rest, out int cp, out int len))
            {
                if (cp < 0x10000) sb.Append((char)cp);
                else
                {
                    // A code point above the BMP is two UTF-16 units, appended together so no
                    // output ever holds half of a surrogate pair.
                    cp -= 0x10000;
                    sb.Append((char)(0xD800 + (cp >> 10))).Append((char)(0xDC00 + (cp & 0x3FF)));
                }
                offset += len;
            }
            else
            {
                sb.Append('\uFFFD');
                offset += 1;
            }
        }
        return offset;

        static bool AllTrail(ReadOnlySpan<byte> b)
        {
            foreach (byte x in b)
                if (!IsTrail(x)) return false;
            return true;
        }
    }
}
