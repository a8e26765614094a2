// Printing in PyTorch's style: nested brackets, aligned columns, "..." summaries for large tensors,
// then shape, dtype, device and requires_grad.
using System.Globalization;
using System.Text;

namespace TinyLlama.Tensors;

public sealed partial class Tensor
{
    /// <summary>Tensors with more elements than this print only their first and last 3 entries per dim.</summary>
    public const int SummaryThreshold = 1000;

    private const int EdgeItems = 3;

    public override string ToString()
    {
        var values = DType.IsQuantized() ? null : ToArray<double>();
        var sb = new StringBuilder("tensor(");
        if (values is null) sb.Append("<packed>");
        else
        {
            bool summarize = Numel > SummaryThreshold;
            bool integral = DType == DType.I32 || values.All(v => double.IsNaN(v) || double.IsInfinity(v) || v == Math.Floor(v));
            double maxAbs = values.Where(double.IsFinite).Select(Math.Abs).DefaultIfEmpty(0).Max();
            double minAbs = values.Where(v => double.IsFinite(v) && v != 0).Select(Math.Abs).DefaultIfEmpty(1).Min();
            bool sci = !integral && (maxAbs >= 1e8 || minAbs < 1e-4);
            string Fmt(double v) =>
                double.IsNaN(v) ? "nan" :
                double.IsPositiveInfinity(v) ? "inf" :
                double.IsNegativeInfinity(v) ? "-inf" :
                DType == DType.I32 ? ((long)v).ToString(CultureInfo.InvariantCulture) :
                integral ? v.ToString("0", CultureInfo.InvariantCulture) + "." :
                sci ? v.ToString("0.0000e+00", CultureInfo.InvariantCulture) :
                v.ToString("0.0000", CultureInfo.InvariantCulture);
            int width = values.Length == 0 ? 0 : values.Max(v => Fmt(v).Length);
            if (Rank == 0) sb.Append(Fmt(values[0]));
            else AppendDim(sb, values, 0, 0, summarize, v => Fmt(v).PadLeft(width), indent: 7);
        }
        sb.Append($", shape={Shapes.Format(shape)}, dtype={DType.Name()}, device={Device}");
        if (RequiresGrad) sb.Append(GradFn is null ? ", requires_grad=True" : $", grad_fn=<{GradFn.Name}>");
        sb.Append(')');
        return sb.ToString();
    }

    private void AppendDim(StringBuilder sb, double[] values, int dim, int flatOffset, bool summarize, Func<double, string> fmt, int indent)
    {
        int n = shape[dim];
        int inner = 1;
        for (int d = dim + 1; d < Rank; d++) inner *= shape[d];
        sb.Append('[');
        bool cut = summarize && n > 2 * EdgeItems;
        for (int i = 0; i < n; i++)
        {
            if (cut && i == EdgeItems)
            {
                sb.Append(dim == Rank - 1 ? "..., " : "...,\n" + new string(' ', indent + dim + 1));
                i = n - EdgeItems - 1;
                continue;
            }
            if (dim == Rank - 1) sb.Append(fmt(values[flatOffset + i]));
            else AppendDim(sb, values, dim + 1, flatOffset + i * inner, summarize, fmt, indent);
            if (i < n - 1)
                sb.Append(dim == Rank - 1 ? ", " : "," + new string('\n', Rank - 1 - dim) + new string(' ', indent + dim + 1));
        }
        sb.Append(']');
    }
}
