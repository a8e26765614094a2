// GPTQ (Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for Generative
// Pre-trained Transformers", 2022, arXiv:2210.17323) writing plain llama.cpp Q4_0 / Q8_0 blocks.
//
// One linear layer y = W x, W [rows, K], is quantized so as to keep W X close to Q X on calibration inputs
// X [K, n]: minimise ||W X - Q X||^2, whose Hessian in each row is H = 2/n X X^T (the same for every row).
// Optimal Brain Quantization goes column by column: quantize column j, and move the rounding error onto the
// columns not yet quantized in the way that raises the loss least,
//     err = (w_j - q_j) / Hinv[j, j],    W[:, j+1:] -= err * Hinv[j, j+1:],
// where Hinv is the upper Cholesky factor U of H^-1 (U^T U = H^-1): row j of U holds, for the columns after
// j, the inverse Hessian with columns 0..j-1 already eliminated (the paper's "Cholesky reformulation").
// The paper's Algorithm 1, as its reference implementation (IST-DASLab/gptq, gptq.py fasterquant) runs it:
//   1. dead columns (H_jj = 0: the feature is always zero) get H_jj = 1 and W[:, j] = 0;
//   2. optional act-order: columns are processed by decreasing diag(H) (ties: lower index first) and put
//      back in place at the end;
//   3. dampening: damp * mean(diag H) is added to the diagonal (1% by default);
//   4. U = upper Cholesky factor of H^-1;
//   5. columns in blocks of B (128): inside a block the error moves column by column; the columns after the
//      block receive the whole block's errors at once, W[:, i2:] -= Err[:, i1:i2] U[i1:i2, i2:] (the "lazy
//      batch" update: the same arithmetic as column by column, with the big product done once per block).
// H's overall scale does not matter (U scales as 1/sqrt of it, err and the updates cancel it; the damp is
// relative), so H = 2/n X X^T counts tokens in n where the reference counts sequences.
//
// The grid is llama.cpp's, not the paper's asymmetric min/max grid, so the output is plain Q4_0 / Q8_0 that
// any llama.cpp build runs. A 32-column group (one block of each row) gets its scale when GPTQ reaches the
// first column it processes from that group, from the CURRENT weights of the group's 32 columns (the
// original weights plus every error moved onto them so far), by the format's own rule (QuantType.cs):
//     Q4_0: max = the weight of largest magnitude with its sign, d = max / -8, stored as binary16;
//     Q8_0: d = max |w| / 127.
// Each column is then coded with that fixed scale by the reference quantizer's rounding (Q4_0: nibble =
// trunc(w / d + 8.5) in f32, with 1 / d of the unrounded d; Q8_0: q = round(w / d) halves away from zero),
// clamped to the grid (Q4_0 nibbles 0..15, Q8_0 -127..127: errors moved onto a column after its group's
// scale was fixed can push it past the group's old extreme), and the dequantized value (code times the
// binary16 d) is what the error is measured against.
// The reference recomputes a group's parameters from its stale, block-start copy of W; here the group's
// current weights are used, which for columns beyond the current block means applying the block's
// errors so far to them first (W[:, c] - Err[:, i1:i] U[i1:i, c]), so that the blocked algorithm gives
// exactly what plain column-by-column OBQ gives. With act-order a group's 32 columns are scattered through
// the processing order; the group's scale is fixed when the first of them comes up (none of them has been
// quantized then, so all 32 current weights are well defined), and later columns of the group reuse it.
// With H diagonal no error moves (U is diagonal), so GPTQ without scale search (below) gives exactly the
// reference quantizer's bytes.
//
// Scale search (GptqOptions.ScaleSearch = Mse, the default). The format's rule puts the group's extreme
// weight on the end of the grid, which makes the step as coarse as it can be; a smaller d clips the extreme
// but rounds the other 31 weights more finely. The reference implementation's Quantizer with mse=True
// (IST-DASLab/gptq, quant.py find_params) tries a grid of shrink factors p of the range and keeps the one
// with the smallest rounding error; here the candidates are
//     d_p = d * p,   p in {1, 0.95, 0.90, ..., 0.70}   (f32, d the format's own scale above),
// each evaluated per row exactly as the column loop will code it (binary16 d, the reference rounding and
// clamping), by the loss GPTQ will pay for the group's own columns. Quantizing column j raises the loss by
// err_j^2 = (w_j - q_j)^2 / U_jj^2 (OBQ's cost, U_jj^2 = [H^-1]_jj with the columns before j eliminated), and
// err_j moves onto the later columns through row j of U. Without act-order a group's 32 columns are
// processed one after another, so the group is simulated exactly: its columns coded in order, each error
// moved onto the group's later columns by U, the cost sum_j err_j^2 (what GPTQ adds for this group, given the
// weights it has now; what the moved errors do to later groups is not foreseen). With act-order the group's
// columns are interleaved with others whose errors also arrive in between, so that simulation would be
// partial; there each column is priced alone on its current weight, sum_j (w_j - q_j)^2 / U_jj^2. (Both
// rules were measured in both orders, and both beat no search on stories260K in both; this pairing is the
// better one on the tests' correlated inputs and on the demo model's in-distribution text, the opposite
// pairing on stories260K: a measured choice, not a theorem.) The candidate
// of least cost wins, the first one (p = 1) on ties, so a group that p = 1 codes best gets the same bytes
// as without the search. The search only chooses d: the blocks stay plain Q4_0 / Q8_0. Round to nearest
// (QuantType.cs) never searches: it stays llama.cpp's quantizer byte for byte.
//
// All arithmetic is f64 except the coding rule itself, which is the reference quantizer's f32 expression.
// W is kept column-major (a column is contiguous) so that every update is a contiguous axpy.
using System.Numerics.Tensors;
using TinyLlama.Backends.Cpu;
using TinyLlama.Tensors;

