// A minimal reader for the protocol-buffers wire format, just enough to read SentencePiece's
// ModelProto (tokenizer.model) without a protobuf library.
//
// The wire format (https://protobuf.dev/programming-guides/encoding/): a message is a sequence of
// fields, each a "tag" varint (field number << 3 | wire type) followed by the value:
//   wire type 0  VARINT  base-128 little-endian integer, 7 bits per byte, high bit = "more bytes";
//                        int32 -1 is sign-extended to 64 bits and so takes 10 bytes
//   wire type 1  I64     8 bytes little-endian (double, fixed64)
//   wire type 2  LEN     a varint length, then that many bytes (string, bytes, nested message)
//   wire type 5  I32     4 bytes little-endian (float, fixed32)
// Wire types 3 and 4 (proto2 groups) are obsolete and unused by SentencePiece; we reject them.
// A reader that does not know a field skips it using only its wire type, which is what makes old
// readers work on newer files. Every read is bounds-checked and every loop consumes at least one
// byte, so corrupt input ends in an InvalidDataException, never an IndexOutOfRange or a hang.
using System.Buffers.Binary;
using System.Text;

namespace TinyLlama.Tokenizers;

/// <summary>Protobuf wire types (the low 3 bits of a tag).</summary>
internal enum WireType
{
    Varint = 0,
    Fixed64 = 1,
    LengthDelimited = 2,
    StartGroup = 3,
    EndGroup = 4,
    Fixed32 = 5,
}

/// <summary>
/// Reads one protobuf message from a byte span. Errors throw <see cref="InvalidDataException"/>
/// naming the source (a file name) and the absolute byte offset.
/// </summary>
internal ref struct ProtoReader
{
    private readonly ReadOnlySpan<byte> _data;
    private readonly string _source;
    private readonly int _baseOffset; // offset of _data[0] in the whole file, for error messages
    private int _pos;

    // Strings in protobuf must be UTF-8; a throwing decoder turns garbage into a clear error.
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    public ProtoReader(ReadOnlySpan<byte> data, string source, int baseOffset = 0)
    {
        _data = data;
        _source = source;
        _baseOffset = baseOffset;
        _pos = 0;
    }

    /// <summary>True when the whole message has been read.</summary>
    public readonly bool AtEnd => _pos >= _data.Length;

    /// <summary>Absolute offset of the next byte (for error messages).</summary>
    public readonly int Offset => _baseOffset + _pos;

    /// <summary>Reads the next tag; false at the end of the message.</summary>
    public bool TryReadTag(out int field, out WireType wireType)
    {
        if (AtEnd)
        {
            field = 0;
            wireType = 0;
            return false;
        }
        int at = Offset;
        ulong tag = ReadVarint();
        if (tag > uint.MaxValue) throw Fail($"field tag {tag} is too large", at);
        field = (int)(tag >> 3);
        wireType = (WireType)(tag & 7);
        if (field == 0) throw Fail("field number 0 is not allowed", at);
        if (wireType is not (WireType.Varint or WireType.Fixed64 or WireType.LengthDelimited or WireType.Fixed32))
            throw Fail($"unsupported wire type {(int)wireType} for field {field}", at);
        return true;
    }

    /// <summary>Reads a base-128 varint (at most 10 bytes).</summary>
    public ulong ReadVarint()
    {
        int start = _pos;
        ulong result = 0;
        for (int shift = 0; shift < 70; shift += 7)
        {
            if (_pos >= _data.Length) throw Fail("truncated varint", _baseOffset + start);
            byte b = _data[_pos++];
            result |= (ulong)(b & 0x7F) << shift;
            if (b < 0x80) return result;
        }
        throw Fail("varint longer than 10 bytes", _baseOffset + start);
    }

    /// <summary>Reads a varint holding an int32 (negative values arrive sign-extended to 64 bits).</summary>
    public int ReadInt32() => unchecked((int)ReadVarint());

    /// <summary>Reads a varint holding a bool.</summary>
    public bool ReadBool() => ReadVarint() != 0;

    /// <summary>Reads a little-endian IEEE float (wire type 5).</summary>
    public float ReadFloat()
    {
        if (_data.Length - _pos < 4) throw Fail("truncated float", Offset);
        float value = BinaryPrimitives.ReadSingleLittleEndian(_data.Slice(_pos, 4));
        _pos += 4;
        return value;
    }

    /// <summary>Reads a length-delimited field's bytes; <paramref name="start"/> is their absolute offset.</summary>
    public ReadOnlySpan<byte> ReadBytes(out int start)
    {
        int at = Offset;
        ulong length = ReadVarint();
        if (length > (ulong)(_data.Length - _pos))
            throw Fail($"length {length} runs past the end of the data (truncated?)", at);
        start = Offset;
        var bytes = _data.Slice(_pos, (int)length);
        _pos += (int)length;
        return bytes;
    }

    /// <summary>Reads a length-delimited UTF-8 string.</summary>
    public string ReadString(string what)
    {
        var bytes = ReadBytes(out int start);
        try
        {
            return StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            throw Fail($"{what} is not valid UTF-8", start);
        }
    }

    /// <summary>Reads a nested message: a reader over its bytes that reports absolute offsets.</summary>
    public ProtoReader ReadMessage()
    {
        var bytes = ReadBytes(out int start);
        return new ProtoReader(bytes, _source, start);
    }

    /// <summary>Skips a field this reader does not know, using only its wire type.</summary>
    public void Skip(WireType wireType)
    {
        switch (wireType)
        {
            case WireType.Varint: ReadVarint(); break;
            case WireType.Fixed64: Advance(8); break;
            case WireType.Fixed32: Advance(4); break;
            case WireType.LengthDelimited: ReadBytes(out _); break;
            default: throw Fail($"cannot skip wire type {(int)wireType}", Offset);
        }
    }

    /// <summary>Throws unless a known field arrived with the wire type its declaration implies.</summary>
    public readonly void Expect(int field, WireType actual, WireType expected, string name)
    {
        if (actual != expected)
            throw Fail($"field {name} (#{field}) has wire type {(int)actual}, expected {(int)expected}", Offset);
    }

    private void Advance(int count)
    {
        if (_data.Length - _pos < count) throw Fail("truncated fixed-size field", Offset);
        _pos += count;
    }

    /// <summary>The exception for a problem at an absolute byte offset.</summary>
    public readonly InvalidDataException Fail(string problem, int offset) =>
        new($"{_source}: {problem} at byte {offset}");
}
