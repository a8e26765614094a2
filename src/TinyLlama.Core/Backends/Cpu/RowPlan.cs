// Iteration plan for strided elementwise loops over several operands of one shape.
// Adjacent dimensions that are contiguous in every operand are merged, the innermost dimension
// becomes a "row" processed by a span kernel (stride 1 or 0 in the common cases), and long rows are
// cut into chunks so that even one huge contiguous row is spread over all cores.
namespace TinyLlama.Backends.Cpu;

internal sealed class RowPlan
{
    /// <summary>Elements per chunk when a row is split for parallelism.</summary>
    private const int ChunkLength = 16384;

    private readonly int[] outerShape;      // sizes of the outer (non-row) dims
    private readonly int[][] outerStrides;  // [operand][dim]
    private readonly int[] baseOffsets;     // [operand]
    private readonly int chunksPerRow;

    /// <summary>Length of one full row.</summary>
    public readonly int RowLength;

    /// <summary>Stride of the row dimension in each operand.</summary>
    public readonly int[] InnerStrides;

    /// <summary>Number of (row, chunk) work items.</summary>
    public readonly int Items;

    /// <summary>Total elements.</summary>
    public readonly long Numel;

    public RowPlan(ReadOnlySpan<int> shape, int[][] strides, int[] offsets)
    {
        int k = strides.Length;
        // Drop size-1 dims, then merge dims d-1 and d when every operand has stride[d-1] == stride[d] * size[d].
        var dims = new List<int>();
        for (int d = 0; d < shape.Length; d++) if (shape[d] != 1) dims.Add(d);
        var cShape = new List<int>();
        var cStrides = new List<int[]>();
        foreach (int d in dims)
        {
            if (cShape.Count > 0)
            {
                int last = cShape.Count - 1;
                bool mergeable = true;
                for (int o = 0; o < k; o++)
                    if (cStrides[last][o] != strides[o][d] * shape[d]) { mergeable = false; break; }
                if (mergeable)
                {
                    cShape[last] *= shape[d];
                    for (int o = 0; o < k; o++) cStrides[last][o] = strides[o][d];
                    continue;
                }
            }
            cShape.Add(shape[d]);
            var s = new int[k];
            for (int o = 0; o < k; o++) s[o] = strides[o][d];
            cStrides.Add(s);
        }
        if (cShape.Count == 0)
        {
            cShape.Add(1);
            cStrides.Add(new int[k]);
        }
        int r = cShape.Count;
        RowLength = cShape[r - 1];
        InnerStrides = cStrides[r - 1];
        outerShape = cShape.GetRange(0, r - 1).ToArray();
        outerStrides = new int[k][];
        for (int o = 0; o < k; o++)
        {
            outerStrides[o] = new int[r - 1];
            for (int d = 0; d < r - 1; d++) outerStrides[o][d] = cStrides[d][o];
        }
        baseOffsets = offsets;
        int rows = 1;
        foreach (int s in outerShape) rows *= s;
        Numel = (long)rows * RowLength;
        chunksPerRow = Math.Max(1, (RowLength + ChunkLength - 1) / ChunkLength);
        Items = rows * chunksPerRow;
        if (Numel == 0) Items = 0;
    }

    /// <summary>Operand start offsets and the length of work item <paramref name="item"/>.</summary>
    public int Locate(int item, Span<int> offsets)
    {
        int row = item / chunksPerRow, chunk = item - row * chunksPerRow;
        int start = chunk * ChunkLength;
        for (int o = 0; o < offsets.Length; o++) offsets[o] = baseOffsets[o] + start * InnerStrides[o];
        for (int d = outerShape.Length - 1; d >= 0; d--)
        {
            int i = row % outerShape[d];
            row /= outerShape[d];
            for (int o = 0; o < offsets.Length; o++) offsets[o] += i * outerStrides[o][d];
        }
        return Math.Min(ChunkLength, RowLength - start);
    }

    /// <summary>Runs body(item) for every work item, in parallel when the plan is large enough to pay for it.</summary>
    public void Run(Action<int> body)
    {
        if (Numel < 32768 || Items == 1 || CpuThreads.Count == 1) { for (int i = 0; i < Items; i++) body(i); return; }
        Parallel.For(0, Items, CpuThreads.Options, body);
    }
}

/// <summary>Parallel loops sized for the CPU backend.</summary>
internal static class CpuParallel
{
    /// <summary>Runs body(start, end) over [0, count) in blocks; serially when work (count * costPerItem) is small.</summary>
    public static void For(int count, long costPerItem, Action<int, int> body)
    {
        long work = count * Math.Max(1, costPerItem);
        int threads = CpuThreads.Count;
        if (work < 65536 || threads == 1 || count == 1)
        {
            body(0, count);
            return;
        }
        int blocks = (int)Math.Min(count, Math.Max(threads * 4L, Math.Min(work / 65536, threads * 16L)));
        Parallel.For(0, blocks, CpuThreads.Options, b =>
        {
            int start = (int)((long)count * b / blocks), end = (int)((long)count * (b + 1) / blocks);
            if (end > start) body(start, end);
        });
    }
}