namespace TinyLlama.Quantization;

/// <summary>
/// Accumulates a linear layer's GPTQ Hessian H = 2/n sum over tokens of x x^T (f64) from batches of its inputs.
/// </summary>
public sealed class HessianAccumulator
{
    private readonly double[] sum; // [K, K], upper triangle accumulated, sum x x^T

    /// <summary>An empty accumulator for inputs of <paramref name="features"/> features (K).</summary>
    public HessianAccumulator(int features)
    {
        if (features <= 0) throw new ArgumentException($"hessian accumulator: features must be positive, got {features}");
        Features = features;
        sum = new double[features * features];
    }

    /// <summary>K, the input width.</summary>
    public int Features { get; }

    /// <summary>Tokens (input rows) added so far: n.</summary>
    public long Tokens { get; private set; }

    /// <summary>Adds every row of x [..., K] (any float dtype, any device).</summary>
    public void Add(Tensor x)
    {
        if (!x.DType.IsFloat() || x.Rank == 0 || x.Size(x.Rank - 1) != Features)
            throw new ArgumentException($"hessian accumulator: expected float inputs [..., {Features}], got {x.DType.Name()} {Shapes.Format(x.Shape)}");
        Add(x.ToArray<float>(), x.Numel / Features);
    }

    /// <summary>Adds <paramref name="tokens"/> rows x [tokens, K] (row-major).</summary>
    public void Add(ReadOnlySpan<float> x, int tokens)
    {
        int k = Features;
        if (tokens < 0 || x.Length != (long)tokens * k)
            throw new ArgumentException($"hessian accumulator: {x.Length} values are not {tokens} rows of {k} features");
        if (tokens == 0) return;
        // xt [K, tokens]: feature a's values over the batch, contiguous, so each H entry is one dot product.
        var xt = new double[k * tokens];
        for (int t = 0; t < tokens; t++)
            for (int a = 0; a < k; a++)
            {
                float v = x[t * k + a];
                if (!float.IsFinite(v)) throw new ArgumentException($"hessian accumulator: input value {v} at token {t}, feature {a}");
                xt[a * tokens + t] = v;
            }
        CpuParallel.For(k, k * tokens / 2, (start, end) =>
        {
            for (int a = start; a < end; a++)
            {
                var xa = new ReadOnlySpan<double>(xt, a * tokens, tokens);
                for (int b = a; b < k; b++) sum[a * k + b] += TensorPrimitives.Dot(xa, new ReadOnlySpan<double>(xt, b * tokens, tokens));
            }
        });
        Tokens += tokens;
    }

    /// <summary>H = 2/n sum x x^T as a new [K, K] row-major array (all zeros before any token).</summary>
    public double[] Hessian()
    {
        int k = Features;
        var h = new double[sum.Length];
        double scale = Tokens > 0 ? 2.0 / Tokens : 0;
        for (int a = 0; a < k; a++)
            for (int b = a; b < k; b++)
                h[a * k + b] = h[b * k + a] = scale * sum[a * k + b];
        return h;
    }
}

