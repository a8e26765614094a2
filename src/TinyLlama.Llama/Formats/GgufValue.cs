// GGUF metadata values: the 13 value types of the format and a typed value that holds any of them.
//
// The type ids are the format's own (ggml's gguf.h `enum gguf_type`, documented in ggml/docs/gguf.md):
// 0 uint8, 1 int8, 2 uint16, 3 int16, 4 uint32, 5 int32, 6 float32, 7 bool, 8 string, 9 array,
// 10 uint64, 11 int64, 12 float64. An array names one element type and may hold arrays (each inner
// array with its own element type), so a value is a tree; arrays of numbers are kept as CLR arrays
// (a 32,000-entry float array is one float[]), arrays of arrays as GgufArray[].
using System.Globalization;

namespace TinyLlama.Formats;

/// <summary>The type of a GGUF metadata value (the format's type ids).</summary>
public enum GgufValueType : uint
{
    /// <summary>byte</summary>
    UInt8 = 0,
    /// <summary>sbyte</summary>
    Int8 = 1,
    /// <summary>ushort</summary>
    UInt16 = 2,
    /// <summary>short</summary>
    Int16 = 3,
    /// <summary>uint</summary>
    UInt32 = 4,
    /// <summary>int</summary>
    Int32 = 5,
    /// <summary>float</summary>
    Float32 = 6,
    /// <summary>bool, one byte 0 or 1</summary>
    Bool = 7,
    /// <summary>UTF-8 string with a uint64 byte length</summary>
    String = 8,
    /// <summary>element type, uint64 count, elements (<see cref="GgufArray"/>)</summary>
    Array = 9,
    /// <summary>ulong</summary>
    UInt64 = 10,
    /// <summary>long</summary>
    Int64 = 11,
    /// <summary>double</summary>
    Float64 = 12,
}

/// <summary>
/// A GGUF array: an element type and the elements, as a CLR array of the matching type (byte[], sbyte[],
/// ushort[], short[], uint[], int[], float[], bool[], string[], ulong[], long[], double[], or GgufArray[]
/// for an array of arrays).
/// </summary>
public sealed class GgufArray : IEquatable<GgufArray>
{
    /// <summary>Wraps <paramref name="items"/> (not copied); the element type follows from the CLR element type.</summary>
    public GgufArray(Array items)
    {
        ArgumentNullException.ThrowIfNull(items);
        Items = items;
        ElementType = TypeOfElement(items.GetType().GetElementType()!)
            ?? throw new ArgumentException($"a GGUF array cannot hold {items.GetType().GetElementType()!.Name} elements");
    }

    /// <summary>The type of every element.</summary>
    public GgufValueType ElementType { get; }

    /// <summary>The elements (see the class summary for the CLR type of each element type).</summary>
    public Array Items { get; }

    /// <summary>Number of elements.</summary>
    public int Count => Items.Length;

    internal static GgufValueType? TypeOfElement(Type t) =>
        t == typeof(byte) ? GgufValueType.UInt8 : t == typeof(sbyte) ? GgufValueType.Int8
        : t == typeof(ushort) ? GgufValueType.UInt16 : t == typeof(short) ? GgufValueType.Int16
        : t == typeof(uint) ? GgufValueType.UInt32 : t == typeof(int) ? GgufValueType.Int32
        : t == typeof(float) ? GgufValueType.Float32 : t == typeof(bool) ? GgufValueType.Bool
        : t == typeof(string) ? GgufValueType.String : t == typeof(GgufArray) ? GgufValueType.Array
        : t == typeof(ulong) ? GgufValueType.UInt64 : t == typeof(long) ? GgufValueType.Int64
        : t == typeof(double) ? GgufValueType.Float64 : null;

    /// <summary>Same element type and equal elements (floats compared bit for bit, so NaN equals itself).</summary>
    public bool Equals(GgufArray? other)
    {
        if (other is null || other.ElementType != ElementType || other.Count != Count) return false;
        for (int i = 0; i < Count; i++)
            if (!GgufValue.ItemEquals(Items.GetValue(i)!, other.Items.GetValue(i)!)) return false;
        return true;
    }

