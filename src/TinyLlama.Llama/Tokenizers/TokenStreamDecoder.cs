// Incremental decoding for generation: ids arrive one at a time and text should appear as soon as
// it is complete. Two things make this more than "decode each id alone":
//   - a character outside the vocabulary arrives as 2-4 byte pieces (<0xF0> <0x9F> <0xA6> <0x99>
//     for 🦙); its bytes are held back until the character is complete, so no output ever holds half
//     a UTF-8 sequence or half a UTF-16 surrogate pair;
//   - only the first visible piece loses the space the dummy prefix added, as in Decode.
// The rules are those of LlamaTokenizer.Decode (SentencePiece's), applied with bytes held back, so
// the concatenation of every Push result and a final Flush equals Decode(all ids).
using System.Text;

namespace TinyLlama.Tokenizers;

/// <summary>
/// Turns token ids, fed one at a time, into text. Create one per sequence with
/// <see cref="LlamaTokenizer.CreateStreamDecoder"/>; not thread-safe.
/// </summary>
public sealed class TokenStreamDecoder
{
    private readonly LlamaTokenizer _tokenizer;
    private readonly byte[] _pending = new byte[4]; // bytes of an unfinished character (at most 3 wait)
    private int _pendingCount;
    private LlamaTokenizer.LeadingSpaceState _state;
    private bool _producedText;
    private readonly StringBuilder _sb = new();

    internal TokenStreamDecoder(LlamaTokenizer tokenizer) => _tokenizer = tokenizer;

    /// <summary>Feeds one id; returns the text that is now complete (often empty while bytes wait).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The id is outside the vocabulary.</exception>
    public string Push(int id)
    {
        _sb.Clear();
        int b = _tokenizer.GetByteValue(id);
        if (b >= 0)
        {
            _pending[_pendingCount++] = (byte)b;
            DrainBytes(final: false);
        }
        else
        {
            // A non-byte piece ends the byte run: whatever waits is now final (U+FFFD if incomplete).
            DrainBytes(final: true);
            _sb.Append(_tokenizer.DecodePiece(id, ref _state, _producedText || _sb.Length > 0));
        }
        if (_sb.Length > 0) _producedText = true;
        return _sb.ToString();
    }

    /// <summary>Ends the sequence: returns any held-back bytes as text (U+FFFD for an incomplete character).</summary>
    public string Flush()
    {
        _sb.Clear();
        DrainBytes(final: true);
        if (_sb.Length > 0) _producedText = true;
        return _sb.ToString();
    }

    /// <summary>Forgets everything, ready for a new sequence.</summary>
    public void Reset()
    {
        _pendingCount = 0;
        _state = default;
        _producedText = false;
    }

    private void DrainBytes(bool final)
    {
        if (_pendingCount == 0) return;
        int used = SentencePieceUtf8.Append(_sb, _pending.AsSpan(0, _pendingCount), final);
        // Keep the unused tail (a prefix of one character, so at most 3 bytes) at the front.
        _pending.AsSpan(used, _pendingCount - used).CopyTo(_pending);
        _pendingCount -= used;
    }
}