/// <summary>Settings of one GPTQ run.</summary>
public sealed record GptqOptions
{
    /// <summary>The block format written (Q4_0 or Q8_0).</summary>
    public QuantType Type { get; init; } = QuantType.Q4_0;

    /// <summary>Fraction of the mean diagonal of H added to its diagonal (the paper's 1%).</summary>
    public double Damp { get; init; } = 0.01;

    /// <summary>Process columns by decreasing H_jj (the reference's --act-order).</summary>
    public bool ActOrder { get; init; }

    /// <summary>Columns per lazy-batch block (the paper's B = 128); changes speed only, not the result.</summary>
    public int BlockSize { get; init; } = 128;

    /// <summary>How each group's scale is chosen when GPTQ reaches the group (see the file header).</summary>
    public GptqScaleSearch ScaleSearch { get; init; } = GptqScaleSearch.Mse;
}

/// <summary>How GPTQ chooses a 32-column group's scale d.</summary>
public enum GptqScaleSearch
{
    /// <summary>The format's own rule (Q4_0: d = max / -8; Q8_0: d = max |w| / 127), as the reference quantizer.</summary>
    None,
    /// <summary>
    /// The format's d times the shrink factor in <see cref="Gptq.ScaleShrinks"/> of least OBQ loss over the
    /// group's columns: sum_j (w_j - q_j)^2 / U_jj^2, with the errors moved between the group's columns as GPTQ
    /// moves them when the group is processed as one run (no act-order).
    /// </summary>
    Mse,
}

/// <summary>GPTQ for one linear layer, producing llama.cpp block rows.</summary>
public static class Gptq
{
    /// <summary>The shrink factors p tried by <see cref="GptqScaleSearch.Mse"/>: candidate scales d * p, first p = 1.</summary>
    public static IReadOnlyList<float> ScaleShrinks { get; } = [1f, 0.95f, 0.9f, 0.85f, 0.8f, 0.75f, 0.7f];

