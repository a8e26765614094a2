// Strided addressing for kernels: a tensor view (sizes, strides in elements, offset) of up to eight
// dimensions, passed to a kernel by value (72 bytes of kernel parameters). The host builds one layout per
// operand from the same merged shape (dims that are contiguous in every operand are merged first, so a
// dense operand is rank 1 and costs one multiply-add), and checks that every element it can address lies
// inside its buffer before the launch.
//
// Per thread: IndexOf turns the row-major linear index of the element a thread owns into its storage
// index with one division and one multiply-add per dimension. No memory traffic of its own.
namespace TinyLlama.Kernels;

/// <summary>A strided view of up to <see cref="MaxRank"/> dimensions, for kernel parameters.</summary>
public struct StridedLayout
{
    /// <summary>Most dimensions a layout holds (after merging contiguous dimensions).</summary>
    public const int MaxRank = 8;

    /// <summary>Number of dimensions in use (0 for a scalar).</summary>
    public int Rank;

    /// <summary>Storage index of element [0, 0, ...].</summary>
    public int Offset;

    // Fixed fields rather than an array: kernel parameters must be plain values.
    public int Size0, Size1, Size2, Size3, Size4, Size5, Size6, Size7;
    public int Stride0, Stride1, Stride2, Stride3, Stride4, Stride5, Stride6, Stride7;

    /// <summary>Size of dimension d.</summary>
    public readonly int Size(int d) => d switch
    {
        0 => Size0, 1 => Size1, 2 => Size2, 3 => Size3, 4 => Size4, 5 => Size5, 6 => Size6, _ => Size7,
    };

    /// <summary>Stride (in elements) of dimension d.</summary>
    public readonly int Stride(int d) => d switch
    {
        0 => Stride0, 1 => Stride1, 2 => Stride2, 3 => Stride3, 4 => Stride4, 5 => Stride5, 6 => Stride6, _ => Stride7,
    };

    /// <summary>Sets dimension d (host side, while building a layout).</summary>
    public void Set(int d, int size, int stride)
    {
        switch (d)
        {
            case 0: Size0 = size; Stride0 = stride; break;
            case 1: Size1 = size; Stride1 = stride; break;
            case 2: Size2 = size; Stride2 = stride; break;
            case 3: Size3 = size; Stride3 = stride; break;
            case 4: Size4 = size; Stride4 = stride; break;
            case 5: Size5 = size; Stride5 = stride; break;
            case 6: Size6 = size; Stride6 = stride; break;
            default: Size7 = size; Stride7 = stride; break;
        }
    }

    /// <summary>Storage index of the element whose row-major linear index (over the layout's sizes) is <paramref name="linear"/>.</summary>
    public readonly int IndexOf(int linear)
    {
        int index = Offset;
        for (int d = Rank - 1; d > 0; d--)
        {
            int size = Size(d);
            int q = linear / size;
            index += (linear - q * size) * Stride(d);
            linear = q;
        }
        return Rank == 0 ? index : index + linear * Stride0;
    }
}