    /// <inheritdoc/>
    public override bool Equals(object? obj) => Equals(obj as GgufArray);

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(ElementType, Count);

    /// <inheritdoc/>
    public override string ToString() => $"{ElementType}[{Count}]";
}

/// <summary>One GGUF metadata value: its type and the CLR value (a GgufArray for arrays).</summary>
public sealed class GgufValue : IEquatable<GgufValue>
{
    private GgufValue(GgufValueType type, object value)
    {
        Type = type;
        Value = value;
    }

    /// <summary>The value's GGUF type.</summary>
    public GgufValueType Type { get; }

    /// <summary>The value: byte, sbyte, ushort, short, uint, int, float, bool, string, ulong, long, double or <see cref="GgufArray"/>.</summary>
    public object Value { get; }

#pragma warning disable CS1591 // one factory per value type; the names say it all
    public static GgufValue UInt8(byte v) => new(GgufValueType.UInt8, v);
    public static GgufValue Int8(sbyte v) => new(GgufValueType.Int8, v);
    public static GgufValue UInt16(ushort v) => new(GgufValueType.UInt16, v);
    public static GgufValue Int16(short v) => new(GgufValueType.Int16, v);
    public static GgufValue UInt32(uint v) => new(GgufValueType.UInt32, v);
    public static GgufValue Int32(int v) => new(GgufValueType.Int32, v);
    public static GgufValue Float32(float v) => new(GgufValueType.Float32, v);
    public static GgufValue Bool(bool v) => new(GgufValueType.Bool, v);
    public static GgufValue String(string v) => new(GgufValueType.String, v ?? throw new ArgumentNullException(nameof(v)));
    public static GgufValue UInt64(ulong v) => new(GgufValueType.UInt64, v);
    public static GgufValue Int64(long v) => new(GgufValueType.Int64, v);
    public static GgufValue Float64(double v) => new(GgufValueType.Float64, v);
    public static GgufValue Array(GgufArray v) => new(GgufValueType.Array, v ?? throw new ArgumentNullException(nameof(v)));
#pragma warning restore CS1591

    /// <summary>An array value over <paramref name="items"/> (element type from the CLR type, e.g. string[] or float[]).</summary>
    public static GgufValue Array(System.Array items) => Array(new GgufArray(items));

    /// <summary>The value if it is an integer of any width that fits a long, else null.</summary>
    public long? AsInteger() => Value switch
    {
        byte v => v, sbyte v => v, ushort v => v, short v => v, uint v => v, int v => v, long v => v,
        ulong v when v <= long.MaxValue => (long)v,
        _ => null,
    };

    /// <summary>
    /// The value if it is a float32 or float64, else null. A float32 is widened through its shortest
    /// decimal form, so 1e-5 stored as float32 reads back as the double 1e-5 rather than 9.99999974737875e-6.
    /// </summary>
    public double? AsFloat() => Value switch
    {
        float f => double.Parse(f.ToString("R", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture),
        double d => d,
        _ => null,
    };

    /// <summary>The array, or null when the value is not one.</summary>
    public GgufArray? AsArray() => Value as GgufArray;

    internal static bool ItemEquals(object a, object b) => (a, b) switch
    {
        (float x, float y) => BitConverter.SingleToInt32Bits(x) == BitConverter.SingleToInt32Bits(y),
        (double x, double y) => BitConverter.DoubleToInt64Bits(x) == BitConverter.DoubleToInt64Bits(y),
        _ => a.Equals(b),
    };

    /// <summary>Same type and equal value (arrays element by element, floats bit for bit).</summary>
    public bool Equals(GgufValue? other) => other is not null && other.Type == Type && ItemEquals(Value, other.Value);

    /// <inheritdoc/>
    public override bool Equals(object? obj) => Equals(obj as GgufValue);

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Type, Value is GgufArray a ? a.GetHashCode() : Value.GetHashCode());

    /// <inheritdoc/>
    public override string ToString() => Value switch
    {
        string s => $"\"{s}\"",
        float f => f.ToString("R", CultureInfo.InvariantCulture),
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        _ => Convert.ToString(Value, CultureInfo.InvariantCulture) ?? "",
    };
}