    /// <summary>
    /// Quantizes weight [rows, columns] (row-major) given the layer's Hessian [columns, columns] (see
    /// <see cref="HessianAccumulator"/>) into block rows [rows, RowBytes(columns)], laid out as
    /// <see cref="QuantTypes.QuantizeRowQ4_0"/> / <see cref="QuantTypes.QuantizeRowQ8_0"/> write them.
    /// </summary>
    public static byte[] Quantize(ReadOnlySpan<float> weight, int rows, int columns, ReadOnlySpan<double> hessian, GptqOptions? options = null)
    {
        var o = options ?? new GptqOptions();
        var traits = o.Type.Traits();
        int k = columns;
        if (rows <= 0) throw new ArgumentException($"gptq: rows must be positive, got {rows}");
        int rowBytes = traits.RowBytes(k);
        if (weight.Length != (long)rows * k) throw new ArgumentException($"gptq: {weight.Length} weights are not [{rows}, {k}]");
        if (hessian.Length != (long)k * k) throw new ArgumentException($"gptq: the Hessian has {hessian.Length} entries, expected [{k}, {k}]");
        if (!(o.Damp >= 0) || double.IsInfinity(o.Damp)) throw new ArgumentException($"gptq: damp must be a finite non-negative fraction, got {o.Damp}");
        if (o.BlockSize <= 0) throw new ArgumentException($"gptq: block size must be positive, got {o.BlockSize}");
        if (!Enum.IsDefined(o.ScaleSearch)) throw new ArgumentException($"gptq: unknown scale search {o.ScaleSearch}");

        // 1. Dead columns; 3. dampening (the mean diagonal does not depend on the order).
        var diag = new double[k];
        var dead = new bool[k];
        double meanDiag = 0;
        for (int j = 0; j < k; j++)
        {
            diag[j] = hessian[j * k + j];
            if (!double.IsFinite(diag[j]) || diag[j] < 0) throw new ArgumentException($"gptq: the Hessian's diagonal entry {j} is {diag[j]}; expected 2/n X X^T");
            if (diag[j] == 0) (diag[j], dead[j]) = (1, true);
            meanDiag += diag[j] / k;
        }

        // 2. Act-order: perm[p] is the original column processed p-th.
        var perm = new int[k];
        for (int j = 0; j < k; j++) perm[j] = j;
        if (o.ActOrder) Array.Sort(perm, (a, b) => diag[a] != diag[b] ? diag[b].CompareTo(diag[a]) : a.CompareTo(b));
        var position = new int[k]; // position[c]: when original column c is processed
        for (int p = 0; p < k; p++) position[perm[p]] = p;

        // H and W in processing order; W column-major (wp[p * rows + r] = W[r, perm[p]]), dead columns zero.
        var hp = new double[k * k];
        var wp = new double[k * rows];
        for (int p = 0; p < k; p++)
        {
            int c = perm[p];
            for (int q = 0; q < k; q++) hp[p * k + q] = hessian[c * k + perm[q]];
            hp[p * k + p] = diag[c] + o.Damp * meanDiag;
            for (int r = 0; r < rows; r++)
            {
                float v = weight[r * k + c];
                if (!float.IsFinite(v)) throw new ArgumentException($"gptq: weight {v} at [{r}, {c}] cannot be quantized");
                wp[p * rows + r] = dead[c] ? 0 : v;
            }
        }

        // 4. U, U^T U = H^-1 (in processing order).
        var u = InverseHessianFactor(hp, k);

        // 5. The blocked column loop.
        int groups = k / 32;
        var scale = new Half[rows * groups];  // [rows, groups]: the stored d
        var inverse = new float[rows * groups];  // 1 / d of the unrounded d, as the reference quantizer codes with
        var codes = new sbyte[rows * k];        // [rows, K] in original column order: Q4_0 nibble or Q8_0 int8
        var fixedGroup = new bool[groups];
        var err = new double[Math.Min(o.BlockSize, k) * rows]; // [block columns, rows]
        var current = new float[32 * rows];     // a group's current weights, [32, rows]
        var ug = new double[32 * 32];           // U restricted to a group's columns [32, 32] (group column order)
        var sequence = new int[32];             // the group's columns (0..31) in processing order
        for (int i1 = 0; i1 < k; i1 += o.BlockSize)
        {
            int i2 = Math.Min(i1 + o.BlockSize, k);
            for (int i = i1; i < i2; i++)
            {
                int g = perm[i] / 32;
                if (!fixedGroup[g])
                {
                    CurrentGroup(g, i, i1, i2);
                    if (o.ScaleSearch == GptqScaleSearch.Mse)
                    {
                        for (int a = 0; a < 32; a++)
                        {
                            sequence[a] = a;
                            for (int b = 0; b < 32; b++) ug[a * 32 + b] = u[position[g * 32 + a] * k + position[g * 32 + b]];
                        }
                        Array.Sort(sequence, (a, b) => position[g * 32 + a].CompareTo(position[g * 32 + b]));
                    }
                    FixScales(o, current, ug, sequence, !o.ActOrder, rows, g, groups, scale, inverse);
                    fixedGroup[g] = true;
                }
                var col = new Span<double>(wp, i * rows, rows);
                var e = new Span<double>(err, (i - i1) * rows, rows);
                double uii = u[i * k + i];
                for (int r = 0; r < rows; r++)
                {
                    int code = Code(o.Type, (float)col[r], inverse[r * groups + g]);
                    codes[r * k + perm[i]] = (sbyte)code;
                    e[r] = (col[r] - Value(o.Type, code, scale[r * groups + g])) / uii;
                }
                // Inside the block, column by column.
                for (int c = i + 1; c < i2; c++)
                    TensorPrimitives.MultiplyAdd(e, -u[i * k + c], new Span<double>(wp, c * rows, rows), new Span<double>(wp, c * rows, rows));
            }
            // The lazy batch: the rest of W gets the block's errors in one product, W[:, i2:] -= Err U[i1:i2, i2:].
            int done = i2 - i1, first = i2;
            CpuParallel.For(k - i2, done * rows, (start, end) =>
            {
                for (int c = first + start; c < first + end; c++)
                {
                    var target = new Span<double>(wp, c * rows, rows);
                    for (int t = 0; t < done; t++)
                        TensorPrimitives.MultiplyAdd(new ReadOnlySpan<double>(err, t * rows, rows), -u[(i1 + t) * k + c], target, target);
                }
            });
        }

        var blocks = new byte[rows * rowBytes];
        for (int r = 0; r < rows; r++)
            Pack(o.Type, codes.AsSpan(r * k, k), scale.AsSpan(r * groups, groups), blocks.AsSpan(r * rowBytes, rowBytes));
        return blocks;

        // The current weights of group g's 32 columns when column i (in block [i1, i2)) comes up: inside the
        // block they are up to date; beyond it they still lack the block's errors from columns i1..i-1.
        void CurrentGroup(int g, int i, int i1, int i2)
        {
            for (int j = 0; j < 32; j++)
            {
                int p = position[g * 32 + j];
                var dst = current.AsSpan(j * rows, rows);
                var src = new ReadOnlySpan<double>(wp, p * rows, rows);
                if (p < i2)
                {
                    for (int r = 0; r < rows; r++) dst[r] = (float)src[r];
                    continue;
                }
                var column = src.ToArray();
                for (int t = 0; t < i - i1; t++)
                    TensorPrimitives.MultiplyAdd(new ReadOnlySpan<double>(err, t * rows, rows), -u[(i1 + t) * k + p], column, column);
                for (int r = 0; r < rows; r++) dst[r] = (float)column[r];
            }
        }
    }

    /// <summary>
    /// The scale of block g in every row from the group's current weights [32, rows]: the format's rule, or with
    /// <see cref="GptqScaleSearch.Mse"/> the candidate d * p of least <see cref="GroupCost"/>; ug [32, 32] is U
    /// restricted to the group's columns, sequence their processing order.
    /// </summary>
    private static void FixScales(GptqOptions o, float[] current, double[] ug, int[] sequence, bool simulate, int rows, int g, int groups, Half[] scale, float[] inverse)
    {
        var type = o.Type;
        for (int r = 0; r < rows; r++)
        {
            float amax = 0, max = 0;
            for (int j = 0; j < 32; j++)
            {
                float v = current[j * rows + r];
                if (!float.IsFinite(v)) throw new ArgumentException($"gptq: an updated weight in row {r}, block {g} is {v}; the Hessian is too ill-conditioned (raise damp)");
                if (amax < Math.Abs(v)) { amax = Math.Abs(v); max = v; }
            }
            float d = type == QuantType.Q4_0 ? max / -8f : amax / 127f;
            if (o.ScaleSearch == GptqScaleSearch.Mse && d != 0)
            {
                float best = d;
                double bestCost = GroupCost(type, current, ug, sequence, simulate, rows, r, d);
                for (int s = 1; s < ScaleShrinks.Count; s++)
                {
                    float candidate = d * ScaleShrinks[s];
                    double c = GroupCost(type, current, ug, sequence, simulate, rows, r, candidate);
                    if (c < bestCost) (best, bestCost) = (candidate, c);
                }
                d = best;
            }
            scale[r * groups + g] = (Half)d;
            inverse[r * groups + g] = d != 0 ? 1f / d : 0f;
        }
    }

    /// <summary>
    /// OBQ's loss sum_j err_j^2, err_j = (w_j - q_j) / U_jj, of coding row r of a group's weights [32, rows] with
    /// scale d, column by column in <paramref name="sequence"/>'s order; with <paramref name="simulate"/> each
    /// err_j then moves onto the group's later columns (w_c -= err_j U_jc), as GPTQ will move it.
    /// </summary>
    private static double GroupCost(QuantType type, float[] current, double[] ug, int[] sequence, bool simulate, int rows, int r, float d)
    {
        float id = 1f / d;
        var stored = (Half)d;
        double sum = 0;
        Span<double> x = stackalloc double[32];
        for (int j = 0; j < 32; j++) x[j] = current[j * rows + r];
        for (int t = 0; t < 32; t++)
        {
            int a = sequence[t];
            float v = (float)x[a];
            double e = (x[a] - Value(type, Code(type, v, id), stored)) / ug[a * 32 + a];
            sum += e * e;
            if (!simulate) continue;
            for (int t2 = t + 1; t2 < 32; t2++) x[sequence[t2]] -= e * ug[a * 32 + sequence[t2]];
        }
        return sum;
    }

    /// <summary>The code of x on a block's grid: the reference quantizer's rounding, clamped to the grid.</summary>
    private static int Code(QuantType type, float x, float inverseScale) => type == QuantType.Q4_0
        ? Math.Clamp((int)(x * inverseScale + 8.5f), 0, 15)    // truncation, as C's float-to-int
        : (int)Math.Clamp(MathF.Round(x * inverseScale, MidpointRounding.AwayFromZero), -127f, 127f);

    /// <summary>The dequantized value of a code, exactly as the row dequantizers compute it.</summary>
    private static double Value(QuantType type, int code, Half scale)
    {
        float d = QuantTypes.HalfToSingle(BitConverter.HalfToUInt16Bits(scale));
        return type == QuantType.Q4_0 ? (code - 8) * d : code * d;
    }

    /// <summary>One row's codes [K] and scales [K / 32] as blocks.</summary>
    private static void Pack(QuantType type, ReadOnlySpan<sbyte> codes, ReadOnlySpan<Half> scales, Span<byte> row)
    {
        if (type == QuantType.Q4_0)
        {
            var blocks = QuantTypes.Blocks<BlockQ4_0>(row);
            for (int b = 0; b < blocks.Length; b++)
            {
                blocks[b].D = scales[b];
                for (int j = 0; j < 16; j++) blocks[b].Qs[j] = (byte)((byte)codes[b * 32 + j] | ((byte)codes[b * 32 + j + 16] << 4)); // nibbles 0..15
            }
        }
        else
        {
            var blocks = QuantTypes.Blocks<BlockQ8_0>(row);
            for (int b = 0; b < blocks.Length; b++)
            {
                blocks[b].D = scales[b];
                for (int j = 0; j < 32; j++) blocks[b].Qs[j] = codes[b * 32 + j];
            }
        }
    }

    /// <summary>
    /// U [K, K] row-major, upper triangular with a positive diagonal, with U^T U = H^-1: the factor the
    /// reference gets as cholesky(cholesky_inverse(cholesky(H)), upper=True). Computed with one Cholesky and
    /// one triangular inverse: if J reverses the order, J H J = L L^T gives H = V V^T with V = J L J upper,
    /// so H^-1 = (V^-1)^T V^-1 and U = V^-1 = J L^-1 J (the Cholesky factor is unique).
    /// </summary>
    internal static double[] InverseHessianFactor(double[] h, int k)
    {
        var l = new double[k * k];
        for (int a = 0; a < k; a++)
            for (int b = 0; b < k; b++) l[a * k + b] = h[(k - 1 - a) * k + (k - 1 - b)];
        CholeskyInPlace(l, k);
        var mt = LowerInverseColumns(l, k);
        var u = l; // L is no longer needed: its storage takes U
        Array.Clear(u);
        for (int a = 0; a < k; a++)
            for (int b = a; b < k; b++) u[a * k + b] = mt[(k - 1 - b) * k + (k - 1 - a)]; // M[k-1-a, k-1-b]
        return u;
    }

    // Four units in the last place of 1 (2^-52), per term of the sum.
    private const double PivotTolerance = 4.0 / (1L << 52);

    /// <summary>
    /// Replaces the lower triangle of a [K, K] (row-major, symmetric) by L, L L^T = a (the upper triangle is
    /// left as it was); throws unless a is positive definite.
    /// </summary>
    private static void CholeskyInPlace(double[] a, int k)
    {
        for (int j = 0; j < k; j++)
        {
            var lj = new ReadOnlySpan<double>(a, j * k, j);
            double diagonal = a[j * k + j];
            double s = diagonal - TensorPrimitives.Dot(lj, lj);
            // A pivot of a singular matrix is zero only in exact arithmetic: computed, it is the cancellation
            // residue of the sum above, of the order of k ulps of the diagonal and of either sign (which sign
            // depends on the summation order, so on the SIMD width). A pivot that small is treated as zero.
            if (!(s > PivotTolerance * k * diagonal))
                throw new ArgumentException($"gptq: the Hessian is not positive definite even after dampening (pivot {j + 1} of {k} is {s:g3}); use more calibration data or a larger damp");
            double ljj = Math.Sqrt(s);
            a[j * k + j] = ljj;
            int col = j;
            CpuParallel.For(k - j - 1, j + 1, (start, end) =>
            {
                var ljRow = new ReadOnlySpan<double>(a, col * k, col);
                for (int i = col + 1 + start; i < col + 1 + end; i++)
                    a[i * k + col] = (a[i * k + col] - TensorPrimitives.Dot(new ReadOnlySpan<double>(a, i * k, col), ljRow)) / ljj;
            });
        }
    }

    /// <summary>
    /// The columns of M = L^-1 for a lower-triangular L: row j of the result holds column j of M (entries j..K-1),
    /// each found by forward substitution, L m = e_j, independently of the others.
    /// </summary>
    private static double[] LowerInverseColumns(double[] l, int k)
    {
        var mt = new double[k * k];
        CpuParallel.For(k, k * k / 6 + 1, (start, end) =>
        {
            for (int j = start; j < end; j++)
            {
                var m = new Span<double>(mt, j * k, k);
                m[j] = 1 / l[j * k + j];
                for (int i = j + 1; i < k; i++)
                    m[i] = -TensorPrimitives.Dot(new ReadOnlySpan<double>(l, i * k + j, i - j), m.Slice(j, i - j)) / l[i * k + i];
            }
        });
        return mt;
    }
}
